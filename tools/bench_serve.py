"""Benchmark: the search service's requests/s and p50/p95/p99 latency on loopback, by cache hit
rate and concurrency; optionally, first, that its rankings equal evaluation's.

    python -m experiments.serve --preset=demo --index=runs/demo/index --cache=runs/demo/expansions.sqlite --policy=runs/demo/grpo --port=8080 &
    python -m tools.bench_serve --url=http://127.0.0.1:8080 --cache=runs/demo/expansions.sqlite --index=runs/demo/index --verify

For every hit rate h of --hit_rates x concurrency c of --concurrency (a cell): c client threads,
each on its own keep-alive connection, send GET /search?q=..&k=--k until --requests requests
are answered or --duration seconds have passed. Request i is a head query with probability h
(drawn from the cache's queries in proportion to their counts; the cache is read with plain
sqlite3) or else a tail query never asked before: a dataset query whose normalised key is not in
the cache, each used once in the whole run (the service remembers what it generated, so a
repeated miss would be a hit), then, if they run out, the same with " 2", " 3", ... appended.
Latency is the client's, from sending a request to reading its whole response. The table gives
requests/s (answered / the cell's wall time), the percentiles, how the responses were expanded
(the service's source: cache, generated, none; and of none, how many for the latency budget),
and non-200 answers. A hit rate below 1 measures online expansion only if the service runs with
--policy; without, its misses are answered unexpanded.

--verify (needs the dataset flags and --index of the service): before the cells, every cached
query is asked for with k = --verify_k, and its ranking is compared with the merged ranking that
evaluation measures for the same expansions (reward.SearchFeedback.measure's lists, then
reward.merged_ranking, with --reward_k results a search), first k of each. The relevance model
plays no part in a ranking, so a stand-in scores nothing.

The client runs on the same machine as the service: on 2 cores its threads take CPU time from
the server's, so the numbers are a floor for a dedicated client.
"""

from __future__ import annotations

import collections
import http.client
import json
import sqlite3
import threading
import time
import urllib.parse

import numpy as np
from absl import flags

from experiments import cli, common
from leser_jax.expansion_cache import normalise
from leser_jax.reward import RewardConfig

common.define_dataset_flags()
flags.DEFINE_string("url", "http://127.0.0.1:8080", "The running service (experiments.serve).")
flags.DEFINE_string("cache", None, "The service's expansion cache.", required=True)
flags.DEFINE_string("index", None, "Index folder (for --verify; else built in memory).")
flags.DEFINE_list("hit_rates", ["1.0", "0.9", "0.0"], "Shares of requests for cached queries.")
flags.DEFINE_list("concurrency", ["1", "16"], "Client threads, each with one connection.")
flags.DEFINE_integer("requests", 400, "Most requests per cell.", lower_bound=1)
flags.DEFINE_float("duration", 30.0, "Most seconds per cell.", lower_bound=0.1)
flags.DEFINE_integer("k", 10, "Results per request.", lower_bound=1)
flags.DEFINE_integer("warmup", 20, "Head-query requests sent (and not counted) before the cells.",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the request draws.", lower_bound=0)
flags.DEFINE_bool("verify", False, "First check every cached query's ranking against "
                  "evaluation's (module docstring).")
flags.DEFINE_integer("verify_k", 100, "Results compared per query (at most the service's "
                     "--max_k).", lower_bound=1)
flags.DEFINE_integer("reward_k", RewardConfig().k, "Results per search of evaluation's ranking "
                     "(--verify): the service's --reward_k.", lower_bound=1)
FLAGS = flags.FLAGS


def read_cache(path: str) -> list[tuple[str, str, int]]:
    """(key, query, count) of every cached query, with plain sqlite3."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT key, query, count FROM expansions ORDER BY rank").fetchall()
    finally:
        db.close()


class Client:
    """One keep-alive connection to the service; `get` -> (status, JSON body, seconds)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def get(self, path: str, **params) -> tuple[int, dict, float]:
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        start = time.perf_counter()
        try:
            self.connection.request("GET", target)
            response = self.connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()  # reconnects on the next request
            return 0, {}, time.perf_counter() - start
        seconds = time.perf_counter() - start
        return response.status, json.loads(body or b"{}"), seconds


def run_cell(url: str, queries: list[str], concurrency: int, duration: float) -> dict:
    """Sends `queries` from `concurrency` threads until all are answered or `duration` passes."""
    lock = threading.Lock()
    next_index, records = [0], []  # records: (status, source, status in body, seconds)
    deadline = time.perf_counter() + duration

    def worker():
        client = Client(url)
        while time.perf_counter() < deadline:
            with lock:
                if next_index[0] >= len(queries):
                    return
                q = queries[next_index[0]]
                next_index[0] += 1
            status, body, seconds = client.get("/search", q=q, k=FLAGS.k)
            with lock:
                records.append((status, body.get("source"), body.get("status"), seconds))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in records if r[0] == 200]
    ms = 1000 * np.asarray([r[3] for r in ok]) if ok else np.full(1, np.nan)
    sources = collections.Counter(r[1] for r in ok)
    return {"requests": len(records), "req_per_s": len(ok) / wall,
            **{f"p{p}": float(np.percentile(ms, p)) for p in (50, 95, 99)},
            "cache": sources["cache"], "generated": sources["generated"],
            "none": sources["none"], "budget": sum(r[2] == "budget" for r in ok),
            "errors": len(records) - len(ok), "seconds": wall}


