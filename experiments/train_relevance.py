"""Trains the relevance model rel(q, p) and evaluates it on the test split's judgments.

    python -m experiments.train_relevance --dataset=../shared/data/homedepot-search-relevance --out=runs/hd/relevance

Trains on the train split's judgments (early stopping and calibration on the dev split), then
prints and writes DIR/metrics.json for the test split: nDCG@10 over each query's judged products
for the model, BM25 and term overlap; AUC of relevant against not; a calibration table. The model
goes to DIR/relevance.ubj and DIR/relevance.json. Reuses the index at DIR/index when one was
built there for this catalog (experiments.build_index --out=DIR), else builds one in memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from absl import flags

from experiments import cli, common
from leser_jax.relevance import RelevanceConfig, RelevanceModel, evaluate

common.define_dataset_flags()
flags.DEFINE_string("out", None, "Output folder: the model and metrics.json go here.",
                    required=True)
flags.DEFINE_enum("objective", "reg:squarederror", ["reg:squarederror", "rank:ndcg"],
                  "XGBoost objective: regress the normalised grade, or LambdaMART per query.")
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
    return RelevanceConfig(objective=FLAGS.objective, rank_depth=FLAGS.rank_depth,
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
    print(f"\n| system       | nDCG@{k} |   AUC  |")
    print("|--------------|---------|--------|")
    for name in m[f"ndcg@{k}"]:
        print(f"| {name:<12} | {m[f'ndcg@{k}'][name]:7.4f} | {m['auc'][name]:6.4f} |")
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
