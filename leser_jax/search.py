"""The search engine in LESER's loop: a Tantivy BM25 index over the catalog.

LESER rewards an expansion by what a real search engine retrieves with it, so this engine is
called thousands of times per GRPO step with text written by a model that is still learning.
Two properties matter more than anything else here:

* It never falls over on odd text. Model output contains quotes, colons, brackets, `AND`, `-`,
  emoji and runaway 2,000-character strings. None of it is query syntax to us: `query_terms`
  keeps only word tokens (the same `\\w` runs that Tantivy's tokenizer splits on), lower-cased so
  that `AND`/`OR`/`NOT` are ordinary words, and capped at `max_query_terms`, so the string handed
  to Tantivy's parser is always a plain disjunction of words. Empty text returns no hits.
* It is fast. Hits map to catalog rows through an integer fast field (no stored documents are
  loaded), and `search_many` runs a thread pool: the binding releases the GIL while it searches.

The index has three text fields, each BM25-scored with the English stemmer, combined with
per-field boosts (`SearchConfig`): `title` (with alternative titles), `description` and
`attributes` (attribute names and values), plus `row`, the product's position in
`Catalog.products`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile

import numpy as np
import tantivy

from leser_jax.catalog import Catalog

TEXT_FIELDS = ("title", "description", "attributes")
META_FILE = "leser_index.json"
INDEX_FORMAT = 1  # bump when the schema or the text put into fields changes
_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """How products are indexed and searched.

    Attributes:
      title_boost, description_boost, attributes_boost: BM25 weight of each field in the query.
      tokenizer: Tantivy tokenizer of the text fields ("en_stem": lower-case + English stemmer).
      max_query_terms: words kept from a query; longer text is cut (bounds query cost).
      num_threads: threads of `search_many` and of the index writer.
      writer_heap_bytes: Tantivy writer memory (at least 15 MB per thread).
    """

    title_boost: float = 2.0
    description_boost: float = 1.0
    attributes_boost: float = 1.0
    tokenizer: str = "en_stem"
    max_query_terms: int = 64
    num_threads: int = 2
    writer_heap_bytes: int = 128_000_000

    def __post_init__(self):
        boosts = (self.title_boost, self.description_boost, self.attributes_boost)
        if min(boosts) < 0 or max(boosts) == 0:
            raise ValueError(f"field boosts must be >= 0 and not all 0, got {boosts}")
        if self.max_query_terms < 1 or self.num_threads < 1:
            raise ValueError("max_query_terms and num_threads must be >= 1")
        if self.writer_heap_bytes < 15_000_000 * self.num_threads:
            raise ValueError("writer_heap_bytes must be at least 15 MB per thread")

    @property
    def field_boosts(self) -> dict[str, float]:
        return {"title": self.title_boost, "description": self.description_boost,
                "attributes": self.attributes_boost}


@dataclasses.dataclass(frozen=True)
class Hits:
    """Products retrieved for one text, best first."""

    rows: np.ndarray  # [n] int64: positions in Catalog.products
    scores: np.ndarray  # [n] float32: BM25 scores, descending
    _product_ids: np.ndarray = dataclasses.field(repr=False, compare=False)  # [P] object: all ids

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(self._product_ids[self.rows])


def query_terms(text: str, max_terms: int) -> list[str]:
    """The words of `text` that are searched: `\\w` runs, lower-cased, at most `max_terms`.

    Example: 'red "leather" AND office-chair: {cheap} 🙂' -> ['red', 'leather', 'and', 'office',
    'chair', 'cheap']. Lower-casing turns the parser's operators into plain words.
    """
    if not isinstance(text, str):
        return []
    return [w.lower() for w in _WORD.findall(text)[:max_terms]]


class SearchEngine:
    """BM25 search over a catalog. Build with `build`, reopen an on-disk index with `open`."""

    def __init__(self, index: tantivy.Index, catalog: Catalog, config: SearchConfig):
        self._index = index
        self._searcher = index.searcher()
        self.catalog = catalog
        self.config = config
        self._product_ids = np.array([p.product_id for p in catalog.products], dtype=object)
        self._pool = concurrent.futures.ThreadPoolExecutor(config.num_threads)
        self._empty = Hits(np.zeros(0, np.int64), np.zeros(0, np.float32), self._product_ids)

    @property
    def num_docs(self) -> int:
        return self._searcher.num_docs

    @classmethod
    def build(cls, catalog: Catalog, config: SearchConfig = SearchConfig(), *,
              path: str | None = None) -> SearchEngine:
        """Indexes every product of `catalog`, in memory or (atomically) at `path`."""
        if path is None:
            index = tantivy.Index(_schema(config))
            _add_products(index, catalog, config)
            return cls(index, catalog, config)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        # Build beside the target and rename, so an interrupted build never leaves a half index
        # where `open` would find it.
        tmp = tempfile.mkdtemp(prefix=".index-", dir=parent)
        try:
            _add_products(tantivy.Index(_schema(config), path=tmp), catalog, config)
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump(_meta(catalog, config), f, indent=1)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path, catalog)

    @classmethod
    def open(cls, path: str, catalog: Catalog) -> SearchEngine:
        """Reopens an index written by `build(path=...)`; it must have been built from `catalog`."""
        meta_path = os.path.join(path, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: {path} is not an index written by "
                                    f"SearchEngine.build (run experiments.build_index)")
        with open(meta_path) as f:
            meta = json.load(f)
        config = SearchConfig(**meta["config"])
        expected = _meta(catalog, config)
        for key in ("format", "catalog", "num_products", "fingerprint"):
            if meta.get(key) != expected[key]:
                raise ValueError(f"index at {path} does not match catalog {catalog.name!r}: {key} "
                                 f"is {meta.get(key)!r}, expected {expected[key]!r}; rebuild it")
        return cls(tantivy.Index.open(path), catalog, config)

    def search(self, text: str, k: int = 40) -> Hits:
        """The top-k products for `text` (any string; never raises on its content)."""
        terms = query_terms(text, self.config.max_query_terms)
        if not terms or k < 1:
            return self._empty
        query = self._index.parse_query(" ".join(terms), list(TEXT_FIELDS),
                                        field_boosts=self.config.field_boosts)
        hits = self._searcher.search(query, limit=k, count=False).hits
        if not hits:
            return self._empty
        scores, addresses = zip(*hits)
        rows = self._searcher.fast_field_values("row", list(addresses))
        return Hits(np.asarray(rows, np.int64), np.asarray(scores, np.float32), self._product_ids)

    def search_many(self, texts: list[str], k: int = 40) -> list[Hits]:
        """`search` over a thread pool, results in the order of `texts`.

        Each thread takes one contiguous chunk: a future per text would cost more Python (which
        holds the GIL) than the search itself saves.
        """
        n = self.config.num_threads
        if n == 1 or len(texts) < 4 * n:  # not worth the hand-off
            return [self.search(t, k) for t in texts]
        bounds = np.linspace(0, len(texts), n + 1).astype(int)
        chunks = [texts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        results = self._pool.map(lambda chunk: [self.search(t, k) for t in chunk], chunks)
        return [hits for chunk in results for hits in chunk]

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _schema(config: SearchConfig) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    for name in TEXT_FIELDS:
        builder.add_text_field(name, stored=False, tokenizer_name=config.tokenizer)
    # Signed integer: a Python int is an I64 to the binding (STACK.md).
    builder.add_integer_field("row", stored=False, indexed=False, fast=True)
    return builder.build()


def _add_products(index: tantivy.Index, catalog: Catalog, config: SearchConfig) -> None:
    writer = index.writer(config.writer_heap_bytes, config.num_threads)
    for row, p in enumerate(catalog.products):
        writer.add_document(tantivy.Document(
            title=" ".join((p.title, *p.alt_titles)), description=p.description,
            attributes=p.attribute_text(), row=row))
    writer.commit()
    writer.wait_merging_threads()  # consumes the writer
    index.reload()


def _meta(catalog: Catalog, config: SearchConfig) -> dict:
    """What an on-disk index must agree on with the catalog it is reopened with."""
    digest = hashlib.blake2b(digest_size=16)
    for p in catalog.products:  # ids and every indexed text: a changed product means a rebuild
        for text in (p.product_id, p.title, *p.alt_titles, p.description, p.attribute_text()):
            digest.update(text.encode() + b"\x00")
    return {"format": INDEX_FORMAT, "catalog": catalog.name, "num_products": len(catalog.products),
            "fingerprint": digest.hexdigest(), "config": dataclasses.asdict(config)}
