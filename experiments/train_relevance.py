"""Trains the relevance model rel(q, p) and evaluates it on the test split's judgments.

    python -m experiments.train_relevance --dataset=../shared/data/homedepot-search-relevance --out=runs/hd/relevance

Trains on the train split's judgments (early stopping and calibration on the dev split), then
prints and writes DIR/metrics.json for the test split: nDCG@10 over each query's judged products
for the model, BM25 and term overlap; AUC of relevant against not and against the next grade
below relevant_at; per query kind where the dataset has kinds; a calibration table. The model
goes to DIR/relevance.ubj, DIR/relevance.json and DIR/relevance_associations.npz. Reuses the
index at DIR/index when one was built there for this catalog (experiments.build_index --out=DIR),
else builds one in memory. --target=grade --noassociations trains the version 1 model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from absl import flags

from experiments import cli, common
from leser_jax.relevance import OBJECTIVES, TARGETS, RelevanceConfig, RelevanceModel
from leser_jax.relevance_eval import evaluate

common.define_dataset_flags()
flags.DEFINE_string("out", None, "Output folder: the model and metrics.json go here.",
                    required=True)
flags.DEFINE_enum("target", "relevant", list(TARGETS),
                  "What a score means: P(grade >= relevant_at), or the expected normalised grade "
                  "(version 1).")
flags.DEFINE_enum("objective", "reg:squarederror", list(OBJECTIVES),
                  "XGBoost objective: regress the target, or LambdaMART per query.")
flags.DEFINE_bool("associations", True, "Add the query-word x product-term association "
                  "features learned from the train judgments (relevance_associations.py).")
flags.DEFINE_float("association_prior", 10.0, "Beta prior strength m of the associations, in "
                   "pseudo-pairs.")
cli.exclusive_bounds("association_prior", lower=0)
flags.DEFINE_integer("association_folds", 5, "Folds of the train queries for the out-of-fold "
                     "association features.", lower_bound=2)
flags.DEFINE_integer("rank_depth", 100, "K of the engine_rank feature (absent products get K+1).",
                     lower_bound=1)
flags.DEFINE_integer("max_rounds", 300, "Most boosting rounds (early stopping on dev decides).",
                     lower_bound=1)
flags.DEFINE_integer("early_stopping_rounds", 30, "Rounds without dev improvement before stopping.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 0.1, "XGBoost eta.", upper_bound=1)
cli.exclusive_bounds("learning_rate", lower=0)
flags.DEFINE_integer("max_depth", 6, "XGBoost tree depth.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "XGBoost seed.", lower_bound=0)
flags.DEFINE_integer("nthread", 1, "XGBoost threads (training and prediction); 1: see "
                     "RelevanceConfig.", lower_bound=1)
flags.DEFINE_integer("ndcg_k", 10, "Cut-off of nDCG.", lower_bound=1)
FLAGS = flags.FLAGS


def config_from_flags() -> RelevanceConfig:
    return RelevanceConfig(target=FLAGS.target, objective=FLAGS.objective,
                           associations=FLAGS.associations,
                           association_prior=FLAGS.association_prior,
                           association_folds=FLAGS.association_folds, rank_depth=FLAGS.rank_depth,
                           max_rounds=FLAGS.max_rounds,
                           early_stopping_rounds=FLAGS.early_stopping_rounds,
                           learning_rate=FLAGS.learning_rate, max_depth=FLAGS.max_depth,
                           seed=FLAGS.seed, nthread=FLAGS.nthread)


def main(argv):
    del argv
    start = time.perf_counter()
    catalog = common.load_catalog()
    print(catalog.report.summary())
    config = config_from_flags()
    common.log_config("relevance", config)
    engine = common.open_engine(catalog, os.path.join(FLAGS.out, "index"))
    model = RelevanceModel.train(engine, config, log=logging.info)
    model.save(FLAGS.out)
    metrics = {"dataset": FLAGS.dataset, "catalog": repr(catalog),
               **evaluate(model, "test", k=FLAGS.ndcg_k), "train": model.info,
               "config": dataclasses.asdict(model.config),
               "seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(FLAGS.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    print_metrics(metrics)


def print_metrics(m: dict) -> None:
    k = m["k"]
    print(f"\n{m['catalog']}; test split: {m['queries']:,} judged queries, {m['pairs']:,} pairs "
          f"({m['relevant_pairs']:,} relevant); nDCG over {m['queries_evaluated']:,} queries "
          f"({m['queries_excluded_equal_grades']:,} excluded: all judged grades equal)")
    print(f"train: {m['train']}")
    nxt = m["next_grade"]
    print(f"\n| system       | nDCG@{k} |   AUC  | AUC vs grade {nxt} |")
    print("|--------------|---------|--------|------------------|")
    for name in m[f"ndcg@{k}"]:
        print(f"| {name:<12} | {m[f'ndcg@{k}'][name]:7.4f} | {m['auc'][name]:6.4f} | "
              f"{m['auc_relevant_vs_next_grade'][name]:16.4f} |")
    if m["by_kind"]:
        print(f"\n| kind     | model AUC | model AUC vs {nxt} | bm25 AUC | bm25 AUC vs {nxt} | "
              f"model mean score by grade |")
        print("|----------|-----------|------------------|----------|-----------------|"
              "---------------------------|")
        for kind, by in m["by_kind"].items():
            means = ", ".join(f"{g}: {s:.3f}"
                              for g, s in by["model"]["mean_score_by_grade"].items())
            print(f"| {kind:<8} | {by['model']['auc_relevant_vs_rest']:9.4f} | "
                  f"{by['model']['auc_relevant_vs_next_grade']:16.4f} | "
                  f"{by['bm25']['auc_relevant_vs_rest']:8.4f} | "
                  f"{by['bm25']['auc_relevant_vs_next_grade']:15.4f} | {means} |")
    d = m[f"ndcg@{k}_model_minus_bm25"]
    print(f"\nmodel - bm25 nDCG@{k}: {d['mean']:+.4f} (bootstrap 95% over queries: "
          f"{d['bootstrap_95'][0]:+.4f} .. {d['bootstrap_95'][1]:+.4f}); queries better "
          f"{d['queries_better']}, worse {d['queries_worse']}, equal {d['queries_equal']}")
    print("\n| score bin  | pairs  | mean score | mean grade (normalised) | share relevant |")
    print("|------------|--------|------------|-------------------------|----------------|")
    for row in m["calibration"]:
        if row["count"]:
            print(f"| {row['bin']:<10} | {row['count']:6,} | {row['mean_score']:10.3f} | "
                  f"{row['mean_normalised_grade']:23.3f} | {row['share_relevant']:14.3f} |")
    print(f"\nwrote {os.path.join(FLAGS.out, 'metrics.json')} in {m['seconds']} s")


if __name__ == "__main__":
    cli.run(main)
