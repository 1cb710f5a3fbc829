"""LESER's reward: the search engine grades every expansion set.

The seed: "items are retrieved from the production search engine and rewards computed based on
average relevance score of top-k results and total unique items retrieved", with
r(Y) = r_rel(Y) + lambda * r_size(Y) normalised against the original query. The exact formulas
are our reading (version 2 of this project's reward). For a query q and a parsed answer
Y = [y1 .. ym]:

    S_K(x)     the engine's ranked top-K catalog rows for text x                      (K = 40)
    M(Y)       the merged ranking of S_K(q), S_K(y1), ..., S_K(ym): round-robin in that order
               (rank 1 of each list, then rank 2, ...), repeats skipped; M({}) = S_K(q)
    U(Y)       the products of M(Y)
    rel(q, p)  the relevance model's calibrated probability that a person judges p relevant
               to the ORIGINAL query q
    r_rel      mean rel over the first k products of M(Y), over the same for M({})
               (k = 10, the first page a shopper sees): good expansions bring better products
               onto the page, bad ones push good ones off it
    r_size     expected relevant products found: sum of rel over U(Y), over the same sum over
               S_K(q); ablations: `count` |U(Y)| / |S_K(q)|, the literal "total unique items",
               and `hits`, products with rel >= tau
    r          r_rel + lambda * r_size, and 0 when the answer does not parse     (lambda = 0.1)

Each denominator has a floor (`eps` for r_rel, `size_floor` for r_size), so a query whose own
results hold nothing relevant cannot turn one find into a reward in the thousands and swamp its
GRPO group. Version 1 (`version=1`, kept to reproduce its numbers) took r_rel as the mean rel over
all of U(Y) (which can only fall as products are added, since U(Y) always holds S_K(q)) and
r_size as the hits (rel >= tau) of U(Y) over those of S_K(q), floored at 1.

`SearchFeedback` does the measuring for a whole GRPO step at once, and evaluation
(leser_jax.metrics) reuses it, `reward_terms` and `gains`, so reward and metrics can never
disagree:
- every distinct text is searched once per call (expansions repeat across the N rollouts of a
  group, and across groups), through the engine's thread pool; texts are compared by the words the
  engine searches, so "Red chair!" and "red chair" are one search;
- the original query's results and their relevance are cached across calls;
- relevance is scored with one model call per step (`score_many`), over the union of what all
  of each query's rollouts retrieved that is not cached yet.

The searches themselves are `search_texts` (by `search_key`), and `ranked_lists` makes one
query's lists outside a step the same way: `merged_ranking(ranked_lists(...))` is the M(Y) that
the search service returns (leser_jax/search_service.py), equal to what the reward and
evaluation rank for the same expansions.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from leser_jax.prompts import AnswerFormat, parse_answer
from leser_jax.search import SearchEngine, query_terms


class Relevance(Protocol):
    """Anything that scores catalog rows for a query in [0, 1] (relevance.RelevanceModel)."""

    def score(self, query: str, rows: np.ndarray) -> np.ndarray: ...

    def score_many(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """`score` of several (query, rows) requests in one model call."""


SIZE_MODES = ("expected", "count", "hits")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """The reward's constants (the module docstring's symbols in brackets).

    Attributes:
      version: 2 (module docstring) or 1 (its first reading, to reproduce old numbers).
      k: results per search [K].
      page: the first page of the merged ranking that r_rel averages over [k].
      size: what r_size counts (version 2): "expected" relevant products, "count" of products,
        or "hits" (rel >= tau).
      tau: relevance from which a product is a hit (version 1, and size="hits") [tau].
      lam: weight of the coverage term r_size [lambda].
      eps: floor of r_rel's denominator.
      size_floor: floor of r_size's denominator (version 2; version 1 floors hits at 1).
      answer: what a valid answer may hold (m_max expansions [m_max], their length).
      cache_queries: how many original queries' results and scores are kept between calls.
    """

    version: int = 2
    k: int = 40
    page: int = 10
    size: str = "expected"
    tau: float = 0.5
    lam: float = 0.1
    eps: float = 0.05
    size_floor: float = 1.0
    answer: AnswerFormat = AnswerFormat()
    cache_queries: int = 50_000

    def __post_init__(self):
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {self.version}")
        if self.k < 1 or self.page < 1:
            raise ValueError(f"k and page must be >= 1, got {self.k}, {self.page}")
        if self.size not in SIZE_MODES:
            raise ValueError(f"size must be one of {SIZE_MODES}, got {self.size!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.lam < 0 or self.eps <= 0 or self.size_floor <= 0:
            raise ValueError(f"lam must be >= 0, eps and size_floor > 0, got {self.lam}, "
                             f"{self.eps}, {self.size_floor}")

    def describe(self) -> str:
        """What the relevance and retrieval gains measure under this config, in a line."""
        if self.version == 1:
            return (f"reward version 1: relevance = mean rel over U(Y), retrieval = products with "
                    f"rel >= {self.tau}; top-{self.k} a search")
        size = {"expected": "expected relevant products (sum of rel)", "count": "products",
                "hits": f"products with rel >= {self.tau}"}[self.size]
        return (f"reward version 2: relevance = mean rel of the merged ranking's first "
                f"{self.page}, retrieval = {size} of U(Y); top-{self.k} a search")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What one expansion set Y retrieves for one query q, against q alone (Y = {})."""

    rel: float  # mean rel over U(Y)                                  (version 1's r_rel)
    hits: int  # products of U(Y) with rel >= tau
    size: int  # |U(Y)|
    rel0: float  # mean rel over S_K(q)
    hits0: int  # hits of S_K(q)
    lists: tuple[np.ndarray, ...]  # ranked rows of S_K(q), S_K(y1), ..., S_K(ym)
    union: np.ndarray = dataclasses.field(repr=False)  # [|U(Y)|] rows of U(Y)
    page_rel: float = 0.0  # mean rel over the first `page` products of M(Y)
    page_rel0: float = 0.0  # ... of M({}) = S_K(q)
    expected: float = 0.0  # sum of rel over U(Y): the expected relevant products found
    expected0: float = 0.0  # ... over S_K(q)
    size0: int = 0  # |S_K(q)|


