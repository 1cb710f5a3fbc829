"""The evaluation table: systems side by side, paired differences, results.json/md, plots."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from leser_jax import evaluation, plots
from leser_jax.baselines import RM3Config
from leser_jax.context import ContextConfig
from leser_jax.metrics import METRICS, Estimate, Evaluation
from leser_jax.reward import RewardConfig, SearchFeedback
from leser_jax.teacher import TeacherConfig, TeacherExample
from tests._tiny_policy import tiny_policy_run
from tests.test_teacher import CategoryRelevance
from tools import teacher_answers

NAN = float("nan")


def hand_made(per_query: dict[str, list[float]], estimates: dict[str, Estimate] = {},
              latency_ms: float = 1.0, kinds: list[str] | None = None) -> Evaluation:
    """An Evaluation with the given per-query values (0 for the metrics not given)."""
    n = len(next(iter(per_query.values())))
    values = {m: np.asarray(per_query.get(m, [0.0] * n), np.float64) for m in METRICS}
    metrics = {m: estimates.get(m, Estimate(float(np.nanmean(v)), 0.0, 0.0, n))
               for m, v in values.items()}
    return Evaluation(metrics=metrics, latency_ms=latency_ms, per_query=values,
                      kinds=None if kinds is None else np.array(kinds, dtype=object))


def test_results_json_and_table_from_a_hand_made_evaluation(tmp_path):
    evaluations = {
        "original": hand_made({"relevance_gain": [0, 0, 0], "judged_recall": [0.5, NAN, 0.5]}),
        "grpo": hand_made({"relevance_gain": [0.5, 0.1, 0.3], "judged_recall": [1, NAN, 0.5]},
                          {"relevance_gain": Estimate(0.3, 0.1, 0.5, 3),
                           "ndcg10": Estimate(NAN, NAN, NAN, 0)}, latency_ms=12.34)}
    results = evaluation.results_dict(evaluations, reference="grpo", info={"split": "test"})
    table = evaluation.write_results(tmp_path, results)
    saved = evaluation.read_results(tmp_path)
    assert saved["split"] == "test" and list(saved["systems"]) == ["original", "grpo"]
    assert saved["systems"]["grpo"]["relevance_gain"] == {"mean": 0.3, "low": 0.1, "high": 0.5,
                                                          "n": 3}
    assert saved["systems"]["grpo"]["ndcg10"]["mean"] is None  # NaN is not JSON: null
    # Paired: grpo - original per query = [0.5, 0.1, 0.3]: mean 0.3, every resample in
    # [0.1, 0.5]; judged recall [1 - 0.5, (left out), 0.5 - 0.5] = [0.5, 0]: mean 0.25 over 2.
    minus = saved["paired"]["minus"]["original"]
    assert list(saved["paired"]["minus"]) == ["original"]
    assert minus["relevance_gain"]["mean"] == pytest.approx(0.3)
    assert 0.1 <= minus["relevance_gain"]["low"] < minus["relevance_gain"]["high"] <= 0.5
    assert minus["judged_recall"]["mean"] == pytest.approx(0.25)
    assert minus["judged_recall"]["n"] == 2
    assert table == (tmp_path / "results.md").read_text() == evaluation.markdown(saved)
    row = next(line for line in table.splitlines() if line.startswith("| grpo |"))
    assert "| +0.300 [+0.100, +0.500] |" in row and "| n/a |" in row and row.endswith("| 12.3 |")
    paired_row = next(line for line in table.splitlines() if line.startswith("| original |")
                      and "*" in line)
    assert "+0.300 [" in paired_row  # the interval excludes 0: starred


def test_against_the_warmup_and_the_original_query_overall_and_by_kind(tmp_path):
    kinds = ["exact", "problem", "problem", "exact"]
    evaluations = {
        "original": hand_made({"judged_recall": [0.5, 0.2, 0.4, 0.5]}, kinds=kinds),
        "warmup": hand_made({"judged_recall": [0.5, 0.4, 0.4, 0.6]}, kinds=kinds),
        "grpo": hand_made({"judged_recall": [0.5, 0.6, 0.8, 0.6]}, kinds=kinds)}
    results = evaluation.results_dict(evaluations, reference="grpo", bootstrap_samples=200)
    against = results["against"]
    assert list(against) == ["warmup", "original"]  # rm3 was not evaluated
    assert list(against["warmup"]) == ["original", "grpo"]
    # grpo - warmup per query = [0, .2, .4, 0]: mean .15; grpo - original = [0, .4, .4, .1].
    assert against["warmup"]["grpo"]["judged_recall"]["mean"] == pytest.approx(0.15)
    assert against["original"]["grpo"]["judged_recall"]["mean"] == pytest.approx(0.225)
    by_kind = results["by_kind"]
    assert list(by_kind) == ["exact", "problem"] and by_kind["problem"]["queries"] == 2
    # problem queries (2nd and 3rd): grpo recall (.6 + .8) / 2 = .7; minus warmup (.2 + .4) / 2.
    problem = by_kind["problem"]
    assert problem["systems"]["grpo"]["judged_recall"]["mean"] == pytest.approx(0.7)
    assert problem["against"]["warmup"]["grpo"]["judged_recall"]["mean"] == pytest.approx(0.3)
    assert by_kind["exact"]["against"]["warmup"]["grpo"]["judged_recall"]["mean"] == \
        pytest.approx(0.0)
    table = evaluation.write_results(tmp_path, results)
    assert "Each system minus warmup, paired:" in table
    assert "### queries of kind 'problem' (2)" in table
    assert evaluation.markdown(evaluation.read_results(tmp_path)) == table
    # No kinds (Home Depot) and no warm-up: neither section.
    plain = {name: dataclasses.replace(e, kinds=np.array([""] * 4, dtype=object))
             for name, e in evaluations.items() if name != "warmup"}
    results = evaluation.results_dict(plain, reference="grpo")
    assert "by_kind" not in results and list(results["against"]) == ["original"]


def test_seed_summary_gives_each_seeds_mean_and_their_range(tmp_path):
    """Three GRPO seeds minus the warm-up, per query: seed 0 +.2 on every query (interval above
    0), seed 1 [0, +.2, 0, +.2] (mean +.1), seed 2 [-.1, 0, +.1, 0] (mean 0)."""
    warmup = [0.4, 0.4, 0.4, 0.4]
    evaluations = {"warmup": hand_made({"judged_recall": warmup}),
                   "grpo": hand_made({"judged_recall": [0.6, 0.6, 0.6, 0.6]}),
                   "grpo_seed1": hand_made({"judged_recall": [0.4, 0.6, 0.4, 0.6]}),
                   "grpo_seed2": hand_made({"judged_recall": [0.3, 0.4, 0.5, 0.4]})}
    group = ["grpo", "grpo_seed1", "grpo_seed2", "not_evaluated"]
    results = evaluation.results_dict(evaluations, seed_group=group, bootstrap_samples=200)
    seeds = results["seeds"]
    assert seeds["systems"] == group[:3] and list(seeds["minus"]) == ["warmup"]
    recall = seeds["minus"]["warmup"]["judged_recall"]
    assert recall["means"] == pytest.approx([0.2, 0.1, 0.0])
    assert recall["mean"] == pytest.approx(0.1)
    assert (recall["min"], recall["max"]) == pytest.approx((0.0, 0.2))
    assert recall["above_0"] == 1  # seed 1's resamples reach 0, seed 2's go below it
    table = evaluation.write_results(tmp_path, results)
    assert "Over 3 seeds (grpo, grpo_seed1, grpo_seed2)" in table
    assert "+0.100 [+0.000, +0.200] (1/3)" in table
    assert evaluation.markdown(evaluation.read_results(tmp_path)) == table
    assert "seeds" not in evaluation.results_dict(evaluations, seed_group=["grpo"])


def test_latency_leaves_out_the_first_call_of_each_batch_size():
    timed = evaluation.Timed(lambda queries: queries)
    timed.calls = [(32, 5.0), (32, 0.32), (8, 3.0), (32, 0.64)]  # the 5 s and 3 s calls compile
    assert timed.latency_ms() == pytest.approx(1000 * (0.32 + 0.64) / 64)  # = 15 ms
    timed.calls = [(4, 0.4)]  # nothing repeats: every call counts
    assert timed.latency_ms() == pytest.approx(100.0)


CONTEXT = ContextConfig(k=3, max_tokens=64)
REWARD = RewardConfig(k=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny catalog and engine, and a random tiny policy in a run dir whose checkpoint
    records the context it was trained with (tests/_tiny_policy.py)."""
    return tiny_policy_run(tmp_path_factory.mktemp("policy"),
                           ContextConfig(k=3, max_tokens=64, max_attributes=3))


