"""The expansion cache (leser_jax/expansion_cache.py) and filling it from a query log
(leser_jax/expand.py): normalised keys, log ordering, parse statuses, settings, resuming."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest

from leser_jax import checkpoint, evaluation
from leser_jax.context import ContextConfig
from leser_jax.expand import LoggedQuery, expand_log, order_queries, read_query_log
from leser_jax.expansion_cache import ExpansionCache, SettingsMismatch, normalise
from leser_jax.prompts import render_answer
from leser_jax.sampler import SamplingConfig
from tests._tiny_policy import tiny_policy_run

CONTEXT = ContextConfig(k=3, max_tokens=64)
SETTINGS = {"policy_sha256": "abc", "policy_path": "/somewhere", "temperature": 0.0}


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """(catalog, engine, run dir): tests/_tiny_policy.py's, its run recording CONTEXT."""
    return tiny_policy_run(tmp_path_factory.mktemp("policy"), CONTEXT)


def scripted(query: str) -> str:
    """A well-formed answer a fake policy writes for `query` (its words + "lumbar support"),
    except for queries with "lamp", answered out of format."""
    if "lamp" in query:
        return "<think>lamps</think>no answer tag"
    return render_answer("chairs", [f"{query} lumbar support", "ergonomic chair"])


def fake_complete(queries, *, step):
    return [scripted(q) for q in queries]


def test_normalise_lowercases_collapses_whitespace_and_composes():
    assert normalise("  Office\t CHAIR \n") == "office chair"
    assert normalise("Cafe\u0301 table") == normalise("café table") == "café table"
    assert normalise("chair, 'red'!") == "chair, 'red'!"  # punctuation is shown to the policy
    assert normalise(" \t ") == ""


