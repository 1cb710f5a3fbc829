"""LESER's reward: the search engine grades every expansion set.

For a query q and a parsed answer Y = [y1 .. ym] (DESIGN.md, "Reward and metrics"; the paper
gives the idea, the exact formulas are our reading):

    S_k(x)     top-k catalog rows the engine returns for text x                      (k = 40)
    U(Y)       S_k(q) united with S_k(y) for every y in Y: expansions add to the original query,
               as they would in production; U({}) = S_k(q)
    rel(q, p)  the relevance model's score of product p for the ORIGINAL query q, in [0, 1]
    rel(Y)     mean of rel(q, p) over p in U(Y)                       (0 when U(Y) is empty)
    hits(Y)    number of p in U(Y) with rel(q, p) >= tau                             (tau = 0.5)
    r_rel      rel(Y) / max(rel({}), eps)
    r_size     hits(Y) / max(hits({}), 1)
    r          r_rel + lambda * r_size, and 0 when the answer does not parse     (lambda = 0.1)

r_rel rewards keeping the union as relevant as what q alone found (adding weak products lowers
the mean), r_size rewards finding more relevant products; lambda trades one for the other. Both
are normalised by what q alone achieves, so rewards are comparable across easy and hard queries.
`eps` is a floor on rel({}): a query whose own results are all near 0 would otherwise turn any
relevant find into a reward in the thousands and swamp its GRPO group (DESIGN.md leaves eps open;
0.05, one twentieth of "perfectly relevant", is our choice).

`SearchFeedback` does the measuring for a whole GRPO step at once, and evaluation
(leser_jax.metrics) reuses it, so reward and metrics can never disagree:
- every distinct text is searched once per call (expansions repeat across the N rollouts of a
  group, and across groups), through the engine's thread pool; texts are compared by the words the
  engine searches, so "Red chair!" and "red chair" are one search;
- the original query's results and their relevance are cached across calls;
- relevance is scored with one model call per step (`score_many`), over the union of what all
  of each query's rollouts retrieved that is not cached yet.
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """The reward's constants (DESIGN.md symbols in brackets).

    Attributes:
      k: hits per search [k].
      tau: relevance from which a retrieved product counts as a hit [tau].
      lam: weight of the coverage term r_size [lambda].
      eps: floor of rel({}) in r_rel's denominator [eps].
      answer: what a valid answer may hold (m_max expansions [m_max], their length).
      cache_queries: how many original queries' results and scores are kept between calls.
    """

    k: int = 40
    tau: float = 0.5
    lam: float = 0.1
    eps: float = 0.05
    answer: AnswerFormat = AnswerFormat()
    cache_queries: int = 50_000

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.lam < 0 or self.eps <= 0:
            raise ValueError(f"lam must be >= 0 and eps > 0, got {self.lam}, {self.eps}")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What one expansion set retrieves for one query, against the query alone."""

    rel: float  # rel(Y): mean relevance over U(Y)
    hits: int  # hits(Y)
    size: int  # |U(Y)|
    rel0: float  # rel({}): mean relevance over S_k(q)
    hits0: int  # hits({})
    lists: tuple[np.ndarray, ...]  # ranked rows of S_k(q), S_k(y1), ..., S_k(ym)
    union: np.ndarray = dataclasses.field(repr=False)  # [|U(Y)|] rows of U(Y)


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

    def _key(self, text: str) -> str:
        """Texts with the same key get the same hits: the engine searches only these words."""
        return " ".join(query_terms(text, self.engine.config.max_query_terms))

    def _search(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Ranked rows for each distinct key among `texts`, each searched once."""
        keys = list(dict.fromkeys(k for k in map(self._key, texts) if k))
        self.num_searches += len(keys)
        found = {key: hits.rows for key, hits in zip(keys, self.engine.search_many(keys, self.config.k))}
        found[""] = np.zeros(0, np.int64)  # a wordless text retrieves nothing, unsearched
        return found

    def measure(self, queries: Sequence[str], expansions: Sequence[Sequence[str]]) -> list[Measurement]:
        """One Measurement per (queries[i], expansions[i]) pair; Y = () measures q alone."""
        if len(queries) != len(expansions):
            raise ValueError(f"{len(queries)} queries but {len(expansions)} expansion sets")
        new_queries = [q for q in dict.fromkeys(queries) if q not in self._cache]
        found = self._search([y for ys in expansions for y in ys] + new_queries)
        for q in new_queries:
            self._cache[q] = (found[self._key(q)], {})

        # Rows each query needs scored: its own results and the union over all of its rollouts,
        # less what is cached; then one relevance call for all queries.
        needed: dict[str, set[int]] = collections.defaultdict(set)
        for q, ys in zip(queries, expansions):
            self._cache.move_to_end(q)
            needed[q].update(self._cache[q][0].tolist())
            for y in ys:
                needed[q].update(found[self._key(y)].tolist())
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
        for q, ys in zip(queries, expansions):
            base, scores = self._cache[q]
            lists = (base, *(found[self._key(y)] for y in ys))
            union = np.unique(np.concatenate(lists))
            rel_u = np.array([scores[r] for r in union.tolist()], np.float64)
            rel_b = np.array([scores[r] for r in base.tolist()], np.float64)
            results.append(Measurement(
                rel=float(rel_u.mean()) if len(union) else 0.0,
                hits=int((rel_u >= self.config.tau).sum()), size=len(union),
                rel0=float(rel_b.mean()) if len(base) else 0.0,
                hits0=int((rel_b >= self.config.tau).sum()), lists=lists, union=union))
        while len(self._cache) > self.config.cache_queries:  # evict least recently used
            self._cache.popitem(last=False)
        return results


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
            r_rel = m.rel / max(m.rel0, self.config.eps)
            r_size = m.hits / max(m.hits0, 1)
            out.append(RewardBreakdown(
                reward=r_rel + self.config.lam * r_size, r_rel=r_rel, r_size=r_size, rel=m.rel,
                hits=m.hits, rel0=m.rel0, hits0=m.hits0, retrieved=m.size,
                n_expansions=len(p.expansions), valid=True, reject_reason=None))
        return out
