"""The relevance model: rel(q, p) in [0, 1], the score that LESER's reward averages.

LESER (arXiv 2509.05570) scores what each expansion retrieves with a gradient-boosted relevance
model trained on human judgments of (query, product) pairs. This module is that model: XGBoost over
hand-made features, trained on the TRAIN split's judgments only (early stopping on the dev split),
its raw output calibrated on the dev split to the probability that a person judges p relevant to
the original query q (grade >= the dataset's relevant_at: rel(q, p) of reward version 2,
leser_jax/reward.py), so that a score means the same thing on every dataset. `RelevanceConfig.target="grade"` keeps
the first version's target, the expected normalised grade (`GradeScale.normalise`), to reproduce
its numbers. The paper gives neither its features nor its calibration; both are ours.

The features: the lexical ones (`FEATURE_NAMES`, relevance_features.py, which also says what a
call costs and the edge cases) and, unless `associations=False`, the query-word x product-term
associations learned from the train judgments (`ASSOCIATION_NAMES`, relevance_associations.py),
computed out of fold for the rows the model is trained on. Its measurement against the judgments
(nDCG@10, AUCs, calibration, per query kind): relevance_eval.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import xgboost as xgb

from leser_jax.catalog import Catalog, Query
from leser_jax.relevance_associations import ASSOCIATION_NAMES, Associations
from leser_jax.relevance_features import FEATURE_NAMES, FEATURES_VERSION, RelevanceFeatures
from leser_jax.search import SearchEngine

MODEL_FILE = "relevance.ubj"
META_FILE = "relevance.json"
OBJECTIVES = ("reg:squarederror", "rank:ndcg")
TARGETS = ("relevant", "grade")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelevanceConfig:
    """The relevance model's features and XGBoost training.

    Attributes:
      target: what a score means. "relevant": P(grade >= relevant_at), the label of the training
        rows and of the dev calibration; "grade": the expected normalised grade (version 1).
      objective: "reg:squarederror" (regress the target) or "rank:ndcg" (LambdaMART over each
        query's judged products, grouped by query id).
      associations: add the association features (relevance_associations.py); False gives the
        version 1 model (lexical features only).
      association_prior: m, the Beta prior's strength in pseudo-pairs (relevance_associations).
      association_folds: folds of the train queries for the out-of-fold association features.
      rank_depth: K of the engine_rank feature: products beyond the engine's top-K get K+1.
      max_rounds: most boosting rounds; early stopping on the dev split usually stops sooner.
      early_stopping_rounds: rounds without dev improvement before stopping.
      learning_rate, max_depth, min_child_weight, subsample, colsample_bytree: XGBoost's.
      seed: XGBoost's seed (row and column sampling) and the folds' hash seed; the same seed gives
        the same model.
      nthread: XGBoost threads, for training and for prediction. 1 by default: on 2 shared cores
        OpenMP's spinning threads slowed training many times over whenever another process (or
        JAX) was busy, and prediction at the reward's batch sizes is no faster with 2.
      query_cache_size: query texts whose parsing and top-K search are kept (the reward scores
        each query once per rollout).
    """

    target: str = "relevant"
    objective: str = "reg:squarederror"
    associations: bool = True
    association_prior: float = 10.0
    association_folds: int = 5
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
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.association_prior <= 0:
            raise ValueError(f"association_prior must be > 0, got {self.association_prior}")
        if self.association_folds < 2:  # one fold would leave no counts out of fold
            raise ValueError(f"association_folds must be >= 2, got {self.association_folds}")
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
    """Monotone map from the model's raw output to the target (`RelevanceConfig.target`), in [0, 1].

    Isotonic regression (pool adjacent violators) on the dev split; the knots are the blocks'
    (mean raw output, mean target), joined linearly, so between the first and last knot the map is
    strictly increasing and keeps the model's order (a step function would tie whole blocks);
    outside them it is flat.
    """

    x: np.ndarray  # [B] float64, ascending
    y: np.ndarray  # [B] float64, ascending, in [0, 1]

    @classmethod
    def fit(cls, raw: np.ndarray, target: np.ndarray) -> Calibration:
        # Equal raw outputs (trees give many) are one point with their mean target.
        values, inverse, counts = np.unique(np.asarray(raw, np.float64), return_inverse=True,
                                            return_counts=True)
        sums = np.bincount(inverse, weights=np.asarray(target, np.float64), minlength=len(values))
        blocks: list[list[float]] = []  # [sum of raw, sum of target, count]
        for value, total, count in zip(values, sums, counts):
            blocks.append([value * count, total, float(count)])
            # Pool while the last block's mean target is not above the previous block's
            # (sum_a / n_a <= sum_b / n_b, cross-multiplied).
            while len(blocks) > 1 and \
                    blocks[-1][1] * blocks[-2][2] <= blocks[-2][1] * blocks[-1][2]:
                last = blocks.pop()
                blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
        sums = np.asarray(blocks)  # [B, 3]
        return cls(x=sums[:, 0] / sums[:, 2], y=np.clip(sums[:, 1] / sums[:, 2], 0.0, 1.0))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, self.x, self.y).astype(np.float32)


def feature_names(config: RelevanceConfig) -> tuple[str, ...]:
    """The model's feature columns: the lexical ones, then the associations if configured."""
    return FEATURE_NAMES + (ASSOCIATION_NAMES if config.associations else ())


