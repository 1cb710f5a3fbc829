"""Expanding a query log into the expansion cache (expansion_cache.py), resumably.

The paper serves LESER's expansions from a cache of its high-frequency queries. This is the
offline half: a query log, most frequent first, through the policy in batches (the jitted
sampler, whose prompt lengths and batch sizes are padded to buckets by rollout.py), each
completion parsed with the reward's parser (prompts.parse_answer), each batch written in one
transaction.

Query logs (`read_query_log`): a CSV file (name ending in .csv) with a header naming a `query`
column and, optionally, a `count` column; or a text file of one query per line (each line counts
1). Spellings with the same key (expansion_cache.normalise) are one query: their counts add up
and the most frequent spelling (the first of equals) is the one expanded. Blank queries are
skipped. Order: count descending, then first appearance in the log.

Resuming (`expand_log`): the ordered queries are cut into fixed batches of `batch_size`, and
batch b samples with the key fold_in(seed, b) (PolicySystem.complete's step), whatever ran
before. A batch is one transaction, so a killed run leaves whole batches; a rerun skips keys that
are present and recomputes the others in the same batches with the same keys, so its file holds
the same rows as an uninterrupted run's.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import time
from collections.abc import Callable, Sequence

from leser_jax.evaluation import steady_calls
from leser_jax.expansion_cache import Entry, ExpansionCache, normalise
from leser_jax.prompts import AnswerFormat, parse_answer


@dataclasses.dataclass(frozen=True)
class LoggedQuery:
    """A distinct query of the log: its key, the spelling expanded, and its count."""

    key: str
    query: str
    count: int


def order_queries(pairs: Sequence[tuple[str, int]]) -> list[LoggedQuery]:
    """(query, count) pairs -> distinct queries by key, most frequent first (module docstring)."""
    counts: dict[str, int] = {}
    spellings: dict[str, collections.Counter[str]] = {}
    for query, count in pairs:
        key = normalise(query)
        if not key:
            continue
        counts[key] = counts.get(key, 0) + count
        spellings.setdefault(key, collections.Counter())[" ".join(query.split())] += count
    # most_common keeps first-inserted order among equals; sorted() is stable, so equal counts
    # keep the log's order.
    merged = [LoggedQuery(k, spellings[k].most_common(1)[0][0], c) for k, c in counts.items()]
    return sorted(merged, key=lambda q: -q.count)


def cache_settings(policy_path: str | os.PathLike, system, *, catalog: str, products: int,
                   batch_size: int, seed: int) -> dict:
    """What makes a cache's rows (its meta table): the policy (checkpoint.params_digest, and its
    path, informational), the prompt (context, worked examples, answer format), the sampling,
    the batch size and seed (which fix each query's sample at a temperature > 0) and the
    catalog whose search results are the prompts' context. system: a PolicySystem."""
    from leser_jax import checkpoint

    return {"policy_sha256": checkpoint.params_digest(policy_path),
            "policy_path": os.path.abspath(policy_path),
            "context": dataclasses.asdict(system.context),
            "answer": dataclasses.asdict(system.answer),
            "examples": [dataclasses.asdict(e) for e in system.examples],
            "sampling": dataclasses.asdict(system.sampling),
            "batch_size": batch_size, "seed": seed,
            "catalog": {"name": catalog, "products": products}}


def read_query_log(path: str | os.PathLike) -> list[LoggedQuery]:
    """A query log file (module docstring) -> `order_queries` of it. ValueError for a CSV file
    without a `query` column or with a count that is not a non-negative integer."""
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8") as f:
        if not path.lower().endswith(".csv"):
            return order_queries([(line, 1) for line in f.read().splitlines()])
        reader = csv.DictReader(f)
        if "query" not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: a CSV query log needs a 'query' column, its header is "
                             f"{reader.fieldnames}")
        pairs = []
        for line, row in enumerate(reader, start=2):
            count = (row.get("count") or "1").strip()
            if not count.isdigit():
                raise ValueError(f"{path}:{line}: count {count!r} is not a non-negative integer")
            pairs.append((row["query"] or "", int(count)))
    return order_queries(pairs)


@dataclasses.dataclass
class ExpandStats:
    """What one `expand_log` call did."""

    queries: int = 0  # distinct queries in the log
    skipped: int = 0  # already in the cache
    expanded: int = 0  # written by this call
    valid: int = 0  # of those, answers that parsed
    batches: int = 0  # sampler calls made
    seconds: float = 0.0  # wall time of the batches (sampling, parsing, writing)
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    calls: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (queries, s)

    @property
    def queries_per_s(self) -> float:
        return self.expanded / self.seconds if self.seconds else 0.0

    @property
    def steady_queries_per_s(self) -> float:
        """Queries/s of the calls after the first of each batch size (which compiles the
        sampler; evaluation.steady_calls); all calls if none repeats."""
        steady = steady_calls(self.calls)
        seconds = sum(s for _, s in steady)
        return sum(n for n, _ in steady) / seconds if seconds else 0.0


def expand_log(cache: ExpansionCache, complete: Callable[..., list[str]],
               queries: Sequence[LoggedQuery], *, batch_size: int,
               answer: AnswerFormat = AnswerFormat(), progress: Callable[[int], object] = None,
               max_batches: int | None = None) -> ExpandStats:
    """Expands every query of `queries` (ordered, `read_query_log`) not yet in `cache`.

    complete(texts, step=b) -> one raw completion per text (PolicySystem.complete), called once
    per batch that has work. progress(n) is told the queries each batch settles (skipped ones
    included). max_batches: stop after this many sampler calls (a killed run, for tests).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = cache.keys()
    stats = ExpandStats(queries=len(queries))
    for b, start in enumerate(range(0, len(queries), batch_size)):
        batch = queries[start:start + batch_size]
        todo = [(start + i, q) for i, q in enumerate(batch) if q.key not in done]
        stats.skipped += len(batch) - len(todo)
        if todo:
            if max_batches is not None and stats.batches >= max_batches:
                break
            t = time.perf_counter()
            texts = complete([q.query for _, q in todo], step=b)
            entries = []
            for (rank, q), text in zip(todo, texts, strict=True):
                parsed = parse_answer(text, answer)
                entries.append(Entry(q.key, q.query, q.count, rank, parsed.expansions,
                                     parsed.reason or "ok", text))
                stats.statuses[parsed.reason or "ok"] += 1
            cache.put(entries)
            stats.calls.append((len(todo), time.perf_counter() - t))
            stats.seconds += stats.calls[-1][1]
            stats.batches += 1
            stats.expanded += len(todo)
            stats.valid += sum(e.status == "ok" for e in entries)
        if progress is not None:
            progress(len(batch))
    return stats
