"""Catalog types: the grade scale, the hashed query split and the builder's judgement of rows."""

from __future__ import annotations

import collections

import pytest

from leser_jax.catalog import (MAX_DESCRIPTION_CHARS, MAX_QUERY_CHARS, MAX_TITLE_CHARS, Catalog,
                               CatalogBuilder, CatalogError, GradeScale, SplitConfig)

SCALE = GradeScale(grade_min=1, grade_max=3, relevant_at=2.5)


def test_grade_scale():
    assert SCALE.normalise(1) == 0 and SCALE.normalise(3) == 1 and SCALE.normalise(2.5) == 0.75
    assert SCALE.is_relevant(2.5) and not SCALE.is_relevant(2.33)
    assert SCALE.contains(1) and not SCALE.contains(0.99) and not SCALE.contains(float("nan"))
    for bad in [dict(grade_min=3, grade_max=1, relevant_at=2),
                dict(grade_min=0, grade_max=1, relevant_at=2),
                dict(grade_min=float("-inf"), grade_max=1, relevant_at=0)]:
        with pytest.raises(ValueError):
            GradeScale(**bad)


def test_split_is_deterministic_and_follows_ratios():
    config = SplitConfig()
    ids = [f"q{i:05d}" for i in range(20_000)]
    splits = [config.split_of(i) for i in ids]
    assert splits == [SplitConfig().split_of(i) for i in ids]  # a fresh config, same answer
    counts = collections.Counter(splits)
    # 20,000 draws: the binomial std of the train share is sqrt(.8 * .2 / 20000) = 0.0028.
    assert abs(counts["train"] / 20_000 - 0.8) < 0.015
    assert abs(counts["dev"] / 20_000 - 0.1) < 0.015
    # Another salt reshuffles; the split of one id does not depend on the others.
    assert [SplitConfig(salt="x").split_of(i) for i in ids] != splits
    assert SplitConfig(train=0.5, dev=0.25, test=0.25).split_of("q00001") in ("train", "dev", "test")
    with pytest.raises(ValueError):
        SplitConfig(train=0.9, dev=0.2, test=0.1)


def make_builder(strict=False):
    b = CatalogBuilder("t", SCALE, strict=strict)
    assert b.add_product("f:1", product_id="p1", title=" Angle Bracket ", attributes={"a": "x", "b": ""})
    assert b.add_query("f:2", query_id="q1", text="bracket")
    return b


def test_builder_keeps_good_rows_and_cleans_them():
    b = make_builder()
    assert b.add_judgment("f:3", query_id="q1", product_id="p1", grade="2.67")
    catalog = b.build()
    p = catalog.product("p1")
    assert p.title == "Angle Bracket" and dict(p.attributes) == {"a": "x"}  # stripped, empty dropped
    assert catalog.judgments == {"q1": {"p1": 2.67}}
    assert catalog.relevant("q1") == {"p1"}
    assert catalog.report.kept == {"products": 1, "queries": 1, "judgments": 1}
    assert catalog.report.num_skipped == 0


@pytest.mark.parametrize("row, reason", [
    (("product", dict(product_id="", title="x")), "product without id"),
    (("product", dict(product_id="p2", title=None)), "product without title"),
    (("product", dict(product_id="p1", title="again")), "duplicate product id"),
    (("query", dict(query_id="q1", text="again")), "duplicate query id"),
    (("query", dict(query_id="q2", text=float("nan"))), "query without text"),
    (("judgment", dict(query_id="q1", product_id="p9", grade=3)), "judgment of unknown product"),
    (("judgment", dict(query_id="q9", product_id="p1", grade=3)), "judgment of unknown query"),
    (("judgment", dict(query_id="q1", product_id="p1", grade=3.5)), "grade outside scale"),
    (("judgment", dict(query_id="q1", product_id="p1", grade="high")), "grade not a number"),
    (("query", dict(query_id="q2", text="red\nshoes")), "query with a line break"),
    (("query", dict(query_id="q2", text="x" * (MAX_QUERY_CHARS + 1))), "query too long"),
    (("product", dict(product_id="p2", title="shoe\u2028rack")), "product title with a line break"),
    (("product", dict(product_id="p2", title="t", alt_titles=["ok", "a\rb"])),
     "product title with a line break"),
    (("product", dict(product_id="p2", title="x" * (MAX_TITLE_CHARS + 1))),
     "product title too long"),
    (("product", dict(product_id="p2", title="t", description="x" * (MAX_DESCRIPTION_CHARS + 1))),
     "product description too long"),
])
def test_builder_counts_each_bad_row(row, reason):
    kind, fields = row
    b = make_builder()
    add = getattr(b, f"add_{kind}")
    assert add("file.csv:7", **fields) is False
    catalog = b.build()
    assert catalog.report.skipped == {reason: 1}
    assert catalog.report.examples[reason][0].startswith("file.csv:7")
    assert reason in catalog.report.summary() and "file.csv:7" in catalog.report.summary()
    with pytest.raises(CatalogError, match=f"file.csv:7: {reason}"):
        getattr(make_builder(strict=True), f"add_{kind}")("file.csv:7", **fields)


