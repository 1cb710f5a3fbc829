"""The relevance model: BM25 per field equals Tantivy's, features are right on hand-made pairs, the
model separates exact from irrelevant products on held-out synthetic queries, its scores are the
calibrated probability of relevance (or, for target="grade", the expected normalised grade), and
every edge case has a defined answer. The association features: test_relevance_associations.py."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from leser_jax import relevance, relevance_associations, relevance_eval, relevance_features
from leser_jax.catalog import CatalogBuilder, GradeScale
from leser_jax.data.synthetic import SyntheticConfig, generate
from leser_jax.relevance import Calibration, RelevanceConfig, RelevanceModel
from leser_jax.relevance_associations import ASSOCIATION_NAMES
from leser_jax.relevance_eval import ndcg_at_k, roc_auc
from leser_jax.relevance_features import FEATURE_NAMES, RelevanceFeatures, quantities
from leser_jax.search import TEXT_FIELDS, SearchEngine, query_terms

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def hand_catalog():
    b = CatalogBuilder("hand", GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    rows = [
        ("p0", "Red Leather Office Chair", "Ergonomic seat with lumbar support.", {"color": "red"}),
        ("p1", "Blue Fabric Office Chair", "Breathable mesh back.", {"color": "navy blue"}),
        ("p2", "Oak Dining Table", "", {}),  # no description, no attributes
        ("p3", "Ceiling Fan 52 in.", "Quiet motor.", {"finish": "nickel"}),
        ("p4", "Ceiling Fan 44-inch", "Quiet motor.", {"finish": "bronze"}),
        ("p5", "Voltmax Cordless Drill 20V", "Two batteries included.", {"brand": "Voltmax"}),
    ]
    for pid, title, description, attributes in rows:
        b.add_product(f"hand:{pid}", product_id=pid, title=title, description=description,
                      attributes=attributes)
    b.add_query("hand:q0", query_id="q0", text="red chair")
    return b.build()


@pytest.fixture(scope="module")
def hand():
    engine = SearchEngine.build(hand_catalog())
    return RelevanceFeatures(engine, rank_depth=3)


@pytest.fixture(scope="module")
def synthetic_engine():
    return SearchEngine.build(generate(SyntheticConfig(num_products=2000, num_queries=200)))


@pytest.fixture(scope="module")
def model(synthetic_engine):
    return RelevanceModel.train(synthetic_engine, RelevanceConfig())


# ---------------------------------------------------------------------------------------------
# BM25 per field
# ---------------------------------------------------------------------------------------------

def tantivy_field_scores(engine, text, field, limit=60):
    """Tantivy's own BM25 of `text` on one field, unrestricted: {row: score}."""
    query = engine._index.parse_query(" ".join(query_terms(text, 64)), [field])
    hits = engine._searcher.search(query, limit=limit, count=False).hits
    if not hits:
        return {}
    scores, addresses = zip(*hits)
    return dict(zip(engine._searcher.fast_field_values("row", list(addresses)), scores))


def test_field_scores_equal_tantivy_per_field(synthetic_engine):
    engine = synthetic_engine
    texts = [q.text for q in engine.catalog.queries[:40]] + ["chair chair mat", "3/8 in chuck"]
    checked = 0
    for text in texts:
        for f, field in enumerate(TEXT_FIELDS):
            expected = tantivy_field_scores(engine, text, field)
            if not expected:
                continue
            rows = np.asarray(list(expected), np.int64)
            got = engine.field_scores(text, rows)[:, f]
            np.testing.assert_allclose(got, list(expected.values()), rtol=2e-6, err_msg=text)
            checked += len(rows)
        # The engine's own ranking score is the boosted sum of the three.
        hits = engine.search(text, k=30)
        boosts = np.asarray([engine.config.field_boosts[f] for f in TEXT_FIELDS], np.float32)
        np.testing.assert_allclose(engine.field_scores(text, hits.rows) @ boosts, hits.scores,
                                   rtol=2e-6)
    assert checked > 1000


def test_field_scores_are_zero_where_a_field_does_not_match(synthetic_engine):
    engine = synthetic_engine
    text = engine.catalog.queries[0].text
    title = tantivy_field_scores(engine, text, "title", limit=len(engine.catalog.products))
    rows = np.arange(len(engine.catalog.products))
    scores = engine.field_scores(text, rows)[:, 0]
    assert set(np.flatnonzero(scores)) == set(title)  # exactly Tantivy's matches score > 0
    # A row's scores do not depend on which other rows are asked for, nor on repeats.
    some = rows[[5, 900, 5, 3]]
    np.testing.assert_array_equal(engine.field_scores(text, some),
                                  engine.field_scores(text, rows)[some])
    assert engine.field_scores("", some).sum() == 0
    assert engine.field_scores(text, []).shape == (0, 3)
    with pytest.raises(IndexError, match="out of range"):
        engine.field_scores(text, [len(rows)])


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

