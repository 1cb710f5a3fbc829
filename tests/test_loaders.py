"""Dataset loaders: ESCI, WANDS and canonical files -> Catalog, bad rows counted with file:line.

Fixtures: tests/fixtures/wands/ (the published tab-separated WANDS files, small; the bad rows are
listed in EXPECTED_WANDS_SKIPS below) and the `esci_dir` fixture of conftest.py (parquet, written
per test; its docstring lists every row). Expected catalogs are written out by hand from those
files, so a loader that drops, adds or misreads a row fails here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leser_jax.catalog import (MAX_QUERY_CHARS, MAX_TITLE_CHARS, CatalogBuilder, CatalogError,
                               GradeScale, Product, Query, SplitConfig)
from leser_jax.data import canonical, esci, load_dataset, wands

WANDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "wands")


def assert_same_catalog(a, b):
    assert (a.name, a.scale) == (b.name, b.scale)
    assert a.products == b.products
    assert a.queries == b.queries
    assert a.judgments == b.judgments


def assert_round_trip(catalog, tmp_path):
    """canonical.write then canonical.load gives back the same catalog, with nothing skipped."""
    out = os.path.join(tmp_path, "canonical")
    canonical.write(catalog, out)
    back = canonical.load(out)
    assert_same_catalog(back, catalog)
    assert back.report.num_skipped == 0


def skips(catalog) -> dict[str, int]:
    return dict(catalog.report.skipped)


# ---------------------------------------------------------------------------------------------
# ESCI

def esci_file(path, name):
    return os.path.join(str(path), name)


def test_esci_us_large_round_trip(esci_dir, tmp_path):
    catalog = esci.load(str(esci_dir))
    assert catalog.name == "esci-us"
    assert catalog.scale == esci.SCALE
    scale = catalog.scale
    assert (scale.grade_min, scale.grade_max, scale.relevant_at) == (0, 3, 3)
    # All five us products, judged or not (B005 is only in skipped or filtered examples), in file
    # order; the es/jp rows and the second us B001 (row 7) are not loaded.
    assert catalog.products == [
        Product(product_id="B001", title="Sony WH-1000XM4 Headphones",
                description="Industry leading noise cancelling & 30h battery\n"
                            "Noise cancelling\nTouch controls",
                attributes={"brand": "Sony", "color": "Black"}),
        Product(product_id="B002", title="USB-C Cable 6ft"),
        Product(product_id="B003", title="Wooden Phone Stand",
                description="Fits phones 4 < 7 inches\nOak wood", attributes={"brand": "Acme"}),
        Product(product_id="B004", title="Headphone Case", description="Hard shell",
                attributes={"brand": "Acme", "color": "Grey"}),
        Product(product_id="B005", title="Bluetooth Speaker", description="Loud.",
                attributes={"brand": "JBL", "color": "Blue"}),
    ]
    assert catalog.queries == [Query(query_id="1", text="headphones"),
                               Query(query_id="2", text="phone stand"),
                               Query(query_id="4", text="usb cable")]
    # E/S/C/I -> 3/2/1/0; only Exact is relevant.
    assert catalog.judgments == {"1": {"B001": 3, "B002": 2, "B003": 1, "B004": 0},
                                 "2": {"B003": 3},
                                 "4": {"B002": 0}}
    assert catalog.relevant("1") == {"B001"}
    examples = esci_file(esci_dir, esci.EXAMPLES_FILE)
    products = esci_file(esci_dir, esci.PRODUCTS_FILE)
    assert skips(catalog) == {"duplicate product id": 1, "judgment of unknown product": 2,
                              "unknown ESCI label": 1, "query id with two texts": 1,
                              "duplicate judgment": 1}
    report = catalog.report
    assert report.examples["duplicate product id"] == [f"{products}:row 7: product_id=B001"]
    # Row 10 asks for us B010, which exists only in es: the join is on (locale, product_id).
    assert [e.split(": ")[0] for e in report.examples["judgment of unknown product"]] == [
        f"{examples}:row 5", f"{examples}:row 10"]
    assert report.examples["unknown ESCI label"] == [f"{examples}:row 6: esci_label='X'"]
    assert report.examples["query id with two texts"][0].startswith(f"{examples}:row 11: ")
    assert report.examples["duplicate judgment"][0].startswith(f"{examples}:row 13: ")
    assert report.kept == {"products": 5, "queries": 3, "judgments": 6}
    assert_round_trip(catalog, tmp_path)


def test_esci_small_version(esci_dir):
    catalog = esci.load(str(esci_dir), version="small")
    assert catalog.name == "esci-us-small"
    # Rows with small_version == 1 only: B003 (rows 2, 4) and row 5 drop out. Query 2 stays: its
    # text is fine even though its one small row has a bad label.
    assert [q.query_id for q in catalog.queries] == ["1", "2", "4"]
    assert catalog.judgments == {"1": {"B001": 3, "B002": 2, "B004": 0}, "4": {"B002": 0}}
    assert skips(catalog) == {"duplicate product id": 1, "judgment of unknown product": 1,
                              "unknown ESCI label": 1, "query id with two texts": 1,
                              "duplicate judgment": 1}
    # The catalog is the same whichever version: all products of the locale.
    assert [p.product_id for p in catalog.products] == ["B001", "B002", "B003", "B004", "B005"]
    with pytest.raises(ValueError, match="version"):
        esci.load(str(esci_dir), version="medium")


def test_esci_locale_filter(esci_dir, tmp_path):
    catalog = esci.load(str(esci_dir), locale="es")
    assert catalog.name == "esci-es"
    assert catalog.products == [
        Product(product_id="B001", title="Auriculares Sony WH-1000XM4",
                description="Cancelación de ruido",
                attributes={"brand": "Sony", "color": "Negro"}),
        Product(product_id="B010", title="Cable USB")]
    assert catalog.queries == [Query(query_id="3", text="auriculares")]
    assert catalog.judgments == {"3": {"B001": 3, "B010": 0}}
    assert catalog.report.num_skipped == 0
    assert_round_trip(catalog, tmp_path)
    with pytest.raises(CatalogError, match=r"product_locale='fr'.*\['es', 'jp', 'us'\]"):
        esci.load(str(esci_dir), locale="fr")


def test_esci_row_numbers_survive_batching(esci_dir, monkeypatch):
    """Row numbers count from the start of the file, not of the batch that holds the row."""
    whole = esci.load(str(esci_dir))
    monkeypatch.setattr(esci, "_BATCH_ROWS", 3)
    batched = esci.load(str(esci_dir))
    assert_same_catalog(batched, whole)
    assert batched.report.examples == whole.report.examples


def test_esci_strict_raises_at_first_bad_row(esci_dir):
    products = esci_file(esci_dir, esci.PRODUCTS_FILE)
    with pytest.raises(CatalogError, match=f"{products}:row 7: duplicate product id"):
        esci.load(str(esci_dir), strict=True)


def test_esci_accepts_full_label_words(esci_dir):
    path = esci_file(esci_dir, esci.EXAMPLES_FILE)
    table = pq.read_table(path)
    words = {"E": "exact", "S": "Substitute", "C": "COMPLEMENT", "I": "irrelevant"}
    labels = [words.get(v, v) for v in table["esci_label"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("esci_label"), "esci_label",
                                    pa.array(labels)), path)
    catalog = esci.load(str(esci_dir))
    assert catalog.judgments["1"] == {"B001": 3, "B002": 2, "B003": 1, "B004": 0}


def test_esci_missing_file_and_column(esci_dir):
    examples = esci_file(esci_dir, esci.EXAMPLES_FILE)
    table = pq.read_table(examples)
    pq.write_table(table.drop_columns(["esci_label", "large_version"]), examples)
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['esci_label', 'large_version'\]"
                                           r".*columns present: \['example_id', 'query'"):
        esci.load(str(esci_dir))
    os.remove(esci_file(esci_dir, esci.PRODUCTS_FILE))
    with pytest.raises(FileNotFoundError, match=f"{esci.PRODUCTS_FILE} not found: expected the "
                                                f"ESCI products table"):
        esci.load(str(esci_dir))


def test_esci_product_description():
    assert esci.product_description("<p>a <br/>b</p>", "x\n\n y \n") == "a b\nx\ny"
    assert esci.product_description(None, None) == ""
    assert esci.product_description("R&amp;D &lt;tag&gt; 3 < 4 > 2", "") == "R&D <tag> 3 < 4 > 2"


# ---------------------------------------------------------------------------------------------
# WANDS

def wands_file(name):
    return os.path.join(WANDS_DIR, name)


EXPECTED_WANDS_SKIPS = {
    "duplicate product id": [wands_file("product.csv") + ":14"],
    "more fields than the header": [wands_file("product.csv") + ":15"],
    "product without title": [wands_file("product.csv") + ":16"],
    "duplicate query id": [wands_file("query.csv") + ":7"],
    "judgment of unknown product": [wands_file("label.csv") + f":{n}" for n in (16, 20, 21)],
    "unknown WANDS label": [wands_file("label.csv") + ":17"],
    "judgment of unknown query": [wands_file("label.csv") + ":18"],
    "duplicate judgment": [wands_file("label.csv") + ":19"],
}


def test_wands_round_trip(tmp_path):
    catalog = wands.load(WANDS_DIR)
    assert catalog.name == "wands"
    assert catalog.scale == GradeScale(grade_min=0, grade_max=2, relevant_at=2,
                                       meaning=wands.SCALE.meaning)
    assert [p.product_id for p in catalog.products] == [str(i) for i in range(12)]
    by_id = {p.product_id: p for p in catalog.products}
    assert by_id["0"] == Product(
        product_id="0", title="solid wood platform bed",
        description="good , deep sleep can be quite difficult to have without a comfortable bed .",
        attributes={"class": "Beds",
                    "category": "Furniture > Bedroom Furniture > Beds & Headboards > Beds",
                    "overallwidth-sidetoside": "64.7", "dsprimaryproductstyle": "modern",
                    "color": "brown"})
    # Unnamed feature values are kept under "other"; a name without a value is dropped.
    assert by_id["2"].description == ""
    assert dict(by_id["2"].attributes) == {
        "class": "Dining Table Sets",
        "category": "Furniture > Kitchen & Dining Furniture > Dining Table Sets",
        "basematerialdetails": "steel", "other": "gray wood, handwash only"}
    # Several classes; a repeated feature joins its values; "class:bogus" cannot replace the class.
    assert dict(by_id["3"].attributes) == {
        "class": "Teen Lounge Furniture, Accent Chairs",
        "category": "Furniture > Living Room Furniture > Chairs & Seating > Accent Chairs",
        "color": "gray, white"}
    assert by_id["3"].title == "fletcher 27.5 '' wide polyester armchair"  # the first row wins
    assert by_id["4"].title == 'fawkes 36" blue vanity'  # CSV quoting, as pandas reads it
    assert dict(by_id["5"].attributes) == {
        "class": "Bar Stools",
        "category": "Furniture > Kitchen & Dining Furniture > Bar Furniture > Bar Stools"}
    assert by_id["11"].attributes["topmaterial"] == "oak"  # the short row is kept
    assert catalog.queries == [Query(query_id="0", text="salon chair"),
                               Query(query_id="1", text="smart coffee table"),
                               Query(query_id="2", text="7qt slow cooker"),
                               Query(query_id="3", text='fawkes 36" blue vanity'),
                               Query(query_id="4", text="desk for kids")]
    # Exact/Partial/Irrelevant -> 2/1/0 ("exact" in lower case too).
    assert catalog.judgments == {"0": {"6": 2, "10": 2, "3": 1, "5": 0},
                                 "1": {"8": 2, "7": 1, "0": 0},
                                 "2": {"1": 2, "9": 1, "2": 0},
                                 "3": {"4": 2, "5": 0},
                                 "4": {"7": 0, "11": 1, "0": 2}}
    assert catalog.relevant("0") == {"6", "10"}
    assert skips(catalog) == {reason: len(w) for reason, w in EXPECTED_WANDS_SKIPS.items()}
    for reason, wheres in EXPECTED_WANDS_SKIPS.items():
        assert [e.split(": ")[0] for e in catalog.report.examples[reason]] == wheres, reason
    assert catalog.report.examples["unknown WANDS label"] == [
        wands_file("label.csv") + ":17: label='Relevant'"]
    assert_round_trip(catalog, tmp_path)


def test_wands_features():
    assert wands.features("a:1|b : x|a:2| : y|z|c:|c:d:e||") == {
        "a": "1, 2", "b": "x", "other": "y, z", "c": "d:e"}
    assert wands.features("") == {}


def copy_wands(tmp_path):
    path = os.path.join(tmp_path, "wands")
    shutil.copytree(WANDS_DIR, path)
    return path


def test_wands_header_names_are_normalised(tmp_path):
    """README spelling (category_hierarchy) and file spelling (category hierarchy) both work."""
    path = copy_wands(tmp_path)
    product = os.path.join(path, "product.csv")
    text = open(product, encoding="utf-8").read()
    with open(product, "w", encoding="utf-8") as f:
        f.write(text.replace("category hierarchy", "Category_Hierarchy ", 1))
    assert_same_catalog(wands.load(path), wands.load(WANDS_DIR))


def test_wands_strict_raises_at_first_bad_row():
    with pytest.raises(CatalogError, match=f"{wands_file('product.csv')}:14: duplicate product id"):
        wands.load(WANDS_DIR, strict=True)


def test_wands_missing_file_and_column(tmp_path):
    path = copy_wands(tmp_path)
    product = os.path.join(path, "product.csv")
    text = open(product, encoding="utf-8").read()
    with open(product, "w", encoding="utf-8") as f:
        f.write(text.replace("product_name", "product_title", 1))
    with pytest.raises(CatalogError, match=r"product.csv: missing column\(s\) \['product_name'\]"):
        wands.load(path)
    os.remove(os.path.join(path, "label.csv"))
    assert not wands.is_wands(path)
    with pytest.raises(FileNotFoundError, match=r"label.csv not found: expected a tab-separated "
                                                r"WANDS file with columns query_id, product_id"):
        wands.load(path)


def test_wands_huge_field_is_one_bad_row_at_its_line(tmp_path):
    """Past the csv module's field size limit, quoted or not: one bad row, the file still loads."""
    path = copy_wands(tmp_path)
    query = os.path.join(path, "query.csv")
    with open(query, "a", encoding="utf-8") as f:
        f.write("5\t" + "x" * 200_000 + "\tHuge\n")
        f.write('6\t"' + "x" * 200_000 + '"\tHuge\n')
        f.write("7\tlamp\tLamps\n")
    catalog = wands.load(path)
    assert [q.query_id for q in catalog.queries] == ["0", "1", "2", "3", "4", "7"]
    assert skips(catalog)["query too long"] == 1 and skips(catalog)["unreadable CSV row"] == 1
    assert catalog.report.examples["query too long"] == [
        f"{query}:8: query_id=5: 200,000 characters, the limit is {MAX_QUERY_CHARS:,}"]
    assert catalog.report.examples["unreadable CSV row"] == [
        f"{query}:9: field larger than field limit (131072)"]


