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
* Its results are a function of (catalog, text, k) alone. Products with equal scores are common
  (identical titles, one-word queries: two in three Home Depot queries have a tie at the 40th hit), and
  Tantivy's top-k collector breaks ties by ascending document address (segment, doc id). A
  multi-threaded index writer spreads the documents over several segments, differently on every
  build, so the tied products retrieved, and their order, changed between two runs of the same
  seed. The index is therefore written by one thread, in catalog order, as one segment: doc id =
  row, so ties go to the lowest rows, in every build and in an index reopened from disk, at no
  cost per search (`_add_products`; tests/test_search.py checks this against sorting every hit).

The index has three text fields, each BM25-scored with the English stemmer, combined with
per-field boosts (`SearchConfig`): `title` (with alternative titles), `description` and
`attributes` (attribute names and values), plus `row`, the product's position in
`Catalog.products`.

`field_scores(text, rows)` gives the relevance features (relevance_features.py) the BM25 score of
a text against each field of exactly the given rows. Asking Tantivy for it, with a query
restricted to those rows (a `term_set_query` or a union of `term_query`s on an indexed `row`
field), costs a search per field and call, more than the whole time budget of the relevance
model's batch. So it is computed here, in NumPy, from Tantivy's own BM25 ingredients: the same
analyzer (`text_analyzer`), the same statistics (document frequency, total tokens per field), the
same one-byte field-length code (`FIELD_NORMS_TABLE`) and the same float32 formula as
tantivy/src/query/bm25.rs. tests/test_relevance.py checks that the scores equal
Tantivy's unrestricted per-field scores. One departure: a word that the analyzer splits into
several tokens (`foo_bar`; `\\w` keeps the underscore) is a phrase query to Tantivy and separate
terms here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading

import numpy as np
import tantivy

from leser_jax.catalog import Catalog

TEXT_FIELDS = ("title", "description", "attributes")
META_FILE = "leser_index.json"
# Bump when the schema, the text put into fields or the document order changes. 2: one segment,
# doc id = row (format 1 indexes have several segments, whose tie order differs per build).
INDEX_FORMAT = 2
_WORD = re.compile(r"\w+")

# Tantivy's BM25 (tantivy/src/query/bm25.rs): k1, b, and the table that decodes the one-byte
# field length stored per document (src/fieldnorm/code.rs): exact up to 40 tokens, then buckets
# that double in width every 8 codes (Lucene's scheme).
BM25_K1 = np.float32(1.2)
BM25_B = np.float32(0.75)


def _field_norms_table() -> np.ndarray:
    table, value, step = list(range(41)), 40, 2
    while len(table) < 256:
        for _ in range(min(8, 256 - len(table))):
            value += step
            table.append(value)
        step *= 2
    return np.asarray(table, np.int64)