def test_every_feature_is_a_documented_column(hand):
    x = hand.features("red chair", [0, 1, 2])
    assert x.shape == (3, len(FEATURE_NAMES)) and x.dtype == np.float32
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for name in FEATURE_NAMES:  # one row of the docstring's table per feature
        assert f"| {name} " in relevance_features.__doc__, name
    for name in ASSOCIATION_NAMES:
        assert f"| {name} " in relevance_associations.__doc__, name


def test_features_of_hand_made_pairs(hand):
    x = hand.features("red leather chair", ["p0", "p1", "p2"])
    # p0 "Red Leather Office Chair": every query word is in its title, not as a phrase (office
    # sits between leather and chair); p1 has only "chair"; p2 nothing.
    np.testing.assert_allclose(x[:, COL["title_coverage"]], [1, 1 / 3, 0])
    np.testing.assert_allclose(x[:, COL["title_precision"]], [3 / 4, 1 / 4, 0])  # of 4 title words
    np.testing.assert_array_equal(x[:, COL["head_term_in_title"]], [1, 1, 0])
    np.testing.assert_array_equal(x[:, COL["phrase_in_title"]], [0, 0, 0])
    np.testing.assert_array_equal(x[:, COL["query_terms"]], [3, 3, 3])
    np.testing.assert_array_equal(x[:, COL["engine_rank"]], [1, 2, 4])  # p2 is not found: K+1
    assert x[0, COL["bm25_total"]] > x[1, COL["bm25_total"]] > x[2, COL["bm25_total"]] == 0
    assert x[0, COL["bm25_vs_top"]] == 1.0
    assert x[0, COL["attribute_values_in_query"]] == 1  # color "red"
    assert x[1, COL["attribute_values_in_query"]] == 0  # "navy blue": not all of it in the query
    phrase = hand.features("leather office chairs", ["p0", "p1"])  # stemmed: chairs = chair
    np.testing.assert_array_equal(phrase[:, COL["phrase_in_title"]], [1, 0])
    np.testing.assert_allclose(phrase[:, COL["bigram_coverage"]], [1, 1 / 2])  # "office chair"


def test_number_and_unit_features(hand):
    # '52"' and "52 inch" are "52 in" as p3's "52 in." is; p4 states inches, but 44.
    for text in ['ceiling fan 52"', "ceiling fan 52 inch", "52-in ceiling fan"]:
        x = hand.features(text, ["p3", "p4", "p5"])
        np.testing.assert_array_equal(x[:, COL["query_numbers"]], [1, 1, 1])
        np.testing.assert_array_equal(x[:, COL["quantity_match"]], [1, 0, 0], err_msg=text)
        np.testing.assert_array_equal(x[:, COL["unit_conflict"]], [0, 1, 0], err_msg=text)
    x = hand.features("20 volt drill", ["p5"])
    assert x[0, COL["quantity_match"]] == 1 and x[0, COL["number_match"]] == 1


def test_quantities():
    assert quantities("2 in. pipe")[1] == quantities("2-inch pipe")[1] == quantities('2" pipe')[1] \
        == {"2 in"}
    assert quantities("1-1/2 in. x 3/4 in.")[1] == {"1.5 in", "0.75 in"}
    assert quantities("4 ft. x 8 ft. 2x4")[0] == {"4", "8", "2"}
    assert quantities("5 gal. bucket, 20V, 3.5 cu. ft.")[1] == {"5 gal", "20 v", "3.5 cuft"}
    assert quantities("2 inside") == ({"2"}, set(), set())  # a unit must end its word
    assert quantities("") == (set(), set(), set())


def test_product_without_description(hand):
    x = hand.features("oak dining table", ["p2"])
    assert x[0, COL["description_terms"]] == 0 and x[0, COL["bm25_description"]] == 0
    assert x[0, COL["attribute_count"]] == 0 and x[0, COL["attribute_value_share"]] == 0
    assert x[0, COL["title_coverage"]] == 1 and x[0, COL["phrase_in_text"]] == 1
    assert np.isfinite(x).all()


