"""tools.show_answers: the share of the teacher's gain per query kind, and the answers shown."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from leser_jax import evaluation
from leser_jax.catalog import Query
from leser_jax.prompts import ParsedAnswer
from tests.test_evaluate import hand_made
from tools import show_answers

KINDS = ["brand", "brand", "exact", "exact"]
QUERIES = [Query(query_id=str(i), text=f"q{i}", kind=kind) for i, kind in enumerate(KINDS)]


def _evaluated(recall, answers):
    e = hand_made({"judged_recall": recall}, kinds=KINDS)
    return dataclasses.replace(e, answers=tuple(answers))


@pytest.fixture()
def out(tmp_path):
    valid = [ParsedAnswer(("a",)), ParsedAnswer(("b", "c")), ParsedAnswer(("d",)),
             ParsedAnswer(("e",))]
    evaluations = {
        "original": _evaluated([0.2, 0.2, 0.6, 0.6], [ParsedAnswer()] * 4),
        "teacher": _evaluated([0.6, 0.6, 0.7, 0.7], valid),
        "warmup": _evaluated([0.3, 0.2, 0.7, 0.65], valid[:3] + [ParsedAnswer(reason="bad_json")]),
        "grpo": _evaluated([0.5, 0.2, 0.7, 0.7], valid)}
    evaluation.write_results(tmp_path, evaluation.results_dict(evaluations, bootstrap_samples=50))
    evaluation.write_answers(tmp_path, QUERIES, evaluations)
    return tmp_path


def test_share_of_the_teachers_gain_by_kind(out):
    shares = show_answers.kind_shares(evaluation.read_results(out), ["teacher", "warmup", "grpo"])
    assert list(shares) == ["all", "brand", "exact"]
    # brand: teacher +0.4, warm-up +0.05 (12.5%), grpo +0.15 (37.5%); exact: +0.1, +0.075, +0.1.
    assert shares["brand"]["queries"] == 2
    assert shares["brand"]["gain"]["teacher"] == pytest.approx(0.4)
    assert shares["brand"]["share"]["warmup"] == pytest.approx(0.125)
    assert shares["brand"]["share"]["grpo"] == pytest.approx(0.375)
    assert shares["exact"]["share"]["warmup"] == pytest.approx(0.75)
    assert shares["all"]["share"]["grpo"] == pytest.approx((0.15 + 0.1) / (0.4 + 0.1))
    table = show_answers.share_table(shares, ["teacher", "warmup"], "judged_recall")
    assert "| brand | 2 | +0.400 (100%) | +0.050 (12%) |" in table


def test_picks_where_the_first_two_systems_differ_and_shows_their_answers(out):
    rows = evaluation.read_answers(out)
    picked = show_answers.pick(rows, ["warmup", "grpo"], 1, "differ")
    # brand: q0 differs by 0.2, q1 by 0; exact: q3 by 0.05, q2 by 0.
    assert {k: [r["query"] for r in v] for k, v in picked.items()} == {
        "brand": ["q0"], "exact": ["q3"]}
    first = show_answers.pick(rows, ["warmup", "grpo"], 1, "first")
    assert [r["query"] for r in first["exact"]] == ["q2"]
    text = show_answers.show_rows(picked, ["warmup", "grpo"])
    assert "'q3'" in text and "[rejected: bad_json]" in text and "0.700  'e'" in text
    assert np.isclose(rows[0]["systems"]["grpo"]["judged_recall"], 0.5)
