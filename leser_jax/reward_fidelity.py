"""Does the reward order a group's answers the way people's judgments do?

GRPO (LESER, arXiv 2509.05570) learns only from differences within a group: each rollout's
advantage is its reward minus the mean reward of the N answers to the same query. Judged recall
can rise only where the reward's order of a group's answers agrees with the order the human
labels give them. This module measures that agreement without a policy, so that a relevance
model or a reward constant can be judged by what GRPO will learn from it before hours of RL.

The pool. Per query, answer sets built from the search-guided teacher's candidates
(teacher.propose over the query's context, the answers a warmed-up policy writes): each of the
first `singles` candidates alone, and every pair of the first `pairs_of`. Each set Y is measured
once (reward.SearchFeedback) and scored by each signal: the reward r(Y) = r_rel(Y) + lambda *
r_size(Y) for each lambda asked (`reward_signal` names them) and its two terms alone
(reward.reward_terms), against judged recall and judged nDCG@10 (metrics.judged_metrics). The
terms do not depend on lambda, so one measurement compares every lambda, paired by query.

Per query (ours; the paper reports no such measurement):
  agreement  over the pairs of sets whose judged value differs, the share that the signal orders
             the same way (a signal tie counts half): the chance that a two-answer group's
             advantage points where the labels do. 0.5 is a signal that knows nothing.
  taken      j(the signal's best set) - j(q alone): the judged gain that maximising the signal
             would take from the pool (ties at the top: their mean j);
  reachable  max j - j(q alone): the most the pool offers. taken / reachable, over the mean of
             each, is the share of the reachable gain the signal finds.
Queries where every set has the same judged value are uninformative for agreement (the labels
cannot tell the answers apart) and are counted.

The policy's own groups (`policy_pools`): the pool may instead be N answers that a policy
samples for the query, as GRPO draws them (its distinct answers that parse; one that does not
parse gets reward 0 whatever the signal, so it says nothing about the signal's order). Then
agreement is the chance that GRPO's advantage on that policy's group points where the labels
do, and `mean` (the pool's mean judged gain over q alone) against `taken` is what choosing by the
signal gains over the group as sampled.

`LabelRelevance` reads the human label where a pair is judged (1.0 relevant, 0.0 not) and asks
the relevance model elsewhere: the reward a relevance model that is perfect on judged products
would give. Its agreement is the ceiling of what better relevance scores can buy with this
reward formula and this pool; the distance from the model's agreement to it is the lever.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from leser_jax.catalog import Catalog, Query
from leser_jax.context import ContextConfig, build_context
from leser_jax.metrics import judged_metrics
from leser_jax.prompts import AnswerFormat, parse_answer
from leser_jax.reward import Relevance, RewardConfig, SearchFeedback, reward_terms
from leser_jax.search import SearchEngine
from leser_jax.teacher import TeacherConfig, propose

TERMS = ("r_rel", "r_size")
TARGETS = ("judged_recall", "ndcg10")


def reward_signal(lam: float) -> str:
    """The name of r_rel + lam * r_size among the signals: 'reward (lambda 0.1)'."""
    return f"reward (lambda {lam:g})"


class LabelRelevance:
    """rel(q, p) = the human label of (q, p) where judged, else the wrapped model's score."""

    def __init__(self, model: Relevance, catalog: Catalog, queries: Sequence[Query]):
        self.model = model
        self.labels: dict[str, dict[int, float]] = {}  # query text -> {row: 1.0 or 0.0}
        for query in queries:
            judged = self.labels.setdefault(query.text, {})
            for pid, grade in catalog.judgments.get(query.query_id, {}).items():
                judged[catalog.row_of[pid]] = float(catalog.scale.is_relevant(grade))

    def score(self, query: str, rows: np.ndarray) -> np.ndarray:
        return self.score_many([(query, rows)])[0]

    def score_many(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        out = []
        for (query, rows), scores in zip(requests, self.model.score_many(requests)):
            labels = self.labels.get(query, {})
            out.append(np.asarray([labels.get(r, s) for r, s in zip(np.asarray(rows).tolist(),
                                                                     scores.tolist())],
                                  np.float32))
        return out


def answer_sets(query: str, engine: SearchEngine, context: ContextConfig,
                teacher: TeacherConfig = TeacherConfig(), *, singles: int = 12,
                pairs_of: int = 4) -> list[tuple[str, ...]]:
    """The pool of one query (module docstring): singles, then pairs, in candidate order."""
    _, candidates = propose(query, build_context(query, engine, context), teacher)
    texts = [c.text for c in candidates]
    return ([(t,) for t in texts[:singles]]
            + list(itertools.combinations(texts[:pairs_of], 2)))


def policy_pools(texts: Sequence[str], num_samples: int, fmt: AnswerFormat
                 ) -> tuple[list[list[tuple[str, ...]]], int]:
    """Per query, the distinct answer sets that parse among its `num_samples` completions
    (texts [Q * N], query-major, as rollout.generate_rollouts returns them), in sample order;
    and how many completions did not parse."""
    if len(texts) % num_samples:
        raise ValueError(f"{len(texts)} completions are not groups of {num_samples}")
    pools, invalid = [], 0
    for start in range(0, len(texts), num_samples):
        pool: dict[tuple[str, ...], None] = {}
        for text in texts[start:start + num_samples]:
            parsed = parse_answer(text, fmt)
            if parsed.valid:
                pool.setdefault(tuple(parsed.expansions), None)
            else:
                invalid += 1
        pools.append(list(pool))
    return pools, invalid


def agreement(signal: np.ndarray, judged: np.ndarray) -> float:
    """Share of the pairs with different judged values that `signal` orders alike; ties half.

    signal, judged: [S] over one query's answer sets. NaN if every judged value is equal.
    """
    i, k = np.triu_indices(len(judged), 1)
    differ = judged[i] != judged[k]
    if not differ.any():
        return float("nan")
    i, k = i[differ], k[differ]
    same = np.sign(signal[i] - signal[k]) * np.sign(judged[i] - judged[k])  # [P] in {-1, 0, 1}
    return float(np.mean((same + 1) / 2))


def taken(signal: np.ndarray, judged: np.ndarray, judged0: float) -> float:
    """j of the signal's best set (ties: their mean) minus j0, the judged value of q alone."""
    return float(judged[signal == signal.max()].mean() - judged0)


@dataclasses.dataclass(frozen=True)
class QueryFidelity:
    """One query's pool: agreement[target][signal] (NaN where undefined), taken[target][signal],
    reachable[target], mean[target] (the pool's mean judged gain over q alone), the number of
    answer sets measured, and the query's kind."""

    sets: int
    agreement: dict[str, dict[str, float]]
    taken: dict[str, dict[str, float]]
    reachable: dict[str, float]
    mean: dict[str, float]
    kind: str | None = None


def measure(queries: Sequence[Query], pools: Sequence[Sequence[tuple[str, ...]]],
            catalog: Catalog, feedback: SearchFeedback, *, lambdas: Sequence[float] = (),
            chunk: int = 64) -> list[QueryFidelity]:
    """Each query's pool measured by `feedback` (its relevance and reward config) and labels.

    Signals: the reward for each of `lambdas` (default: feedback.config.lam), r_rel and r_size.
    `chunk` queries share one `feedback.measure` call (one relevance-model call). Queries with
    fewer than two sets, or without a judged-relevant product, are left out.
    """
    lambdas = tuple(lambdas) or (feedback.config.lam,)
    kept = [(q, pool) for q, pool in zip(queries, pools) if len(pool) >= 2]
    out = []
    for start in range(0, len(kept), chunk):
        part = kept[start:start + chunk]
        texts = [q.text for q, pool in part for _ in range(len(pool) + 1)]
        measured = iter(feedback.measure(texts, [y for _, pool in part for y in [(), *pool]]))
        for query, pool in part:
            one = [next(measured) for _ in range(len(pool) + 1)]  # q alone, then the pool
            result = _fidelity(query, one, catalog, feedback.config, lambdas)
            if result is not None:
                out.append(result)
    return out


def _fidelity(query: Query, measured, catalog: Catalog, config: RewardConfig,
              lambdas: Sequence[float]) -> QueryFidelity | None:
    judged = np.asarray([judged_metrics(catalog, query, m) for m in measured])  # [S + 1, 2]
    if np.isnan(judged[0, 0]):
        return None
    terms = np.asarray([reward_terms(m, config) for m in measured[1:]])  # [S, 2]
    signals = {**{reward_signal(lam): terms[:, 0] + lam * terms[:, 1] for lam in lambdas},
               **dict(zip(TERMS, terms.T))}
    return QueryFidelity(
        sets=len(measured) - 1,
        agreement={t: {s: agreement(v, judged[1:, j]) for s, v in signals.items()}
                   for j, t in enumerate(TARGETS)},
        taken={t: {s: taken(v, judged[1:, j], judged[0, j]) for s, v in signals.items()}
               for j, t in enumerate(TARGETS)},
        reachable={t: float(judged[1:, j].max() - judged[0, j]) for j, t in enumerate(TARGETS)},
        mean={t: float(judged[1:, j].mean() - judged[0, j]) for j, t in enumerate(TARGETS)},
        kind=query.kind)


def column(results: Sequence[QueryFidelity], what: str, target: str,
           signal: str | None = None) -> np.ndarray:
    """[Q] per-query values of `what` ("agreement", "taken", or "reachable" and "mean" without
    a signal), NaN where undefined."""
    return np.asarray([getattr(r, what)[target] if signal is None
                       else getattr(r, what)[target][signal] for r in results], np.float64)
