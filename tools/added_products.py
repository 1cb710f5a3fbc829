"""What each system's expansions add: the products beyond the query's own top-k, scored by the
relevance model and by the human judgments.

    python -m tools.added_products --dataset=PATH --index=I --relevance=R \
        --policy=grpo=RUN/grpo --temperature=0.9

Issue 9's check on the reward: a policy can collect relevance-model hits (rel >= tau) that are
not relevant products (reward hacking of the relevance model), or that are relevant but were
never shown to the raters. For the products a system adds, U(Y) minus S_k(q), over the test
queries, it prints: how many per query; their mean rel and the share that are hits; the share
that were judged at all; and among those judged, the share the raters found relevant, next to
the relevance model's hit rate on the same judged products (the model's precision where the
labels can check it). The same columns for S_k(q) itself are the reference row.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from experiments import cli, common
from leser_jax import evaluation, run_log
from leser_jax.context import ContextConfig
from leser_jax.relevance import RelevanceModel
from leser_jax.reward import RewardConfig, SearchFeedback
from leser_jax.teacher import TeacherConfig

_R = RewardConfig()
common.define_dataset_flags()
flags.DEFINE_string("index", None, "Index folder from experiments.build_index.")
flags.DEFINE_string("relevance", None, "Folder of a model from experiments.train_relevance.",
                    required=True)
flags.DEFINE_multi_string("policy", [], "NAME=DIR: a policy checkpoint (repeatable).")
flags.DEFINE_list("baselines", ["rm3", "teacher"], "Baseline systems to include.")
flags.DEFINE_integer("num_queries", 0, "The first this many test queries (0 = all).", lower_bound=0)
flags.DEFINE_float("temperature", 0.0, "Policies' decoding (0 = greedy).", lower_bound=0)
flags.DEFINE_integer("max_new_tokens", 96, "Longest policy answer.", lower_bound=1)
flags.DEFINE_integer("context_k", 5, "Products of the query shown as context.", lower_bound=0)
flags.DEFINE_integer("context_max_tokens", 128, "Context token budget.", lower_bound=0)
flags.DEFINE_integer("teacher_max_expansions", 2, "Teacher: most expansions per answer.",
                     lower_bound=1)
flags.DEFINE_float("reward_lambda", _R.lam, "Teacher: weight of coverage in its reward.",
                   lower_bound=0)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    run_log.quiet_library_logs()
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    relevance = RelevanceModel.load(FLAGS.relevance, engine)
    reward = RewardConfig(lam=FLAGS.reward_lambda)
    queries = catalog.split("test")
    queries = queries[:FLAGS.num_queries] if FLAGS.num_queries else queries
    policies = dict(spec.split("=", 1) for spec in FLAGS.policy)
    systems = evaluation.make_systems(
        FLAGS.baselines, policies, engine, relevance,
        context=ContextConfig(k=FLAGS.context_k, max_tokens=FLAGS.context_max_tokens),
        reward=reward, teacher=TeacherConfig(max_expansions=FLAGS.teacher_max_expansions),
        max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature)
    feedback = SearchFeedback(engine, relevance, reward)
    texts = [q.text for q in queries]
    # Human labels by catalog row, per query.
    labels = [{catalog.row_of[pid]: g for pid, g in catalog.judgments.get(q.query_id, {}).items()}
              for q in queries]
    table = {}
    for name, system in systems.items():
        answers = [a for i in range(0, len(texts), 32) for a in system(texts[i:i + 32])]
        measured = feedback.measure(texts, [a.expansions for a in answers])
        own = [m.lists[0] for m in measured]
        added = [np.setdiff1d(m.union, m.lists[0]) for m in measured]
        if not table:  # S_k(q) is the same for every system: the reference row, once
            rel = relevance.score_many(list(zip(texts, own)))
            table["S_k(q) itself"] = evaluation.added_products_summary(own, rel, labels, reward.tau, catalog.scale)
        rel = relevance.score_many([(t, r) for t, r in zip(texts, added)])
        table[f"{name}: added"] = evaluation.added_products_summary(added, rel, labels, reward.tau, catalog.scale)
    print(f"{len(queries)} test queries of {catalog.name}; hit: rel >= {reward.tau}; policies "
          f"at T={FLAGS.temperature}\n")
    print("| products | per query | mean rel | hits | judged | judged: relevant (labels) | "
          "judged: hits (model) |\n|---|---|---|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['per_query']:.1f} | {s['mean_rel']:.3f} | {s['hit_share']:.3f} | "
              f"{s['judged_share']:.3f} | {s['judged_relevant']:.3f} | {s['judged_hit']:.3f} |")


if __name__ == "__main__":
    cli.run(main)
