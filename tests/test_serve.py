"""The search service (leser_jax/search_service.py, online_expander.py, experiments/serve.py):
a tiny cache served in-process on an ephemeral loopback port; rankings equal evaluation's for
the same expansions; online expansion batched and bounded by the latency budget; malformed
requests refused with a 4xx while the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from flax import nnx

from leser_jax import checkpoint
from leser_jax.config import ModelConfig
from leser_jax.expand import expand_log, order_queries
from leser_jax.expansion_cache import ExpansionCache
from leser_jax.model import Llama
from leser_jax.online_expander import OnlineExpander
from leser_jax.prompts import INSTRUCTION
from leser_jax.reward import RewardConfig, SearchFeedback, merged_ranking
from leser_jax.search import SearchEngine
from leser_jax.search_service import SearchService, ServiceConfig, make_server
from leser_jax.tokenizer import train_sentencepiece
from tests.test_expand import CONTEXT, SETTINGS, fake_complete, scripted
from tests.test_teacher import CategoryRelevance, make_catalog

K = 3  # narrow searches, so that expansions change the ranking
CONFIG = ServiceConfig(search_k=K, max_k=50)
CACHED = [("office chair", 5), ("desk lamp", 4), ("haverly chair", 2)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(catalog, engine, cache): the teacher tests' catalog, and a cache of CACHED written by
    expand_log with scripted answers ("desk lamp"'s does not parse)."""
    catalog = make_catalog()
    engine = SearchEngine.build(catalog)
    path = tmp_path_factory.mktemp("cache") / "cache.sqlite"
    writer = ExpansionCache.open_for_writing(path, SETTINGS)
    expand_log(writer, fake_complete, order_queries(CACHED), batch_size=2)
    writer.close()
    return catalog, engine, ExpansionCache.open(path)


