"""The relevance model against the human judgments: nDCG@k, AUC, calibration, per query kind.

LESER (arXiv 2509.05570) reports no measurement of its relevance model itself; these are ours, for
experiments.train_relevance's metrics.json. Everything is computed on judged pairs only: an
unjudged product is unknown, not irrelevant.
"""

from __future__ import annotations

import numpy as np

from leser_jax.relevance_features import FEATURE_NAMES


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """nDCG@k of ranking items by `scores` (descending), gain = `gains`, discount 1/log2(1 + i).

    Tied scores get the mean gain of their tie group at each of its positions: the expected
    DCG over the orders of the tie (McSherry and Najork, 2008), so a constant scorer gets no
    credit from the order the items happened to come in.
    """
    scores, gains = np.asarray(scores, np.float64), np.asarray(gains, np.float64)
    discount = 1.0 / np.log2(np.arange(2, len(gains) + 2))  # [n]
    discount[k:] = 0.0
    ideal = float(np.sort(gains)[::-1] @ discount)
    if ideal <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_gains = scores[order], gains[order]
    _, group, counts = np.unique(-sorted_scores, return_inverse=True, return_counts=True)
    group_gain = np.bincount(group, weights=sorted_gains) / counts  # [G]
    return float(group_gain[group] @ discount) / ideal


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half); nan if one class."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    num_pos, num_neg = int(labels.sum()), int((~labels).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    return float((average_rank[labels].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def next_grade_below(grades: np.ndarray, relevant_at: float) -> float | None:
    """The highest judged grade below relevant_at (synthetic: 2, substitute; None if none)."""
    below = np.unique(np.asarray(grades)[np.asarray(grades) < relevant_at])
    return float(below[-1]) if len(below) else None


def separation(scores: np.ndarray, grades: np.ndarray, relevant_at: float,
               next_grade: float | None) -> dict:
    """AUCs of relevant (grade >= relevant_at) against the rest and against the next grade below
    only (on the synthetic catalog: exact against substitute), and the mean score of each grade."""
    relevant = grades >= relevant_at
    near = relevant | (grades == next_grade)
    return {"pairs": len(grades), "relevant_pairs": int(relevant.sum()),
            "auc_relevant_vs_rest": roc_auc(scores, relevant),
            "auc_relevant_vs_next_grade": roc_auc(scores[near], relevant[near]),
            "mean_score_by_grade": {f"{g:g}": float(scores[grades == g].mean())
                                    for g in np.unique(grades)}}


def evaluate(model, split: str = "test", *, k: int = 10, bins: int = 10) -> dict:
    """A RelevanceModel against the human judgments of a split, beside three baselines.

    nDCG@k ranks each query's judged products only (unjudged products are unknown, not
    irrelevant), gain = normalised grade; queries whose judged grades are all equal are excluded
    (every order scores the same) and counted. Systems: the model (calibrated, as the reward sees
    it, and raw), BM25 (the engine's full-query score of each product), term overlap (share of
    the query's words in the product's text) and random order (all tied: the metric's floor).
    The model's margin over BM25 comes with a bootstrap 95% interval over queries. AUC pools
    every pair: relevant (grade >= relevant_at) against not; `auc_relevant_vs_next_grade` against
    the highest grade below relevant_at only (`next_grade`; synthetic: exact 3 against substitute
    2), the hardest line to draw. Where queries have kinds (synthetic: exact, broad, brand,
    problem), `by_kind` gives both AUCs and the mean score of each grade per kind. The calibration
    table bins the model's scores and gives each bin's share of relevant pairs and mean normalised
    grade: the first should be near its mean score (the second, for target="grade").
    """
    scale = model.features.catalog.scale
    pairs = model.judged(split)
    gains = scale.normalise(pairs.grades)  # [N] in [0, 1]
    raw = model.booster.inplace_predict(pairs.features)  # [N]
    systems = {"model": model.calibration(raw), "model_raw": raw,
               "bm25": pairs.features[:, FEATURE_NAMES.index("bm25_total")],
               "term_overlap": pairs.features[:, FEATURE_NAMES.index("text_coverage")],
               "random_order": np.zeros(len(pairs), np.float32)}  # all tied: the floor
    ndcg = {name: [] for name in systems}
    excluded = 0
    for a, b in zip(pairs.bounds[:-1], pairs.bounds[1:]):
        if np.all(gains[a:b] == gains[a]):
            excluded += 1
            continue
        for name, scores in systems.items():
            ndcg[name].append(ndcg_at_k(scores[a:b], gains[a:b], k))
    # The model against BM25, query by query, with a bootstrap interval over queries: on
    # Home Depot every system lands within 0.02 of the others, so a margin needs its noise.
    delta = np.asarray(ndcg["model"]) - np.asarray(ndcg["bm25"])  # [queries evaluated]
    rng = np.random.default_rng(0)
    boot = [delta[rng.integers(0, len(delta), len(delta))].mean() for _ in range(1000)] \
        if len(delta) else [float("nan")]
    relevant = pairs.grades >= scale.relevant_at
    next_grade = next_grade_below(pairs.grades, scale.relevant_at)
    near = relevant | (pairs.grades == next_grade)
    kinds = np.repeat(np.asarray([q.kind for q in pairs.queries], dtype=object),
                      np.diff(pairs.bounds))  # [N]
    by_kind = {kind: {system: separation(systems[system][kinds == kind],
                                         pairs.grades[kinds == kind], scale.relevant_at,
                                         next_grade) for system in ("model", "bm25")}
               for kind in sorted(set(kinds)) if kind}
    return {
        "split": split, "k": k, "queries": len(pairs.queries),
        "queries_evaluated": len(pairs.queries) - excluded,
        "queries_excluded_equal_grades": excluded,
        "pairs": len(pairs), "relevant_pairs": int(relevant.sum()),
        "target": model.config.target,
        f"ndcg@{k}": {name: float(np.mean(v)) if v else float("nan") for name, v in ndcg.items()},
        f"ndcg@{k}_model_minus_bm25": {
            "mean": float(delta.mean()) if len(delta) else float("nan"),
            "bootstrap_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "queries_better": int((delta > 1e-9).sum()),
            "queries_worse": int((delta < -1e-9).sum()),
            "queries_equal": int((np.abs(delta) <= 1e-9).sum())},
        "auc": {name: roc_auc(scores, relevant) for name, scores in systems.items()},
        "next_grade": next_grade,
        "auc_relevant_vs_next_grade": {name: roc_auc(scores[near], relevant[near])
                                       for name, scores in systems.items()},
        "by_kind": by_kind,
        "calibration": calibration_table(systems["model"], gains, relevant, bins),
    }


def calibration_table(scores: np.ndarray, gains: np.ndarray, relevant: np.ndarray,
                      bins: int) -> list[dict]:
    """Scores [N] in equal-width bins: each bin's count, mean score, mean normalised grade and
    share of relevant pairs."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    table = []
    for i in range(bins):
        members = which == i
        mean = (lambda v: float(v[members].mean())) if members.any() else (lambda v: None)
        table.append({"bin": f"[{edges[i]:.1f}, {edges[i + 1]:.1f}{']' if i == bins - 1 else ')'}",
                      "count": int(members.sum()), "mean_score": mean(scores),
                      "mean_normalised_grade": mean(gains), "share_relevant": mean(relevant)})
    return table
