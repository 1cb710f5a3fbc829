"""The reward's agreement with the human labels over a query's answer sets (reward_fidelity.py)."""

import math

import numpy as np
import pytest

from leser_jax.context import ContextConfig
from leser_jax.data.synthetic import SyntheticConfig, generate
from leser_jax.reward import RewardConfig, SearchFeedback
from leser_jax.prompts import AnswerFormat, render_answer
from leser_jax.reward_fidelity import (LabelRelevance, agreement, answer_sets, column, measure,
                                       policy_pools, taken)
from leser_jax.search import SearchEngine


def test_agreement_counts_pairs_the_labels_tell_apart():
    judged = np.array([0.2, 0.5, 0.5, 0.9])  # the pair (1, 2) is tied: not counted
    assert agreement(np.array([1.0, 2.0, 7.0, 3.0]), judged) == pytest.approx(4 / 5)
    assert agreement(judged * 10, judged) == 1.0
    assert agreement(-judged, judged) == 0.0
    assert agreement(np.zeros(4), judged) == 0.5  # a constant signal: every pair a tie
    assert math.isnan(agreement(np.array([1.0, 2.0]), np.array([0.4, 0.4])))


def test_taken_is_the_judged_gain_of_the_signal_best_sets():
    judged = np.array([0.5, 0.9, 0.7])
    assert taken(np.array([0.0, 1.0, 0.5]), judged, 0.5) == pytest.approx(0.4)
    assert taken(np.array([0.0, 1.0, 1.0]), judged, 0.5) == pytest.approx(0.3)  # tie: the mean


def test_policy_pools_keep_each_groups_distinct_answers_that_parse():
    a, b = render_answer("x", ["red chair"]), render_answer("y", ["oak desk", "desk lamp"])
    texts = [a, "no tags", a, b,  # query 0: a twice, one that does not parse
             render_answer("z", ["lamp", "lamp"]), b, b, b]  # query 1: a duplicate expansion
    pools, invalid = policy_pools(texts, 4, AnswerFormat())
    assert pools == [[("red chair",), ("oak desk", "desk lamp")], [("oak desk", "desk lamp")]]
    assert invalid == 2
    with pytest.raises(ValueError, match="groups of 3"):
        policy_pools(texts, 3, AnswerFormat())


class Zero:
    """A relevance model that finds nothing relevant."""

    def score_many(self, requests):
        return [np.zeros(len(rows), np.float32) for _, rows in requests]


@pytest.fixture(scope="module")
def synthetic():
    catalog = generate(SyntheticConfig(num_products=1500, num_queries=150, seed=0))
    return catalog, SearchEngine.build(catalog)


def test_label_relevance_reads_labels_where_judged_and_the_model_elsewhere(synthetic):
    catalog, _ = synthetic
    query = next(q for q in catalog.queries if catalog.judgments.get(q.query_id))
    judged = {catalog.row_of[p]: catalog.scale.is_relevant(g)
              for p, g in catalog.judgments[query.query_id].items()}
    unjudged = next(r for r in range(len(catalog.products)) if r not in judged)

    class Half(Zero):
        def score_many(self, requests):
            return [np.full(len(rows), 0.5, np.float32) for _, rows in requests]

    rows = np.array([*judged, unjudged])
    scores = LabelRelevance(Half(), catalog, [query]).score(query.text, rows)
    np.testing.assert_array_equal(scores, [*map(float, judged.values()), 0.5])


def test_a_reward_that_counts_judged_relevant_products_agrees_with_judged_recall(synthetic):
    # Labels where judged, 0 elsewhere: r_size(Y) = |U(Y) & R| / max(|S_K(q) & R|, floor), a
    # constant times judged recall, so it must order every pair as judged recall does and its
    # best set must take all the gain the pool offers. Every piece of the pipeline is on the way.
    catalog, engine = synthetic
    queries = catalog.split("train")[:60]
    pools = [answer_sets(q.text, engine, ContextConfig(k=5, max_tokens=128)) for q in queries]
    assert sum(len(p) for p in pools) > 5 * len(queries)
    feedback = SearchFeedback(engine, LabelRelevance(Zero(), catalog, queries), RewardConfig())
    results = measure(queries, pools, catalog, feedback, chunk=16)
    kept = {q.text: q.kind for q in queries}
    assert {r.kind for r in results} <= set(kept.values()) and len({r.kind for r in results}) > 1
    target = "judged_recall"
    informative = column(results, "agreement", target, "r_size")
    informative = informative[~np.isnan(informative)]
    assert len(informative) >= 10
    np.testing.assert_array_equal(informative, 1.0)
    np.testing.assert_allclose(column(results, "taken", target, "r_size"),
                               column(results, "reachable", target), atol=1e-12)
    mean = column(results, "mean", target)  # the pool as sampled: below its best set
    assert np.all(mean <= column(results, "reachable", target) + 1e-12)
    assert np.any(mean < column(results, "reachable", target) - 1e-3)
    # The chunking is bookkeeping only: one query at a time gives the same numbers.
    again = measure(queries, pools, catalog, feedback, chunk=1)
    np.testing.assert_array_equal(column(again, "agreement", target, "reward (lambda 0.1)"),
                                  column(results, "agreement", target, "reward (lambda 0.1)"))
    # Lambdas weigh the same terms: lambda 0 is r_rel's order, a large lambda r_size's.
    both = measure(queries, pools, catalog, feedback, lambdas=(0.0, 1e9))
    np.testing.assert_array_equal(column(both, "agreement", target, "reward (lambda 0)"),
                                  column(both, "agreement", target, "r_rel"))
    np.testing.assert_array_equal(column(both, "agreement", target, "reward (lambda 1e+09)"),
                                  column(both, "agreement", target, "r_size"))


@pytest.mark.slow
def test_the_tool_prints_each_scorer_and_the_paired_difference(tmp_path):
    from leser_jax.relevance import RelevanceConfig, RelevanceModel
    from tests.test_flags import launch

    catalog = generate(SyntheticConfig(num_products=1500, num_queries=150, seed=0))
    RelevanceModel.train(SearchEngine.build(catalog), RelevanceConfig(max_rounds=20)).save(
        str(tmp_path / "rel"))
    out = launch("tools.reward_fidelity", "--dataset=synthetic", "--synthetic_products=1500",
                 "--synthetic_queries=150", f"--relevance=a={tmp_path / 'rel'}",
                 f"--relevance=b={tmp_path / 'rel'}", "--num_queries=40", "--split=train",
                 "--lambdas=0.1,1", "--by_kind")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "By query kind (a, judged_recall" in out.stdout and "| all | " in out.stdout
    assert out.stdout.count("| brand | ") == 1, out.stdout
    for name in ("a", "b", "labels"):  # a row per signal: two rewards, two terms
        assert out.stdout.count(f"| {name} |") == 4, out.stdout
    zero = "+0.000 [+0.000, +0.000]"
    assert (f"b, reward (lambda 0.1) minus a, reward (lambda 0.1): {zero}; {zero} | {zero}; "
            f"{zero}") in out.stdout
    assert "a, reward (lambda 1) minus a, reward (lambda 0.1):" in out.stdout