def merged_ranking(lists: Sequence[np.ndarray]) -> list[int]:
    """M(Y): round-robin merge of ranked lists without repeats.

    Example: [[1, 2, 3], [4, 2], [5]] -> [1, 4, 5, 2, 3].
    """
    merged, seen = [], set()
    for rank in range(max((len(x) for x in lists), default=0)):
        for ranked in lists:
            if rank < len(ranked) and ranked[rank] not in seen:
                seen.add(int(ranked[rank]))
                merged.append(int(ranked[rank]))
    return merged


def search_key(engine: SearchEngine, text: str) -> str:
    """Texts with the same key get the same hits: the engine searches only these words."""
    return " ".join(query_terms(text, engine.config.max_query_terms))


def search_texts(engine: SearchEngine, texts: Sequence[str], k: int) -> dict[str, np.ndarray]:
    """{search key: ranked rows S_k} for each distinct key among `texts`, each searched once;
    the empty key (a wordless text) retrieves nothing, unsearched."""
    keys = list(dict.fromkeys(key for key in (search_key(engine, t) for t in texts) if key))
    found = {key: hits.rows for key, hits in zip(keys, engine.search_many(keys, k))}
    found[""] = np.zeros(0, np.int64)
    return found


def ranked_lists(engine: SearchEngine, query: str, expansions: Sequence[str],
                 k: int) -> tuple[np.ndarray, ...]:
    """(S_K(q), S_K(y1), ..., S_K(ym)) for one query, searched as `SearchFeedback.measure`
    searches them (its Measurement.lists): `merged_ranking` of it is M(Y), the ranking that the
    reward pays for, evaluation measures and the search service (search_service.py) returns."""
    found = search_texts(engine, [query, *expansions], k)
    return tuple(found[search_key(engine, t)] for t in (query, *expansions))


def _terms(m: Measurement, c: RewardConfig) -> tuple[tuple[float, float, float], ...]:
    """((x(Y), x({}), floor) of r_rel, (s(Y), s({}), floor) of r_size) by version and size."""
    if c.version == 1:
        return (m.rel, m.rel0, c.eps), (m.hits, m.hits0, 1.0)
    size = {"expected": (m.expected, m.expected0), "count": (m.size, m.size0),
            "hits": (m.hits, m.hits0)}[c.size]
    return (m.page_rel, m.page_rel0, c.eps), (*size, c.size_floor)


def reward_terms(m: Measurement, c: RewardConfig) -> tuple[float, float]:
    """(r_rel, r_size): each x(Y) / max(x({}), floor)."""
    return tuple(x / max(x0, floor) for x, x0, floor in _terms(m, c))


