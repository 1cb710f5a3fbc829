"""The project's canonical dataset layout: read and write.

A dataset folder holds (see shared/data/README.md):

    dataset.json        name, grade_min, grade_max, relevant_at, grade_meaning, license
    products.jsonl.gz   {"product_id", "title", "description"?, "attributes"?, "alt_titles"?} a line
    queries.csv         query_id,query            (optional third column: kind)
    judgments.csv.gz    query_id,product_id,grade

`.gz` is optional on both compressed files: `products.jsonl` and `judgments.csv` are read too.
Any dataset (ESCI, WANDS, synthetic) can be written in this layout with `write`, which is how
the synthetic catalog is inspected and how the round trip is tested.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator

from leser_jax.catalog import Catalog, CatalogBuilder, CatalogError, GradeScale, SplitConfig

FILES = {
    "dataset.json": "the dataset's name and grade scale (grade_min, grade_max, relevant_at)",
    "products.jsonl.gz": "one JSON product a line with product_id and title",
    "queries.csv": "a CSV with header query_id,query",
    "judgments.csv.gz": "a CSV with header query_id,product_id,grade",
}


def is_canonical(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset.json"))


def load(path: str, *, strict: bool = False, split_config: SplitConfig = SplitConfig()) -> Catalog:
    """Loads a canonical dataset folder; bad rows are skipped and counted (or raise if strict)."""
    meta = _read_meta(path)
    try:
        scale = GradeScale(grade_min=float(meta["grade_min"]), grade_max=float(meta["grade_max"]),
                           relevant_at=float(meta["relevant_at"]),
                           meaning=str(meta.get("grade_meaning", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise CatalogError(f"{os.path.join(path, 'dataset.json')}: bad grade scale: {e}") from e
    builder = CatalogBuilder(str(meta.get("name") or os.path.basename(os.path.normpath(path))),
                             scale, source=path, strict=strict)

    products_path = _find(path, "products.jsonl.gz")
    for where, line in _numbered_lines(products_path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            builder.skip(where, "bad JSON line", str(e))
            continue
        if not isinstance(row, dict):
            builder.skip(where, "product line is not a JSON object")
            continue
        attributes = row.get("attributes") or {}
        alt_titles = row.get("alt_titles") or []
        if not isinstance(attributes, dict) or not isinstance(alt_titles, list):
            builder.skip(where, "bad attributes or alt_titles", "expected an object and a list")
            continue
        builder.add_product(where, product_id=row.get("product_id"), title=row.get("title"),
                            description=row.get("description") or "", attributes=attributes,
                            alt_titles=alt_titles)

    queries_path = _find(path, "queries.csv")
    for where, row in _csv_rows(queries_path, ("query_id", "query")):
        builder.add_query(where, query_id=row["query_id"], text=row["query"],
                          kind=row.get("kind") or "")

    judgments_path = _find(path, "judgments.csv.gz")
    for where, row in _csv_rows(judgments_path, ("query_id", "product_id", "grade")):
        builder.add_judgment(where, query_id=row["query_id"], product_id=row["product_id"],
                             grade=row["grade"])
    return builder.build(split_config)


def write(catalog: Catalog, path: str, *, license: str = "") -> None:
    """Writes `catalog` in the canonical layout (the inverse of `load`)."""
    os.makedirs(path, exist_ok=True)
    meta = {"name": catalog.name, "grade_min": catalog.scale.grade_min,
            "grade_max": catalog.scale.grade_max, "relevant_at": catalog.scale.relevant_at,
            "grade_meaning": catalog.scale.meaning, "license": license}
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with gzip.open(os.path.join(path, "products.jsonl.gz"), "wt", encoding="utf-8") as f:
        for p in catalog.products:
            row = {"product_id": p.product_id, "title": p.title}
            if p.description:
                row["description"] = p.description
            if p.attributes:
                row["attributes"] = dict(p.attributes)
            if p.alt_titles:
                row["alt_titles"] = list(p.alt_titles)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(os.path.join(path, "queries.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        with_kind = any(q.kind for q in catalog.queries)
        writer.writerow(["query_id", "query"] + (["kind"] if with_kind else []))
        for q in catalog.queries:
            writer.writerow([q.query_id, q.text] + ([q.kind] if with_kind else []))
    with gzip.open(os.path.join(path, "judgments.csv.gz"), "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query_id", "product_id", "grade"])
        for query_id, judged in catalog.judgments.items():
            for product_id, grade in judged.items():
                writer.writerow([query_id, product_id, repr(grade)])  # repr: exact round trip


def _read_meta(path: str) -> dict:
    meta_path = os.path.join(path, "dataset.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: a canonical dataset folder holds "
                                f"{FILES['dataset.json']}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CatalogError(f"{meta_path}: not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CatalogError(f"{meta_path}: expected a JSON object")
    return meta


def _find(path: str, name: str) -> str:
    """`name` in `path`, or its uncompressed twin (products.jsonl for products.jsonl.gz)."""
    for candidate in (name, name.removesuffix(".gz")):
        full = os.path.join(path, candidate)
        if os.path.isfile(full):
            return full
    raise FileNotFoundError(f"{os.path.join(path, name)} not found: expected {FILES[name]}")


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")  # -sig: tolerate a BOM


def _numbered_lines(path: str) -> Iterator[tuple[str, str]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{number}", line


def _csv_rows(path: str, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV as dicts, with "path:line"; fails early when a required column is missing."""
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise CatalogError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}, "
                               f"expected {', '.join(required)}")
        for row in reader:
            yield f"{path}:{reader.line_num}", row
