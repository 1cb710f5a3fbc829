"""Evaluation metrics and baseline systems, with golden values worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leser_jax.baselines import RM3Config, RM3Expansion, no_expansion
from leser_jax.catalog import CatalogBuilder, GradeScale
from leser_jax.metrics import bootstrap, evaluate, ndcg_at
from leser_jax.prompts import ParsedAnswer
from leser_jax.reward import RewardConfig, SearchFeedback, merged_ranking
from leser_jax.search import SearchEngine
from tests.test_reward import TITLES, TableRelevance


@pytest.fixture()
def setup():
    b = CatalogBuilder("metrics-mini", GradeScale(grade_min=0, grade_max=2, relevant_at=2))
    for pid, title in TITLES.items():
        b.add_product(pid, product_id=pid, title=title)
    b.add_query("q", query_id="q1", text="office chair")
    # Judged: p2 and p3 relevant (2), p0 partial (1), p4 irrelevant (0); p1 and p5 unjudged.
    for pid, grade in [("p2", 2), ("p3", 2), ("p0", 1), ("p4", 0)]:
        b.add_judgment("j", query_id="q1", product_id=pid, grade=grade)
    catalog = b.build()
    # Version 1: the gain goldens below are its numbers (test_reward has version 2's).
    feedback = SearchFeedback(SearchEngine.build(catalog), TableRelevance(catalog),
                              RewardConfig(version=1, k=40))
    return catalog, feedback


def fixed(*expansions):
    """A system that answers every query with `expansions`."""
    return lambda queries: [ParsedAnswer(expansions=tuple(expansions)) for _ in queries]


def test_merged_ranking_round_robin():
    assert merged_ranking([np.array([1, 2, 3]), np.array([4, 2]), np.array([5])]) == [1, 4, 5, 2, 3]
    assert merged_ranking([]) == [] and merged_ranking([np.array([], np.int64)]) == []


def test_ndcg_golden():
    # gains [0, 1] against ideal [1, 0]: DCG = 1/log2(3) = 0.6309298, IDCG = 1/log2(2) = 1
    assert ndcg_at([0, 1], [1, 0]) == pytest.approx(0.6309298)
    assert ndcg_at([1, 0.5], [0.5, 1]) == pytest.approx(1.0)
    # A missing relevant product costs: [1] against [1, 1] -> 1 / (1 + 0.6309298) = 0.6131472
    assert ndcg_at([1], [1, 1]) == pytest.approx(0.6131472)
    assert math.isnan(ndcg_at([0, 0], [0, 0]))


def test_no_expansion_has_gains_of_exactly_zero(setup):
    catalog, feedback = setup
    result = evaluate(no_expansion, catalog.queries, catalog, feedback)
    assert result.metrics["relevance_gain"].mean == 0.0
    assert result.metrics["retrieval_gain"].mean == 0.0
    assert result.metrics["validity"].mean == 1.0 and result.metrics["n_expansions"].mean == 0


def test_gains_and_judged_metrics_golden(setup):
    catalog, feedback = setup
    # Y = ["lumbar cushion"]: as in test_reward, rel 0.725 -> 0.7 and hits 3 -> 4.
    # relevance gain = (0.7 - 0.725) / 0.725 = -0.0344828; retrieval gain = (4 - 3) / 3 = 0.3333333
    result = evaluate(fixed("lumbar cushion"), catalog.queries, catalog, feedback)
    # abs=1e-6: the golden is rounded to 7 decimals.
    assert result.metrics["relevance_gain"].mean == pytest.approx(-0.0344828, abs=1e-6)
    assert result.metrics["retrieval_gain"].mean == pytest.approx(1 / 3)
    # Judged relevant R = {p2, p3}; U = {p0, p1, p2, p3, p5} holds both -> judged recall 1.
    assert result.metrics["judged_recall"].mean == 1.0
    # Merged ranking: S(q) and S("lumbar cushion") interleaved, condensed to judged products.
    # Whatever BM25's order, p0 (gain .5), p2 (1) and p3 (1) are the judged ones retrieved and p4 (0)
    # is not; the value is checked against the formula on the actual order below.
    m = feedback.measure(["office chair"], [("lumbar cushion",)])[0]
    gain = {catalog.row_of[p]: g / 2 for p, g in catalog.judgments["q1"].items()}
    order = [gain[r] for r in merged_ranking(m.lists) if r in gain]
    assert sorted(order) == [0.5, 1.0, 1.0]
    assert result.metrics["ndcg10"].mean == pytest.approx(ndcg_at(order, [1, 1, .5, 0]))
    # Without the expansion p3 is missing: recall 1/2.
    base = evaluate(no_expansion, catalog.queries, catalog, feedback)
    assert base.metrics["judged_recall"].mean == 0.5


def test_invalid_answers_count_as_no_expansion(setup):
    catalog, feedback = setup
    invalid = lambda queries: [ParsedAnswer(reason="bad_json") for _ in queries]  # noqa: E731
    result = evaluate(invalid, catalog.queries, catalog, feedback)
    assert result.metrics["validity"].mean == 0.0
    assert result.metrics["retrieval_gain"].mean == 0.0


def test_system_must_answer_every_query(setup):
    catalog, feedback = setup
    with pytest.raises(ValueError, match="0 answers for 1 queries"):
        evaluate(lambda queries: [], catalog.queries, catalog, feedback)


def test_bootstrap_interval():
    values = np.random.default_rng(1).normal(2.0, 1.0, 400)
    est = bootstrap(values, seed=0)
    assert est.low < est.mean < est.high and est.n == 400
    # The 95% interval of a mean of 400 unit-variance draws is about +-1.96 / 20 = +-0.098.
    assert 0.15 < est.high - est.low < 0.25
    assert bootstrap(values, seed=0) == est  # seeded
    nan_est = bootstrap(np.array([np.nan, 1.0, 3.0]))
    assert nan_est.mean == 2.0 and nan_est.n == 2
    assert math.isnan(bootstrap(np.array([np.nan])).mean)


def test_rm3_adds_feedback_terms(setup):
    catalog, feedback = setup
    rm3 = RM3Expansion(feedback.engine, RM3Config(fb_docs=3, num_expansions=2, terms_per_expansion=1))
    expansions = rm3.expand("office chair")
    assert len(expansions) == 2
    for e in expansions:
        head, added = e.rsplit(" ", 1)
        assert head == "office chair" and added not in {"office", "chair"}
        # Added terms come from the feedback documents (the top-3 results' text).
        assert any(added in TITLES[pid] for pid in ("p0", "p1", "p2", "p5"))
    assert rm3.expand("🙂") == () and rm3(["zzz", "office chair"])[0].expansions == ()
