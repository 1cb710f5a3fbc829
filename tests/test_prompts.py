"""The answer parser: every rejection reason, the accepted format, and never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leser_jax.context import ContextItem
from leser_jax.prompts import (REJECTION_REASONS, AnswerFormat, parse_answer, render_answer,
                               render_prompt)

GOOD = '<think>backs hurt; products say lumbar</think><answer>["lumbar chair", "ergonomic chair"]</answer>'


def test_accepts_the_format():
    parsed = parse_answer(GOOD)
    assert parsed.valid and parsed.reason is None
    assert parsed.expansions == ("lumbar chair", "ergonomic chair")
    assert parsed.think == "backs hurt; products say lumbar"
    # Whitespace around and between the blocks is allowed, and runs inside expansions collapse.
    spaced = '  <think> x </think>\n <answer> [" red   chair "] </answer>\n'
    assert parse_answer(spaced).expansions == ("red chair",)


def test_render_answer_round_trips():
    text = render_answer("because", ["a b", "ünïcode 🙂", 'quote "x"'])
    assert parse_answer(text).expansions == ("a b", "ünïcode 🙂", 'quote "x"')


@pytest.mark.parametrize("text, reason", [
    ('<answer>["a"]</answer>', "no_think_tag"),
    ('<think>x<answer>["a"]</answer>', "no_think_tag"),
    ("", "no_think_tag"),
    ("<think>x</think>", "no_answer_tag"),
    ('<think>x</think><answer>["a"]', "no_answer_tag"),
    ('<think>x</think>["a"]</answer>', "no_answer_tag"),
    ('<think>x</think><think>y</think><answer>["a"]</answer>', "extra_tags"),
    ('<think>x</think><answer>["a"]</answer><answer>["b"]</answer>', "extra_tags"),
    ('preamble <think>x</think><answer>["a"]</answer>', "extra_tags"),
    ('<think>x</think> so: <answer>["a"]</answer>', "extra_tags"),
    ('<think>x</think><answer>["a"]</answer> and more', "extra_tags"),
    ("<think>x</think><answer>[\"a\",]</answer>", "bad_json"),
    ("<think>x</think><answer>lumbar chair</answer>", "bad_json"),
    ("<think>x</think><answer>" + "[" * 100_000 + "</answer>", "bad_json"),
    ('<think>x</think><answer>{"a": 1}</answer>', "not_a_list"),
    ('<think>x</think><answer>"a"</answer>', "not_a_list"),
    ("<think>x</think><answer>[]</answer>", "empty"),
    ('<think>x</think><answer>["a", "b", "c", "d", "e", "f"]</answer>', "too_many"),
    ('<think>x</think><answer>["a", 3]</answer>', "not_a_string"),
    ('<think>x</think><answer>[["a"]]</answer>', "not_a_string"),
    ('<think>x</think><answer>[null]</answer>', "not_a_string"),
    ('<think>x</think><answer>["a", "  "]</answer>', "empty_string"),
    ('<think>x</think><answer>["' + "a" * 121 + '"]</answer>', "too_long"),
    ('<think>x</think><answer>["Red Chair", "red  chair"]</answer>', "duplicate"),
])
def test_each_rejection_reason(text, reason):
    parsed = parse_answer(text)
    assert parsed.reason == reason and not parsed.valid and parsed.expansions == ()


def test_every_reason_is_tested():
    tested = {reason for _, reason in test_each_rejection_reason.pytestmark[0].args[1]}
    assert tested == set(REJECTION_REASONS)


def test_format_limits_are_configurable():
    five = '<think>x</think><answer>["a", "b", "c", "d", "e"]</answer>'
    assert parse_answer(five).valid
    assert parse_answer(five, AnswerFormat(m_max=4)).reason == "too_many"
    assert parse_answer('<think>x</think><answer>["abcd"]</answer>', AnswerFormat(max_chars=3)).reason == "too_long"
    with pytest.raises(ValueError):
        AnswerFormat(m_max=0)


def test_dropping_duplicates_keeps_the_first_spelling_in_order():
    text = '<think>x</think><answer>["Oak desk", "lamp", "oak  DESK", "chair", "lamp"]</answer>'
    assert parse_answer(text).reason == "duplicate"  # the reward's parse stays strict
    lenient = parse_answer(text, AnswerFormat(drop_duplicates=True))
    assert lenient.valid and lenient.expansions == ("Oak desk", "lamp", "chair")
    # Every other rule still holds: too many is counted before repeats are dropped.
    six = '<think>x</think><answer>["a", "a", "b", "c", "d", "e"]</answer>'
    assert parse_answer(six, AnswerFormat(drop_duplicates=True)).reason == "too_many"


def test_non_string_input():
    assert parse_answer(None).reason == "no_think_tag"
    assert parse_answer(b"<think></think>").reason == "no_think_tag"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400))
def test_any_text_never_raises(text):
    parsed = parse_answer(text)
    assert parsed.valid or parsed.reason in REJECTION_REASONS


_TAG = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "[", "]", '"', ",", " "])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_TAG, st.text(max_size=8)), max_size=30))
def test_tag_soup_never_raises(parts):
    # Text made mostly of the format's own pieces reaches the deeper checks, not only the first.
    parsed = parse_answer("".join(parts))
    assert parsed.valid or parsed.reason in REJECTION_REASONS
    if parsed.valid:
        assert 1 <= len(parsed.expansions) <= 5 and all(parsed.expansions)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=5,
                unique_by=lambda s: " ".join(s.split()).casefold()))
def test_valid_lists_round_trip(expansions):
    parsed = parse_answer(render_answer("t", expansions))
    if any(tag in e for e in expansions for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        assert parsed.reason == "extra_tags"  # a tag inside a string is still a tag
    else:
        assert parsed.expansions == tuple(" ".join(e.split()) for e in expansions)


def test_render_prompt_shows_context_and_query():
    items = [ContextItem("Red Chair", (("color", "red"),)), ContextItem("Mat")]
    prompt = render_prompt("office chair", items, AnswerFormat(m_max=3))
    assert "<item>Red Chair (color: red)</item><item>Mat</item>" in prompt
    assert prompt.endswith("<query>office chair</query>\n")
    assert "1 to 3 new search queries" in prompt
