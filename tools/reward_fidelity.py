"""Does the reward order a group's answers as the human judgments do? (leser_jax/reward_fidelity.py)

    python -m tools.reward_fidelity --dataset=PATH --index=I --preset=smol \
        --relevance=now=R1 --relevance=new=R2 --split=dev

For each relevance model NAME=DIR, and for the label ceiling built on the first one (the human
label where a pair is judged, that model elsewhere), prints per target (judged recall, judged
nDCG@10): the agreement of the reward and of each of its terms with the labels over pairs of a
query's answer sets, and the judged gain over the query alone that the reward's best set takes
(beside the best the pool offers), with bootstrap 95% intervals over queries; then each scorer
minus the first, paired by query.
Every scorer sees the same pools (teacher candidates over the --preset's context) and searches.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from experiments import cli, common
from leser_jax import run_log
from leser_jax.metrics import bootstrap
from leser_jax.relevance import RelevanceModel
from leser_jax.reward import SearchFeedback
from leser_jax.reward_fidelity import (SIGNALS, TARGETS, LabelRelevance, answer_sets, column,
                                       measure)

common.define_dataset_flags()
common.define_preset_flag()
common.define_context_flags()
common.define_reward_flags()
flags.DEFINE_string("index", None, "Index folder from experiments.build_index.")
flags.DEFINE_multi_string("relevance", [], "NAME=DIR: a model from experiments.train_relevance "
                          "(repeatable; the first is the reference and backs the labels).")
flags.DEFINE_bool("labels", True, "Add the label ceiling (LabelRelevance on the first model).")
flags.DEFINE_enum("split", "dev", ["train", "dev", "test"], "Queries measured.")
flags.DEFINE_integer("num_queries", 0, "The first this many queries of the split (0 = all).",
                     lower_bound=0)
flags.DEFINE_integer("singles", 12, "Candidates measured alone per query.", lower_bound=1)
flags.DEFINE_integer("pairs_of", 4, "Every pair of this many first candidates is measured too.",
                     lower_bound=0)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    run_log.quiet_library_logs()
    start = time.perf_counter()
    folders = dict(parse_relevance(spec) for spec in FLAGS.relevance)
    if not folders:
        raise app.UsageError("give at least one --relevance=NAME=DIR")
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    queries = catalog.split(FLAGS.split)
    queries = queries[:FLAGS.num_queries] if FLAGS.num_queries else queries
    scorers = {name: RelevanceModel.load(folder, engine) for name, folder in folders.items()}
    if FLAGS.labels:
        scorers["labels"] = LabelRelevance(next(iter(scorers.values())), catalog, queries)
    context = common.context_config()
    pools = [answer_sets(q.text, engine, context, singles=FLAGS.singles,
                         pairs_of=FLAGS.pairs_of) for q in queries]
    reward = common.reward_config()
    results = {name: measure(queries, pools, catalog, SearchFeedback(engine, scorer, reward))
               for name, scorer in scorers.items()}
    reference = next(iter(results))
    n = len(results[reference])
    print(f"{catalog.name}, {FLAGS.split}: {n} of {len(queries)} queries with a judged-relevant "
          f"product and 2+ answer sets, {np.mean([r.sets for r in results[reference]]):.1f} sets a "
          f"query; {reward.describe()}, lambda {reward.lam}; {time.perf_counter() - start:.0f} s")
    for target in TARGETS:
        reachable = bootstrap(column(results[reference], "reachable", target))
        print(f"\n{target}: agreement over answer pairs (0.5 = chance); gain over q alone taken "
              f"by the reward's best set (the pool's best: {reachable})\n")
        print("| scorer | informative queries | " + " | ".join(
            f"agreement {s}" for s in SIGNALS) + " | taken by reward | share of reachable |")
        print("|---|---|" + "---|" * (len(SIGNALS) + 2))
        for name, res in results.items():
            cells = [share(column(res, "agreement", target, s)) for s in SIGNALS]
            informative = int(np.sum(~np.isnan(column(res, "agreement", target, "reward"))))
            took = bootstrap(column(res, "taken", target, "reward"))
            print(f"| {name} | {informative} | " + " | ".join(cells)
                  + f" | {took} | {took.mean / reachable.mean:.2f} |")
        for name, res in results.items():
            if name == reference:
                continue
            for what in ("agreement", "taken"):
                diff = (column(res, what, target, "reward")
                        - column(results[reference], what, target, "reward"))
                print(f"\n{name} minus {reference}, reward {what}: {bootstrap(diff)}")


def parse_relevance(spec: str) -> tuple[str, str]:
    """'NAME=DIR' -> (NAME, DIR); a usage error otherwise."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise app.UsageError(f"--relevance={spec}: expected NAME=DIR")
    return name, folder


def share(values: np.ndarray) -> str:
    """A share's mean and bootstrap interval over queries: '0.612 [0.598, 0.627]'."""
    e = bootstrap(values)
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]"


if __name__ == "__main__":
    cli.run(main)