# ---------------------------------------------------------------------------------------------
# Canonical layout: every bad-input path

def write_canonical(path, *, meta=None, products=None, queries=None, judgments=None):
    """A small canonical folder; products.jsonl is uncompressed, judgments.csv.gz compressed."""
    os.makedirs(path, exist_ok=True)
    meta = meta if meta is not None else {"name": "tiny", "grade_min": 1, "grade_max": 3,
                                          "relevant_at": 2.5, "grade_meaning": "1 bad, 3 good"}
    with open(os.path.join(path, "dataset.json"), "w") as f:
        f.write(meta if isinstance(meta, str) else json.dumps(meta))
    products = products if products is not None else [
        '{"product_id": "p1", "title": "red shoe", "attributes": {"color": "red"}}',
        '{"product_id": "p2", "title": ',                        # 2 bad JSON line
        '{"title": "no id"}',                                    # 3 product without id
        '{"product_id": "p3"}',                                  # 4 product without title
        '{"product_id": "p1", "title": "red shoe again"}',       # 5 duplicate product id
        '[1, 2]',                                                # 6 not a JSON object
        '{"product_id": "p5", "title": "x", "attributes": "x"}',  # 7 bad attributes
        '',                                                      # 8 blank: ignored
        '{"product_id": "p4", "title": "green shoe", "description": "d", "alt_titles": ["verde"]}',
    ]
    with open(os.path.join(path, "products.jsonl"), "w") as f:
        f.write("\n".join(products) + "\n")
    queries = queries if queries is not None else [
        "query_id,query", "q1,red shoes", "q2,green shoes",
        ",no id",                                                # 4 query without id
        "q1,red shoes again"]                                    # 5 duplicate query id
    with open(os.path.join(path, "queries.csv"), "w") as f:
        f.write("\n".join(queries) + "\n")
    judgments = judgments if judgments is not None else [
        "query_id,product_id,grade", "q1,p1,3",
        "q1,p9,2",                                               # 3 unknown product
        "q1,p4,4",                                               # 4 grade outside [1, 3]
        "q2,p4,high",                                            # 5 grade not a number
        "q9,p1,2",                                               # 6 unknown query
        "q2,p4,2.5",
        "q1,p1,1",                                               # 8 duplicate judgment
        "q2,p1,nan"]                                             # 9 NaN is outside the scale
    with gzip.open(os.path.join(path, "judgments.csv.gz"), "wt") as f:
        f.write("\n".join(judgments) + "\n")
    return path