@dataclasses.dataclass(frozen=True)
class JudgedPairs:
    """The judged (query, product) pairs of a split, with their features once computed.

    Queries are contiguous: query i's pairs are [bounds[i], bounds[i + 1]).
    """

    queries: list[Query]
    bounds: np.ndarray  # [Q + 1] int64
    rows: np.ndarray  # [N] int64
    grades: np.ndarray  # [N] float64, on the dataset's scale
    features: np.ndarray | None = None  # [N, F] float32, once `with_features` computed them

    def __len__(self) -> int:
        return len(self.rows)

    def with_features(self, featurize, width: int) -> JudgedPairs:
        """A copy with features: featurize(query, rows) -> [n, width], called once per query."""
        blocks = [featurize(q, self.rows[a:b]) for q, a, b in
                  zip(self.queries, self.bounds[:-1], self.bounds[1:])]
        return dataclasses.replace(self, features=np.concatenate(
            [np.zeros((0, width), np.float32), *blocks]))


def judged_pairs(catalog: Catalog, split: str) -> JudgedPairs:
    """Every judged pair of a split's queries (queries without judgments left out)."""
    queries, rows, grades, bounds = [], [], [], [0]
    for query in catalog.split(split):
        judged = catalog.judgments.get(query.query_id)
        if not judged:
            continue
        queries.append(query)
        rows.append(np.fromiter((catalog.row_of[p] for p in judged), np.int64, len(judged)))
        grades.append(np.fromiter(judged.values(), np.float64, len(judged)))
        bounds.append(bounds[-1] + len(judged))
    return JudgedPairs(queries=queries, bounds=np.asarray(bounds, np.int64),
                       rows=np.concatenate(rows) if rows else np.zeros(0, np.int64),
                       grades=np.concatenate(grades) if grades else np.zeros(0))


def target_of(grades: np.ndarray, catalog: Catalog, target: str) -> np.ndarray:
    """The training label and calibration target [N] float64 of grades [N] (RelevanceConfig)."""
    scale = catalog.scale
    if target == "relevant":
        return (np.asarray(grades) >= scale.relevant_at).astype(np.float64)
    return (np.asarray(grades, np.float64) - scale.grade_min) / (scale.grade_max - scale.grade_min)


def model_features(features: RelevanceFeatures, associations: Associations | None,
                   query_text: str, rows: np.ndarray) -> np.ndarray:
    """The model's features [n, F] of `query_text` against catalog rows [n] (not for training
    rows: their associations come out of fold, `training_features`)."""
    x = features.features(query_text, rows)
    if associations is None:
        return x
    return np.hstack([x, associations.features_of(query_text, rows)])