def verify(url: str, cached: list[tuple[str, str, int]], catalog) -> None:
    """Each cached query's ranking from the service against evaluation's (module docstring)."""
    from leser_jax.reward import SearchFeedback, merged_ranking

    class NoRelevance:  # rankings never read a score
        def score_many(self, requests):
            return [np.zeros(len(rows)) for _, rows in requests]

    engine = common.open_engine(catalog, FLAGS.index)
    feedback = SearchFeedback(engine, NoRelevance(), RewardConfig(k=FLAGS.reward_k))
    client = Client(url)
    for n, (_, query, _) in enumerate(cached, start=1):
        status, body, _ = client.get("/search", q=query, k=FLAGS.verify_k)
        if status != 200:
            raise SystemExit(f"verify: {query!r} got HTTP {status}: {body}")
        lists = feedback.measure([query], [tuple(body["expansions"])])[0].lists
        expected = [catalog.products[r].product_id for r in merged_ranking(lists)]
        got = [r["product_id"] for r in body["results"]]
        if got != expected[:FLAGS.verify_k]:
            raise SystemExit(f"verify: {query!r} ({body['source']}, {body['expansions']}) is "
                             f"ranked {got[:10]}..., evaluation ranks {expected[:10]}...")
    print(f"verify: the rankings of all {n:,} cached queries (first {FLAGS.verify_k}) equal "
          f"evaluation's merged ranking for the same expansions")


def main(argv):
    del argv
    cached = read_cache(FLAGS.cache)
    if not cached:
        raise SystemExit(f"{FLAGS.cache} holds no queries")
    catalog = common.load_catalog()
    if FLAGS.verify:
        verify(FLAGS.url, cached, catalog)
    keys = {key for key, _, _ in cached}
    tail = list(dict.fromkeys(q.text for q in catalog.queries if normalise(q.text) not in keys))
    used = 0  # tail queries handed out so far: each is asked once in the whole run

    def next_tail() -> str:
        nonlocal used
        q = tail[used % len(tail)] + ("" if used < len(tail) else f" {used // len(tail) + 1}")
        used += 1
        return q

    rng = np.random.default_rng(FLAGS.seed)
    head = [query for _, query, _ in cached]
    weights = np.asarray([count for _, _, count in cached], np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else None
    client = Client(FLAGS.url)
    for q in head[:FLAGS.warmup]:
        client.get("/search", q=q, k=FLAGS.k)
    print(f"{len(head):,} cached queries, {len(tail):,} tail queries; the service: "
          f"{client.get('/health')[1]}")

    rows = []
    for hit_rate in map(float, FLAGS.hit_rates):
        for concurrency in map(int, FLAGS.concurrency):
            hits = rng.random(FLAGS.requests) < hit_rate
            picks = rng.choice(len(head), size=FLAGS.requests, p=weights)
            queries = [head[p] if h else next_tail() for h, p in zip(hits, picks)]
            cell = run_cell(FLAGS.url, queries, concurrency, FLAGS.duration)
            used -= sum(not h for h in hits[cell["requests"]:])  # unsent tail queries return
            rows.append((hit_rate, concurrency, cell))
            print(f"hit rate {hit_rate:.0%}, concurrency {concurrency}: {cell}", flush=True)
    print(f"\nthe service after the cells: {client.get('/health')[1]}\n")
    print("| hit rate | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | cache | "
          "generated | none (budget) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for hit_rate, concurrency, c in rows:
        print(f"| {hit_rate:.0%} | {concurrency} | {c['requests']} | {c['req_per_s']:.1f} | "
              f"{c['p50']:.1f} | {c['p95']:.1f} | {c['p99']:.1f} | {c['cache']} | "
              f"{c['generated']} | {c['none']} ({c['budget']}) | {c['errors']} |")


if __name__ == "__main__":
    cli.run(main)