@pytest.mark.slow
def test_every_system_side_by_side_on_a_tiny_catalog(tiny, tmp_path):
    catalog, engine, run = tiny
    relevance = CategoryRelevance(catalog)
    systems = evaluation.make_systems(
        ["original", "rm3", "teacher"], {"policy": str(run)}, engine, relevance,
        context=CONTEXT, reward=REWARD, teacher=TeacherConfig(max_expansions=2),
        max_new_tokens=16)
    assert list(systems) == ["original", "rm3", "teacher", "policy"]
    results, reasons = evaluation.evaluate_systems(systems, catalog.queries, catalog,
                                          SearchFeedback(engine, relevance, REWARD),
                                          batch_size=2, bootstrap_samples=50, log=lambda _: None)
    m = {name: e.metrics for name, e in results.items()}
    assert m["original"]["relevance_gain"].mean == 0 and m["original"]["retrieval_gain"].mean == 0
    assert m["original"]["n_expansions"].mean == 0
    assert m["rm3"]["n_expansions"].mean == 2  # RM3Config's num_expansions, every query
    # The teacher optimises the reward, so its retrieval gain is never negative; its answers
    # hold 1-2 expansions (max_expansions) and all parse.
    assert m["teacher"]["validity"].mean == 1 and 1 <= m["teacher"]["n_expansions"].mean <= 2
    assert m["teacher"]["retrieval_gain"].mean >= 0
    # An untrained policy writes no valid answer: validity 0, evaluated as Y = {} (gains 0).
    assert m["policy"]["validity"].mean == 0 and m["policy"]["relevance_gain"].mean == 0
    assert sum(reasons["policy"].values()) == len(catalog.queries) and reasons["teacher"] == {}
    assert all(e.latency_ms > 0 and math.isfinite(e.latency_ms) for e in results.values())
    # Searches a query costs: 1 + its distinct expansions to serve; the teacher also measured
    # every candidate (at least one more search a query than it serves).
    assert m["original"]["searches"].mean == 1 and m["rm3"]["searches"].mean == 3
    assert m["teacher"]["searches"].mean > 2 + m["teacher"]["n_expansions"].mean
    assert m["policy"]["searches"].mean == 1
    evaluation.write_results(tmp_path, evaluation.results_dict(results, reference="teacher",
                                                               reasons=reasons))
    saved = evaluation.read_results(tmp_path)
    assert saved["systems"]["policy"]["rejected"] == reasons["policy"]
    # answers.jsonl: what each system wrote per query, with the judged recall it scored.
    evaluation.write_answers(tmp_path, catalog.queries, results)
    rows = evaluation.read_answers(tmp_path)
    assert [r["query"] for r in rows] == [q.text for q in catalog.queries]
    for i, row in enumerate(rows):
        for name, e in results.items():
            written = row["systems"][name]
            assert written["expansions"] == list(e.answers[i].expansions)
            assert written["reason"] == e.answers[i].reason
            recall = e.per_query["judged_recall"][i]  # NaN (no judged-relevant product) -> null
            if math.isnan(recall):
                assert written["judged_recall"] is None
            else:
                assert written["judged_recall"] == pytest.approx(recall)
    assert all(row["systems"]["policy"]["reason"] for row in rows)  # untrained: all rejected
    assert list(saved["paired"]["minus"]) == ["original", "rm3", "policy"]
    png = plots.plot_gains(saved, tmp_path / "gains.png")
    curves = plots.plot_training({"grpo": [{"step": 1, "reward": 0.5, "kl": 0.0, "valid": 0.5},
                                           {"step": 2, "reward": 0.7, "kl": None, "valid": 0.9}]},
                                 tmp_path / "curves.png")
    for path in (png, curves):
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_dedup_twin_parses_the_same_completions_leniently(tiny):
    """NAME+dedup re-parses the completions its policy wrote for the same queries (sampled at
    T > 0, so a second sampling would differ): the same texts, duplicates dropped."""
    catalog, engine, run = tiny
    systems = evaluation.make_systems([], {"policy": str(run)}, engine,
                                      CategoryRelevance(catalog), context=CONTEXT, reward=REWARD,
                                      max_new_tokens=16, temperature=0.9, drop_duplicates=True)
    assert list(systems) == ["policy", "policy+dedup"]
    policy, twin = systems["policy"], systems["policy+dedup"]
    queries = [q.text for q in catalog.queries[:3]]
    strict = policy(queries)
    texts = list(policy.last_texts)
    # Completions with a repeat, as a greedy policy writes them: only the twin accepts them.
    policy.texts[tuple(queries)] = ['<think>t</think><answer>["a", "A", "b"]</answer>'] + texts[1:]
    lenient = twin(queries)
    assert lenient[0].expansions == ("a", "b") and policy.texts[tuple(queries)][1:] == texts[1:]
    assert [a.reason for a in lenient[1:]] == [a.reason for a in strict[1:]]
    assert policy._calls == 1  # nothing sampled again
    twin(["a query it never saw"])  # unseen queries are asked of the policy
    assert policy._calls == 2