@contextlib.contextmanager
def serving(service: SearchService):
    """The service on 127.0.0.1, a free port, in a thread; yields its base URL."""
    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, **params) -> tuple[int, dict]:
    target = url + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(target, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw(url: str, request: bytes) -> tuple[int, dict]:
    """Sends `request` bytes as they are (urllib would quote them); (status, JSON body)."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def evaluated_ids(catalog, engine, query: str, expansions) -> list[str]:
    """The merged ranking that evaluation measures (metrics.evaluate's SearchFeedback.measure,
    then merged_ranking of its lists), as product ids."""
    feedback = SearchFeedback(engine, CategoryRelevance(catalog), RewardConfig(k=K))
    lists = feedback.measure([query], [tuple(expansions)])[0].lists
    return [catalog.products[r].product_id for r in merged_ranking(lists)]


def test_cached_queries_are_served_with_evaluations_ranking(setup):
    catalog, engine, cache = setup
    with serving(SearchService(engine, cache, config=CONFIG)) as url:
        status, body = get(url + "/search", q="Office  Chair", k=50)  # normalised to the key
        assert status == 200 and (body["source"], body["status"]) == ("cache", "ok")
        assert body["expansions"] == ["office chair lumbar support", "ergonomic chair"]
        ids = [r["product_id"] for r in body["results"]]
        assert ids == evaluated_ids(catalog, engine, "Office  Chair", body["expansions"])
        # The expansions reach products the query's own top K misses.
        alone = evaluated_ids(catalog, engine, "office chair", ())
        assert len(ids) == body["retrieved"] > len(alone) == K
        assert body["results"][0]["title"] == catalog.products[catalog.row_of[ids[0]]].title
        assert set(body["timings_ms"]) == {"lookup", "expand", "search", "total"}

        status, body = get(url + "/search", q="office chair")  # default k
        assert status == 200 and len(body["results"]) == min(CONFIG.default_k, len(ids))

        status, body = get(url + "/search", q="desk lamp")  # its answer did not parse
        assert (body["source"], body["status"], body["expansions"]) == (
            "cache", "no_answer_tag", [])
        assert [r["product_id"] for r in body["results"]] == evaluated_ids(
            catalog, engine, "desk lamp", ())

        status, body = get(url + "/search", q="ergonomic chair")  # a miss, no policy
        assert (body["source"], body["status"], body["expansions"]) == ("none", "miss", [])
        assert [r["product_id"] for r in body["results"]] == evaluated_ids(
            catalog, engine, "ergonomic chair", ())
        status, body = get(url + "/health")
        assert status == 200 and body["cache"] == 3 and body["online"] is None


BAD = [  # (request target or raw request bytes, status, what the message says)
    ("/search", 400, "missing q"),
    ("/search?k=5", 400, "missing q"),
    ("/search?q=", 400, "q is empty"),
    ("/search?q=+++", 400, "q is empty"),
    ("/search?q=" + "a" * 10_000, 400, "more than 1,000"),
    ("/search?q=chair&k=0", 400, "k must be an integer"),
    ("/search?q=chair&k=10000", 400, "k must be an integer"),
    ("/search?q=chair&k=ten", 400, "k must be an integer"),
    ("/search?q=chair&k=-1", 400, "k must be an integer"),
    ("/search?q=a&q=b", 400, "more than once"),
    ("/search?q=%ff%fe", 400, "not percent-encoded UTF-8"),
    ("/search?q=caf%C3", 400, "not percent-encoded UTF-8"),
    (b"GET /search?q=\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, "not UTF-8"),
    ("/nowhere?q=chair", 404, "no such path"),
    (b"POST /search?q=chair HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close"
     b"\r\n\r\n", 405, "not allowed"),
    (b"BREW /search?q=chair HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405,
     "not allowed"),
    (b"GET /search?q=" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "URI Too Long"),
    (b"NONSENSE\r\n\r\n", 400, "Bad request"),
]


def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(setup):
    _, engine, cache = setup
    with serving(SearchService(engine, cache, config=CONFIG)) as url:
        for request, status, message in BAD:
            if isinstance(request, str):
                got, body = get(url + request)
            else:
                got, body = raw(url, request)
            assert (got, message) == (status, message) and message in body["error"], request
            ok, answer = get(url + "/search", q="office chair")
            assert ok == 200 and answer["source"] == "cache", request
        # A non-ASCII query, percent-encoded or raw UTF-8, is a query like any other.
        assert get(url + "/search", q="chaise café")[0] == 200
        got, body = raw(url, "GET /search?q=café HTTP/1.1\r\nHost: x\r\nConnection: close"
                             "\r\n\r\n".encode())
        assert got == 200 and body["query"] == "café"


class SlowPolicy:
    """complete() after `seconds`, recording each call's batch; scripted answers."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.batches, self.steps = seconds, [], []

    def __call__(self, texts, *, step):
        time.sleep(self.seconds)
        self.batches.append(list(texts))
        self.steps.append(step)
        return [scripted(t) for t in texts]


def test_concurrent_misses_share_sampler_calls_and_are_generated_once(setup):
    catalog, engine, cache = setup
    policy = SlowPolicy(0.2)
    expander = OnlineExpander(policy, batch_size=4, max_wait_s=0.05).start()
    service = SearchService(engine, cache, expander,
                            ServiceConfig(search_k=K, latency_budget_ms=10_000))
    misses = [f"task chair {word}" for word in "abcdefgh"]
    try:
        with serving(service) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
            bodies = [b for _, b in pool.map(lambda q: get(url + "/search", q=q), misses)]
            assert [(b["source"], b["status"]) for b in bodies] == [("generated", "ok")] * 8
            for q, b in zip(misses, bodies):
                assert b["expansions"] == [f"{q} lumbar support", "ergonomic chair"]
                assert [r["product_id"] for r in b["results"]] == evaluated_ids(
                    catalog, engine, q, b["expansions"])[:CONFIG.default_k]
            # 8 requests at once, 4 a call: fewer calls than requests, none over the batch size.
            assert len(policy.batches) < 8 and max(map(len, policy.batches)) <= 4
            assert sorted(t for batch in policy.batches for t in batch) == sorted(misses)
            assert policy.steps == list(range(len(policy.steps)))  # a new key every call
            calls = len(policy.batches)
            status, body = get(url + "/search", q=" TASK chair a")  # generated before
            assert body["source"] == "generated" and len(policy.batches) == calls
            assert get(url + "/search", q="office chair")[1]["source"] == "cache"
            assert get(url + "/health")[1]["online"]["rows"] == 8
    finally:
        expander.close()


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.perf_counter() + seconds
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        time.sleep(0.02)


def test_a_request_that_would_pass_its_budget_gets_the_original_results(setup):
    catalog, engine, cache = setup
    policy = SlowPolicy(0.8)
    expander = OnlineExpander(policy, batch_size=2, max_wait_s=0.0).start()
    service = SearchService(engine, cache, expander,
                            ServiceConfig(search_k=K, latency_budget_ms=100))
    try:
        with serving(service) as url:
            status, body = get(url + "/search", q="nordvik chair")  # no call timed yet: waits
            assert (status, body["source"], body["status"]) == (200, "none", "budget")
            assert 100 <= body["timings_ms"]["expand"] < 600  # the budget, not the 0.8 s call
            assert [r["product_id"] for r in body["results"]] == evaluated_ids(
                catalog, engine, "nordvik chair", ())[:CONFIG.default_k]
            wait_until(lambda: expander.generated("nordvik chair"))  # in the background ...
            body = get(url + "/search", q="nordvik chair")[1]
            assert body["source"] == "generated"  # ... and serves the next request
            # Now a call is known to take ~0.8 s: a miss is answered at once, not after the
            # 100 ms budget, and still queued for next time.
            body = get(url + "/search", q="sitwell chair")[1]
            assert body["status"] == "budget" and body["timings_ms"]["expand"] < 50
            wait_until(lambda: expander.generated("sitwell chair"))
            assert get(url + "/search", q="sitwell chair")[1]["source"] == "generated"
    finally:
        expander.close()


def test_a_failing_policy_fails_its_requests_not_the_service(setup):
    _, engine, cache = setup

    def broken(texts, *, step):
        raise RuntimeError("out of memory")

    expander = OnlineExpander(broken, batch_size=2, max_wait_s=0.0).start()
    service = SearchService(engine, cache, expander, ServiceConfig(latency_budget_ms=5_000))
    try:
        with serving(service) as url:
            status, body = get(url + "/search", q="brass lamp")
            assert (status, body["source"], body["status"]) == (200, "none", "error")
            assert get(url + "/search", q="office chair")[1]["source"] == "cache"
    finally:
        expander.close()


def test_expected_wait_counts_the_running_call_and_the_batches_ahead():
    expander = OnlineExpander(lambda texts, *, step: [], batch_size=2, max_wait_s=0.01)
    assert expander.expected_wait_s() == 0  # nothing timed yet
    expander._call_s = 0.1
    assert expander.expected_wait_s() == pytest.approx(0.01 + 0.1)  # gather, then its call
    for q in "abc":
        expander.submit(q, q)
    assert expander.submit("a", "a") is expander.submit("a", "a")  # one future per key
    assert expander.expected_wait_s() == pytest.approx(0.01 + 2 * 0.1)  # a full batch ahead
    expander.max_pending = 3
    assert expander.submit("d", "d") is None  # the queue is full


def launch(module: str, *argv: str, **kwargs) -> subprocess.Popen:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_launchers_expand_a_split_then_serve_it_with_the_policy_online(tmp_path):
    """experiments.expand of the tiny synthetic catalog's test split with a random tiny policy,
    then experiments.serve of that cache with the policy online, over HTTP, and
    tools.bench_serve against it (its --verify: the rankings equal evaluation's)."""
    run = tmp_path / "policy"
    tokenizer = train_sentencepiece([INSTRUCTION.format(m_max=5)] * 20 + ["chair lamp desk"] * 5,
                                    vocab_size=400)
    config = ModelConfig.tiny().replace(vocab_size=tokenizer.vocab_size, max_seq_len=1024)
    checkpoint.save_params(run / "params", Llama(config, rngs=nnx.Rngs(0)), tokenizer=tokenizer)
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    (run / "checkpoints" / "step_00000001" / "configs.json").write_text(
        json.dumps({"context": dataclasses.asdict(CONTEXT)}))
    data = ["--preset=tiny", "--synthetic_products=200", "--synthetic_queries=40",
            f"--context_k={CONTEXT.k}", f"--context_max_tokens={CONTEXT.max_tokens}"]
    cache = tmp_path / "cache.sqlite"
    expand = launch("experiments.expand", *data, f"--policy={run}", "--split=test",
                    f"--out={cache}", "--batch_size=4", "--max_new_tokens=8")
    out, _ = expand.communicate(timeout=300)
    assert expand.returncode == 0, out
    assert "queries/s" in out
    entries = ExpansionCache.open(cache).entries()
    assert entries and all(e.status != "ok" or e.expansions for e in entries)

    port_file = tmp_path / "port"
    serve = launch("experiments.serve", *data, f"--cache={cache}", f"--policy={run}",
                   "--port=0", f"--port_file={port_file}", "--batch_size=2",
                   "--max_new_tokens=8", "--latency_budget_ms=60000", "--nowarmup")
    try:
        deadline = time.time() + 300
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            assert serve.poll() is None and time.time() < deadline, serve.stdout.read()
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        status, body = get(url + "/search", q=entries[0].query, k=5)
        assert (status, body["source"]) == (200, "cache")
        status, body = get(url + "/search", q="a query in no cache", k=5)
        assert (status, body["source"]) == (200, "generated") and body["status"] != "budget"
        assert get(url + "/search", q="")[0] == 400
        assert get(url + "/health")[1]["online"]["calls"] >= 1
        bench = launch("tools.bench_serve", *data[1:3], f"--url={url}", f"--cache={cache}",
                       "--verify", "--hit_rates=1,0.5", "--concurrency=1,4", "--requests=6",
                       "--duration=60", "--warmup=1")
        out, _ = bench.communicate(timeout=300)
        assert bench.returncode == 0, out
        assert "verify: the rankings of all" in out
        table = [line for line in out.splitlines() if line.startswith("| ")]
        assert len(table) == 1 + 4 and all(line.endswith("| 0 |") for line in table[1:]), out
    finally:
        serve.terminate()
        serve.wait(timeout=30)