def gains(m: Measurement, c: RewardConfig) -> tuple[float, float]:
    """(relevance gain, retrieval gain): each (x(Y) - x({})) / max(x({}), floor), the reward's
    terms minus 1 in difference form, so that Y = {} gains exactly 0 even below the floor."""
    return tuple((x - x0) / max(x0, floor) for x, x0, floor in _terms(m, c))


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
    """The reward of one rollout and every component it was made of (all logged)."""

    reward: float
    r_rel: float
    r_size: float
    rel: float
    hits: int
    rel0: float
    hits0: int
    retrieved: int  # |U(Y)|
    n_expansions: int
    valid: bool
    reject_reason: str | None  # parse_answer's reason; None when valid
    page_rel: float = 0.0  # mean rel of M(Y)'s first page
    expected: float = 0.0  # sum of rel over U(Y)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class SearchFeedback:
    """Searches expansions and scores what they retrieve, batched and cached (module docstring)."""

    def __init__(self, engine: SearchEngine, relevance: Relevance, config: RewardConfig = RewardConfig()):
        self.engine = engine
        self.relevance = relevance
        self.config = config
        self.num_searches = 0  # texts actually sent to the engine (tests count them)
        # query text -> (S_k(q) rows, {row: rel(q, row)}); least recently used first.
        self._cache: collections.OrderedDict[str, tuple[np.ndarray, dict[int, float]]] = (
            collections.OrderedDict())

    def search_key(self, text: str) -> str:
        """Texts with the same key get the same hits (module-level `search_key`)."""
        return search_key(self.engine, text)

    def _search(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Ranked rows for each distinct key among `texts`, each searched once (`search_texts`)."""
        found = search_texts(self.engine, texts, self.config.k)
        self.num_searches += len(found) - 1  # every key but the unsearched empty one
        return found

    def measure(self, queries: Sequence[str], expansions: Sequence[Sequence[str]]) -> list[Measurement]:
        """One Measurement per (queries[i], expansions[i]) pair; Y = () measures q alone."""
        if len(queries) != len(expansions):
            raise ValueError(f"{len(queries)} queries but {len(expansions)} expansion sets")
        new_queries = [q for q in dict.fromkeys(queries) if q not in self._cache]
        found = self._search([y for ys in expansions for y in ys] + new_queries)
        for q in new_queries:
            self._cache[q] = (found[self.search_key(q)], {})

        # Rows each query needs scored: its own results and the union over all of its rollouts,
        # less what is cached; then one relevance call for all queries.
        needed: dict[str, set[int]] = collections.defaultdict(set)
        for q, ys in zip(queries, expansions):
            self._cache.move_to_end(q)
            needed[q].update(self._cache[q][0].tolist())
            for y in ys:
                needed[q].update(found[self.search_key(y)].tolist())
        requests = []
        for q, rows in needed.items():
            scores = self._cache[q][1]
            todo = np.fromiter((r for r in rows if r not in scores), np.int64)
            if len(todo):
                requests.append((q, todo))
        if requests:  # one model call for the whole step: its fixed cost is paid once
            for (q, todo), s in zip(requests, self.relevance.score_many(requests)):
                self._cache[q][1].update(zip(todo.tolist(), s.tolist()))

        results = []
        c = self.config
        for q, ys in zip(queries, expansions):
            base, scores = self._cache[q]
            lists = (base, *(found[self.search_key(y)] for y in ys))
            union = np.unique(np.concatenate(lists))
            rel_u = np.array([scores[r] for r in union.tolist()], np.float64)  # [|U(Y)|]
            rel_b = np.array([scores[r] for r in base.tolist()], np.float64)  # [|S_K(q)|]
            page = [scores[r] for r in merged_ranking(lists)[:c.page]]
            page0 = [scores[r] for r in merged_ranking([base])[:c.page]]
            results.append(Measurement(
                rel=_mean(rel_u), hits=int((rel_u >= c.tau).sum()), size=len(union),
                rel0=_mean(rel_b), hits0=int((rel_b >= c.tau).sum()), lists=lists, union=union,
                page_rel=_mean(page), page_rel0=_mean(page0), expected=float(rel_u.sum()),
                expected0=float(rel_b.sum()), size0=len(base)))
        while len(self._cache) > self.config.cache_queries:  # evict least recently used
            self._cache.popitem(last=False)
        return results


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


class RewardFunction:
    """r = r_rel + lambda * r_size for every rollout of a step (module docstring)."""

    def __init__(self, feedback: SearchFeedback):
        self.feedback = feedback
        self.config = feedback.config

    def __call__(self, queries: Sequence[str], completions: Sequence[str]) -> list[RewardBreakdown]:
        """Rewards of rollouts; queries[i] is the original query of completions[i]."""
        parsed = [parse_answer(c, self.config.answer) for c in completions]
        valid = [i for i, p in enumerate(parsed) if p.valid]
        measured = dict(zip(valid, self.feedback.measure(
            [queries[i] for i in valid], [parsed[i].expansions for i in valid])))
        out = []
        for i, p in enumerate(parsed):
            if not p.valid:
                out.append(RewardBreakdown(reward=0.0, r_rel=0.0, r_size=0.0, rel=0.0, hits=0,
                                           rel0=0.0, hits0=0, retrieved=0, n_expansions=0,
                                           valid=False, reject_reason=p.reason))
                continue
            m = measured[i]
            r_rel, r_size = reward_terms(m, self.config)
            out.append(RewardBreakdown(
                reward=r_rel + self.config.lam * r_size, r_rel=r_rel, r_size=r_size, rel=m.rel,
                hits=m.hits, rel0=m.rel0, hits0=m.hits0, retrieved=m.size,
                n_expansions=len(p.expansions), valid=True, reject_reason=None,
                page_rel=m.page_rel, expected=m.expected))
        return out
