"""Builds the Tantivy BM25 index of a catalog.

    python -m experiments.build_index --dataset=../shared/data/homedepot-search-relevance --out=runs/hd/index

Prints the load summary (what was kept, what was skipped and why) and the index's statistics, and
writes DIR/stats.json beside the index.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from experiments import cli, common
from leser_jax.search import SearchConfig, SearchEngine

common.define_dataset_flags()
flags.DEFINE_string("out", None, "Output folder: the index goes to DIR/index.", required=True)
flags.DEFINE_float("title_boost", 2.0, "BM25 weight of the title field.", lower_bound=0)
flags.DEFINE_float("description_boost", 1.0, "BM25 weight of the description field.",
                   lower_bound=0)
flags.DEFINE_float("attributes_boost", 1.0, "BM25 weight of the attributes field.",
                   lower_bound=0)
_BOOSTS = ["title_boost", "description_boost", "attributes_boost"]
flags.register_multi_flags_validator(_BOOSTS, lambda f: any(f[b] > 0 for b in _BOOSTS),
                                     "at least one field boost must be > 0")
flags.DEFINE_string("tokenizer", "en_stem", "Tantivy tokenizer of the text fields.")
flags.DEFINE_integer("num_threads", 2, "search_many threads (the index is written by one thread: "
                     "ties in score then go to the lowest catalog row on every build).",
                     lower_bound=1)
FLAGS = flags.FLAGS


def search_config_from_flags() -> SearchConfig:
    return SearchConfig(title_boost=FLAGS.title_boost, description_boost=FLAGS.description_boost,
                        attributes_boost=FLAGS.attributes_boost, tokenizer=FLAGS.tokenizer,
                        num_threads=FLAGS.num_threads)


def main(argv):
    del argv
    catalog = common.load_catalog()
    print(catalog.report.summary())
    config = search_config_from_flags()
    common.log_config("search", config)
    start = time.perf_counter()
    engine = SearchEngine.build(catalog, config, path=os.path.join(FLAGS.out, "index"))
    stats = {
        "catalog": repr(catalog),
        "splits": {name: len(catalog.split(name)) for name in ("train", "dev", "test")},
        "skipped_rows": dict(catalog.report.skipped),
        "num_docs": engine.num_docs,
        "build_seconds": round(time.perf_counter() - start, 3),
        "index_bytes": _folder_bytes(os.path.join(FLAGS.out, "index")),
    }
    with open(os.path.join(FLAGS.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    for key, value in stats.items():
        print(f"{key:>14}: {value}")


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


if __name__ == "__main__":
    cli.run(main)
