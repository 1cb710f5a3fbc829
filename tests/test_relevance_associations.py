"""The association features: the smoothing formula on hand-worked numbers, the fast features
against a slow reference, out-of-fold features that never see their own row's label (a planted
leak), and tables that refuse a catalog they were not learned from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leser_jax import relevance, relevance_associations
from leser_jax.catalog import CatalogBuilder, GradeScale, SplitConfig
from leser_jax.data.synthetic import SyntheticConfig, generate
from leser_jax.relevance import RelevanceConfig, RelevanceModel, judged_pairs
from leser_jax.relevance_associations import (ASSOCIATION_NAMES, Associations, fold_of,
                                              log_odds_ratio)
from leser_jax.relevance_eval import roc_auc
from leser_jax.relevance_features import RelevanceFeatures
from leser_jax.search import SearchEngine, field_texts, text_analyzer

CONFIG = RelevanceConfig()  # the model's prior, folds and seed, so that a model can be checked
PRIOR, FOLDS, SEED = CONFIG.association_prior, CONFIG.association_folds, CONFIG.seed


@pytest.fixture(scope="module")
def synthetic():
    engine = SearchEngine.build(generate(SyntheticConfig(num_products=2000, num_queries=200)))
    features = RelevanceFeatures(engine)
    train = judged_pairs(engine.catalog, "train")
    return features, train, fit(features, train)


def fit(features, pairs, keep=None, **kw) -> Associations:
    """Associations of `pairs`' queries (those where keep(query) holds)."""
    keep = keep or (lambda q: True)
    chosen = [i for i, q in enumerate(pairs.queries) if keep(q)]
    rows = [pairs.rows[pairs.bounds[i]:pairs.bounds[i + 1]] for i in chosen]
    grades = [pairs.grades[pairs.bounds[i]:pairs.bounds[i + 1]] for i in chosen]
    bounds = np.cumsum([0] + [len(r) for r in rows])
    relevant = np.concatenate(grades) >= features.catalog.scale.relevant_at
    return Associations.fit(features, [pairs.queries[i] for i in chosen], bounds,
                            np.concatenate(rows), relevant,
                            **{"prior": PRIOR, "folds": FOLDS, "seed": SEED, **kw})


def per_query(pairs):
    for q, a, b in zip(pairs.queries, pairs.bounds[:-1], pairs.bounds[1:]):
        yield q, pairs.rows[a:b], pairs.grades[a:b]


# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------

def test_log_odds_ratio_golden_values():
    # N=10, R=4: p = 5/12. n_w=4, r_w=2, m=2: p_w = (2 + 2*5/12) / 6 = 17/36.
    # n_wt=r_wt=2: p_wt = (2 + 2*17/36) / 4 = 53/72; odds 53/19 against p_w's 17/19:
    # a = ln(53/19) - ln(17/19) = ln(53/17) = 1.1371.
    assert log_odds_ratio(2, 2, 2, 4, 4, 10, prior=2) == pytest.approx(math.log(53 / 17))
    # The same word, a term met twice and judged irrelevant both times:
    # p_wt = (0 + 2*17/36) / 4 = 17/72, odds 17/55: a = ln(17/55) - ln(17/19) = ln(19/55).
    assert log_odds_ratio(0, 2, 2, 4, 4, 10, prior=2) == pytest.approx(math.log(19 / 55))
    # Never met: the prior alone, a = 0; a stronger prior pulls the same evidence closer to 0.
    assert log_odds_ratio(0, 0, 2, 4, 4, 10, prior=2) == pytest.approx(0, abs=1e-12)
    weak, strong = (log_odds_ratio(2, 2, 2, 4, 4, 10, prior=m) for m in (2, 20))
    assert 0 < strong < weak


