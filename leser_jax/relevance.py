"""The relevance model: rel(q, p) in [0, 1], the score that LESER's reward averages.

LESER (arXiv 2509.05570) scores what each expansion retrieves with a gradient-boosted relevance
model trained on human judgments of (query, product) pairs. This module is that model: XGBoost over
hand-made features, trained on the TRAIN split's judgments only (early stopping on the dev split),
its raw output calibrated on the dev split to the expected normalised grade
(`GradeScale.normalise`: 0 irrelevant, 1 perfectly relevant), so that the reward's threshold tau
means the same thing on every dataset. The paper gives neither its features nor its calibration;
both are ours.

The features (`FEATURE_NAMES`), what a call costs and the edge cases: relevance_features.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import xgboost as xgb

from leser_jax.catalog import Query
from leser_jax.relevance_features import FEATURE_NAMES, FEATURES_VERSION, RelevanceFeatures
from leser_jax.search import SearchEngine

MODEL_FILE = "relevance.ubj"
META_FILE = "relevance.json"
OBJECTIVES = ("reg:squarederror", "rank:ndcg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelevanceConfig:
    """The relevance model's features and XGBoost training.

    Attributes:
      objective: "reg:squarederror" (regress the normalised grade) or "rank:ndcg" (LambdaMART
        over each query's judged products, grouped by query id).
      rank_depth: K of the engine_rank feature: products beyond the engine's top-K get K+1.
      max_rounds: most boosting rounds; early stopping on the dev split usually stops sooner.
      early_stopping_rounds: rounds without dev improvement before stopping.
      learning_rate, max_depth, min_child_weight, subsample, colsample_bytree: XGBoost's.
      seed: XGBoost's seed (row and column sampling); the same seed gives the same model.
      nthread: XGBoost threads, for training and for prediction. 1 by default: on 2 shared cores
        OpenMP's spinning threads slowed training up to 30x whenever another process (or JAX)
        was busy, and prediction at the reward's batch sizes is no faster with 2.
      query_cache_size: query texts whose parsing and top-K search are kept (the reward scores
        each query once per rollout).
    """

    objective: str = "reg:squarederror"
    rank_depth: int = 100
    max_rounds: int = 300
    early_stopping_rounds: int = 30
    learning_rate: float = 0.1
    max_depth: int = 6
    min_child_weight: float = 1.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    seed: int = 0
    nthread: int = 1
    query_cache_size: int = 1024

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("rank_depth", "max_rounds", "early_stopping_rounds", "max_depth", "nthread",
                     "query_cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if not (0 < self.subsample <= 1 and 0 < self.colsample_bytree <= 1):
            raise ValueError("subsample and colsample_bytree must be in (0, 1]")
        if self.min_child_weight < 0 or self.seed < 0:
            raise ValueError("min_child_weight and seed must be >= 0")


# ----------------------------------------------------------------------------------------------
# Calibration, training, scoring
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Calibration:
    """Monotone map from the model's raw output to the expected normalised grade, in [0, 1].

    Isotonic regression (pool adjacent violators) on the dev split; the knots are the blocks'
    (mean raw output, mean grade), joined linearly, so between the first and last knot the map is
    strictly increasing and keeps the model's order (a step function would tie whole blocks);
    outside them it is flat.
    """

    x: np.ndarray  # [B] float64, ascending
    y: np.ndarray  # [B] float64, ascending, in [0, 1]

    @classmethod
    def fit(cls, raw: np.ndarray, target: np.ndarray) -> Calibration:
        # Equal raw outputs (trees give many) are one point with their mean grade.
        values, inverse, counts = np.unique(np.asarray(raw, np.float64), return_inverse=True,
                                            return_counts=True)
        sums = np.bincount(inverse, weights=np.asarray(target, np.float64), minlength=len(values))
        blocks: list[list[float]] = []  # [sum of raw, sum of target, count]
        for value, total, count in zip(values, sums, counts):
            blocks.append([value * count, total, float(count)])
            # Pool while the last block's mean grade is not above the previous block's
            # (sum_a / n_a <= sum_b / n_b, cross-multiplied).
            while len(blocks) > 1 and \
                    blocks[-1][1] * blocks[-2][2] <= blocks[-2][1] * blocks[-1][2]:
                last = blocks.pop()
                blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
        sums = np.asarray(blocks)  # [B, 3]
        return cls(x=sums[:, 0] / sums[:, 2], y=np.clip(sums[:, 1] / sums[:, 2], 0.0, 1.0))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, self.x, self.y).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class JudgedPairs:
    """The judged (query, product) pairs of a split, with their features.

    Queries are contiguous: query i's pairs are [bounds[i], bounds[i + 1]).
    """

    queries: list[Query]
    bounds: np.ndarray  # [Q + 1] int64
    rows: np.ndarray  # [N] int64
    grades: np.ndarray  # [N] float64, on the dataset's scale
    features: np.ndarray  # [N, F] float32

    def __len__(self) -> int:
        return len(self.rows)


def judged_pairs(features: RelevanceFeatures, split: str) -> JudgedPairs:
    """Features of every judged pair of a split's queries (one `features` call per query)."""
    catalog = features.catalog
    queries, rows, grades, blocks, bounds = [], [], [], [], [0]
    for query in catalog.split(split):
        judged = catalog.judgments.get(query.query_id)
        if not judged:
            continue
        query_rows = np.fromiter((catalog.row_of[p] for p in judged), np.int64, len(judged))
        queries.append(query)
        rows.append(query_rows)
        grades.append(np.fromiter(judged.values(), np.float64, len(judged)))
        blocks.append(features.features(query.text, query_rows))
        bounds.append(bounds[-1] + len(judged))
    if not queries:
        rows, grades, blocks = [np.zeros(0, np.int64)], [np.zeros(0)], \
            [np.zeros((0, len(FEATURE_NAMES)), np.float32)]
    return JudgedPairs(queries=queries, bounds=np.asarray(bounds, np.int64),
                       rows=np.concatenate(rows), grades=np.concatenate(grades),
                       features=np.concatenate(blocks))


class RelevanceModel:
    """rel(q, p): XGBoost over FEATURE_NAMES, calibrated to the expected normalised grade."""

    def __init__(self, booster: xgb.Booster, features: RelevanceFeatures, calibration: Calibration,
                 config: RelevanceConfig, info: dict | None = None):
        self.booster = booster
        self.booster.set_param({"nthread": config.nthread})
        self.features = features
        self.calibration = calibration
        self.config = config
        self.info = info or {}

    @classmethod
    def train(cls, engine: SearchEngine, config: RelevanceConfig = RelevanceConfig(), *,
              features: RelevanceFeatures | None = None, log=None) -> RelevanceModel:
        """Trains on the train split's judgments, early-stops and calibrates on the dev split."""
        start = time.perf_counter()
        features = features or RelevanceFeatures(engine, rank_depth=config.rank_depth,
                                                 query_cache_size=config.query_cache_size)
        if features.rank_depth != config.rank_depth or features.engine is not engine:
            raise ValueError("features must be computed by `engine` with config.rank_depth")
        scale = engine.catalog.scale
        train, dev = judged_pairs(features, "train"), judged_pairs(features, "dev")
        if not len(train) or not len(dev):
            raise ValueError(f"catalog {engine.catalog.name!r} has {len(train)} judged train pairs "
                             f"and {len(dev)} dev pairs: both splits need judgments")
        seconds_features = time.perf_counter() - start
        ranking = config.objective == "rank:ndcg"
        params = {
            "objective": config.objective, "tree_method": "hist", "seed": config.seed,
            "nthread": config.nthread, "eta": config.learning_rate, "max_depth": config.max_depth,
            "min_child_weight": config.min_child_weight, "subsample": config.subsample,
            "colsample_bytree": config.colsample_bytree,
            # Linear gain: the labels are fractional normalised grades, not integer levels.
            **({"eval_metric": "ndcg@10", "ndcg_exp_gain": False} if ranking
               else {"eval_metric": "rmse"}),
        }

        def matrix(pairs: JudgedPairs) -> xgb.DMatrix:
            label = (pairs.grades - scale.grade_min) / (scale.grade_max - scale.grade_min)
            qid = np.repeat(np.arange(len(pairs.queries)), np.diff(pairs.bounds))
            return xgb.DMatrix(pairs.features, label=label, qid=qid if ranking else None,
                               feature_names=list(FEATURE_NAMES), nthread=config.nthread)

        dtrain, ddev = matrix(train), matrix(dev)
        history: dict = {}
        booster = xgb.train(params, dtrain, num_boost_round=config.max_rounds,
                            evals=[(ddev, "dev")], evals_result=history, verbose_eval=False,
                            early_stopping_rounds=config.early_stopping_rounds)
        best = booster.best_iteration
        booster = booster[: best + 1]  # the rounds after the best only cost prediction time
        raw_dev = booster.inplace_predict(dev.features)
        calibration = Calibration.fit(raw_dev, scale.normalise(dev.grades))
        metric = params["eval_metric"]
        info = {"train_pairs": len(train), "train_queries": len(train.queries),
                "dev_pairs": len(dev), "dev_queries": len(dev.queries), "rounds": best + 1,
                "dev_metric": {metric: float(history["dev"][metric][best])},
                "calibration_knots": len(calibration.x),
                "seconds_features": round(seconds_features, 2),
                "seconds_total": round(time.perf_counter() - start, 2)}
        if log:
            log(f"relevance model: {info}")
        return cls(booster, features, calibration, config, info)

    def score(self, query_text: str, products) -> np.ndarray:
        """rel(q, p) in [0, 1] for each product (ids or rows): [n] float32.

        One feature batch and exactly one `inplace_predict`; a query without words scores 0.
        """
        rows = self.features.rows_of(products)
        if not len(rows) or not self.features.has_words(query_text):
            return np.zeros(len(rows), np.float32)
        return self.score_features(self.features.features(query_text, rows))

    def score_many(self, requests) -> list[np.ndarray]:
        """`score` for many (query_text, products) pairs with ONE `inplace_predict` in all.

        For the reward, which scores every rollout of a GRPO group (or a whole step) at once:
        XGBoost's fixed cost per call (~0.3 ms here) is then paid once, not once per request.
        """
        blocks, sizes = [], []
        for query_text, products in requests:
            rows = self.features.rows_of(products)
            words = len(rows) and self.features.has_words(query_text)
            blocks.append(self.features.features(query_text, rows) if words else None)
            sizes.append(len(rows))
        computed = [b for b in blocks if b is not None]
        scores = iter(np.split(self.score_features(np.concatenate(computed)),
                               np.cumsum([len(b) for b in computed])[:-1]) if computed else [])
        return [next(scores) if b is not None else np.zeros(n, np.float32)
                for b, n in zip(blocks, sizes)]

    def score_features(self, x: np.ndarray) -> np.ndarray:
        """Calibrated scores [n] of a feature matrix [n, F] (one `inplace_predict`)."""
        return self.calibration(self.booster.inplace_predict(x))

    def save(self, path: str) -> None:
        """Writes PATH/relevance.ubj (the booster) and PATH/relevance.json (everything else)."""
        os.makedirs(path, exist_ok=True)
        self.booster.save_model(os.path.join(path, MODEL_FILE))
        meta = {"features_version": FEATURES_VERSION, "feature_names": list(FEATURE_NAMES),
                "config": dataclasses.asdict(self.config),
                "calibration": {"x": self.calibration.x.tolist(), "y": self.calibration.y.tolist()},
                "catalog": self.features.catalog.name,
                "search_config": dataclasses.asdict(self.features.engine.config), "info": self.info}
        with open(os.path.join(path, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)

    @classmethod
    def load(cls, path: str, engine: SearchEngine) -> RelevanceModel:
        """Reads a model written by `save`; its features must be this code's features."""
        model_path, meta_path = os.path.join(path, MODEL_FILE), os.path.join(path, META_FILE)
        for file in (meta_path, model_path):
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file} not found: {path} holds no saved relevance model "
                                        f"(run experiments.train_relevance)")
        with open(meta_path) as f:
            meta = json.load(f)
        saved = (meta.get("features_version"), meta.get("feature_names"))
        if saved != (FEATURES_VERSION, list(FEATURE_NAMES)):
            raise ValueError(
                f"{meta_path}: the model was trained on features version {saved[0]} "
                f"{saved[1]}, but this code computes features version {FEATURES_VERSION} "
                f"{list(FEATURE_NAMES)}; retrain it with experiments.train_relevance")
        config = RelevanceConfig(**meta["config"])
        booster = xgb.Booster()
        booster.load_model(model_path)
        calibration = Calibration(x=np.asarray(meta["calibration"]["x"], np.float64),
                                  y=np.asarray(meta["calibration"]["y"], np.float64))
        features = RelevanceFeatures(engine, rank_depth=config.rank_depth,
                                     query_cache_size=config.query_cache_size)
        return cls(booster, features, calibration, config, meta.get("info"))