def test_canonical_bad_rows_are_counted_with_file_and_line(tmp_path):
    path = write_canonical(os.path.join(tmp_path, "tiny"))
    catalog = canonical.load(path)
    assert catalog.name == "tiny"
    assert catalog.scale == GradeScale(grade_min=1, grade_max=3, relevant_at=2.5,
                                       meaning="1 bad, 3 good")
    assert catalog.products == [
        Product(product_id="p1", title="red shoe", attributes={"color": "red"}),
        Product(product_id="p4", title="green shoe", description="d", alt_titles=("verde",))]
    assert catalog.queries == [Query(query_id="q1", text="red shoes"),
                               Query(query_id="q2", text="green shoes")]
    assert catalog.judgments == {"q1": {"p1": 3}, "q2": {"p4": 2.5}}
    p, q, j = (os.path.join(path, n) for n in ("products.jsonl", "queries.csv", "judgments.csv.gz"))
    expected = {
        "bad JSON line": [f"{p}:2"],
        "product without id": [f"{p}:3"],
        "product without title": [f"{p}:4"],
        "duplicate product id": [f"{p}:5"],
        "product line is not a JSON object": [f"{p}:6"],
        "bad attributes or alt_titles": [f"{p}:7"],
        "query without id": [f"{q}:4"],
        "duplicate query id": [f"{q}:5"],
        "judgment of unknown product": [f"{j}:3"],
        "grade outside scale": [f"{j}:4", f"{j}:9"],
        "grade not a number": [f"{j}:5"],
        "judgment of unknown query": [f"{j}:6"],
        "duplicate judgment": [f"{j}:8"],
    }
    assert skips(catalog) == {reason: len(w) for reason, w in expected.items()}
    for reason, wheres in expected.items():
        assert [e.split(": ")[0] for e in catalog.report.examples[reason]] == wheres, reason
    assert "skipped 14 rows" in catalog.report.summary()


