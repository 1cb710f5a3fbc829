"""The search-guided teacher: candidates, greedy reward, reasoning, no judgments, JSONL import."""

import dataclasses
import json

import numpy as np
import pytest

from leser_jax.catalog import Catalog, CatalogBuilder, GradeScale
from leser_jax.context import ContextConfig, ContextItem, build_context
from leser_jax.prompts import parse_answer, render_answer
from leser_jax.reward import RewardConfig, RewardFunction, SearchFeedback
from leser_jax.search import SearchEngine
from leser_jax.teacher import (Teacher, TeacherConfig, TeacherExample, head_terms, propose,
                               read_examples, reasoning, words, write_examples)

PRODUCTS = [  # id, title, attributes
    ("c1", "Haverly mesh office chair, navy", {"brand": "Haverly", "features": "lumbar support"}),
    ("c2", "Haverly mesh office chair, black", {"brand": "Haverly", "color": "black"}),
    ("c3", "Sitwell leather office chair", {"brand": "Sitwell", "features": "lumbar support"}),
    ("c4", "Nordvik ergonomic task chair", {"brand": "Nordvik", "features": "lumbar support"}),
    ("c5", "Nordvik ergonomic desk chair with headrest", {"brand": "Nordvik"}),
    ("c6", "lumbar support cushion", {"brand": "Restwell", "category": "cushion"}),
    ("c7", "Sitwell task chair, gray", {"brand": "Sitwell", "features": "lumbar support"}),
    ("l1", "Brightway brass desk lamp", {"brand": "Brightway", "color": "brass"}),
    ("l2", "Westglow mini desk lamp", {"brand": "Westglow", "color": "white"}),
    ("l3", "Brightway architect task lamp", {"brand": "Brightway", "color": "black"}),
]
QUERIES = ["office chair", "haverly chair", "desk lamp", "ergonomic chair"]


class CategoryRelevance:
    """A stand-in relevance model: rel(q, p) = 1 for the chairs if q asks for a chair (0.2 for the
    cushion), 1 for the lamps if q asks for a lamp, else 0. It reads product ids, never the
    judgments."""

    def __init__(self, catalog):
        self.catalog = catalog

    def score(self, query, rows):
        out = []
        for r in np.asarray(rows).tolist():
            pid = self.catalog.products[r].product_id
            if "chair" in query:
                out.append(0.2 if pid == "c6" else float(pid.startswith("c")))
            else:
                out.append(float("lamp" in query and pid.startswith("l")))
        return np.asarray(out, np.float32)

    def score_many(self, requests):
        return [self.score(q, rows) for q, rows in requests]


def make_catalog(judgments=True) -> Catalog:
    b = CatalogBuilder("teacher-mini", GradeScale(grade_min=0, grade_max=1, relevant_at=1))
    for pid, title, attrs in PRODUCTS:
        b.add_product(pid, product_id=pid, title=title, attributes=attrs)
    for i, q in enumerate(QUERIES):
        b.add_query(f"q{i}", query_id=f"q{i}", text=q)
        if judgments:
            b.add_judgment(f"j{i}", query_id=f"q{i}", product_id="c1", grade=1)
    return b.build()


