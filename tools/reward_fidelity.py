"""Does the reward order a group's answers as the human judgments do? (leser_jax/reward_fidelity.py)

    python -m tools.reward_fidelity --dataset=PATH --index=I --preset=smol --context_k=5 \
        --context_max_tokens=128 --relevance=now=R1 --relevance=new=R2 --lambdas=0.1,1

For each relevance model NAME=DIR, and for the label ceiling built on the first one (the human
label where a pair is judged, that model elsewhere), prints one row per signal (the reward at
each --lambdas value, r_rel and r_size alone) with, for judged recall and judged nDCG@10, the
agreement with the labels over pairs of a query's answer sets and the judged gain over the
query alone that the signal's best set takes (bootstrap 95% intervals over queries); then, paired
by query, each other lambda minus the first and each other scorer minus the first; with
--by_kind, the first scorer's judged-recall numbers by query kind. Every scorer sees the same
pools (teacher candidates over the preset's context) and the same searches.

    python -m tools.reward_fidelity ... --relevance=now=R1 --policy=runs/smol_syn/warmup200 --samples=8

With --policy, each query's pool is that policy's own group instead: --samples completions at
--temperature (GRPO's rollouts), the distinct ones that parse; the pool's mean judged gain is
printed beside what choosing by each signal takes.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from experiments import cli, common
from leser_jax import run_log
from leser_jax.metrics import bootstrap
from leser_jax.policy import load_policy
from leser_jax.prompts import AnswerFormat, prompt_for
from leser_jax.relevance import RelevanceModel
from leser_jax.reward import SearchFeedback
from leser_jax.reward_fidelity import (TARGETS, TERMS, LabelRelevance, answer_sets, column,
                                       measure, policy_pools, reward_signal)
from leser_jax.rollout import generate_rollouts
from leser_jax.sampler import SamplingConfig

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
flags.DEFINE_list("lambdas", [], "Weights of r_size whose rewards are compared (default: "
                  "--reward_lambda).")
flags.DEFINE_integer("singles", 12, "Candidates measured alone per query.", lower_bound=1)
flags.DEFINE_bool("by_kind", False, "Also the first scorer's judged-recall agreement and "
                  "taken by query kind (catalogs whose queries have kinds).")
flags.DEFINE_integer("pairs_of", 4, "Every pair of this many first candidates is measured too.",
                     lower_bound=0)
flags.DEFINE_string("policy", None, "Pools from this policy's samples (a params folder or a "
                    "GGUF file) instead of the teacher's candidates.")
flags.DEFINE_integer("samples", 8, "--policy: completions per query.", lower_bound=2)
flags.DEFINE_float("temperature", 0.9, "--policy: sampling temperature (GRPO's).", lower_bound=0)
flags.DEFINE_integer("queries_per_call", 8, "--policy: queries sampled together.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "--policy: sampling seed.", lower_bound=0)
FLAGS = flags.FLAGS


def sampled_pools(queries, engine, context) -> list[list[tuple[str, ...]]]:
    """Each query's group from --policy (module docstring), prompted as GRPO prompts it."""
    model, _, tokenizer = load_policy(FLAGS.policy)
    graphdef, params = nnx.split(model)
    fmt = AnswerFormat()
    sampling = SamplingConfig(temperature=FLAGS.temperature,
                              max_new_tokens=common.preset().max_new_tokens)
    key, texts = jax.random.key(FLAGS.seed), []
    for start in range(0, len(queries), FLAGS.queries_per_call):
        part = queries[start:start + FLAGS.queries_per_call]
        texts += generate_rollouts(graphdef, params, tokenizer,
                                   [prompt_for(q.text, engine, context, fmt) for q in part],
                                   num_rollouts=FLAGS.samples, sampling=sampling,
                                   base_key=key, step=start).texts
    pools, invalid = policy_pools(texts, FLAGS.samples, fmt)
    print(f"{FLAGS.policy}: {len(texts)} completions at T = {FLAGS.temperature:g}, {invalid} do "
          f"not parse; {np.mean([len(p) for p in pools]):.1f} distinct valid answers a query")
    return pools