def training_features(features: RelevanceFeatures, associations: Associations | None,
                      pairs: JudgedPairs) -> JudgedPairs:
    """Features of the TRAIN rows: lexical, and associations out of fold (no row's own label)."""
    if associations is None:
        return pairs.with_features(lambda q, rows: features.features(q.text, rows),
                                   len(FEATURE_NAMES))
    return pairs.with_features(lambda q, rows: np.hstack(
        [features.features(q.text, rows), associations.out_of_fold(q, rows)]),
        len(FEATURE_NAMES) + len(ASSOCIATION_NAMES))


class RelevanceModel:
    """rel(q, p): XGBoost over `feature_names(config)`, calibrated on dev to the target."""

    def __init__(self, booster: xgb.Booster, features: RelevanceFeatures, calibration: Calibration,
                 config: RelevanceConfig, info: dict | None = None,
                 associations: Associations | None = None):
        if config.associations != (associations is not None):
            raise ValueError("config.associations says whether the model has associations")
        self.booster = booster
        self.booster.set_param({"nthread": config.nthread})
        self.features = features
        self.associations = associations
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
        catalog = engine.catalog
        train, dev = judged_pairs(catalog, "train"), judged_pairs(catalog, "dev")
        if not len(train) or not len(dev):
            raise ValueError(f"catalog {catalog.name!r} has {len(train)} judged train pairs "
                             f"and {len(dev)} dev pairs: both splits need judgments")
        associations = None
        if config.associations:
            associations = Associations.fit(
                features, train.queries, train.bounds, train.rows,
                train.grades >= catalog.scale.relevant_at, prior=config.association_prior,
                folds=config.association_folds, seed=config.seed,
                query_cache_size=config.query_cache_size)
        seconds_associations = time.perf_counter() - start
        train = training_features(features, associations, train)
        if associations is not None:
            associations.drop_fold_counts()  # what the folds were for is done
        dev = dev.with_features(
            lambda q, rows: model_features(features, associations, q.text, rows),
            len(feature_names(config)))
        seconds_features = time.perf_counter() - start
        ranking = config.objective == "rank:ndcg"
        params = {
            "objective": config.objective, "tree_method": "hist", "seed": config.seed,
            "nthread": config.nthread, "eta": config.learning_rate, "max_depth": config.max_depth,
            "min_child_weight": config.min_child_weight, "subsample": config.subsample,
            "colsample_bytree": config.colsample_bytree,
            # Linear gain: the labels may be fractional normalised grades, not integer levels.
            **({"eval_metric": "ndcg@10", "ndcg_exp_gain": False} if ranking
               else {"eval_metric": "rmse"}),
        }
        names = list(feature_names(config))

        def matrix(pairs: JudgedPairs) -> xgb.DMatrix:
            qid = np.repeat(np.arange(len(pairs.queries)), np.diff(pairs.bounds))
            label = target_of(pairs.grades, catalog, config.target)
            return xgb.DMatrix(pairs.features, label=label, qid=qid if ranking else None,
                               feature_names=names, nthread=config.nthread)

        dtrain, ddev = matrix(train), matrix(dev)
        history: dict = {}
        booster = xgb.train(params, dtrain, num_boost_round=config.max_rounds,
                            evals=[(ddev, "dev")], evals_result=history, verbose_eval=False,
                            early_stopping_rounds=config.early_stopping_rounds)
        best = booster.best_iteration
        booster = booster[: best + 1]  # the rounds after the best only cost prediction time
        raw_dev = booster.inplace_predict(dev.features)
        calibration = Calibration.fit(raw_dev, target_of(dev.grades, catalog, config.target))
        metric = params["eval_metric"]
        info = {"train_pairs": len(train), "train_queries": len(train.queries),
                "dev_pairs": len(dev), "dev_queries": len(dev.queries), "rounds": best + 1,
                "dev_metric": {metric: float(history["dev"][metric][best])},
                "calibration_knots": len(calibration.x),
                **({"association_pairs": len(associations.counts.keys),
                    "association_words": len(associations.words)} if associations else {}),
                "seconds_associations": round(seconds_associations, 2),
                "seconds_features": round(seconds_features, 2),
                "seconds_total": round(time.perf_counter() - start, 2)}
        if log:
            log(f"relevance model: {info}")
        return cls(booster, features, calibration, config, info, associations)

    def pair_features(self, query_text: str, rows: np.ndarray) -> np.ndarray:
        """The model's features [n, F] of `query_text` against catalog rows [n]."""
        return model_features(self.features, self.associations, query_text, rows)

    def judged(self, split: str) -> JudgedPairs:
        """A split's judged pairs with the features the model scores (all train statistics)."""
        return judged_pairs(self.features.catalog, split).with_features(
            lambda q, rows: self.pair_features(q.text, rows), len(feature_names(self.config)))

    def clear_cache(self) -> None:
        """Forgets every query's parse, top-K and association rows (benchmarks time cold calls)."""
        self.features.clear_cache()
        if self.associations is not None:
            self.associations.clear_cache()

    def score(self, query_text: str, products) -> np.ndarray:
        """rel(q, p) in [0, 1] for each product (ids or rows): [n] float32.

        One feature batch and exactly one `inplace_predict`; a query without words scores 0.
        """
        rows = self.features.rows_of(products)
        if not len(rows) or not self.features.has_words(query_text):
            return np.zeros(len(rows), np.float32)
        return self.score_features(self.pair_features(query_text, rows))

    def score_many(self, requests) -> list[np.ndarray]:
        """`score` for many (query_text, products) pairs with ONE `inplace_predict` in all.

        For the reward, which scores every rollout of a GRPO group (or a whole step) at once:
        XGBoost's fixed cost per call (relevance_features.py, "Speed") is then paid once, not
        once per request.
        """
        blocks, sizes = [], []
        for query_text, products in requests:
            rows = self.features.rows_of(products)
            words = len(rows) and self.features.has_words(query_text)
            blocks.append(self.pair_features(query_text, rows) if words else None)
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
        """Writes PATH/relevance.ubj (the booster), PATH/relevance.json (everything else) and,
        with associations, PATH/relevance_associations.npz (their counts)."""
        os.makedirs(path, exist_ok=True)
        self.booster.save_model(os.path.join(path, MODEL_FILE))
        if self.associations is not None:
            self.associations.save(path)
        meta = {"features_version": FEATURES_VERSION,
                "feature_names": list(feature_names(self.config)),
                "config": dataclasses.asdict(self.config),
                "calibration": {"x": self.calibration.x.tolist(), "y": self.calibration.y.tolist()},
                "catalog": self.features.catalog.name,
                "search_config": dataclasses.asdict(self.features.engine.config), "info": self.info}
        with open(os.path.join(path, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)

    @classmethod
    def load(cls, path: str, engine: SearchEngine) -> RelevanceModel:
        """Reads a model written by `save`; its features must be this code's features, and its
        association tables must come from this catalog's train judgments."""
        model_path, meta_path = os.path.join(path, MODEL_FILE), os.path.join(path, META_FILE)
        for file in (meta_path, model_path):
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file} not found: {path} holds no saved relevance model "
                                        f"(run experiments.train_relevance)")
        with open(meta_path) as f:
            meta = json.load(f)
        saved = (meta.get("features_version"), meta.get("feature_names"))
        try:
            config = RelevanceConfig(**meta["config"])
        except TypeError:  # a field this code does not know: another features version
            config = None
        expected = list(feature_names(config)) if config else None
        if config is None or saved != (FEATURES_VERSION, expected):
            raise ValueError(
                f"{meta_path}: the model was trained on features version {saved[0]} "
                f"{saved[1]}, but this code computes features version {FEATURES_VERSION} "
                f"{expected or list(FEATURE_NAMES + ASSOCIATION_NAMES)}; retrain it with "
                f"experiments.train_relevance")
        booster = xgb.Booster()
        booster.load_model(model_path)
        calibration = Calibration(x=np.asarray(meta["calibration"]["x"], np.float64),
                                  y=np.asarray(meta["calibration"]["y"], np.float64))
        features = RelevanceFeatures(engine, rank_depth=config.rank_depth,
                                     query_cache_size=config.query_cache_size)
        associations = Associations.load(path, features,
                                         query_cache_size=config.query_cache_size) \
            if config.associations else None
        return cls(booster, features, calibration, config, meta.get("info"), associations)
