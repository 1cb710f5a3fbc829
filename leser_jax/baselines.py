"""Baseline query-expansion systems that LESER is compared with.

- `no_expansion`: Y = {}: the original query alone. Every gain is 0 by construction.
- `RM3Expansion`: pseudo-relevance feedback in the manner of RM3 (Lavrenko & Croft's relevance
  model, as Anserini implements it): the top `fb_docs` results of the original query are taken as
  relevant, each term t gets weight sum_d P(d|q) * tf(t, d) / |d| with P(d|q) proportional to the
  document's BM25 score, and the best terms not already in the query are appended to it. RM3
  interpolates the expanded query with the original; here the original is always searched too
  (U(Y) contains S_k(q)), so the expansions carry only the added terms, `terms_per_expansion` at
  a time, as `num_expansions` queries "q + t1 t2".

A system takes a batch of query texts and returns one `ParsedAnswer` each (metrics.System).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from leser_jax.prompts import ParsedAnswer
from leser_jax.search import SearchEngine, query_terms

# Words with no retrieval value that product text is full of (a short list; BM25's idf handles
# the rest, but RM3 weights by term frequency, where these would win).
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or our that the this to "
    "with without your you x ft lb oz pack set pcs piece pieces".split())


def no_expansion(queries: Sequence[str]) -> list[ParsedAnswer]:
    return [ParsedAnswer(expansions=()) for _ in queries]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RM3Config:
    """fb_docs: feedback documents; num_expansions x terms_per_expansion terms are added."""

    fb_docs: int = 10
    num_expansions: int = 2
    terms_per_expansion: int = 2

    def __post_init__(self):
        if min(self.fb_docs, self.num_expansions, self.terms_per_expansion) < 1:
            raise ValueError("fb_docs, num_expansions and terms_per_expansion must be >= 1")


class RM3Expansion:
    """Pseudo-relevance feedback: expansions from the top results' most typical terms."""

    def __init__(self, engine: SearchEngine, config: RM3Config = RM3Config()):
        self.engine = engine
        self.config = config
        self._max_terms = engine.config.max_query_terms

    def _doc_terms(self, row: int) -> list[str]:
        p = self.engine.catalog.products[row]
        text = " ".join((p.title, p.description, " ".join(p.attributes.values())))
        return [t for t in query_terms(text, 10_000) if t not in STOPWORDS and not t.isdigit()]

    def expand(self, query: str) -> tuple[str, ...]:
        hits = self.engine.search(query, self.config.fb_docs)
        if not len(hits):
            return ()
        p_doc = hits.scores / hits.scores.sum()  # P(d|q), proportional to the BM25 score
        weights: collections.Counter[str] = collections.Counter()
        for row, p in zip(hits.rows.tolist(), p_doc.tolist()):
            terms = self._doc_terms(row)
            for term, tf in collections.Counter(terms).items():
                weights[term] += p * tf / len(terms)
        seen = set(query_terms(query, self._max_terms))
        best = [t for t, _ in weights.most_common() if t not in seen]
        n = self.config.terms_per_expansion
        return tuple(f"{query} {' '.join(best[i * n:(i + 1) * n])}"
                     for i in range(self.config.num_expansions) if best[i * n:(i + 1) * n])

    def __call__(self, queries: Sequence[str]) -> list[ParsedAnswer]:
        return [ParsedAnswer(expansions=self.expand(q)) for q in queries]
