"""The reward on a hand-made catalog, against golden values worked out in the comments."""

from __future__ import annotations

import types

import numpy as np
import pytest

from leser_jax.catalog import CatalogBuilder, GradeScale
from leser_jax.prompts import render_answer
from leser_jax.reward import (RewardConfig, RewardFunction, SearchFeedback, gains,
                              merged_ranking, reward_terms)
from leser_jax.search import SearchConfig, SearchEngine, query_terms

TITLES = {"p0": "red office chair", "p1": "blue office chair", "p2": "lumbar support office chair",
          "p3": "ergonomic lumbar cushion", "p4": "oak desk", "p5": "office lamp"}
# rel(q, p) for the two queries; tau = 0.5 makes p0, p1, p2, p3 hits for "office chair".
TABLE = {"office chair": {"p0": .9, "p1": .8, "p2": 1.0, "p3": .6, "p4": .1, "p5": .2},
         "zebra": {"p0": 0., "p1": 0., "p2": 0., "p3": 0., "p4": .1, "p5": 0.}}


class TableRelevance:
    """rel(q, p) from TABLE; counts its calls."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.calls = 0

    def score(self, query, rows):
        return np.array([TABLE[query][self.catalog.products[r].product_id] for r in rows], np.float32)

    def score_many(self, requests):
        self.calls += 1
        return [self.score(query, rows) for query, rows in requests]


@pytest.fixture()
def setup():
    b = CatalogBuilder("reward-mini", GradeScale(grade_min=0, grade_max=1, relevant_at=1))
    for pid, title in TITLES.items():
        b.add_product(pid, product_id=pid, title=title)
    catalog = b.build()
    relevance = TableRelevance(catalog)
    # Version 1 (the goldens below are its numbers); version 2 has its own tests at the end.
    feedback = SearchFeedback(SearchEngine.build(catalog), relevance,
                              RewardConfig(version=1, k=40))
    return RewardFunction(feedback), feedback, relevance


def answer(*expansions):
    return render_answer("because", expansions)


def test_golden_rewards(setup):
    reward_fn, _, _ = setup
    q = "office chair"
    # S_40("office chair") = {p0, p1, p2, p5} (p5 matches "office"): the baseline U({}).
    # rel({}) = (.9 + .8 + 1.0 + .2) / 4 = 0.725; hits({}) = 3 (p0, p1, p2).
    rewards = reward_fn([q] * 4, [answer("lumbar cushion"), answer("oak desk"),
                                  answer("lumbar cushion", "oak desk"), "no answer at all"])
    r1, r2, r3, r4 = rewards
    # Y1: S("lumbar cushion") = {p2, p3}; U = {p0, p1, p2, p3, p5}
    # rel = (2.9 + .6) / 5 = 0.7, hits = 4 -> r = 0.7 / 0.725 + 0.1 * 4 / 3 = 1.0988506
    assert (r1.rel, r1.hits, r1.retrieved, r1.rel0, r1.hits0) == pytest.approx((0.7, 4, 5, 0.725, 3))
    assert r1.reward == pytest.approx(0.7 / 0.725 + 0.1 * 4 / 3) == pytest.approx(1.0988506)
    # Y2: S("oak desk") = {p4}; U = {p0, p1, p2, p4, p5}: rel = (2.9 + .1) / 5 = 0.6, hits = 3
    # -> r = 0.6 / 0.725 + 0.1 * 3 / 3 = 0.9275862: an irrelevant expansion costs reward.
    assert r2.reward == pytest.approx(0.9275862) and r2.hits == 3
    # Y3: U = all six: rel = 3.6 / 6 = 0.6, hits = 4 -> r = 0.6 / 0.725 + 0.1 * 4 / 3 = 0.9609195
    assert r3.reward == pytest.approx(0.9609195) and r3.n_expansions == 2
    # An answer that does not parse earns exactly 0 and says why.
    assert r4.reward == 0.0 and not r4.valid and r4.reject_reason == "no_think_tag"
    assert r1.valid and r1.reject_reason is None
    assert set(r1.as_dict()) >= {"reward", "r_rel", "r_size", "rel", "hits", "valid", "reject_reason"}


def test_lambda_weighs_coverage(setup):
    _, feedback, _ = setup
    no_coverage = RewardFunction(SearchFeedback(feedback.engine, feedback.relevance,
                                                RewardConfig(version=1, k=40, lam=0.0)))
    # lambda = 0: only r_rel = 0.7 / 0.725 = 0.9655172 remains.
    assert no_coverage(["office chair"], [answer("lumbar cushion")])[0].reward == pytest.approx(0.9655172)


def test_eps_floors_an_empty_baseline(setup):
    reward_fn, _, _ = setup
    # "zebra" retrieves nothing: rel({}) = 0 and hits({}) = 0. Y = ["oak desk"]: U = {p4},
    # rel = 0.1, hits = 0 -> r = 0.1 / max(0, 0.05) + 0.1 * 0 / max(0, 1) = 2.0
    r = reward_fn(["zebra"], [answer("oak desk")])[0]
    assert (r.rel0, r.hits0, r.rel, r.hits) == (0.0, 0, pytest.approx(0.1), 0)
    assert r.reward == pytest.approx(2.0)


def test_each_distinct_expansion_is_searched_once(setup):
    reward_fn, feedback, relevance = setup
    # One group of 4 rollouts; "lumbar cushion" is written three ways that search the same words.
    completions = [answer("lumbar cushion"), answer("Lumbar  Cushion!", "oak desk"),
                   answer("lumbar cushion"), answer("oak desk")]
    rewards = reward_fn(["office chair"] * 4, completions)
    # Searched: "office chair" (the original), "lumbar cushion", "oak desk" -> 3, not 7.
    assert feedback.num_searches == 3
    assert relevance.calls == 1  # one relevance call for the step, over the group's union
    assert rewards[0].reward == rewards[2].reward == pytest.approx(1.0988506)
    # A second step with the same query: its results and scores are cached, nothing new to do
    # except the one new expansion.
    reward_fn(["office chair"] * 2, [answer("oak desk"), answer("ergonomic")])
    assert feedback.num_searches == 3 + 2  # "oak desk" and "ergonomic" (searches are per call)
    assert relevance.calls == 1  # every row they found was already scored for this query


def test_invalid_answers_cost_no_search(setup):
    reward_fn, feedback, relevance = setup
    rewards = reward_fn(["office chair"] * 3, ["", "<think>x</think><answer>[]</answer>", None])
    assert [r.reward for r in rewards] == [0.0, 0.0, 0.0]
    assert [r.reject_reason for r in rewards] == ["no_think_tag", "empty", "no_think_tag"]
    assert feedback.num_searches == 0 and relevance.calls == 0


def test_wordless_expansion_retrieves_nothing(setup):
    reward_fn, feedback, _ = setup
    r = reward_fn(["office chair"], [answer("🙂")])[0]
    # Y = ["🙂"] adds nothing: U(Y) = U({}) -> r = 1 + 0.1 * 1 = 1.1
    assert r.valid and r.reward == pytest.approx(1.1) and r.retrieved == 4
    assert feedback.num_searches == 1  # only the original query


def test_measure_of_no_expansion_is_the_baseline(setup):
    _, feedback, _ = setup
    m = feedback.measure(["office chair"], [()])[0]
    assert (m.rel, m.hits, m.size) == (pytest.approx(m.rel0), m.hits0, 4)
    assert len(m.lists) == 1


def test_config_rejects_impossible_values():
    for bad in [dict(k=0), dict(tau=0), dict(tau=1.5), dict(lam=-1), dict(eps=0), dict(version=3),
                dict(page=0), dict(size="unique"), dict(size_floor=0)]:
        with pytest.raises(ValueError):
            RewardConfig(**bad)


def test_one_relevance_call_per_step(setup):
    reward_fn, _, relevance = setup
    rewards = reward_fn(["office chair", "office chair", "zebra", "zebra"],
                        [answer("lumbar cushion"), answer("oak desk")] * 2)
    assert relevance.calls == 1  # two queries, four rollouts: one model call
    assert rewards[0].reward == pytest.approx(1.0988506) and rewards[3].reward == pytest.approx(2.0)


# ----------------------------------------------------------------------------- version 2

class ListEngine:
    """A search engine that returns fixed ranked lists (so the merged ranking is known)."""

    def __init__(self, lists: dict[str, list[int]]):
        self.config = SearchConfig()
        self.lists = {self.key(text): np.array(rows, np.int64) for text, rows in lists.items()}

    def key(self, text):
        return " ".join(query_terms(text, self.config.max_query_terms))

    def search_many(self, keys, k):
        # SearchFeedback reads the hits' rows only.
        return [types.SimpleNamespace(rows=self.lists.get(key, np.zeros(0, np.int64))[:k])
                for key in keys]


class RowRelevance:
    """rel(q, row) from a table by row, for every query."""

    def __init__(self, rel):
        self.rel = rel

    def score_many(self, requests):
        return [np.array([self.rel[int(r)] for r in rows], np.float64) for _, rows in requests]


# Three ranked lists: S(q) = [0, 1, 2, 3], S(y1) = [4, 0, 5], S(y2) = [6, 7].
LISTS = {"red chair": [0, 1, 2, 3], "lumbar cushion": [4, 0, 5], "desk lamp": [6, 7]}
REL = {0: .9, 1: .2, 2: .8, 3: .1, 4: .95, 5: .7, 6: .35, 7: .6}


@pytest.mark.parametrize("size, r_size", [
    # U(Y) = rows 0-7. expected: (.9+.2+.8+.1+.95+.7+.35+.6) / (.9+.2+.8+.1) = 4.6 / 2.0
    ("expected", 4.6 / 2.0),
    ("count", 8 / 4),  # |U(Y)| / |S(q)|
    ("hits", 5 / 2),  # rel >= .5: rows 0, 2, 4, 5, 7 of U(Y) against rows 0, 2 of S(q)
])
def test_version_2_golden(size, r_size):
    config = RewardConfig(page=3, size=size, lam=0.1)
    feedback = SearchFeedback(ListEngine(LISTS), RowRelevance(REL), config)
    completions = [answer("lumbar cushion", "desk lamp"), answer("lumbar cushion")]
    r, r1 = RewardFunction(feedback)(["red chair"] * 2, completions)
    # M(Y) round-robin: rank 1 of each list 0, 4, 6; rank 2: 1, (0 seen), 7; rank 3: 2, 5; 3.
    m = feedback.measure(["red chair"], [("lumbar cushion", "desk lamp")])[0]
    assert merged_ranking(m.lists) == [0, 4, 6, 1, 7, 2, 5, 3]
    # First page (k = 3) of M(Y): rows 0, 4, 6 -> 2.2 / 3; of M({}) = S(q): 0, 1, 2 -> 1.9 / 3.
    r_rel = (2.2 / 3) / (1.9 / 3)
    assert abs(r.r_rel - r_rel) <= 1e-9 and abs(r.r_size - r_size) <= 1e-9
    assert abs(r.reward - (r_rel + 0.1 * r_size)) <= 1e-9
    assert abs(gains(m, config)[0] - (r_rel - 1)) <= 1e-9
    assert abs(gains(m, config)[1] - (r_size - 1)) <= 1e-9
    # Y1 = ["lumbar cushion"]: M = [0, 4, 1, 5, 2, 3]; page 0, 4, 1 -> (.9 + .95 + .2) / 3.
    assert abs(r1.r_rel - 2.05 / 1.9) <= 1e-9
    # A bad expansion pushes good products off the page: relevance gain < 0.
    bad = feedback.measure(["red chair"], [("desk lamp",)])[0]  # M = [0, 6, 1, 7, 2, 3]
    assert abs(gains(bad, config)[0] - ((.9 + .35 + .2) / 1.9 - 1)) <= 1e-9


def test_version_2_floors_and_no_expansion():
    config = RewardConfig(page=3, eps=0.05, size_floor=1.0)
    feedback = SearchFeedback(ListEngine({**LISTS, "zebra": []}), RowRelevance(REL), config)
    # "zebra" finds nothing: page and sum of S(q) are 0, floored at eps and size_floor.
    # Y = ["desk lamp"]: page (.35 + .6) / 2 = 0.475 -> r_rel = 0.475 / 0.05 = 9.5;
    # r_size = (.35 + .6) / 1.0 = 0.95.
    m = feedback.measure(["zebra"], [("desk lamp",)])[0]
    assert reward_terms(m, config) == pytest.approx((9.5, 0.95), abs=1e-9)
    # Y = {}: both gains exactly 0, also below the floors.
    for q in ("zebra", "red chair"):
        assert gains(feedback.measure([q], [()])[0], config) == (0.0, 0.0)