def test_empty_and_wordless_queries_give_zero_text_features(hand):
    for text in ["", "   ", "!!! ??? ()", "🙂", None]:
        x = hand.features(text, [0, 1, 2])
        lengths = [COL["title_terms"], COL["description_terms"], COL["attribute_count"]]
        others = [i for i in range(len(FEATURE_NAMES)) if i not in lengths + [COL["engine_rank"]]]
        assert (x[:, others] == 0).all(), text
        assert (x[:, COL["engine_rank"]] == 4).all()  # K+1 with K=3
        assert (x[:, COL["title_terms"]] == [4, 4, 3]).all()


def test_unknown_products_are_named(hand):
    with pytest.raises(KeyError, match="nope"):
        hand.features("chair", ["p0", "nope"])
    with pytest.raises(IndexError, match="row 6"):
        hand.features("chair", [0, 6])
    with pytest.raises(IndexError, match="row -1"):
        hand.features("chair", [-1])
    with pytest.raises(TypeError):
        hand.features("chair", [0.5])
    assert hand.features("chair", []).shape == (0, len(FEATURE_NAMES))


# ---------------------------------------------------------------------------------------------
# The trained model
# ---------------------------------------------------------------------------------------------

def test_model_separates_exact_from_irrelevant_on_held_out_queries(model):
    catalog = model.features.catalog
    test = model.judged("test")
    assert len(test.queries) >= 10 and not {q.query_id for q in test.queries} & {
        q.query_id for q in catalog.split("train")}
    scores = model.score_features(test.features)
    exact, irrelevant = scores[test.grades == 3], scores[test.grades == 0]
    assert exact.mean() > irrelevant.mean() + 0.5
    assert roc_auc(scores, test.grades >= 3) > 0.9
    # P(relevant): exact products (grade 3, relevant_at 3) above every lower grade, substitutes
    # (right category, one thing wrong) included.
    for grade in (0, 1, 2):
        assert exact.mean() > scores[test.grades == grade].mean() + 0.3, grade


def test_scores_are_calibrated_to_the_target(model, synthetic_engine):
    """On dev, where it was calibrated, the mean score is the share of relevant pairs (isotonic
    regression keeps the mean, up to interpolating between its knots); with target="grade", the
    mean normalised grade. The old target also leaves substitutes well above irrelevant."""
    dev = model.judged("dev")
    relevant = dev.grades >= 3
    assert model.score_features(dev.features).mean() == pytest.approx(relevant.mean(), abs=0.02)
    old = RelevanceModel.train(synthetic_engine, RelevanceConfig(target="grade",
                                                                 associations=False))
    assert old.associations is None and old.booster.num_features() == len(FEATURE_NAMES)
    dev = old.judged("dev")
    scores = old.score_features(dev.features)
    assert scores.mean() == pytest.approx((dev.grades / 3).mean(), abs=0.02)
    assert scores[dev.grades == 2].mean() > scores[dev.grades == 0].mean() + 0.3


def test_scores_are_in_unit_interval(model):
    catalog = model.features.catalog
    for query in catalog.split("test")[:5]:
        scores = model.score(query.text, np.arange(len(catalog.products)))
        assert scores.dtype == np.float32 and scores.shape == (len(catalog.products),)
        assert scores.min() >= 0 and scores.max() <= 1
        # It tells products apart: most of the catalog is irrelevant to any one query (P near 0),
        # the products judged relevant to it are not.
        relevant = [catalog.row_of[p] for p in catalog.relevant(query.query_id)]
        assert scores[relevant].mean() > np.median(scores) + 0.4, query.text


def test_score_accepts_ids_or_rows_and_defines_edge_cases(model):
    catalog = model.features.catalog
    query = catalog.split("test")[0]
    ids = list(catalog.judgments[query.query_id])
    rows = [catalog.row_of[p] for p in ids]
    np.testing.assert_array_equal(model.score(query.text, ids), model.score(query.text, rows))
    assert (model.score("", ids) == 0).all() and (model.score("?!", rows) == 0).all()
    assert model.score(query.text, []).shape == (0,)
    with pytest.raises(KeyError, match="S9999999"):
        model.score(query.text, ids[:2] + ["S9999999"])