def test_text_limits_and_line_breaks():
    """At the limit is kept; a description may hold line breaks; a bad row cannot claim its id."""
    b = make_builder()
    assert b.add_query("f:3", query_id="q2", text="x" * MAX_QUERY_CHARS)
    assert b.add_product("f:4", product_id="p2", title="y" * MAX_TITLE_CHARS,
                         description="line one\nline two")
    assert not b.add_product("f:5", product_id="p3", title="shelf\fbracket")
    assert b.add_product("f:6", product_id="p3", title="shelf bracket")  # the id is still free
    assert not b.add_query("f:7", query_id="q3", text="  red\x85shoes ")  # NEL, a Unicode break
    catalog = b.build()
    assert [p.product_id for p in catalog.products] == ["p1", "p2", "p3"]
    assert catalog.product("p2").description == "line one\nline two"
    assert catalog.report.skipped == {"product title with a line break": 1,
                                      "query with a line break": 1}
    assert catalog.report.examples["product title with a line break"] == [
        "f:5: product_id=p3: '\\x0c' at character 6"]
    assert catalog.report.examples["query with a line break"] == [
        "f:7: query_id=q3: '\\x85' at character 4"]
    too_long = make_builder()
    too_long.add_query("f:8", query_id="q2", text="x" * 1_234)
    assert too_long.build().report.examples["query too long"] == [
        "f:8: query_id=q2: 1,234 characters, the limit is 1,000"]


def test_duplicate_judgment_keeps_the_first():
    b = make_builder()
    b.add_judgment("f:3", query_id="q1", product_id="p1", grade=3)
    assert not b.add_judgment("f:4", query_id="q1", product_id="p1", grade=1)
    catalog = b.build()
    assert catalog.judgments["q1"]["p1"] == 3 and catalog.report.skipped == {"duplicate judgment": 1}


def test_builder_without_products_fails_clearly():
    b = CatalogBuilder("empty", SCALE, source="somewhere/products.jsonl.gz")
    b.add_product("x:1", product_id="p", title="")
    with pytest.raises(CatalogError, match="somewhere/products.jsonl.gz: no valid products"):
        b.build()


def test_catalog_rejects_duplicate_ids_built_by_hand():
    from leser_jax.catalog import Product
    p = Product(product_id="p", title="t")
    with pytest.raises(CatalogError, match="duplicate"):
        Catalog(name="x", scale=SCALE, products=[p, p], queries=[], judgments={})


def test_split_lists_queries_in_file_order():
    b = CatalogBuilder("t", SCALE)
    b.add_product("f:1", product_id="p", title="t")
    for i in range(200):
        b.add_query(f"f:{i}", query_id=f"q{i}", text=f"query {i}")
    catalog = b.build()
    parts = [catalog.split(s) for s in ("train", "dev", "test")]
    assert sum(map(len, parts)) == 200
    assert {q.query_id for part in parts for q in part} == {q.query_id for q in catalog.queries}
    assert parts[0] == sorted(parts[0], key=lambda q: int(q.query_id[1:]))
    assert len(catalog.with_split(SplitConfig(train=1.0, dev=0.0, test=0.0)).split("train")) == 200
    with pytest.raises(ValueError, match="unknown split"):
        catalog.split("validation")
