"""The Tantivy search engine: ranking on a hand-made catalog, robustness to any text, reopening."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leser_jax.catalog import CatalogBuilder, GradeScale
from leser_jax.data.synthetic import SyntheticConfig, generate
from leser_jax.search import SearchConfig, SearchEngine, query_terms


def mini_catalog(name="mini", extra_title=""):
    b = CatalogBuilder(name, GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    rows = [
        ("p0", "Red Leather Office Chair", "Ergonomic seat with lumbar support.", {"color": "red"}),
        ("p1", "Blue Fabric Office Chair", "Breathable mesh back.", {"color": "blue"}),
        ("p2", "Oak Dining Table", "Seats six; pairs with any chair.", {"material": "oak"}),
        ("p3", "Cordless Drill 20V", "Two batteries included.", {"brand": "Voltmax"}),
        ("p4", "Ceiling Fan 52 in." + extra_title, "Quiet motor, high airflow.", {"finish": "nickel"}),
        ("p5", "Desk Lamp", "Adjustable arm.", {"color": "red"}),
    ]
    for pid, title, description, attributes in rows:
        b.add_product(f"mini:{pid}", product_id=pid, title=title, description=description,
                      attributes=attributes)
    b.add_query("mini:q0", query_id="q0", text="red chair")
    return b.build()


@pytest.fixture(scope="module")
def engine():
    return SearchEngine.build(mini_catalog())


def test_ranks_the_matching_product_first(engine):
    hits = engine.search("red leather chair", k=3)
    assert hits.product_ids[0] == "p0"
    assert list(hits.scores) == sorted(hits.scores, reverse=True)
    assert len(hits) == 3


def test_title_boost_beats_description(engine):
    # "chair" is in p0/p1's titles and only in p2's description: the title matches rank higher.
    ids = engine.search("chair", k=6).product_ids
    assert set(ids[:2]) == {"p0", "p1"} and ids[2] == "p2"


def test_searches_description_and_attributes(engine):
    assert engine.search("lumbar", k=5).product_ids == ("p0",)
    assert engine.search("voltmax", k=5).product_ids == ("p3",)  # an attribute value only


def test_stemming_matches_plural(engine):
    assert engine.search("chairs", k=1).product_ids[0] in {"p0", "p1"}
    assert engine.search("batteries", k=1).product_ids == ("p3",)


def test_empty_and_wordless_text_return_no_hits(engine):
    for text in ["", "   ", "!!! ??? :: ()", "🙂🙂", "\x00"]:
        hits = engine.search(text)
        assert len(hits) == 0 and hits.product_ids == ()


def test_k_limits_hits(engine):
    assert len(engine.search("chair table lamp fan drill", k=2)) == 2
    assert len(engine.search("chair", k=0)) == 0


def test_query_syntax_is_not_interpreted(engine):
    # Operators, field prefixes and quotes would change or break a Tantivy query; here they are
    # plain words, so each of these finds exactly what its words find.
    plain = engine.search("red chair", k=6).product_ids
    for text in ['"red" AND chair', "title:red chair", "red +chair -", "(red OR) [chair", "red\\ chair~2^3"]:
        assert set(engine.search(text, k=6).product_ids) >= set(plain[:2]), text
    assert engine.search("NOT lumbar", k=5).product_ids[-1] == "p0"  # NOT is a word: p0 still found


def test_query_terms():
    assert query_terms('red "leather" AND office-chair: {cheap} 🙂', 64) == [
        "red", "leather", "and", "office", "chair", "cheap"]
    assert query_terms("a b c d", 2) == ["a", "b"]
    assert query_terms(None, 8) == []


def test_long_text_is_capped(engine):
    hits = engine.search("chair " * 1000 + "drill", k=6)  # "drill" is past max_query_terms
    assert "p3" not in hits.product_ids and len(hits) > 0
    assert len(engine.search("x" * 2000)) == 0  # one 2,000-character word


def test_search_many_equals_search(engine):
    texts = ["red chair", "", "fan", "oak table", "drill", "🙂", "lamp red"] * 5
    many = engine.search_many(texts, k=3)
    assert len(many) == len(texts)
    for text, hits in zip(texts, many):
        one = engine.search(text, k=3)
        assert hits.product_ids == one.product_ids
        np.testing.assert_array_equal(hits.scores, one.scores)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=0, max_value=50))
def test_any_text_never_raises(engine, text, k):
    hits = engine.search(text, k=k)
    assert len(hits) <= min(k, 6)
    assert all(0 <= r < 6 for r in hits.rows)
    assert np.all(np.diff(hits.scores) <= 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=2000), max_size=12))
def test_any_batch_never_raises(engine, texts):
    assert len(engine.search_many(texts)) == len(texts)


def test_on_disk_build_and_reopen(tmp_path):
    catalog = mini_catalog()
    path = os.path.join(tmp_path, "index")
    built = SearchEngine.build(catalog, SearchConfig(title_boost=3.0), path=path)
    reopened = SearchEngine.open(path, catalog)
    assert reopened.config.title_boost == 3.0
    assert reopened.num_docs == built.num_docs == 6
    assert reopened.search("fan").product_ids == built.search("fan").product_ids == ("p4",)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".index-")] == []  # no leftovers
    SearchEngine.build(catalog, path=path)  # rebuilding over an existing index replaces it
    assert SearchEngine.open(path, catalog).config.title_boost == 2.0


def test_reopen_with_another_catalog_fails(tmp_path):
    path = os.path.join(tmp_path, "index")
    SearchEngine.build(mini_catalog(), path=path)
    with pytest.raises(ValueError, match="does not match catalog"):
        SearchEngine.open(path, mini_catalog(extra_title=" Bronze"))  # same ids, other text
    with pytest.raises(ValueError, match="does not match catalog"):
        SearchEngine.open(path, mini_catalog(name="other"))


def test_open_missing_index_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an index"):
        SearchEngine.open(os.path.join(tmp_path, "nowhere"), mini_catalog())


COLORS, MATERIALS, THINGS = ("red", "blue", "white"), ("oak", "steel", "glass", "pine"), (
    "table", "chair", "lamp", "shelf", "desk")
TIED_TEXTS = ["red", "oak", "table", "red oak", "blue table", "white glass lamp", "steel desk",
              "pine shelf red", "chair chair", "a table", "red blue white", "lamp desk shelf"]


def tied_catalog(num_products=600, seed=0):
    """Products with random titles out of 60 (half with a description): each ties with many."""
    rng = np.random.default_rng(seed)
    b = CatalogBuilder("tied", GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    for i in range(num_products):
        color, material, thing = rng.choice(COLORS), rng.choice(MATERIALS), rng.choice(THINGS)
        b.add_product(f"tied:{i}", product_id=f"t{i}", title=f"{color} {material} {thing}",
                      description=f"A {thing}." if i % 2 else "", attributes={"color": color})
    return b.build()


def catalog_and_texts(which):
    if which == "tied":
        return tied_catalog(), TIED_TEXTS
    catalog = generate(SyntheticConfig(num_products=400, num_queries=100))
    return catalog, [q.text for q in catalog.queries]


@pytest.mark.parametrize("which", ["tied", "synthetic"])
def test_results_do_not_depend_on_the_build(tmp_path, which):
    """Four builds of one catalog (two in memory, one on disk, that one reopened) give the same
    rows and scores. A 2-thread index writer made two segments, differently each time, and tied
    products came back in another order or not at all: at k=40, all 12 tied texts and ~40 of the
    100 synthetic queries differed between two such builds."""
    catalog, texts = catalog_and_texts(which)
    path = os.path.join(tmp_path, "index")
    engines = [SearchEngine.build(catalog), SearchEngine.build(catalog),
               SearchEngine.build(catalog, path=path), SearchEngine.open(path, catalog)]
    for k in (1, 7, 40):
        first = engines[0].search_many(texts, k)
        for engine in engines[1:]:
            for text, a, b in zip(texts, first, engine.search_many(texts, k)):
                np.testing.assert_array_equal(a.rows, b.rows, err_msg=f"{text!r} k={k}")
                np.testing.assert_array_equal(a.scores, b.scores, err_msg=f"{text!r} k={k}")


def sorted_hits(engine, text, k):
    """Reference top-k: every hit of `text`, sorted by score descending, then row ascending."""
    every = engine.search(text, k=len(engine.catalog.products))
    order = np.lexsort((every.rows, -every.scores))[:k]
    return every.rows[order], every.scores[order]


@pytest.mark.parametrize("which", ["tied", "synthetic"])
def test_ties_go_to_the_lowest_rows(which):
    """search(text, k) == the reference: equal scores in row order, and the lowest rows kept
    where a tie crosses the k-th place."""
    catalog, texts = catalog_and_texts(which)
    engine = SearchEngine.build(catalog)
    tied_at_k = 0
    for k in (1, 3, 10, 40):
        for text in texts:
            hits = engine.search(text, k)
            rows, scores = sorted_hits(engine, text, k)
            np.testing.assert_array_equal(hits.rows, rows, err_msg=f"{text!r} k={k}")
            np.testing.assert_array_equal(hits.scores, scores, err_msg=f"{text!r} k={k}")
            every = engine.search(text, k + 1)
            tied_at_k += len(every) > k and every.scores[k - 1] == every.scores[k]
    # The k-th and (k+1)-th hits tied this often, so the top-k set, not only its order, was
    # tested (measured: all 48 (text, k) of the tied catalog; 14 of 400 of the synthetic one).
    assert tied_at_k >= 10, tied_at_k


def test_tie_across_k_keeps_the_lowest_rows():
    b = CatalogBuilder("oak", GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    titles = ["Desk Lamp", "Oak Table", "Desk Lamp", "Oak Table", "Oak Table", "Oak Table",
              "Oak Table"]
    for row, title in enumerate(titles):
        # Row 4 also says "oak" in its description, so it scores highest; rows 1, 3, 5, 6 tie.
        b.add_product(f"oak:{row}", product_id=f"o{row}", title=title,
                      description="Solid oak." if row == 4 else "")
    engine = SearchEngine.build(b.build())
    hits = engine.search("oak table", k=3)
    assert list(hits.rows) == [4, 1, 3]  # not 5 or 6, which score as much as 1 and 3
    assert hits.scores[0] > hits.scores[1] == hits.scores[2]
    hits = engine.search("oak table", k=10)
    assert list(hits.rows) == [4, 1, 3, 5, 6] and len(set(hits.scores[1:])) == 1


def test_catalog_that_does_not_fit_one_segment_is_refused():
    """A heap too small for the catalog flushes several segments, which would break ties by
    segment, not by row: the build says so instead. 600 products x 500 words from a 50k-word
    vocabulary need more than 15 MB of writer heap (measured)."""
    rng = np.random.default_rng(0)
    b = CatalogBuilder("big", GradeScale(grade_min=0, grade_max=3, relevant_at=3))
    for i in range(600):
        b.add_product(f"big:{i}", product_id=f"b{i}", title=f"item {i}",
                      description=" ".join(f"w{j}" for j in rng.integers(0, 50_000, 500)))
    catalog = b.build()
    with pytest.raises(ValueError, match="do not fit one index segment"):
        SearchEngine.build(catalog, SearchConfig(writer_heap_bytes=15_000_000))
    assert SearchEngine.build(catalog).num_docs == 600  # the default heap holds it


def test_config_rejects_impossible_values():
    with pytest.raises(ValueError):
        SearchConfig(title_boost=0, description_boost=0, attributes_boost=0)
    with pytest.raises(ValueError):
        SearchConfig(num_threads=0)


def test_homedepot_index(homedepot):
    """The real catalog: every product indexed, and BM25 finds judged-relevant products."""
    engine = SearchEngine.build(homedepot)
    assert engine.num_docs == len(homedepot.products) == 54_667
    queries = [q for q in homedepot.queries if homedepot.relevant(q.query_id)][:300]
    found = [len(homedepot.relevant(q.query_id) & set(h.product_ids))
             / len(homedepot.relevant(q.query_id))
             for q, h in zip(queries, engine.search_many([q.text for q in queries], k=40))]
    # The judged products were shown by Home Depot's own engine, so BM25 over titles finds many
    # of them, not all: measured ~0.7 on these queries.
    assert 0.4 < np.mean(found) < 0.95


def test_homedepot_builds_agree(homedepot, tmp_path):
    """Two builds of the real catalog retrieve the same rows: with a 2-thread writer, 291 of
    these 300 queries differed at k=40 (ties at equal BM25 scores went to other products)."""
    texts = [q.text for q in homedepot.queries[:300]]
    path = os.path.join(tmp_path, "index")
    a = SearchEngine.build(homedepot).search_many(texts, k=40)
    SearchEngine.build(homedepot, path=path)
    b = SearchEngine.open(path, homedepot).search_many(texts, k=40)
    for text, x, y in zip(texts, a, b):
        np.testing.assert_array_equal(x.rows, y.rows, err_msg=text)
        np.testing.assert_array_equal(x.scores, y.scores, err_msg=text)