def test_score_many_is_score_with_one_prediction(model, monkeypatch):
    catalog = model.features.catalog
    requests = [(q.text, list(catalog.judgments[q.query_id])) for q in catalog.split("test")[:4]]
    requests += [("", ["S000001"]), ("chair", [])]
    expected = [model.score(t, p) for t, p in requests]
    calls = []
    predict = model.booster.inplace_predict
    monkeypatch.setattr(model.booster, "inplace_predict",
                        lambda x, **kw: calls.append(len(x)) or predict(x, **kw))
    got = model.score_many(requests)
    assert len(calls) == 1 and calls[0] == sum(len(p) for _, p in requests[:4])
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_model(model):
    # A fresh index (built by 2 writer threads, so its segments can differ) and a fresh model.
    engine = SearchEngine.build(model.features.catalog)
    again = RelevanceModel.train(engine, RelevanceConfig())
    query = model.features.catalog.split("test")[1]
    rows = np.arange(0, len(model.features.catalog.products), 3)
    np.testing.assert_array_equal(again.score(query.text, rows), model.score(query.text, rows))
    other = RelevanceModel.train(engine, RelevanceConfig(seed=1))
    assert not np.array_equal(other.score(query.text, rows), model.score(query.text, rows))


def test_save_load_round_trip(model, tmp_path):
    model.save(str(tmp_path))
    loaded = RelevanceModel.load(str(tmp_path), model.features.engine)
    catalog = model.features.catalog
    for query in catalog.split("test")[:3]:
        rows = np.arange(len(catalog.products))
        np.testing.assert_array_equal(loaded.score(query.text, rows), model.score(query.text, rows))
    assert loaded.config == model.config


def test_load_rejects_other_features(model, tmp_path):
    model.save(str(tmp_path))
    meta_path = os.path.join(tmp_path, relevance.META_FILE)
    with open(meta_path) as f:
        meta = json.load(f)
    meta["features_version"] = relevance_features.FEATURES_VERSION + 7
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match=rf"version {relevance_features.FEATURES_VERSION + 7}.*"
                                         rf"version {relevance_features.FEATURES_VERSION}"):
        RelevanceModel.load(str(tmp_path), model.features.engine)
    meta["features_version"] = relevance_features.FEATURES_VERSION
    meta["feature_names"] = meta["feature_names"][:-1]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="assoc_known_words"):  # the list that differs
        RelevanceModel.load(str(tmp_path), model.features.engine)
    # A version 1 model: lexical features only, no `target` in its config.
    meta["feature_names"], meta["features_version"] = list(FEATURE_NAMES), 1
    del meta["config"]["target"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="version 1"):
        RelevanceModel.load(str(tmp_path), model.features.engine)


