"""Writes the warm-up's teacher examples: search-guided expansions for TRAIN queries.

    python -m experiments.teacher --dataset=synthetic --index=runs/demo/index --relevance=runs/demo --out=runs/demo/teacher.jsonl

(The demo's settings: a 5-item context, as warm-up and GRPO must use too, and at most 2
expansions, which a 5M-parameter model reproduces with fewer format errors at T=0.9.)

For each train query (in a seeded order, up to --num_examples), leser_jax.teacher proposes
expansions from the query's context and keeps, greedily, those that raise the reward (the
relevance model's, never the human judgments); with --answers_per_query=K, up to K - 1 other
good answers per query as well (leser_jax.teacher, step 3), written after all the best answers,
so that `warmup --max_examples` = the number of queries trains on the best answers alone.
Writes JSONL {"query", "think", "expansions", "reward"} to --out and a summary (mean reward,
expansions per answer, alternatives, wall time) beside it as OUT.summary.json; prints a few
examples. The paper uses about 10,000 warm-up examples; a catalog
with fewer train queries gives one example per train query, or more with --answers_per_query:

    python -m experiments.teacher --dataset=synthetic --index=runs/demo/index --relevance=runs/demo --out=runs/demo/teacher_k3.jsonl --answers_per_query=3
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
from absl import flags, logging
from tqdm import tqdm

from experiments import cli, common
from leser_jax.relevance import RelevanceModel
from leser_jax.teacher import Teacher, TeacherConfig, mean_reward, write_examples

common.define_preset_flag()
common.define_dataset_flags()
common.define_context_flags()
common.define_reward_flags()
flags.DEFINE_string("out", None, "Output JSONL file.", required=True)
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (DIR/index); "
                    "built in memory when absent or built from another catalog.")
flags.DEFINE_string("relevance", None, "Folder of a model from experiments.train_relevance.",
                    required=True)
flags.DEFINE_integer("num_examples", 10_000, "Most examples (the paper's ~10,000): the first "
                     "this many train queries, and the alternatives dropped first.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Order in which train queries are taken.", lower_bound=0)
flags.DEFINE_integer("max_candidates", TeacherConfig().max_candidates, "Candidates per query.",
                     lower_bound=1)
flags.DEFINE_integer("max_expansions", None, "Most expansions per answer (default: the "
                     "preset's, else m_max).",
                     lower_bound=1)
flags.DEFINE_bool("whole_query", TeacherConfig().whole_query, "Also join each context phrase "
                  "with every query word (RM3's form), not only the head terms.")
flags.DEFINE_bool("head_join", TeacherConfig().head_join, "Join each context phrase with the "
                  "head terms; --nohead_join with --whole_query keeps every query whole.")
flags.DEFINE_bool("name_join", TeacherConfig().name_join, "The reasoning marks each source with "
                  "what its phrase was joined with (+ head, + query).")
flags.DEFINE_integer("answers_per_query", TeacherConfig().answers_per_query, "Answers per "
                     "query: the best, then up to K - 1 alternatives, each without the earlier "
                     "answers' first choices.", lower_bound=1)
flags.DEFINE_float("alternative_share", TeacherConfig().alternative_share, "An alternative is "
                   "kept if its reward is at least this share of the best answer's.",
                   lower_bound=0, upper_bound=1)
flags.register_multi_flags_validator(
    ["head_join", "whole_query"], lambda f: f["head_join"] or f["whole_query"],
    "--nohead_join needs --whole_query (a context phrase must be joined with something)")
flags.DEFINE_integer("show", 3, "Examples printed at the end.", lower_bound=0)
FLAGS = flags.FLAGS



def main(argv):
    del argv
    start = time.perf_counter()
    context = common.context_config()
    reward = common.reward_config()
    config = TeacherConfig(max_candidates=FLAGS.max_candidates, whole_query=FLAGS.whole_query,
                           head_join=FLAGS.head_join, name_join=FLAGS.name_join,
                           answers_per_query=FLAGS.answers_per_query,
                           alternative_share=FLAGS.alternative_share,
                           max_expansions=cli.preset_or(FLAGS.max_expansions,
                                                          common.preset().teacher_max_expansions))
    for name, c in (("context", context), ("reward", reward), ("teacher", config)):
        common.log_config(name, c)
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    relevance = RelevanceModel.load(FLAGS.relevance, engine)
    train = [q.text for q in catalog.split("train")]
    order = np.random.default_rng(FLAGS.seed).permutation(len(train))
    queries = [train[i] for i in order[:FLAGS.num_examples]]
    if len(queries) < FLAGS.num_examples:
        logging.info("%d train queries, fewer than --num_examples=%d", len(train),
                     FLAGS.num_examples)

    teacher = Teacher(engine, relevance, context=context, reward=reward, config=config)
    t = time.perf_counter()
    with tqdm(total=len(queries), desc="teacher", unit="query") as bar:
        sets = teacher.example_sets(queries, progress=bar.update)
    seconds = time.perf_counter() - t
    best = [s[0] for s in sets if s]
    # All best answers first, then the first alternatives, ...: a cut keeps the best ones.
    examples = [s[k] for k in range(config.answers_per_query) for s in sets if len(s) > k]
    examples = examples[:FLAGS.num_examples]
    alternatives = examples[len(best):]
    n = write_examples(FLAGS.out, examples)
    summary = {
        "examples": n, "queries": len(queries), "no_candidate": len(queries) - len(best),
        "alternatives": len(alternatives), "mean_reward": mean_reward(best),
        "mean_reward_alternatives": mean_reward(alternatives) if alternatives else None,
        "mean_expansions": float(np.mean([len(e.expansions) for e in examples])) if examples else 0,
        "searches": teacher.num_searches, "seconds_teacher": round(seconds, 1),
        "queries_per_s": round(len(queries) / max(seconds, 1e-9), 1),
        "seconds_total": round(time.perf_counter() - start, 1),
        "configs": {"context": dataclasses.asdict(context), "reward": dataclasses.asdict(reward),
                    "teacher": dataclasses.asdict(config)}}
    with open(FLAGS.out + ".summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    for e in examples[:FLAGS.show]:
        print(f"\n{e.query!r} (reward {e.reward:.3f})\n  {e.answer}")
    print(f"\nwrote {n:,} examples ({summary['alternatives']:,} alternatives) to {FLAGS.out}: "
          f"mean reward {summary['mean_reward']:.3f} (best answers), "
          f"{summary['mean_expansions']:.2f} expansions each; {summary['queries_per_s']} queries/s, "
          f"{summary['seconds_total']} s in all")


if __name__ == "__main__":
    cli.run(main)