class NoPeeking(dict):
    """Judgments that fail the test if anything reads them."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("the teacher read the human judgments")

    __getitem__ = get = __iter__ = __contains__ = items = keys = values = __len__ = _fail


CONTEXT = ContextConfig(k=5)
REWARD = RewardConfig(k=3)  # narrow searches: expansions find what q alone misses


def teacher_for(catalog):
    engine = SearchEngine.build(catalog)
    return Teacher(engine, CategoryRelevance(catalog), context=CONTEXT, reward=REWARD,
                   config=TeacherConfig(max_candidates=8, chunk_queries=3))


@pytest.fixture(scope="module")
def teacher():
    return teacher_for(make_catalog())


def test_head_terms_and_candidates():
    context = [ContextItem("Haverly mesh office chair, navy", (("features", "lumbar support"),)),
               ContextItem("Sitwell leather office chair", (("features", "lumbar support"),)),
               ContextItem("Nordvik ergonomic task chair", (("brand", "Nordvik"),))]
    # "chair" is in 3/3 titles, "office" in 2/3 >= 0.5, "cheap" in none.
    assert head_terms("cheap office chair", context, 0.5, 3) == ["office", "chair"]
    assert head_terms("cheap office chair", context, 0.5, 1) == ["chair"]
    head, cands = propose("cheap office chair", context, TeacherConfig(max_candidates=4))
    texts = [c.text for c in cands]
    # First the head alone (a broader search), then by frequency in the context: "lumbar
    # support" is in 2 items; the attribute value keeps its words and gains the head terms.
    assert texts[0] == "office chair" and texts[1] == "lumbar support office chair"
    assert cands[1].source == "features: lumbar support"
    assert len(texts) == 4 and len({frozenset(t.split()) for t in texts}) == 4
    # Nothing that only repeats the query's words is proposed.
    assert all(not set(words(t)) <= {"cheap", "office", "chair"} for t in texts[1:])


def test_whole_query_candidates_keep_every_query_word():
    context = [ContextItem("Haverly mesh office chair, navy", (("features", "lumbar support"),)),
               ContextItem("Sitwell leather office chair", (("features", "lumbar support"),))]
    _, plain = propose("cheap office chair", context, TeacherConfig(max_candidates=6))
    _, whole = propose("cheap office chair", context,
                       TeacherConfig(max_candidates=6, whole_query=True))
    plain_texts, whole_texts = [c.text for c in plain], [c.text for c in whole]
    # Each phrase joined with the head terms, then with the whole query (RM3's form).
    assert whole_texts[:3] == ["office chair", "lumbar support office chair",
                               "lumbar support cheap office chair"]
    assert whole[2].source == whole[1].source == "features: lumbar support"
    assert not any("cheap" in t for t in plain_texts)  # off by default: the head terms only
    assert len(whole_texts) == 6 and len({frozenset(t.split()) for t in whole_texts}) == 6
    assert all({"cheap", "office", "chair"} <= set(t.split()) for t in whole_texts[2::2])


def test_query_only_joins_and_reasoning_that_names_the_join():
    context = [ContextItem("Haverly mesh office chair, navy", (("features", "lumbar support"),)),
               ContextItem("Sitwell leather office chair", (("features", "lumbar support"),))]
    head, both = propose("cheap office chair", context,
                         TeacherConfig(max_candidates=6, whole_query=True))
    assert [c.join for c in both[:3]] == ["", "head", "query"]
    _, only = propose("cheap office chair", context,
                      TeacherConfig(max_candidates=6, whole_query=True, head_join=False))
    # The head terms alone stay (a broader search); every phrase keeps the whole query.
    assert only[0].text == "office chair" and only[0].join == ""
    assert all(c.join == "query" and {"cheap", "office", "chair"} <= set(c.text.split())
               for c in only[1:])
    assert reasoning(head, both[:3]) == (
        "results: office chair. context: common words: office chair; features: lumbar support; "
        "features: lumbar support.")
    assert reasoning(head, both[1:3], name_join=True) == (
        "results: office chair. context: features: lumbar support + head; "
        "features: lumbar support + query.")
    with pytest.raises(ValueError, match="head_join"):
        TeacherConfig(head_join=False)


def test_named_joins_reach_the_examples(teacher):
    config = dataclasses.replace(teacher.config, whole_query=True, name_join=True)
    named = Teacher(teacher.engine, teacher.relevance, context=CONTEXT, reward=REWARD,
                    config=config)
    plain = Teacher(teacher.engine, teacher.relevance, context=CONTEXT, reward=REWARD,
                    config=dataclasses.replace(config, name_join=False))
    for a, b in zip(named.examples(QUERIES), plain.examples(QUERIES)):
        assert a.expansions == b.expansions and a.reward == b.reward  # only the text differs
        assert a.think.count(" + ") == len(a.expansions) - a.think.count("common words:")
        assert a.think.replace(" + head", "").replace(" + query", "") == b.think


def test_examples_parse_reach_the_reward_and_name_their_context(teacher):
    examples = teacher.examples(QUERIES)
    reward_fn = RewardFunction(SearchFeedback(teacher.engine, teacher.relevance, REWARD))
    assert all(e is not None for e in examples)
    for q, e in zip(QUERIES, examples):
        parsed = parse_answer(e.answer)
        assert parsed.valid and parsed.expansions == e.expansions and parsed.think == e.think
        # The recorded reward is the reward GRPO would give this exact answer.
        assert reward_fn([q], [e.answer])[0].reward == pytest.approx(e.reward)
        # ... and at least the best single candidate's (the greedy's first round).
        context = build_context(q, teacher.engine, CONTEXT)
        head, cands = propose(q, context, teacher.config)
        singles = reward_fn([q] * len(cands), [render_answer("", [c.text]) for c in cands])
        assert e.reward >= max(r.reward for r in singles) - 1e-9
        # distinct_starts: no two expansions begin with the same word; listed in context order.
        assert len({words(x)[0] for x in e.expansions}) == len(e.expansions)
        orders = [next(c.order for c in cands if c.text == x) for x in e.expansions]
        assert orders == sorted(orders)
        # The reasoning names where each expansion came from, and those are in the context.
        context_text = " ".join(item.render() for item in context).lower()
        by_text = {c.text: c for c in cands}
        for expansion in e.expansions:
            source = by_text[expansion].source
            assert source in e.think
            named = source.split(": ", 1)[1]
            assert " ".join(words(named)) in " ".join(words(context_text))
    # q alone scores r = 1 + 0.1 * 1 = 1.1. The chair queries find 3 of the 6 chairs at k = 3,
    # so expanding pays for them; "desk lamp" already finds all 3 lamps.
    assert [e.reward > 1.1 + 1e-9 for e in examples] == [True, True, False, True]
    assert any(len(e.expansions) > 1 for e in examples)


def test_teacher_never_reads_judgments(teacher):
    blind = make_catalog(judgments=False)
    blind.judgments = NoPeeking()
    assert teacher_for(blind).examples(QUERIES) == teacher.examples(QUERIES)


def test_teacher_is_an_evaluation_system(teacher):
    answers = teacher(QUERIES)
    assert [a.expansions for a in answers] == [e.expansions for e in teacher.examples(QUERIES)]


def test_alternatives_are_other_good_answers_and_the_best_comes_first(teacher):
    reward_fn = RewardFunction(SearchFeedback(teacher.engine, teacher.relevance, REWARD))

    def answer_sets(share):
        config = dataclasses.replace(teacher.config, answers_per_query=3, alternative_share=share)
        return Teacher(teacher.engine, teacher.relevance, context=CONTEXT, reward=REWARD,
                       config=config).example_sets(QUERIES)

    sets = answer_sets(0.0)
    assert [s[0] for s in sets] == teacher.examples(QUERIES)  # the best is the single answer
    assert sum(len(s) for s in sets) > len(QUERIES)
    for q, answers in zip(QUERIES, sets):
        assert len(answers) <= 3
        assert len({frozenset(e.expansions) for e in answers}) == len(answers)  # all different
        for e in answers:
            assert parse_answer(e.answer).valid
            assert reward_fn([q], [e.answer])[0].reward == pytest.approx(e.reward)
    # A share keeps only alternatives that come close to the best answer.
    strict = answer_sets(0.97)
    assert sum(map(len, strict)) < sum(map(len, sets))
    for loose, kept in zip(sets, strict):
        assert kept == [e for e in loose if e is loose[0] or e.reward >= 0.97 * loose[0].reward]
    with pytest.raises(ValueError, match="alternative_share"):
        TeacherConfig(alternative_share=1.5)


def test_jsonl_round_trip_and_import_with_bad_lines(tmp_path):
    good = [TeacherExample(query="office chair", think="mesh is common.",
                           expansions=("mesh office chair", "lumbar support chair"), reward=1.3),
            TeacherExample(query="desk lamp", think="", expansions=("brass desk lamp",))]
    path = tmp_path / "teacher.jsonl"
    assert write_examples(path, good) == 2
    examples, report = read_examples(path)
    assert examples == good and report.kept == 2 and not report.bad

    lines = [
        good[0].to_json(),                                                   # 1 ok
        '{"query": "sofa", "think": "x", "expansions": ["gray sofa"]',       # 2 not JSON
        json.dumps({"query": "sofa", "expansions": ["gray sofa"]}),          # 3 no think
        json.dumps({"query": "sofa", "think": "", "expansions": ["a", "A"]}),  # 4 duplicate
        "",                                                                  # 5 blank: skipped
        json.dumps({"query": "sofa", "think": "<answer>", "expansions": ["b"]}),  # 6 a tag
        json.dumps({"query": "held out", "think": "", "expansions": ["c"]}),  # 7 a dev query
        json.dumps(["not", "an", "object"]),                                 # 8
        json.dumps({"query": "sofa", "think": "", "expansions": ["x"] * 0}),  # 9 empty list
        json.dumps({"query": "rug", "think": "ok", "expansions": ["wool rug"], "reward": "high"}),
        json.dumps({"query": "rug", "think": "ok", "expansions": ["wool rug"]}),  # 11 ok
    ]
    path.write_text("\n".join(lines) + "\n")
    examples, report = read_examples(path, exclude_queries={"held out"})
    assert [e.query for e in examples] == ["office chair", "rug"]
    assert report.kept == 2 and [n for n, _ in report.bad] == [2, 3, 4, 6, 7, 8, 9, 10]
    reasons = dict(report.bad)
    assert "missing think" in reasons[3] and "duplicate" in reasons[4]
    assert "dev or test" in reasons[7] and "empty" in reasons[9] and "reward" in reasons[10]
    summary = report.summary()
    assert "2 examples kept, 8 bad lines" in summary and "line 4:" in summary