def test_query_log_merges_spellings_and_orders_by_count(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("query,count\nDesk Lamp,3\noffice chair,7\ndesk  lamp,5\n ,9\nsofa,7\n")
    assert read_query_log(log) == [LoggedQuery("desk lamp", "desk lamp", 8),
                                   LoggedQuery("office chair", "office chair", 7),
                                   LoggedQuery("sofa", "sofa", 7)]  # equal counts: log order
    lines = tmp_path / "log.txt"
    lines.write_text("sofa\noak desk\n\nOak Desk\n")
    assert [(q.query, q.count) for q in read_query_log(lines)] == [("oak desk", 2), ("sofa", 1)]
    (tmp_path / "bad.csv").write_text("query,count\nsofa,many\n")
    with pytest.raises(ValueError, match="bad.csv:2: count 'many'"):
        read_query_log(tmp_path / "bad.csv")
    (tmp_path / "no_query.csv").write_text("text,count\nsofa,1\n")
    with pytest.raises(ValueError, match="needs a 'query' column"):
        read_query_log(tmp_path / "no_query.csv")


def test_answers_are_parsed_with_the_reward_parser_and_readable_without_our_code(tmp_path):
    queries = order_queries([("office chair", 3), ("desk lamp", 2), ("Haverly Chair", 1)])
    path = tmp_path / "cache.sqlite"
    cache = ExpansionCache.open_for_writing(path, SETTINGS)
    stats = expand_log(cache, fake_complete, queries, batch_size=2)
    assert (stats.expanded, stats.batches, stats.valid) == (3, 2, 2)
    assert [n for n, _ in stats.calls] == [2, 1] and stats.steady_queries_per_s > 0
    assert stats.statuses == {"ok": 2, "no_answer_tag": 1}
    lamp = cache.get("desk lamp")
    assert lamp.expansions == () and lamp.status == "no_answer_tag" and lamp.rank == 1
    assert cache.get("haverly chair").expansions == ("Haverly Chair lumbar support",
                                                     "ergonomic chair")
    cache.close()
    # Plain SQLite: the rows, the JSON expansions and the settings, without leser_jax.
    db = sqlite3.connect(path)
    rows = db.execute("SELECT key, count, expansions, status FROM expansions ORDER BY rank")
    assert [(k, c, json.loads(e), s) for k, c, e, s in rows] == [
        ("office chair", 3, ["office chair lumbar support", "ergonomic chair"], "ok"),
        ("desk lamp", 2, [], "no_answer_tag"),
        ("haverly chair", 1, ["Haverly Chair lumbar support", "ergonomic chair"], "ok")]
    meta = dict(db.execute("SELECT name, value FROM meta"))
    assert json.loads(meta["policy_sha256"]) == "abc" and json.loads(meta["format"]) == 1
    db.close()
    reader = ExpansionCache.open(path)
    assert len(reader) == 3 and reader.settings()["temperature"] == 0.0
    assert reader.get("no such query") is None


def test_other_settings_are_refused_and_the_policy_path_is_not_compared(tmp_path):
    path = tmp_path / "cache.sqlite"
    ExpansionCache.open_for_writing(path, SETTINGS).close()
    moved = {**SETTINGS, "policy_path": "/elsewhere"}  # the same checkpoint, moved
    ExpansionCache.open_for_writing(path, moved).close()
    other = {**SETTINGS, "policy_sha256": "def", "temperature": 0.9}
    with pytest.raises(SettingsMismatch) as error:
        ExpansionCache.open_for_writing(path, other)
    assert "policy_sha256: 'abc' there, 'def' now" in str(error.value)
    assert "temperature: 0.0 there, 0.9 now" in str(error.value)
    nested = {**SETTINGS, "sampling": {"temperature": 0.0, "top_k": 0}}
    ExpansionCache.open_for_writing(tmp_path / "nested.sqlite", nested).close()
    with pytest.raises(SettingsMismatch, match="sampling.top_k: 0 there, 5 now"):
        ExpansionCache.open_for_writing(tmp_path / "nested.sqlite",
                                        {**nested, "sampling": {"temperature": 0.0, "top_k": 5}})
    with pytest.raises(FileNotFoundError):
        ExpansionCache.open(tmp_path / "missing.sqlite")
    (tmp_path / "not_a_cache").write_text("hello")
    with pytest.raises(ValueError, match="not an expansion cache"):
        ExpansionCache.open(tmp_path / "not_a_cache")


def test_params_digest_names_the_checkpoint_not_its_place(tmp_path):
    run = tmp_path / "run"
    files = {"config.json": b"{}", "params/weights": b"\x00\x01", "tokenizer.model": b"spm"}
    for rel, data in files.items():  # a params dir as checkpoint.save_params lays it out
        (run / "params" / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / "params" / rel).write_bytes(data)
    (run / "params" / "COMPLETE.json").write_text(json.dumps({"files": {
        rel: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in files.items()}}))
    digest = checkpoint.params_digest(run)
    assert digest == checkpoint.params_digest(run / "params")  # a run dir names its params
    copy = shutil.copytree(run / "params", tmp_path / "copy")
    assert checkpoint.params_digest(copy) == digest
    (copy / "COMPLETE.json").unlink()  # as saved before checksums: every file's bytes
    other = checkpoint.params_digest(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert checkpoint.params_digest(copy) != other


@pytest.mark.slow
def test_a_killed_and_resumed_expand_equals_an_uninterrupted_one(tiny_policy, tmp_path):
    """Sampled at T = 0.9, so each batch's key matters: the resumed run, a new process's
    PolicySystem, redoes batch 1 onwards with the keys of the uninterrupted run."""
    catalog, engine, run = tiny_policy
    texts = [q.text for q in catalog.queries] + ["lumbar cushion", "brass lamp", "task chair"]
    queries = order_queries([(t, len(texts) - i) for i, t in enumerate(texts)])

    def system():
        return evaluation.policy_system(
            run, engine, context=CONTEXT, seed=3,
            sampling=SamplingConfig(temperature=0.9, max_new_tokens=12))

    def expand(path, **kwargs):
        cache = ExpansionCache.open_for_writing(path, SETTINGS)
        stats = expand_log(cache, system().complete, queries, batch_size=3, **kwargs)
        entries = cache.entries()
        cache.close()
        return stats, entries

    _, whole = expand(tmp_path / "whole.sqlite")
    killed, part = expand(tmp_path / "resumed.sqlite", max_batches=1)
    assert killed.expanded == 3 and len(part) == 3
    resumed, entries = expand(tmp_path / "resumed.sqlite")
    assert resumed.skipped == 3 and resumed.expanded == len(queries) - 3
    assert entries == whole and len(whole) == len(queries)
    assert len({e.completion for e in whole}) > 1  # sampled, not one text for all
    again, _ = expand(tmp_path / "resumed.sqlite")
    assert again.expanded == 0 and again.batches == 0  # nothing redone, nothing duplicated


def test_a_batch_that_fails_writes_nothing(tmp_path):
    queries = order_queries([("office chair", 3), ("desk lamp", 2), ("sofa", 1)])
    cache = ExpansionCache.open_for_writing(tmp_path / "cache.sqlite", SETTINGS)

    def dies_on_batch_1(texts, *, step):
        if step == 1:
            raise KeyboardInterrupt  # killed while sampling
        return fake_complete(texts, step=step)

    with pytest.raises(KeyboardInterrupt):
        expand_log(cache, dies_on_batch_1, queries, batch_size=2)
    assert cache.keys() == {"office chair", "desk lamp"}
    stats = expand_log(cache, fake_complete, queries, batch_size=2)
    assert (stats.skipped, stats.expanded) == (2, 1) and len(cache) == 3
