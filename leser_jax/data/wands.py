"""Wayfair WANDS loader: three tab-separated files -> Catalog.

WANDS (Chen et al., ECIR 2022, MIT licence) is 42,994 Wayfair products, 480 real search queries
and 233,448 graded judgments; its layout (see shared/data/README.md):

    product.csv  product_id, product_name, product_class, category_hierarchy,
                 product_description, product_features, rating_count, average_rating, review_count
    query.csv    query_id, query, query_class
    label.csv    id, query_id, product_id, label (Exact, Partial or Irrelevant)

Point `load` at the folder that holds the three files (the dataset repository's `dataset/`).
Decisions, each visible in the code below:

- The files are read the way WANDS's own notebook reads them, `pandas.read_csv(sep="\\t")`:
  tab-separated with CSV quoting (query 208 is `"fawkes 36"" blue vanity"`). A row with fewer
  fields than the header is padded with empty cells, as pandas does; a row with more fields is
  misaligned, so it is skipped and counted. Unlike pandas, a row is one line
  (canonical.read_table): a quote that its line does not close is a bad row there, not the start
  of a field that swallows the rows after it. WANDS's text is tokenised and lower-cased, with
  `''` for inches; a quoted field holding a line break, should a copy have one, would be counted
  as bad rows at its lines, not loaded. Bytes that are not UTF-8 make a bad row too.
- Columns are found by header name, compared after lower-casing and turning spaces into
  underscores: the README says `category_hierarchy`, the published file says `category hierarchy`.
  Only the columns the loader uses are required (ratings, query_class and the label id are not).
- Grades: Exact/Partial/Irrelevant -> 2/1/0; only Exact counts as relevant (relevant_at=2).
- Product text: title = product_name, description = product_description, attributes =
  "class" (product_class; several classes are `|`-separated, rendered "a, b"), "category"
  (category_hierarchy `a / b / c`, rendered "a > b > c") and then the product_features pairs.
  A feature is `name:value`, split at the first ':' and stripped (the file has both
  "capacityquarts:7" and "producttype : slow cooker"). A repeated name joins its values with ", ";
  a feature name never replaces "class" or "category".
- A feature without a name (no ':' at all, or " : gray wood", which the published file has) is
  not an error: its text still describes the product, so it is kept under the attribute "other"
  rather than dropped. A name without a value is dropped: there is nothing to index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from leser_jax.catalog import Catalog, CatalogBuilder, GradeScale, SplitConfig
from leser_jax.data.canonical import read_table

FILES = ("product.csv", "query.csv", "label.csv")
COLUMNS = {
    "product.csv": ("product_id", "product_name", "product_class", "category_hierarchy",
                    "product_description", "product_features"),
    "query.csv": ("query_id", "query"),
    "label.csv": ("query_id", "product_id", "label"),
}
GRADES = {"exact": 2.0, "partial": 1.0, "irrelevant": 0.0}
SCALE = GradeScale(
    grade_min=0.0, grade_max=2.0, relevant_at=2.0,
    meaning="WANDS labels: 2 Exact (the product fully matches the query), 1 Partial (it matches "
            "the query's intent but not all of its attributes), 0 Irrelevant.")
UNNAMED_FEATURE = "other"  # the attribute that keeps feature values which have no name


def is_wands(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, name)) for name in FILES)


def load(path: str, *, strict: bool = False, split_config: SplitConfig = SplitConfig()) -> Catalog:
    """Loads a WANDS folder; bad rows are skipped and counted (or raise if strict)."""
    for name in FILES:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{full} not found: expected a tab-separated WANDS file with "
                                    f"columns {', '.join(COLUMNS[name])}")
    builder = CatalogBuilder("wands", SCALE, source=path, strict=strict)

    for where, row in _rows(builder, os.path.join(path, "product.csv")):
        attributes = {"class": ", ".join(_split(row["product_class"], "|")),
                      "category": " > ".join(_split(row["category_hierarchy"], "/"))}
        for name, value in features(row["product_features"]).items():
            attributes.setdefault(name, value)
        builder.add_product(where, product_id=row["product_id"], title=row["product_name"],
                            description=row["product_description"], attributes=attributes)

    for where, row in _rows(builder, os.path.join(path, "query.csv")):
        builder.add_query(where, query_id=row["query_id"], text=row["query"])

    for where, row in _rows(builder, os.path.join(path, "label.csv")):
        grade = GRADES.get(row["label"].strip().lower())
        if grade is None:
            builder.skip(where, "unknown WANDS label", f"label={row['label']!r}")
            continue
        builder.add_judgment(where, query_id=row["query_id"], product_id=row["product_id"],
                             grade=grade)
    return builder.build(split_config)


def features(text: str) -> dict[str, str]:
    """product_features as {name: value}: "a:1|b : x|a:2| : y" -> {a: "1, 2", b: x, other: y}."""
    parsed: dict[str, list[str]] = {}
    for pair in text.split("|"):
        name, colon, value = pair.partition(":")
        if not colon:  # "handwash only": the whole pair is a value
            name, value = "", name
        name, value = name.strip(), value.strip()
        if value:
            parsed.setdefault(name or UNNAMED_FEATURE, []).append(value)
    return {name: ", ".join(values) for name, values in parsed.items()}


def _split(text: str, sep: str) -> list[str]:
    return [part.strip() for part in text.split(sep) if part.strip()]


def _header_key(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _rows(builder: CatalogBuilder, path: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a WANDS file as {column: text} with "path:line"; fails early on a missing column."""
    return read_table(builder, path, COLUMNS[os.path.basename(path)], delimiter="\t",
                      header_key=_header_key)