def test_load_missing_files_names_the_path(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        RelevanceModel.load(str(tmp_path), model.features.engine)
    model.save(str(tmp_path))
    os.remove(os.path.join(tmp_path, relevance_associations.TABLES_FILE))
    with pytest.raises(FileNotFoundError, match=relevance_associations.TABLES_FILE):
        RelevanceModel.load(str(tmp_path), model.features.engine)
    os.remove(os.path.join(tmp_path, relevance.MODEL_FILE))
    with pytest.raises(FileNotFoundError, match=relevance.MODEL_FILE):
        RelevanceModel.load(str(tmp_path), model.features.engine)


def test_evaluate_reports_the_model_above_chance(model):
    metrics = relevance_eval.evaluate(model, "test", k=10)
    assert metrics["queries_evaluated"] + metrics["queries_excluded_equal_grades"] == \
        metrics["queries"]
    assert metrics["ndcg@10"]["model"] > 0.9 and metrics["auc"]["model"] > 0.9
    assert sum(row["count"] for row in metrics["calibration"]) == metrics["pairs"]
    # Exact (3) against substitute (2), the next grade below relevant_at, overall and per kind.
    assert metrics["next_grade"] == 2.0
    assert metrics["auc_relevant_vs_next_grade"]["model"] > \
        metrics["auc_relevant_vs_next_grade"]["bm25"]
    catalog = model.features.catalog
    assert set(metrics["by_kind"]) == {q.kind for q in catalog.split("test")} >= {"problem"}
    for kind, by in metrics["by_kind"].items():
        model_kind = by["model"]
        assert model_kind["auc_relevant_vs_rest"] > 0.8, kind
        means = model_kind["mean_score_by_grade"]
        assert means["3"] > means["0"]
        # Broad queries request nothing that a substitute could miss: no grade 2, no such AUC.
        assert math.isnan(model_kind["auc_relevant_vs_next_grade"]) == ("2" not in means)
    problem = metrics["by_kind"]["problem"]
    assert problem["model"]["pairs"] == sum(
        len(catalog.judgments[q.query_id]) for q in catalog.split("test") if q.kind == "problem")


def test_separation_golden_values():
    # Grades 3, 3, 2, 0 scored 0.9, 0.4, 0.5, 0.1: relevant vs rest = (2 + 1) / 4 pairs
    # (0.9 beats both, 0.4 beats 0.1 only); vs the next grade (2) only = 1 / 2.
    got = relevance_eval.separation(np.array([0.9, 0.4, 0.5, 0.1]), np.array([3.0, 3, 2, 0]),
                                    relevant_at=3, next_grade=2.0)
    assert got["auc_relevant_vs_rest"] == 0.75 and got["auc_relevant_vs_next_grade"] == 0.5
    assert got["mean_score_by_grade"] == pytest.approx({"0": 0.1, "2": 0.5, "3": 0.65})
    assert relevance_eval.next_grade_below(np.array([1.0, 2.33, 2.67, 3]), 2.5) == 2.33
    assert relevance_eval.next_grade_below(np.array([3.0]), 2.5) is None


# ---------------------------------------------------------------------------------------------
# Calibration, metrics, config
# ---------------------------------------------------------------------------------------------

def test_isotonic_calibration():
    # Raw 0..3 with targets 0, 1, 0, 1: the middle pair violates order and pools to (1.5, 0.5).
    calibration = Calibration.fit(np.array([0.0, 1, 2, 3]), np.array([0.0, 1, 0, 1]))
    np.testing.assert_allclose(calibration.x, [0, 1.5, 3])
    np.testing.assert_allclose(calibration.y, [0, 0.5, 1])
    np.testing.assert_allclose(calibration(np.array([-5, 0.75, 2.25, 9])), [0, 0.25, 0.75, 1])
    # Equal raw outputs are one point: their mean target.
    tied = Calibration.fit(np.array([1.0, 1, 1, 2]), np.array([0.0, 0, 0.6, 0.9]))
    np.testing.assert_allclose(tied.y, [0.2, 0.9])
    rng = np.random.default_rng(0)
    raw = rng.normal(size=500)
    noisy = Calibration.fit(raw, np.clip(raw / 4 + 0.5 + rng.normal(scale=0.2, size=500), 0, 1))
    assert np.all(np.diff(noisy.y) > 0) and np.all(np.diff(noisy.x) > 0)
    grid = noisy(np.linspace(-4, 4, 200))
    assert np.all(np.diff(grid) >= 0) and grid.min() >= 0 and grid.max() <= 1


def test_ndcg_golden_values():
    gains = np.array([1.0, 0.5, 0.0])
    assert ndcg_at_k(np.array([3, 2, 1]), gains) == pytest.approx(1.0)
    # Reversed: DCG = 0 + 0.5/log2(3) + 1/log2(4) = 0.8155; ideal = 1 + 0.5/log2(3) = 1.3155.
    # (abs=1e-4: these goldens are rounded to 4 decimals; NDCG lies in [0, 1].)
    assert ndcg_at_k(np.array([1, 2, 3]), gains) == pytest.approx(0.8155 / 1.3155, abs=1e-4)
    # All tied: each position gets the mean gain 0.5: 0.5 * (1 + 1/log2(3) + 1/2) = 1.0655.
    assert ndcg_at_k(np.zeros(3), gains) == pytest.approx(1.0655 / 1.3155, abs=1e-4)
    assert ndcg_at_k(np.array([2.0, 1]), np.array([1.0, 0]), k=1) == 1.0
    assert ndcg_at_k(np.array([1.0, 2]), np.array([1.0, 0]), k=1) == 0.0


def test_roc_auc_golden_values():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    # Positives 0.8, 0.2 against negatives 0.9, 0.1: each beats one of the two -> 2 / 4.
    assert roc_auc(np.array([0.9, 0.1, 0.8, 0.2]), np.array([0, 0, 1, 1])) == 0.5
    assert roc_auc(np.array([0.9, 0.2, 0.8, 0.1]), np.array([0, 0, 1, 1])) == 0.25  # 0.8 > 0.2
    # One tie between a positive and a negative counts half: (1 + 0.5) / 2 pairs.
    assert roc_auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == 0.75
    assert math.isnan(roc_auc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_config_rejects_impossible_values():
    for bad in [dict(objective="multi:softmax"), dict(rank_depth=0), dict(nthread=0),
                dict(learning_rate=0), dict(subsample=1.5), dict(max_rounds=0),
                dict(target="expected"), dict(association_prior=0), dict(association_folds=1)]:
        with pytest.raises(ValueError):
            RelevanceConfig(**bad)