FIELD_NORMS_TABLE = _field_norms_table()  # [256]: ends at 2,013,265,944 as Tantivy's does


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """How products are indexed and searched.

    Attributes:
      title_boost, description_boost, attributes_boost: BM25 weight of each field in the query.
      tokenizer: Tantivy tokenizer of the text fields ("en_stem": lower-case + English stemmer).
      max_query_terms: words kept from a query; longer text is cut (bounds query cost).
      num_threads: threads of `search_many` (the index writer always uses one: `_add_products`).
      writer_heap_bytes: Tantivy writer memory (at least 15 MB); the whole catalog must fit in it,
        so that the index is one segment (Home Depot's 55k products fit in 30 MB, not 15).
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
        if self.writer_heap_bytes < 15_000_000:
            raise ValueError("writer_heap_bytes must be at least 15 MB")

    @property
    def field_boosts(self) -> dict[str, float]:
        return {"title": self.title_boost, "description": self.description_boost,
                "attributes": self.attributes_boost}


@dataclasses.dataclass(frozen=True)
class Hits:
    """Products retrieved for one text, best first; among equal scores, the lowest row first."""

    rows: np.ndarray  # [n] int64: positions in Catalog.products, ascending where scores tie
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


@functools.lru_cache(maxsize=None)
def text_analyzer(tokenizer: str) -> tantivy.TextAnalyzer:
    """The Python twin of a built-in Tantivy tokenizer: the same tokens, for statistics, features.

    "default" is Tantivy's SimpleTokenizer (alphanumeric runs), tokens of 40 bytes or more
    removed, lower-cased; "en_stem" adds the English (Porter 2) stemmer. Others are refused
    rather than approximated.
    """
    if tokenizer not in ("default", "en_stem"):
        raise ValueError(f"no Python analyzer for Tantivy tokenizer {tokenizer!r}; "
                         f"expected 'default' or 'en_stem'")
    builder = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
               .filter(tantivy.Filter.remove_long(40)).filter(tantivy.Filter.lowercase()))
    if tokenizer == "en_stem":
        builder = builder.filter(tantivy.Filter.stemmer("english"))
    return builder.build()


def field_texts(product) -> tuple[str, str, str]:
    """The text put into each of TEXT_FIELDS for a product (the index and BM25 statistics agree)."""
    return " ".join((product.title, *product.alt_titles)), product.description, \
        product.attribute_text()


@dataclasses.dataclass(frozen=True)
class _FieldStats:
    """Tantivy's BM25 ingredients for one field, as arrays over the catalog.

    The postings of all terms are one array sorted by key = term * P + row (P products), so that
    the term frequencies of m query terms in n rows are one `searchsorted` of m * n keys.
    """

    vocab: dict[str, int]  # term -> t
    keys: np.ndarray  # [nnz] int64, ascending: t * P + row for each (term, product) pair
    tf_part: np.ndarray  # [nnz] float32: the pair's tf / (tf + norm), which needs no query
    df: np.ndarray  # [T] float32: document frequency of each term
    num_products: int

    @classmethod
    def build(cls, texts: list[str], analyzer: tantivy.TextAnalyzer) -> _FieldStats:
        num_products = len(texts)
        vocab: dict[str, int] = {}
        term_ids, term_rows, term_tfs = [], [], []
        lengths = np.zeros(num_products, np.int64)  # [P]
        for row, text in enumerate(texts):
            tokens = analyzer.analyze(text) if text else []
            lengths[row] = len(tokens)
            for token, count in collections.Counter(tokens).items():
                term_ids.append(vocab.setdefault(token, len(vocab)))
                term_rows.append(row)
                term_tfs.append(count)
        keys = np.asarray(term_ids, np.int64) * num_products + np.asarray(term_rows, np.int64)
        order = np.argsort(keys)
        # Tantivy's average is the exact token count over documents, not over coded lengths.
        average = np.float32(lengths.sum()) / np.float32(max(num_products, 1))
        decoded = FIELD_NORMS_TABLE.astype(np.float32)  # [256]
        average = max(average, np.float32(1e-9))  # a field empty in every product
        norm = BM25_K1 * (np.float32(1) - BM25_B + BM25_B * decoded / average)
        # The length a document's field is scored with is its one-byte code, decoded.
        fieldnorm_id = np.searchsorted(FIELD_NORMS_TABLE, lengths, side="right") - 1  # [P]
        tf = np.asarray(term_tfs, np.float32)  # [nnz]
        tf_part = tf / (tf + norm.astype(np.float32)[fieldnorm_id[term_rows]])
        return cls(vocab=vocab, keys=keys[order], tf_part=tf_part[order],
                   df=np.bincount(term_ids, minlength=len(vocab)).astype(np.float32),
                   num_products=num_products)

    def weights(self, tokens: tuple[str, ...], num_docs: int) -> tuple[np.ndarray, np.ndarray]:
        """The query's terms [m] in this field and their BM25 weights idf * (1 + k1) [m].

        A repeated token counts once: Tantivy's query parser merges repeated terms into one clause.
        A token that no product has matches nothing and adds nothing.
        """
        terms = np.asarray([t for t in map(self.vocab.get, dict.fromkeys(tokens)) if t is not None],
                           np.int64)  # [m]
        df = self.df[terms]  # [m]
        idf = np.log(np.float32(1) + (np.float32(num_docs) - df + np.float32(0.5))
                     / (df + np.float32(0.5)))  # [m]
        return terms, idf * (np.float32(1) + BM25_K1)

    def scores(self, terms: np.ndarray, weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """BM25 of the query (`weights`' output) for `rows` [n]: float32 [n]."""
        if not len(terms):
            return np.zeros(len(rows), np.float32)
        wanted = terms[:, None] * self.num_products + rows[None, :]  # [m, n]
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)  # [m, n]
        tf_part = np.where(self.keys[at] == wanted, self.tf_part[at], np.float32(0))  # [m, n]
        # weight * (tf / (tf + norm)): Tantivy's order of float32 operations; then a sum over terms.
        return (weight[:, None] * tf_part).sum(axis=0, dtype=np.float32)


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
        self._field_stats: tuple[_FieldStats, ...] | None = None  # built on first field_scores
        self._field_stats_lock = threading.Lock()
        self._weights = functools.lru_cache(maxsize=1024)(self._query_weights)

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
        """The top-k products for `text` (any string; never raises on its content).

        Equal scores are ordered by row, and a tie across the k-th place keeps the lowest rows:
        Tantivy's collector prefers the lower doc id, which is the row (`_add_products`).
        """
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

    def field_scores(self, text: str, rows) -> np.ndarray:
        """BM25 of `text` against each of TEXT_FIELDS for exactly `rows`: [n, 3] float32.

        Unboosted, one column per field (title, description, attributes), 0 where a field does
        not match; `field_scores(t, r) @ boosts` is the score `search(t)` gives those rows. The
        text is cut to words as `search` cuts it. The first call analyses every product once
        (about a second for 55k titles); later calls cost tens of microseconds.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)  # [n]
        out = np.zeros((len(rows), len(TEXT_FIELDS)), np.float32)  # [n, 3]
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.catalog.products)):
            bad = rows[(rows < 0) | (rows >= len(self.catalog.products))][0]
            raise IndexError(f"row {bad} out of range for {len(self.catalog.products)} products")
        if not len(rows):
            return out
        for f, (stats, (terms, weight)) in enumerate(zip(self._stats(), self._weights(text))):
            out[:, f] = stats.scores(terms, weight, rows)
        return out

    @property
    def _analyzer(self) -> tantivy.TextAnalyzer:
        return text_analyzer(self.config.tokenizer)

    def _query_weights(self, text: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per field, the terms of `text` and their weights (cached: the reward asks again and
        again about the same original query)."""
        terms = query_terms(text, self.config.max_query_terms)
        tokens = tuple(self._analyzer.analyze(" ".join(terms))) if terms else ()
        return tuple(stats.weights(tokens, self.num_docs) for stats in self._stats())

    def _stats(self) -> tuple[_FieldStats, ...]:
        with self._field_stats_lock:  # reward threads may race to the first call
            if self._field_stats is None:
                texts = list(zip(*map(field_texts, self.catalog.products)))  # [3][P]
                self._field_stats = tuple(_FieldStats.build(list(t), self._analyzer) for t in texts)
        return self._field_stats

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _schema(config: SearchConfig) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    for name in TEXT_FIELDS:
        builder.add_text_field(name, stored=False, tokenizer_name=config.tokenizer)
    # Signed integer: tantivy-py binds a Python int as an I64.
    builder.add_integer_field("row", stored=False, indexed=False, fast=True)
    return builder.build()


