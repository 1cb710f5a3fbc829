"""Benchmark: pairs/s of RelevanceModel.score, features included, at the reward's batch sizes.

    taskset -c 0,1 .venv/bin/python -m tools.bench_relevance --dataset=../shared/data/homedepot-search-relevance --model=runs/hd/relevance

Each call scores one query against its own top-B products (B = 40, 100, 250: the reward's
k=40 for one text up to the union of several expansions' hits), as the reward does. Columns:
  cold   every call is a new query text: it pays for parsing the query and the engine's top-K
         search of the engine_rank feature (the cache is cleared before each pass)
  warm   the same calls again: the query's parse and top-K come from the cache, as for the 2nd to
         Nth rollout of a GRPO group, which all score the same original query
  group  `score_many` of a GRPO group: the query's N=4 rollouts' candidate sets (B products
         each) in one call, one XGBoost prediction for all four; cold cache
  features / predict   microseconds per call of the two halves of a cold call
  assoc  the association features' part of `features` (relevance_associations.py), cold
  cold pairs/CPU-s     the cold pass per second of this process's CPU time: what one idle core
         would give. The machine is shared, so wall-clock numbers fall when others are busy
         (the load average is printed); the work is single-threaded with nthread=1.
Each number is the median of --repeats passes over --num_queries queries. Without --model, a
model is trained first (about a minute on Home Depot).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from absl import flags

from experiments import cli, common
from leser_jax.relevance import RelevanceConfig, RelevanceModel
from leser_jax.search import SearchEngine

common.define_dataset_flags()
flags.DEFINE_string("model", "", "Folder of a saved model (experiments.train_relevance --out); "
                    "empty: train one first.")
flags.DEFINE_list("batch_sizes", ["40", "100", "250"], "Products per score() call.")
flags.DEFINE_integer("num_queries", 300, "Queries per pass (each with at least max(batch) hits).",
                     lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Passes per measurement; the median is reported.", lower_bound=1)
flags.DEFINE_integer("nthread", 0, "XGBoost prediction threads; 0: the model's own setting.",
                     lower_bound=0)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    catalog = common.load_catalog()
    engine = SearchEngine.build(catalog)
    start = time.perf_counter()
    if FLAGS.model:
        model = RelevanceModel.load(FLAGS.model, engine)
    else:
        model = RelevanceModel.train(engine, RelevanceConfig())
    print(f"{catalog!r}; model ready in {time.perf_counter() - start:.1f} s "
          f"({model.booster.num_boosted_rounds()} rounds, depth {model.config.max_depth})")
    if FLAGS.nthread:
        model.booster.set_param({"nthread": FLAGS.nthread})

    sizes = sorted(map(int, FLAGS.batch_sizes))
    texts, candidates = [], []
    for query in catalog.queries:
        hits = engine.search(query.text, sizes[-1])
        if len(hits) == sizes[-1]:
            texts.append(query.text)
            candidates.append(hits.rows)
        if len(texts) == FLAGS.num_queries:
            break
    model.score(texts[0], candidates[0])  # first use builds the engine's BM25 statistics

    cpu = {}

    def passes(fn, name: str = "") -> float:
        """Median seconds of one pass over all queries, the query cache cleared before each."""
        times, cpu_times = [], []
        for _ in range(FLAGS.repeats):
            model.clear_cache()
            begin, begin_cpu = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - begin)
            cpu_times.append(time.process_time() - begin_cpu)
        cpu[name] = statistics.median(cpu_times)
        return statistics.median(times)

    print(f"\nload average before: {os.getloadavg()[0]:.2f} (2 cores)")
    print("| batch | calls | cold pairs/s | cold pairs/CPU-s | warm pairs/s | group pairs/s | "
          "features us/call | assoc us/call | predict us/call |")
    print("|------:|------:|-------------:|-----------------:|-------------:|--------------:|"
          "-----------------:|--------------:|----------------:|")
    for b in sizes:
        batches = [rows[:b] for rows in candidates]
        calls = list(zip(texts, batches))
        cold = passes(lambda: [model.score(t, r) for t, r in calls], "cold")
        model.clear_cache()
        [model.score(t, r) for t, r in calls]  # fill the cache
        warm = statistics.median(_timed(lambda: [model.score(t, r) for t, r in calls])
                                 for _ in range(FLAGS.repeats))
        # Four rollouts' sets: the same products in another order (what matters is the size).
        groups = [[(t, np.roll(r, i)) for i in range(4)] for t, r in calls]
        group = passes(lambda: [model.score_many(g) for g in groups])
        features = passes(lambda: [model.pair_features(t, r) for t, r in calls])
        assoc = passes(lambda: [model.associations.features_of(t, r) for t, r in calls]) \
            if model.associations else 0.0
        matrices = [model.pair_features(t, r) for t, r in calls]
        predict = statistics.median(
            _timed(lambda: [model.booster.inplace_predict(x) for x in matrices])
            for _ in range(FLAGS.repeats))
        n = len(calls)
        print(f"| {b:5d} | {n:5d} | {n * b / cold:12,.0f} | {n * b / cpu['cold']:16,.0f} | "
              f"{n * b / warm:12,.0f} | {4 * n * b / group:13,.0f} | "
              f"{features / n * 1e6:16,.0f} | {assoc / n * 1e6:13,.0f} | "
              f"{predict / n * 1e6:15,.0f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


if __name__ == "__main__":
    cli.run(main)