def test_counts_of_a_hand_made_catalog():
    b = CatalogBuilder("hand", GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    for pid, title in [("p0", "lumbar chair"), ("p1", "plain chair"), ("p2", "lumbar pillow")]:
        b.add_product(f"hand:{pid}", product_id=pid, title=title)
    b.add_query("hand:q0", query_id="q0", text="chair for back pain")
    b.add_query("hand:q1", query_id="q1", text="back pillow")
    for q, p, g in [("q0", "p0", 3), ("q0", "p1", 2), ("q1", "p2", 3), ("q1", "p1", 0)]:
        b.add_judgment("hand", query_id=q, product_id=p, grade=g)
    catalog = b.build(SplitConfig(train=1.0, dev=0.0, test=0.0))
    features = RelevanceFeatures(SearchEngine.build(catalog))
    pairs = judged_pairs(catalog, "train")
    assoc = fit(features, pairs, prior=2.0)
    a = {(w, t): v for w, t, v in table_entries(assoc, assoc.table)}
    # "back" is in both queries: its 4 pairs, 2 relevant (p0 for q0, p2 for q1). "lumbar" is in
    # p0 and p2, both relevant: n_wt = r_wt = 2. N = 4, R = 2: p = 3/6 = 1/2; p_w = (2 + 1) / 6
    # = 1/2; p_wt = (2 + 2*1/2) / 4 = 3/4: a = ln(3) - ln(1) = 1.0986.
    assert a["back", "lumbar"] == pytest.approx(math.log(3), rel=1e-6)
    # "plain" only in p1, judged twice, never relevant: p_wt = (0 + 1) / 4 = 1/4, a = -ln(3).
    assert a["back", "plain"] == pytest.approx(-math.log(3), rel=1e-6)
    # "pain" only in q0 (2 pairs, 1 relevant): p_w = (1 + 1) / 4 = 1/2; "chair" in p0 and p1:
    # n_wt = 2, r_wt = 1, p_wt = (1 + 1) / 4 = 1/2: a = 0.
    assert a["pain", "chair"] == pytest.approx(0, abs=1e-6)
    assert ("pillow", "chair") in a and ("pain", "pillow") not in a  # p2 was not judged for q0
    # Features of q0 against p0: words back, chair, for, pain (sorted), all known.
    x = assoc.features_of("chair for back pain", [catalog.row_of["p0"]])[0]
    best = {w: max(a.get((w, t), 0.0) for t in ("lumbar", "chair")) for w in
            ("back", "chair", "for", "pain")}
    worst = {w: min(a.get((w, t), 0.0) for t in ("lumbar", "chair")) for w in best}
    np.testing.assert_allclose(x, [max(best.values()), min(worst.values()),
                                   sum(best.values()) / 4, sum(worst.values()) / 4, 1.0],
                               rtol=1e-6, atol=1e-7)


def table_entries(assoc, table):
    """(word, term, a) of every pair in a table."""
    words = {i: w for w, i in assoc.words.items()}
    terms = {i: t for t, i in assoc.term_ids.items()}
    for w in range(len(table.ptr) - 1):
        for at in range(table.ptr[w], table.ptr[w + 1]):
            yield words[w], terms[int(table.terms[at])], float(table.values[at])


# ---------------------------------------------------------------------------------------------
# The fast features against a slow reference
# ---------------------------------------------------------------------------------------------

class Reference:
    """ASSOCIATION_NAMES by dictionaries and loops, from the module docstring's definitions,
    counting the train queries where keep(query) holds."""

    def __init__(self, features, pairs, keep):
        self.features = features
        stem = text_analyzer(features.engine.config.tokenizer)
        self.terms = lambda row: set(stem.analyze(" ".join(field_texts(
            features.catalog.products[row]))))
        self.n_wt, self.r_wt, self.n_w, self.r_w, self.n, self.r = {}, {}, {}, {}, 0, 0
        for q, q_rows, grades in per_query(pairs):
            if not keep(q):
                continue
            words = set(features.query_words(q.text))
            for row, grade in zip(q_rows, grades):
                y = int(grade >= features.catalog.scale.relevant_at)
                self.n, self.r = self.n + 1, self.r + y
                for w in words:
                    self.n_w[w], self.r_w[w] = self.n_w.get(w, 0) + 1, self.r_w.get(w, 0) + y
                    for t in self.terms(row):
                        self.n_wt[w, t] = self.n_wt.get((w, t), 0) + 1
                        self.r_wt[w, t] = self.r_wt.get((w, t), 0) + y

    def a(self, w, t):
        if (w, t) not in self.n_wt:
            return 0.0
        return float(log_odds_ratio(self.r_wt[w, t], self.n_wt[w, t], self.r_w[w], self.n_w[w],
                                    self.r, self.n, PRIOR))

    def features_of(self, query_text, rows):
        words = self.features.query_words(query_text)
        known = [w for w in words if self.n_w.get(w, 0) > 0]
        out = []
        for row in rows:
            a = {w: [self.a(w, t) for t in self.terms(row)] or [0.0] for w in known}
            best, worst = [max(a[w]) for w in known], [min(a[w]) for w in known]
            size = max(len(words), 1)
            out.append([max(best, default=0), min(worst, default=0), sum(best) / size,
                        sum(worst) / size, len(known) / size])
        return np.asarray(out)


def test_features_equal_the_reference(synthetic):
    features, train, assoc = synthetic
    catalog = features.catalog
    rng = np.random.default_rng(0)
    reference = Reference(features, train, lambda q: True)
    texts = [q.text for q in catalog.split("test")[:3]] + ["chair for back pain xyzzy", "zzqx"]
    for text in texts:
        rows = rng.choice(len(catalog.products), 12, replace=False)
        np.testing.assert_allclose(assoc.features_of(text, rows),
                                   reference.features_of(text, rows), rtol=1e-5, atol=1e-6,
                                   err_msg=text)
    # Out of fold: the reference counts every train query but those of the row's fold.
    reference = Reference(features, train, lambda q: fold_of(q.query_id, FOLDS, SEED) != 0)
    queries = [(q, rows) for q, rows, _ in per_query(train)
               if fold_of(q.query_id, FOLDS, SEED) == 0]
    for q, rows in queries[:4]:
        np.testing.assert_allclose(assoc.out_of_fold(q, rows), reference.features_of(q.text, rows),
                                   rtol=1e-5, atol=1e-6)


def test_edge_cases(synthetic):
    features, _, assoc = synthetic
    assert assoc.features_of("", [0, 1]).shape == (2, len(ASSOCIATION_NAMES))
    assert not assoc.features_of("", [0, 1]).any() and not assoc.features_of("!!", [3]).any()
    assert not assoc.features_of("zzqx qqzx", [0]).any()  # words no judged query held
    assert assoc.features_of("chair", []).shape == (0, len(ASSOCIATION_NAMES))
    x = assoc.features_of("office chair zzqx", [0, 5, 0])  # repeats and order are per row
    np.testing.assert_array_equal(x[0], x[2])
    np.testing.assert_array_equal(x[1], assoc.features_of("office chair zzqx", [5])[0])
    assert x[0, 4] == pytest.approx(2 / 3)  # zzqx unknown: 2 of 3 words known


# ---------------------------------------------------------------------------------------------
# Out of fold: no row's own label in its features
# ---------------------------------------------------------------------------------------------

def planted_catalog(num_queries=80, per_query=4):
    """Queries "widget uq<i>", products "pt<k>", each judged once: every (query word, product
    token) pair occurs in one row only, and a row's label is a fixed function of its product's
    token. In-fold statistics would be a perfect feature, and one that says nothing about any
    other row."""
    b = CatalogBuilder("planted", GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    labels = np.random.default_rng(0).random(num_queries * per_query) < 0.5  # token k -> label
    for i in range(num_queries):
        b.add_query(f"planted:q{i}", query_id=f"q{i}", text=f"widget uq{i}")
        for j in range(per_query):
            k = i * per_query + j
            b.add_product(f"planted:p{k}", product_id=f"p{k}", title=f"pt{k}")
            b.add_judgment("planted", query_id=f"q{i}", product_id=f"p{k}",
                           grade=3 if labels[k] else 0)
    return b.build(SplitConfig(train=1.0, dev=0.0, test=0.0))


def test_out_of_fold_features_never_see_their_own_label():
    catalog = planted_catalog()
    features = RelevanceFeatures(SearchEngine.build(catalog))
    train = judged_pairs(catalog, "train")
    assoc = fit(features, train)
    relevant = train.grades >= 3
    in_fold = np.concatenate([assoc.features_of(q.text, rows) for q, rows, _ in per_query(train)])
    oof = np.concatenate([assoc.out_of_fold(q, rows) for q, rows, _ in per_query(train)])
    # The leak that out-of-fold statistics prevent: all-train statistics of the training rows
    # separate them perfectly (a(w, pt<k>) > 0 exactly when row k is relevant).
    assert roc_auc(in_fold[:, 0], relevant) == 1.0
    # Out of fold, uq<i> is unknown (only its own query holds it) and "widget" never met pt<k>
    # in another row: a fold's rows get equal features, whatever their labels.
    folds = np.repeat([fold_of(q.query_id, FOLDS, SEED) for q in train.queries],
                      np.diff(train.bounds))
    for fold in range(FOLDS):
        assert (oof[folds == fold] == oof[folds == fold][0]).all()
    for column in range(len(ASSOCIATION_NAMES)):
        assert abs(roc_auc(oof[:, column], relevant) - 0.5) < 0.15, ASSOCIATION_NAMES[column]


@pytest.mark.parametrize("which", ["planted", "synthetic"])
def test_out_of_fold_is_the_statistic_without_the_fold(which, synthetic):
    if which == "planted":
        catalog = planted_catalog(num_queries=30)
        features = RelevanceFeatures(SearchEngine.build(catalog))
        train = judged_pairs(catalog, "train")
        assoc = fit(features, train)
    else:
        features, train, assoc = synthetic
    for fold in range(2):
        in_fold = lambda q: fold_of(q.query_id, FOLDS, SEED) == fold  # noqa: E731
        without = fit(features, train, keep=lambda q: not in_fold(q))  # recomputed from scratch
        checked = 0
        for q, rows, _ in per_query(train):
            if in_fold(q):
                np.testing.assert_array_equal(assoc.out_of_fold(q, rows),
                                              without.features_of(q.text, rows))
                checked += 1
        assert checked


def test_the_model_trains_on_out_of_fold_features(synthetic, monkeypatch):
    features, train, assoc = synthetic  # the config's prior, folds and seed
    seen = {}
    train_fn = relevance.xgb.train
    monkeypatch.setattr(relevance.xgb, "train", lambda params, dtrain, *a, **kw: (
        seen.setdefault("x", dtrain.get_data().toarray()), train_fn(params, dtrain, *a, **kw))[1])
    model = RelevanceModel.train(features.engine, RelevanceConfig(max_rounds=5),
                                 features=features)
    expected = np.concatenate([assoc.out_of_fold(q, rows) for q, rows, _ in per_query(train)])
    got = seen["x"][:, -len(ASSOCIATION_NAMES):]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    all_train = np.concatenate([model.associations.features_of(q.text, rows)
                                for q, rows, _ in per_query(train)])
    assert not np.allclose(got, all_train)  # the all-train statistics would differ
    with pytest.raises(ValueError, match="counts of each fold"):  # kept only while training
        model.associations.out_of_fold(train.queries[0], train.rows[:3])


# ---------------------------------------------------------------------------------------------
# Saved tables
# ---------------------------------------------------------------------------------------------

def test_saved_tables_round_trip_and_refuse_another_catalog(synthetic, tmp_path):
    features, _, assoc = synthetic
    assoc.save(str(tmp_path))
    loaded = Associations.load(str(tmp_path), features)
    rows = np.arange(0, len(features.catalog.products), 7)
    for q in features.catalog.split("test")[:3]:
        np.testing.assert_array_equal(loaded.features_of(q.text, rows),
                                      assoc.features_of(q.text, rows))
    # Another split of the same catalog: its train judgments differ (and some of the tables'
    # counts would be test judgments now).
    other = features.catalog.with_split(SplitConfig(salt="other"))
    with pytest.raises(ValueError, match="fingerprint"):
        Associations.load(str(tmp_path), RelevanceFeatures(SearchEngine.build(other)))
    with pytest.raises(FileNotFoundError, match=relevance_associations.TABLES_FILE):
        Associations.load(str(tmp_path / "nothing"), features)


# ---------------------------------------------------------------------------------------------
# What they are for
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_associations_tell_exact_from_substitute_on_problem_queries():
    """"chair for a sore lower back": exact products have lumbar support, substitutes are chairs
    without it; no word of the query names it, only the train judgments link the two. Held-out
    problem queries, AUC of exact (3) against substitute (2): lexical features alone stay below
    0.8, the associations take it above 0.95."""
    engine = SearchEngine.build(generate(SyntheticConfig(num_products=4000, num_queries=800)))
    auc = {}
    for associations in (False, True):
        model = RelevanceModel.train(engine, RelevanceConfig(associations=associations))
        test = model.judged("test")
        kinds = np.repeat([q.kind for q in test.queries], np.diff(test.bounds))
        near = (kinds == "problem") & (test.grades >= 2)
        auc[associations] = roc_auc(model.score_features(test.features[near]),
                                    test.grades[near] == 3)
    assert auc[False] < 0.8 and auc[True] > 0.95, auc