# ----------------------------------------------------------------------------------------------
# Evaluation against the judgments
# ----------------------------------------------------------------------------------------------

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


def evaluate(model: RelevanceModel, split: str = "test", *, k: int = 10, bins: int = 10) -> dict:
    """The model against the human judgments of a split, beside three baselines.

    nDCG@k ranks each query's judged products only (unjudged products are unknown, not
    irrelevant), gain = normalised grade; queries whose judged grades are all equal are excluded
    (every order scores the same) and counted. Systems: the model (calibrated, as the reward sees
    it, and raw), BM25 (the engine's full-query score of each product), term overlap (share of
    the query's words in the product's text) and random order (all tied: the metric's floor).
    The model's margin over BM25 comes with a bootstrap 95% interval over queries. AUC pools
    every pair: relevant (grade >= relevant_at) against not. The calibration table bins the
    model's scores and gives each bin's mean normalised grade, which should be near its mean score.
    """
    scale = model.features.catalog.scale
    pairs = judged_pairs(model.features, split)
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
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, systems["model"], side="right") - 1, 0, bins - 1)
    table = []
    for i in range(bins):
        members = which == i
        mean = (lambda v: float(v[members].mean())) if members.any() else (lambda v: None)
        table.append({"bin": f"[{edges[i]:.1f}, {edges[i + 1]:.1f}{']' if i == bins - 1 else ')'}",
                      "count": int(members.sum()), "mean_score": mean(systems["model"]),
                      "mean_normalised_grade": mean(gains), "share_relevant": mean(relevant)})
    return {
        "split": split, "k": k, "queries": len(pairs.queries),
        "queries_evaluated": len(pairs.queries) - excluded,
        "queries_excluded_equal_grades": excluded,
        "pairs": len(pairs), "relevant_pairs": int(relevant.sum()),
        f"ndcg@{k}": {name: float(np.mean(v)) if v else float("nan") for name, v in ndcg.items()},
        f"ndcg@{k}_model_minus_bm25": {
            "mean": float(delta.mean()) if len(delta) else float("nan"),
            "bootstrap_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "queries_better": int((delta > 1e-9).sum()),
            "queries_worse": int((delta < -1e-9).sum()),
            "queries_equal": int((np.abs(delta) <= 1e-9).sum())},
        "auc": {name: roc_auc(scores, relevant) for name, scores in systems.items()},
        "calibration": table,
    }
