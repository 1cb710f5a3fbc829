"""Benchmark: index build time and search throughput on a catalog's own queries.

    taskset -c 0,1 .venv/bin/python -m tools.bench_search --dataset=../shared/data/homedepot-search-relevance

Prints one table: catalog load and index build seconds, then queries/s at k for `search` in a loop
(one thread) and for `search_many` with each thread count. Each throughput is the median of
`--repeats` passes over all of the catalog's queries.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from absl import flags

from experiments import cli, common
from leser_jax.search import SearchConfig, SearchEngine

common.define_dataset_flags()
flags.DEFINE_integer("k", 40, "Hits per query (the reward's k).", lower_bound=1)
flags.DEFINE_list("threads", ["1", "2"], "Thread counts for search_many.")
flags.DEFINE_integer("repeats", 5, "Passes over the queries; the median is reported.",
                     lower_bound=1)
FLAGS = flags.FLAGS


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv):
    del argv
    rows = []
    start = time.perf_counter()
    catalog = common.load_catalog()
    rows.append(("load catalog", f"{time.perf_counter() - start:.2f} s", repr(catalog)))
    texts = [q.text for q in catalog.queries]

    rows.append(("build index (memory)", f"{timed(lambda: SearchEngine.build(catalog)):.2f} s", ""))
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed(lambda: SearchEngine.build(catalog, path=f"{tmp}/index"))
    rows.append(("build index (disk)", f"{seconds:.2f} s", ""))

    engine = SearchEngine.build(catalog, SearchConfig(num_threads=1))
    engine.search_many(texts[:500], FLAGS.k)  # warm caches
    loop = statistics.median(
        timed(lambda: [engine.search(t, FLAGS.k) for t in texts]) for _ in range(FLAGS.repeats))
    rows.append((f"search, 1 thread, k={FLAGS.k}", f"{len(texts) / loop:,.0f} q/s",
                 f"{len(texts):,} queries"))
    for n in map(int, FLAGS.threads):
        engine = SearchEngine.build(catalog, SearchConfig(num_threads=n))
        engine.search_many(texts[:500], FLAGS.k)
        seconds = statistics.median(
            timed(lambda: engine.search_many(texts, FLAGS.k)) for _ in range(FLAGS.repeats))
        rows.append((f"search_many, {n} thread(s), k={FLAGS.k}", f"{len(texts) / seconds:,.0f} q/s",
                     ""))
        engine.close()

    width = max(len(r[0]) for r in rows)
    print(f"| {'what':<{width}} | {'result':>12} | note")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|------")
    for what, result, note in rows:
        print(f"| {what:<{width}} | {result:>12} | {note}")


if __name__ == "__main__":
    cli.run(main)
