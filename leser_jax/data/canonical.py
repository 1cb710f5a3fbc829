"""The project's canonical dataset layout: read and write.

A dataset folder holds (see shared/data/README.md):

    dataset.json        name, grade_min, grade_max, relevant_at, grade_meaning, license
    products.jsonl.gz   {"product_id", "title", "description"?, "attributes"?, "alt_titles"?} a line
    queries.csv         query_id,query            (optional third column: kind)
    judgments.csv.gz    query_id,product_id,grade

`.gz` is optional on both compressed files: `products.jsonl` and `judgments.csv` are read too.
Any dataset (ESCI, WANDS, synthetic) can be written in this layout with `write`, which is how
the synthetic catalog is inspected and how the round trip is tested.

Every row is one physical line, and each line is judged on its own (`read_lines`, `read_table`;
the WANDS loader reads its files with them too), so one bad line costs one row:

- A CSV line is parsed alone. A quote that it opens and does not close is a bad row at that line
  ("unclosed quote"); read as a whole file, the quoted field would run on to the next quote in
  the file and merge hundreds of rows into one, whose only trace would be skipped judgments
  blamed on judgments.csv.gz. The cost: a CSV field cannot hold a line break, which the catalog
  forbids in queries anyway (catalog.py); product descriptions may, as JSON escapes it.
- A line that holds bytes that are not UTF-8 is a bad row ("bytes that are not UTF-8", with the
  byte and its place), not text with a silent U+FFFD in it.
- A .gz file that ends early (a truncated copy) or is corrupt raises CatalogError with its path
  and the last line read: the rows after it are lost, and how many cannot be counted.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator

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
    for where, line in read_lines(products_path):
        if not _utf8_ok(builder, where, line):
            continue
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
    for where, row in read_table(builder, queries_path, ("query_id", "query")):
        builder.add_query(where, query_id=row["query_id"], text=row["query"],
                          kind=row.get("kind") or "")

    judgments_path = _find(path, "judgments.csv.gz")
    for where, row in read_table(builder, judgments_path, ("query_id", "product_id", "grade")):
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


def read_lines(path: str) -> Iterator[tuple[str, str]]:
    """The non-blank lines of a text file as ("path:N", line); a .gz file is decompressed.

    Bytes that are not UTF-8 come through as surrogate escapes, for the caller to count the line
    as a bad row (`_utf8_ok`). A .gz file that ends early or is corrupt raises CatalogError: gzip's
    own EOFError names no file and no line.
    """
    number = 0
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{path}:{number}", line
    except (EOFError, OSError, zlib.error) as e:
        raise CatalogError(f"{path}: truncated or corrupt, unreadable after line {number}: "
                           f"{e}") from e


def read_table(builder: CatalogBuilder, path: str, required: tuple[str, ...], *,
               delimiter: str = ",", header_key: Callable[[str], str] = str
               ) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV (or tab-separated) file as {column: cell} with "path:N", one row a line.

    The first non-blank line is the header; `header_key` maps its names to the keys of the rows.
    Fails early when a required column is missing. A row with fewer cells than the header is padded
    with "" (as pandas reads it); a row with more is misaligned, so it is a bad row.
    """
    lines = read_lines(path)
    header_where, header_line = next(lines, (f"{path}:1", ""))
    try:
        header = [header_key(name) for name in _cells(header_line, delimiter) or []]
    except csv.Error as e:
        raise CatalogError(f"{header_where}: unreadable header: {e}") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {missing}; header is {header}, "
                           f"expected {', '.join(required)}")
    for where, line in lines:
        if not _utf8_ok(builder, where, line):
            continue
        try:
            cells = _cells(line, delimiter)
        except csv.Error as e:  # e.g. a field over the csv module's size limit
            builder.skip(where, "unreadable CSV row", str(e))
            continue
        if cells is None:
            builder.skip(where, "unclosed quote", "a quoted field opened on this line does not "
                         "close on it (rows are one line each)")
            continue
        if len(cells) > len(header):
            builder.skip(where, "more fields than the header",
                         f"{len(cells)} fields, header has {len(header)}")
            continue
        cells += [""] * (len(header) - len(cells))
        yield where, dict(zip(header, cells))


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


def _cells(line: str, delimiter: str) -> list[str] | None:
    """The cells of one CSV line, or None when a quoted field on it is not closed.

        a,b -> ["a", "b"]      a,"b, ""c"" d" -> ["a", 'b, "c" d']      a,"b -> None
    """
    if '"' not in line:  # most rows: without quotes, a split is the csv module's parse, faster
        return line.rstrip("\r\n").split(delimiter)
    if not line.endswith(("\n", "\r")):
        line += "\n"  # the last line of a file may have no line end; the check below needs one
    cells = next(csv.reader([line], delimiter=delimiter))
    # The csv module returns a quoted field that the line does not close with the line end in it.
    return None if cells and cells[-1].endswith(("\n", "\r")) else cells


# Bytes that are not UTF-8 decode to lone surrogates U+DC80-U+DCFF ("surrogateescape"), which
# valid UTF-8 never decodes to; a U+FFFD in the text may be a character that the file holds.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def _utf8_ok(builder: CatalogBuilder, where: str, line: str) -> bool:
    """False, with the line counted as a bad row, when it holds bytes that are not UTF-8."""
    if line.isascii():  # the common case, at C speed
        return True
    bad = _NOT_UTF8.search(line)
    if bad is None:
        return True
    return builder.skip(where, "bytes that are not UTF-8",
                        f"byte 0x{ord(bad.group()) - 0xDC00:02X} at character {bad.start() + 1}")


def _open_text(path: str):
    """UTF-8 text, undecodable bytes kept as surrogate escapes; lines split as csv expects."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # -sig: a BOM