def _add_products(index: tantivy.Index, catalog: Catalog, config: SearchConfig) -> None:
    """Writes the products as one segment whose doc ids are their rows (the tie-break, above).

    One writer thread takes the documents in the order they are added; with several, each thread
    fills its own segment from a shared queue, so which products land where changes per build.
    One thread costs little, as it indexes while the Python loop makes the next documents. A
    catalog too big for `writer_heap_bytes` would be flushed as several segments: that is an
    error, not a silently different tie-break.
    """
    writer = index.writer(config.writer_heap_bytes, 1)
    for row, p in enumerate(catalog.products):
        title, description, attributes = field_texts(p)
        writer.add_document(tantivy.Document(
            title=title, description=description, attributes=attributes, row=row))
    writer.commit()
    writer.wait_merging_threads()  # consumes the writer
    index.reload()
    if index.searcher().num_segments > 1:
        raise ValueError(f"{len(catalog.products):,} products do not fit one index segment in "
                         f"writer_heap_bytes={config.writer_heap_bytes:,}: raise it")


def _meta(catalog: Catalog, config: SearchConfig) -> dict:
    """What an on-disk index must agree on with the catalog it is reopened with."""
    digest = hashlib.blake2b(digest_size=16)
    for p in catalog.products:  # ids and every indexed text: a changed product means a rebuild
        for text in (p.product_id, p.title, *p.alt_titles, p.description, p.attribute_text()):
            digest.update(text.encode() + b"\x00")
    return {"format": INDEX_FORMAT, "catalog": catalog.name, "num_products": len(catalog.products),
            "fingerprint": digest.hexdigest(), "config": dataclasses.asdict(config)}
