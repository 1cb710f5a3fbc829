"""Evaluation: the paper's gains and two judged metrics, for any query-expansion system.

A *system* maps a batch of query texts to one `ParsedAnswer` each (prompts.py): the baselines
(baselines.py), the teacher and every trained policy are systems. An answer that does not parse
counts against the system's validity and is evaluated as Y = {} (a production system would fall
back to the original query), so its gains are 0, not undefined.

Per query, with the measurement of reward.SearchFeedback and the reward's own `gains` (so
metric and reward cannot disagree on what was retrieved, how relevant it is, or how it counts):

    relevance gain   (x(Y) - x({})) / max(x({}), floor), x = mean rel of the first page of
                     M(Y) (version 2; version 1: mean rel over U(Y))
    retrieval gain   the same for s = the expected relevant products of U(Y) (version 2's
                     default; or its count, or hits; version 1: hits)
    judged recall    |U(Y) & R| / |R|, R = products judged relevant (grade >= relevant_at);
                     queries without a judged-relevant product are left out
    judged nDCG@10   nDCG@10 of the merged ranking M(Y), condensed to judged products (unjudged
                     ones are dropped, not counted as irrelevant: judgments are sparse); gain =
                     normalised grade; the ideal ranking is over all of the query's judged products
    retrieved        |U(Y)|, the products the engine returns for q and its expansions
    searches         engine searches a query costs: 1 + the distinct expansions (serving M(Y)),
                     plus those the system made to write Y (a system that counts them in
                     `num_searches`, as the search-guided teacher does for its candidates).
                     RM3's feedback search is not one more: its top fb_docs are the first
                     results of q's own search, which serving makes anyway (it adds a round trip
                     before the expansions, not a search)

Gains are often written as ratios minus 1; the difference forms are equal to them whenever
the denominator is the true baseline, and stay defined (and exactly 0 for Y = {}) when q alone
finds nothing relevant. The merged ranking M(Y) (reward.merged_ranking) interleaves the ranked
lists S_K(q), S_K(y1), ..., S_K(ym) round-robin, skipping repeats: our reading of how a
production engine would merge the results of several queries.

The judged metrics do not depend on the relevance model, which is what keeps it honest: a policy
can learn to fool XGBoost, not the human labels. Means come with bootstrap 95% confidence
intervals over queries.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from leser_jax.catalog import Catalog, Query
from leser_jax.prompts import ParsedAnswer
from leser_jax.reward import Measurement, SearchFeedback, gains, merged_ranking

System = Callable[[Sequence[str]], Sequence[ParsedAnswer]]

METRICS = ("relevance_gain", "retrieval_gain", "judged_recall", "ndcg10", "validity", "n_expansions",
           "retrieved", "searches")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over queries with its bootstrap 95% confidence interval and the number of queries."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One system's metrics over a query set; `per_query` holds the raw values (NaN = left out)."""

    metrics: dict[str, Estimate]
    latency_ms: float  # the system's wall time per query
    per_query: dict[str, np.ndarray]
    kinds: np.ndarray | None = None  # [Q] each query's kind ("" where the dataset has none)
    answers: tuple[ParsedAnswer, ...] = ()  # [Q] what the system answered, in query order

    def as_dict(self) -> dict:
        return {"latency_ms": self.latency_ms,
                **{name: dataclasses.asdict(e) for name, e in self.metrics.items()}}


def ndcg_at(ranked_gains: Sequence[float], all_gains: Sequence[float], n: int = 10) -> float:
    """nDCG@n of a ranking's gains against the ideal order of `all_gains`; NaN if all are 0.

    DCG = sum_i gain_i / log2(i + 2) over the first n positions (i from 0).
    """
    discounts = 1.0 / np.log2(np.arange(n) + 2.0)
    ideal = np.sort(np.asarray(all_gains, np.float64))[::-1][:n]
    idcg = float(ideal @ discounts[:len(ideal)])
    if idcg == 0:
        return float("nan")
    gains = np.asarray(ranked_gains, np.float64)[:n]
    return float(gains @ discounts[:len(gains)]) / idcg


def judged_metrics(catalog: Catalog, query: Query, m: Measurement) -> tuple[float, float]:
    """(judged recall, judged nDCG@10) of one measured expansion set; NaN where undefined."""
    judged = catalog.judgments.get(query.query_id, {})
    relevant = {catalog.row_of[pid] for pid, g in judged.items() if catalog.scale.is_relevant(g)}
    recall = (len(relevant & set(m.union.tolist())) / len(relevant)) if relevant else float("nan")
    gain = {catalog.row_of[pid]: catalog.scale.normalise(g) for pid, g in judged.items()}
    condensed = [gain[row] for row in merged_ranking(m.lists) if row in gain]
    return recall, ndcg_at(condensed, list(gain.values()))


def bootstrap(values: np.ndarray, *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Mean and percentile-bootstrap 95% interval over the non-NaN values."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), float(low), float(high), len(values))


def evaluate(system: System, queries: Sequence[Query], catalog: Catalog, feedback: SearchFeedback,
             *, batch_size: int = 64, bootstrap_samples: int = 1000, seed: int = 0) -> Evaluation:
    """Runs `system` on `queries` in batches and measures what its expansions retrieve."""
    answers: list[ParsedAnswer] = []
    own_searches = np.zeros(len(queries))  # [Q] searches the system made to write its answers
    start = time.perf_counter()
    for i in range(0, len(queries), batch_size):
        before = getattr(system, "num_searches", 0)
        answers.extend(system([q.text for q in queries[i:i + batch_size]]))
        batch = own_searches[i:i + batch_size]
        batch[:] = (getattr(system, "num_searches", 0) - before) / len(batch)
    latency_ms = 1000 * (time.perf_counter() - start) / max(len(queries), 1)
    if len(answers) != len(queries):
        raise ValueError(f"system returned {len(answers)} answers for {len(queries)} queries")

    measured = feedback.measure([q.text for q in queries], [a.expansions for a in answers])
    per_query = {name: np.full(len(queries), np.nan) for name in METRICS}
    for i, (q, a, m) in enumerate(zip(queries, answers, measured)):
        per_query["relevance_gain"][i], per_query["retrieval_gain"][i] = gains(m, feedback.config)
        per_query["judged_recall"][i], per_query["ndcg10"][i] = judged_metrics(catalog, q, m)
        per_query["validity"][i] = float(a.valid)
        per_query["n_expansions"][i] = len(a.expansions)
        per_query["retrieved"][i] = m.size
        served = {feedback.search_key(y) for y in a.expansions} - {""}
        per_query["searches"][i] = 1 + len(served) + own_searches[i]
    metrics = {name: bootstrap(v, samples=bootstrap_samples, seed=seed) for name, v in per_query.items()}
    return Evaluation(metrics=metrics, latency_ms=latency_ms, per_query=per_query,
                      kinds=np.array([q.kind for q in queries], dtype=object),
                      answers=tuple(answers))