def test_recorded_answers_score_as_they_did_when_recorded(tiny, tmp_path):
    """A system replayed from answers.jsonl is measured again to the same per-query numbers,
    with no latency; a query it never answered, or a system it never recorded, is an error."""
    catalog, engine, _ = tiny
    feedback = SearchFeedback(engine, CategoryRelevance(catalog), REWARD)
    opts = dict(batch_size=4, bootstrap_samples=50, log=lambda _: None)
    live = evaluation.make_systems(["original", "rm3"], {}, engine, CategoryRelevance(catalog),
                                   context=CONTEXT, reward=REWARD)
    first, _ = evaluation.evaluate_systems(live, catalog.queries, catalog, feedback, **opts)
    evaluation.write_answers(tmp_path, catalog.queries, first)
    recorded = evaluation.read_recorded(tmp_path, "rm3")
    systems = evaluation.make_systems(["original"], {}, engine, CategoryRelevance(catalog),
                                      context=CONTEXT, reward=REWARD,
                                      recorded={"rm3_then": recorded})
    assert list(systems) == ["original", "rm3_then"]
    again, _ = evaluation.evaluate_systems(systems, catalog.queries, catalog, feedback, **opts)
    assert first["rm3"].metrics["n_expansions"].mean == 2  # RM3 expanded: a real replay
    for m in METRICS:
        np.testing.assert_array_equal(again["rm3_then"].per_query[m], first["rm3"].per_query[m])
    assert math.isnan(again["rm3_then"].latency_ms)
    table = evaluation.write_results(tmp_path, evaluation.results_dict(again))
    assert "| rm3_then |" in table and table.count("| n/a |") == 1
    texts = [q.text for q in catalog.queries]
    recall = again["rm3_then"].per_query["judged_recall"]
    assert recorded.disagreements(texts, recall) == 0
    shifted = np.where(np.isnan(recall), 0.5, recall + 0.5)  # every query scores otherwise
    assert recorded.disagreements(texts, shifted) == len(texts)
    with pytest.raises(ValueError, match="no recorded answer for 1 of 2"):
        recorded([texts[0], "a query never evaluated"])
    with pytest.raises(ValueError, match="records no system 'grpo'"):
        evaluation.read_recorded(tmp_path, "grpo")
    rows = evaluation.read_answers(tmp_path)
    rows[1] = {**rows[0], "systems": {"rm3": {**rows[0]["systems"]["rm3"], "expansions": ["x"]}}}
    (tmp_path / "twice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="twice, differently"):
        evaluation.read_recorded(tmp_path / "twice.jsonl", "rm3")


def test_teacher_answers_replay_by_rank_and_a_missing_rank_is_rejected(tiny, tmp_path):
    """tools.teacher_answers: a query's k-th teacher answer is system answer{k}; with no k-th
    answer it is rejected and scores as the original query; nothing recorded to compare."""
    catalog, engine, _ = tiny
    queries = catalog.queries[:2]
    texts = [q.text for q in queries]
    examples = [TeacherExample(texts[0], "", ("a", "b")), TeacherExample(texts[1], "", ("c",)),
                TeacherExample(texts[0], "", ("d",))]
    rows = teacher_answers.rank_rows(examples)
    assert [r["query"] for r in rows] == texts[:2] and set(rows[0]["systems"]) == {"answer1",
                                                                                   "answer2"}
    teacher_answers.write_rows(rows, tmp_path)
    first, second = (evaluation.read_recorded(tmp_path, f"answer{k}") for k in (1, 2))
    assert [a.expansions for a in first(texts)] == [("a", "b"), ("c",)]
    assert second(texts)[0].expansions == ("d",)
    assert second(texts)[1].reason == "no answer of rank 2"
    feedback = SearchFeedback(engine, CategoryRelevance(catalog), REWARD)
    systems = evaluation.make_systems(["original"], {}, engine, CategoryRelevance(catalog),
                                      context=CONTEXT, reward=REWARD, recorded={"answer2": second})
    out, _ = evaluation.evaluate_systems(systems, queries, catalog, feedback,
                                         batch_size=4, bootstrap_samples=50, log=lambda _: None)
    assert out["answer2"].metrics["validity"].mean == 0.5
    for m in ("judged_recall", "relevance_gain", "n_expansions"):  # query 1: the original's
        np.testing.assert_array_equal(out["answer2"].per_query[m][1],
                                      out["original"].per_query[m][1])
    assert out["answer2"].per_query["n_expansions"][0] == 1
    assert second.disagreements(texts, out["answer2"].per_query["judged_recall"] + 1) == 0
    assert len(teacher_answers.rank_rows(examples, ranks=3)[1]["systems"]) == 3


def test_rm3_expands_as_often_as_its_config_says(tiny):
    """RM3 compared at a policy's cost: --rm3_expansions reaches the baseline, one search each."""
    catalog, engine, _ = tiny
    systems = evaluation.make_systems(["rm3"], {}, engine, CategoryRelevance(catalog),
                                      context=CONTEXT, reward=REWARD,
                                      rm3=RM3Config(num_expansions=3, terms_per_expansion=1))
    answers = systems["rm3"]([q.text for q in catalog.queries])
    assert [len(a.expansions) for a in answers] == [3] * len(catalog.queries)
    for query, answer in zip(catalog.queries, answers):  # q plus one new term each, all distinct
        assert len(set(answer.expansions)) == 3
        assert all(e.startswith(query.text + " ") and len(e.split()) == len(query.text.split()) + 1
                   for e in answer.expansions)


def test_a_policy_trained_with_another_context_is_refused(tiny):
    catalog, engine, run = tiny
    assert evaluation.trained_context(run / "params")["k"] == 3  # RUN/params finds RUN's record
    with pytest.raises(ValueError, match="trained with context"):
        evaluation.make_systems([], {"policy": str(run)}, engine, CategoryRelevance(catalog),
                                context=ContextConfig(k=5, max_tokens=64), reward=REWARD)
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluation.make_systems(["bm25"], {}, engine, CategoryRelevance(catalog),
                                context=CONTEXT, reward=REWARD)


def test_read_jsonl_keeps_step_records_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.5}\n{"step": 1, "text": {"rollouts": "x"}}\n'
                    '{"step": 2, "rew')  # a text sample, then a line cut short by a crash
    assert plots.read_jsonl(path) == [{"step": 1, "reward": 0.5}]


def test_added_products_summary_counts_hits_judged_and_relevant():
    """The columns of tools/added_products.py on two queries, worked out by hand."""
    from leser_jax.catalog import GradeScale

    scale = GradeScale(grade_min=1.0, grade_max=3.0, relevant_at=2.5)
    rows = [np.array([1, 2, 3]), np.array([7])]  # products added for query 0 and query 1
    rel = [np.array([0.9, 0.4, 0.6]), np.array([0.55])]
    labels = [{1: 3.0, 2: 1.0}, {8: 3.0}]  # row 3 and row 7 unjudged
    s = evaluation.added_products_summary(rows, rel, labels, 0.5, scale)
    assert s["per_query"] == 2.0
    assert s["mean_rel"] == pytest.approx((0.9 + 0.4 + 0.6 + 0.55) / 4)
    assert s["hit_share"] == pytest.approx(3 / 4)  # 0.9, 0.6, 0.55
    assert s["judged_share"] == pytest.approx(2 / 4)  # rows 1 and 2
    assert s["judged_relevant"] == pytest.approx(1 / 2)  # row 1 (grade 3), not row 2
    assert s["judged_hit"] == pytest.approx(1 / 2)  # the model: row 1 a hit, row 2 not
