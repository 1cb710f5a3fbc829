"""Benchmark: the reward of one GRPO step, 64 rollouts x 4 expansions, on a real catalog.

    taskset -c 0,1 .venv/bin/python -m tools.bench_reward --dataset=../shared/data/homedepot-search-relevance --relevance=runs/hd/relevance

A step is 16 train queries x N = 4 rollouts, each a valid answer of 4 expansions made the way a
policy makes them: phrases of the query's context products (teacher.propose's candidates: title
n-grams, attribute values, head terms), four drawn at random per rollout, so rollouts of a group
overlap in part, as sampled ones do. The completions are rendered as text and go through the
whole RewardFunction: parse, deduplicate, search_many, one score_many call, the formula.

Every step uses new queries (a cold cache: the first time GRPO meets a query); `warm` repeats
the steps with the same RewardFunction (a query met again in a later epoch: its own results and
their scores are cached). Reported: steps/s, rewards/s, searches per step, and ms per step.
Compare with one GRPO step (tools/bench_grpo): the issue's target is reward time <= 10% of it.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from absl import flags

from experiments import cli, common
from leser_jax.context import ContextConfig, build_context
from leser_jax.prompts import render_answer
from leser_jax.relevance import RelevanceConfig, RelevanceModel
from leser_jax.reward import RewardConfig, RewardFunction, SearchFeedback
from leser_jax.teacher import propose

common.define_dataset_flags()
flags.DEFINE_string("relevance", "", "Folder of a saved relevance model; empty: train one.")
flags.DEFINE_integer("queries_per_step", 16, "Queries per step [B].", lower_bound=1)
flags.DEFINE_integer("num_rollouts", 4, "Rollouts per query [N].", lower_bound=1)
flags.DEFINE_integer("expansions", 4, "Expansions per rollout.", lower_bound=1)
flags.DEFINE_integer("steps", 20, "Steps per pass (each with new queries).", lower_bound=1)
flags.DEFINE_integer("context_k", 10, "Context products that candidates come from.", lower_bound=0)
FLAGS = flags.FLAGS


def make_steps(engine, queries, rng) -> list[tuple[list[str], list[str]]]:
    """(original query per rollout, completion text per rollout) for each step."""
    B, N, m = FLAGS.queries_per_step, FLAGS.num_rollouts, FLAGS.expansions
    context = ContextConfig(k=FLAGS.context_k, max_tokens=10_000)
    steps = []
    for s in range(FLAGS.steps):
        originals, completions = [], []
        for q in queries[s * B:(s + 1) * B]:
            _, candidates = propose(q, build_context(q, engine, context))
            pool = [c.text for c in candidates] or [q]
            for _ in range(N):
                chosen = rng.choice(len(pool), size=min(m, len(pool)), replace=False)
                originals.append(q)
                completions.append(render_answer("context phrases", [pool[i] for i in chosen]))
        steps.append((originals, completions))
    return steps


def main(argv):
    del argv
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, None)
    relevance = (RelevanceModel.load(FLAGS.relevance, engine) if FLAGS.relevance
                 else RelevanceModel.train(engine, RelevanceConfig()))
    queries = [q.text for q in catalog.split("train")]
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.permutation(len(queries))]
    needed = FLAGS.steps * FLAGS.queries_per_step
    if len(queries) < needed:
        raise ValueError(f"{len(queries)} train queries, need {needed}")
    steps = make_steps(engine, queries, rng)
    reward_fn = RewardFunction(SearchFeedback(engine, relevance, RewardConfig()))

    def one_pass():
        times, searches, valid = [], [], 0
        for originals, completions in steps:
            before = reward_fn.feedback.num_searches
            start = time.perf_counter()
            out = reward_fn(originals, completions)
            times.append(time.perf_counter() - start)
            searches.append(reward_fn.feedback.num_searches - before)
            valid += sum(b.valid for b in out)
        return times, searches, valid

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    cold, cold_searches, valid = one_pass()
    warm, warm_searches, _ = one_pass()
    rollouts = FLAGS.queries_per_step * FLAGS.num_rollouts
    assert valid == len(steps) * rollouts, "every benchmark completion must parse"
    print(f"{catalog.name}: {len(steps)} steps of {FLAGS.queries_per_step} queries x "
          f"{FLAGS.num_rollouts} rollouts x {FLAGS.expansions} expansions")
    print("| cache | ms/step (median) | ms/step (max) | rewards/s | searches/step |")
    print("|-------|-----------------:|--------------:|----------:|--------------:|")
    for name, times, searches in (("cold", cold, cold_searches), ("warm", warm, warm_searches)):
        median = statistics.median(times)
        print(f"| {name} | {1000 * median:,.1f} | {1000 * max(times):,.1f} | "
              f"{rollouts / median:,.0f} | {statistics.mean(searches):.0f} |")


if __name__ == "__main__":
    cli.run(main)