def main(argv):
    del argv
    run_log.quiet_library_logs()
    start = time.perf_counter()
    folders = cli.parse_named(FLAGS.relevance, "relevance", "DIR")
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
    pools = (sampled_pools(queries, engine, context) if FLAGS.policy else
             [answer_sets(q.text, engine, context, singles=FLAGS.singles,
                          pairs_of=FLAGS.pairs_of) for q in queries])
    reward = common.reward_config()
    lambdas = [float(v) for v in FLAGS.lambdas] or [reward.lam]
    results = {name: measure(queries, pools, catalog, SearchFeedback(engine, scorer, reward),
                             lambdas=lambdas) for name, scorer in scorers.items()}
    reference = next(iter(results))
    first = reward_signal(lambdas[0])
    signals = [*map(reward_signal, lambdas), *TERMS]
    ref = results[reference]
    if not ref:
        raise SystemExit(f"no query of {len(queries)} has a judged-relevant product and two "
                         "distinct answer sets that parse: nothing to compare")
    print(f"{catalog.name}, {FLAGS.split}: {len(ref)} of {len(queries)} queries with a "
          f"judged-relevant product and 2+ answer sets, {np.mean([r.sets for r in ref]):.1f} sets "
          f"a query; {reward.describe()}; {time.perf_counter() - start:.0f} s")
    for target in TARGETS:
        informative = int(np.sum(~np.isnan(column(ref, "agreement", target, first))))
        print(f"  {target}: the labels tell some answers apart for {informative} queries; the "
              f"pool's best gain over q alone {bootstrap(column(ref, 'reachable', target))}, "
              f"its mean gain {bootstrap(column(ref, 'mean', target))}")
    print("\n| scorer | signal | " + " | ".join(
        f"agreement, {t} | taken, {t}" for t in TARGETS) + " |\n|---|---|" + "---|---|" * 2)
    for name, res in results.items():
        for signal in signals:
            cells = [f"{share(column(res, 'agreement', t, signal))} | "
                     f"{bootstrap(column(res, 'taken', t, signal))}" for t in TARGETS]
            print(f"| {name} | {signal} | " + " | ".join(cells) + " |")
    print("\nPaired by query, agreement; taken, for " + " | ".join(TARGETS) + ":")
    pairs = [(reference, reward_signal(lam)) for lam in lambdas[1:]]
    pairs += [(name, first) for name in results if name != reference]
    for name, signal in pairs:
        cells = [str(bootstrap(column(results[name], what, t, signal)
                               - column(ref, what, t, first)))
                 for t in TARGETS for what in ("agreement", "taken")]
        print(f"  {name}, {signal} minus {reference}, {first}: {cells[0]}; {cells[1]} | "
              f"{cells[2]}; {cells[3]}")
    if FLAGS.by_kind:
        print(by_kind(ref, signals, reference))


def by_kind(results, signals, scorer: str, target: str = "judged_recall") -> str:
    """A table, per query kind and all together: queries, those whose labels tell answers apart,
    the pool's best gain, and each signal's agreement and taken gain (means over queries)."""
    kinds = sorted({r.kind for r in results if r.kind is not None})
    lines = [f"\nBy query kind ({scorer}, {target}; agreement / taken):\n",
             "| kind | queries | told apart | pool's best | " + " | ".join(signals) + " |",
             "|---|---|---|---|" + "---|" * len(signals)]
    for kind in ["all", *kinds]:
        part = [r for r in results if kind == "all" or r.kind == kind]
        cells = [f"{np.nanmean(column(part, 'agreement', target, s)):.3f} / "
                 f"{np.mean(column(part, 'taken', target, s)):+.3f}" for s in signals]
        told = int(np.sum(~np.isnan(column(part, "agreement", target, signals[0]))))
        lines.append(f"| {kind} | {len(part)} | {told} | "
                     f"{np.mean(column(part, 'reachable', target)):+.3f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def share(values: np.ndarray) -> str:
    """A share's mean and bootstrap interval over queries: '0.612 [0.598, 0.627]'."""
    e = bootstrap(values)
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]"


if __name__ == "__main__":
    cli.run(main)