def test_canonical_strict_names_file_and_line(tmp_path):
    path = write_canonical(os.path.join(tmp_path, "tiny"))
    with pytest.raises(CatalogError, match=f"{os.path.join(path, 'products.jsonl')}:2: bad JSON"):
        canonical.load(path, strict=True)


def test_canonical_missing_files_and_columns(tmp_path):
    path = write_canonical(os.path.join(tmp_path, "tiny"),
                           queries=["id,text", "q1,red shoes"])
    with pytest.raises(CatalogError, match=r"queries.csv: missing column\(s\) \['query_id', "
                                           r"'query'\]; header is \['id', 'text'\]"):
        canonical.load(path)
    os.remove(os.path.join(path, "products.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"products.jsonl.gz not found: expected one JSON "
                                                r"product a line"):
        canonical.load(path)
    os.remove(os.path.join(path, "dataset.json"))
    with pytest.raises(FileNotFoundError, match=r"dataset.json not found"):
        canonical.load(path)


def test_canonical_bad_dataset_json(tmp_path):
    with pytest.raises(CatalogError, match="not valid JSON"):
        canonical.load(write_canonical(os.path.join(tmp_path, "a"), meta="{name"))
    with pytest.raises(CatalogError, match="bad grade scale"):
        canonical.load(write_canonical(os.path.join(tmp_path, "b"),
                                       meta={"grade_min": 3, "grade_max": 1, "relevant_at": 2}))


def test_canonical_nothing_valid(tmp_path):
    path = write_canonical(os.path.join(tmp_path, "tiny"), products=['{"title": "no id"}'])
    with pytest.raises(CatalogError, match="no valid products"):
        canonical.load(path)


def test_canonical_round_trip_keeps_kind_and_fractional_grades(tmp_path):
    path = write_canonical(os.path.join(tmp_path, "tiny"),
                           queries=["query_id,query,kind", "q1,red shoes,exact", "q2,green,broad"],
                           judgments=["query_id,product_id,grade", "q1,p1,2.25", "q2,p4,1"])
    catalog = canonical.load(path)
    assert [q.kind for q in catalog.queries] == ["exact", "broad"]
    assert catalog.judgments == {"q1": {"p1": 2.25}, "q2": {"p4": 1.0}}
    assert_round_trip(catalog, tmp_path)


# ---------------------------------------------------------------------------------------------
# load_dataset: dispatch on the folder's layout

def test_load_dataset_dispatch(tmp_path, esci_dir):
    tiny = write_canonical(os.path.join(tmp_path, "tiny"))
    assert load_dataset(tiny).name == "tiny"
    assert load_dataset(str(esci_dir)).name == "esci-us"
    assert load_dataset(str(esci_dir), esci_locale="es").name == "esci-es"
    assert load_dataset(WANDS_DIR).name == "wands"
    split = SplitConfig(train=0.5, dev=0.25, test=0.25, salt="other")
    assert load_dataset(WANDS_DIR, split_config=split).split_config == split
    with pytest.raises(CatalogError):
        load_dataset(WANDS_DIR, strict=True)
    empty = os.path.join(tmp_path, "empty")
    os.makedirs(empty)
    with pytest.raises(FileNotFoundError, match="holds no dataset that a loader recognises"):
        load_dataset(empty)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(os.path.join(tmp_path, "nowhere"))


def test_canonical_round_trip_keeps_full_grade_precision(tmp_path):
    path = write_canonical(os.path.join(tmp_path, "tiny"), queries=["query_id,query", "q1,red"],
                           judgments=["query_id,product_id,grade", f"q1,p1,{1 + 2 / 3!r}"])
    catalog = canonical.load(path)
    assert catalog.judgments == {"q1": {"p1": 1 + 2 / 3}}
    assert_round_trip(catalog, tmp_path)


# ---------------------------------------------------------------------------------------------
# One bad line is one bad row: stray quotes, line breaks, long texts, bad bytes, truncated gzip

def small_canonical(path, n=12):
    """A canonical folder from `canonical.write`: products p0.., queries q0.. ("query i") and one
    judgment (q_i, p_i); so queries.csv has q_i on line i + 2 and judgments.csv.gz likewise."""
    builder = CatalogBuilder("small", GradeScale(grade_min=0, grade_max=1, relevant_at=1))
    for i in range(n):
        builder.add_product(f"x:{i}", product_id=f"p{i}", title=f"product {i}")
    for i in range(n):
        builder.add_query(f"x:{i}", query_id=f"q{i}", text=f"query {i}")
        builder.add_judgment(f"x:{i}", query_id=f"q{i}", product_id=f"p{i}", grade=1)
    canonical.write(builder.build(), str(path))
    return str(path)


def replace_in(path, name, old: bytes, new: bytes):
    """Replaces bytes once in a file of a dataset folder (through gzip for a .gz file)."""
    full = os.path.join(path, name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(full, "rb") as f:
        data = f.read()
    assert data.count(old) == 1, (name, old)
    with opener(full, "wb") as f:
        f.write(data.replace(old, new))
    return full


def query_ids(catalog):
    return [q.query_id for q in catalog.queries]


ALL_BUT_Q3 = [f"q{i}" for i in range(12) if i != 3]


def test_stray_quote_costs_its_own_row_only(tmp_path):
    """Read as one CSV stream, the quote ran on to the end of the file: q3 swallowed q4-q11, the
    catalog kept 4 queries, and the only trace was 8 judgments of unknown queries, which strict
    mode blamed on judgments.csv.gz:6."""
    path = small_canonical(tmp_path / "small")
    queries = replace_in(path, "queries.csv", b"q3,query 3", b'q3,"query 3')
    judgments = os.path.join(path, "judgments.csv.gz")
    catalog = canonical.load(path)
    assert query_ids(catalog) == ALL_BUT_Q3
    assert catalog.query_by_id["q4"].text == "query 4"
    assert skips(catalog) == {"unclosed quote": 1, "judgment of unknown query": 1}
    assert catalog.report.examples["unclosed quote"] == [
        f"{queries}:5: a quoted field opened on this line does not close on it (rows are one "
        f"line each)"]
    assert catalog.report.examples["judgment of unknown query"] == [f"{judgments}:5: query_id=q3"]
    with pytest.raises(CatalogError, match=re.escape(f"{queries}:5: unclosed quote")):
        canonical.load(path, strict=True)


def test_stray_quote_in_judgments_and_wands(tmp_path):
    path = small_canonical(tmp_path / "small")
    judgments = replace_in(path, "judgments.csv.gz", b"q5,p5,1.0", b'q5,"p5,1.0')
    catalog = canonical.load(path)
    assert len(catalog.judgments) == 11 and "q5" not in catalog.judgments
    assert catalog.report.examples["unclosed quote"][0].startswith(f"{judgments}:7: ")
    assert skips(catalog) == {"unclosed quote": 1}

    # WANDS is tab-separated with CSV quoting; query 0's quote would have run on to query 3's.
    wands_path = copy_wands(tmp_path)
    query = replace_in(wands_path, "query.csv", b"0\tsalon chair", b'0\t"salon chair')
    catalog = wands.load(wands_path)
    assert query_ids(catalog) == ["1", "2", "3", "4"]
    assert catalog.query_by_id["3"].text == 'fawkes 36" blue vanity'
    assert skips(catalog)["unclosed quote"] == 1
    assert catalog.report.examples["unclosed quote"][0].startswith(f"{query}:2: ")
    # The fixture's one judgment of an unknown query (line 18) plus query 0's six (2-5, 16, 19).
    assert skips(catalog)["judgment of unknown query"] == 1 + 6


def test_line_break_in_quoted_query_is_a_bad_row(tmp_path):
    """Read as one CSV stream, "query\\n3" loaded as a query with a line break in it."""
    path = small_canonical(tmp_path / "small")
    queries = replace_in(path, "queries.csv", b"q3,query 3", b'q3,"query\n3"')
    catalog = canonical.load(path)
    assert query_ids(catalog) == ALL_BUT_Q3
    # Line 5 opens the quote; line 6, '3"', is a row of its own with an id and no text.
    assert skips(catalog) == {"unclosed quote": 1, "query without text": 1,
                              "judgment of unknown query": 1}
    assert catalog.report.examples["unclosed quote"][0].startswith(f"{queries}:5: ")
    assert catalog.report.examples["query without text"] == [f'{queries}:6: query_id=3"']


def test_line_break_in_json_title_is_a_bad_row(tmp_path):
    """JSON escapes a line break, so the line parses; the builder rejects the title."""
    path = small_canonical(tmp_path / "small")
    products = replace_in(path, "products.jsonl.gz", b'"product 3"', b'"product\\n3"')
    catalog = canonical.load(path)
    assert [p.product_id for p in catalog.products] == [f"p{i}" for i in range(12) if i != 3]
    assert skips(catalog) == {"product title with a line break": 1,
                              "judgment of unknown product": 1}
    assert catalog.report.examples["product title with a line break"] == [
        f"{products}:4: product_id=p3: '\\n' at character 8"]
    with pytest.raises(CatalogError, match=re.escape(f"{products}:4: product title with a line")):
        canonical.load(path, strict=True)


def test_over_long_texts_are_bad_rows(tmp_path):
    """Today a 5,000-character query or title loads; a row at the limit still does."""
    path = small_canonical(tmp_path / "small")
    queries = replace_in(path, "queries.csv", b"q3,query 3", b"q3," + b"x" * 5_000)
    replace_in(path, "queries.csv", b"q4,query 4", b"q4," + b"y" * MAX_QUERY_CHARS)
    products = replace_in(path, "products.jsonl.gz", b'"product 7"',
                          b'"' + b"z" * (MAX_TITLE_CHARS + 1) + b'"')
    catalog = canonical.load(path)
    assert query_ids(catalog) == ALL_BUT_Q3
    assert len(catalog.query_by_id["q4"].text) == MAX_QUERY_CHARS
    assert "p7" not in catalog.row_of
    assert skips(catalog) == {"query too long": 1, "product title too long": 1,
                              "judgment of unknown query": 1, "judgment of unknown product": 1}
    assert catalog.report.examples["query too long"] == [
        f"{queries}:5: query_id=q3: 5,000 characters, the limit is {MAX_QUERY_CHARS:,}"]
    assert catalog.report.examples["product title too long"] == [
        f"{products}:8: product_id=p7: {MAX_TITLE_CHARS + 1:,} characters, the limit is "
        f"{MAX_TITLE_CHARS:,}"]


def test_bytes_that_are_not_utf8_are_bad_rows(tmp_path):
    """Today a Latin-1 byte became U+FFFD and loaded, strict or not. A real U+FFFD, a BOM and
    other UTF-8 text still load."""
    path = small_canonical(tmp_path / "small")
    queries = replace_in(path, "queries.csv", b"q3,query 3", b"q3,caf\xe9")
    replace_in(path, "queries.csv", b"q4,query 4", "q4,café \ufffd".encode())
    replace_in(path, "queries.csv", b"query_id,query", b"\xef\xbb\xbfquery_id,query")  # a BOM
    products = replace_in(path, "products.jsonl.gz", b'"product 5"', b'"product \xff5"')
    judgments = replace_in(path, "judgments.csv.gz", b"q6,p6,1.0", b"q6,p6\x80,1.0")
    catalog = canonical.load(path)
    assert query_ids(catalog) == ALL_BUT_Q3
    assert catalog.query_by_id["q4"].text == "café \ufffd"
    assert "p5" not in catalog.row_of and "q6" not in catalog.judgments
    assert skips(catalog) == {"bytes that are not UTF-8": 3, "judgment of unknown query": 1,
                              "judgment of unknown product": 1}
    assert catalog.report.examples["bytes that are not UTF-8"] == [
        # 39 = len('{"product_id": "p5", "title": "product '), so the byte is character 40.
        f"{products}:6: byte 0xFF at character 40",
        f"{queries}:5: byte 0xE9 at character 7",
        f"{judgments}:8: byte 0x80 at character 6"]
    with pytest.raises(CatalogError, match=re.escape(f"{products}:6: bytes that are not UTF-8")):
        canonical.load(path, strict=True)


def test_bytes_that_are_not_utf8_in_wands(tmp_path):
    path = copy_wands(tmp_path)
    label = replace_in(path, "label.csv", b"Relevant", b"Relevant\xe9")
    catalog = wands.load(path)
    assert skips(catalog)["bytes that are not UTF-8"] == 1
    assert "unknown WANDS label" not in skips(catalog)  # the row was judged once, on its bytes
    assert catalog.report.examples["bytes that are not UTF-8"][0].startswith(f"{label}:17: ")


@pytest.mark.parametrize("name", ["judgments.csv.gz", "products.jsonl.gz"])
def test_truncated_gzip_names_the_file(tmp_path, name):
    """Today gzip's EOFError ("Compressed file ended before the end-of-stream marker was
    reached") named neither the file nor the line."""
    path = small_canonical(tmp_path / "small", n=3_000)
    full = os.path.join(path, name)
    with open(full, "rb") as f:
        data = f.read()
    with open(full, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(CatalogError, match=re.escape(f"{full}: truncated or corrupt, unreadable "
                                                     f"after line ")) as error:
        canonical.load(path)
    lines_read = int(re.search(r"after line (\d+)", str(error.value)).group(1))
    assert 0 < lines_read < 3_001  # the first half was read; the rows after it are lost
    assert "Compressed file ended before the end-of-stream marker" in str(error.value)


def test_gzip_name_on_a_plain_file_names_the_file(tmp_path):
    path = small_canonical(tmp_path / "small")
    judgments = os.path.join(path, "judgments.csv.gz")
    with open(judgments, "w") as f:
        f.write("query_id,product_id,grade\nq1,p1,1\n")
    with pytest.raises(CatalogError, match=re.escape(f"{judgments}: truncated or corrupt, "
                                                     f"unreadable after line 0: Not a gzipped")):
        canonical.load(path)


def test_canonical_row_with_more_fields_than_the_header(tmp_path):
    """An unquoted comma used to drop the rest of the text silently ("red, shoes" -> "red")."""
    path = small_canonical(tmp_path / "small")
    queries = replace_in(path, "queries.csv", b"q3,query 3", b"q3,red, shoes")
    catalog = canonical.load(path)
    assert query_ids(catalog) == ALL_BUT_Q3
    assert catalog.report.examples["more fields than the header"] == [
        f"{queries}:5: 3 fields, header has 2"]
