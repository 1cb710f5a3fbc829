"""Features of a (query, product) pair: what the relevance model (relevance.py) scores.

LESER (arXiv 2509.05570) scores expansions with a gradient-boosted relevance model but does not
say what its features are; these are ours.

Features of a pair (query q, product p), `FEATURE_NAMES` in this order:

    | name                      | what it measures                                                |
    |---------------------------|-----------------------------------------------------------------|
    | bm25_title                | BM25 of q against p's title (Tantivy's scoring, see search.py)  |
    | bm25_description          | ... against p's description (0 if p has none)                   |
    | bm25_attributes           | ... against p's attribute names and values                      |
    | bm25_total                | the engine's score of p for q: boosted sum of the three         |
    | bm25_vs_top               | bm25_total / the engine's best score for q (0 if nothing found) |
    | engine_rank               | p's rank in the engine's top-K for q (1 + hits scoring higher,  |
    |                           | so ties share a rank); K+1 if absent                            |
    | query_terms               | distinct (stemmed) words of q                                   |
    | title_terms               | words in p's title                                              |
    | description_terms         | words in p's description                                        |
    | attribute_count           | attributes p has                                                |
    | title_coverage            | share of q's distinct words found in the title                  |
    | text_coverage             | share of q's distinct words found anywhere in p                 |
    | title_precision           | share of the title's distinct words that q contains             |
    | head_term_in_title        | q's last word (the head noun of "angle bracket") is in the title|
    | title_idf_coverage        | like title_coverage, each word weighted by its idf over titles  |
    | title_missing_idf         | summed idf of q's words missing from the title (how specific    |
    |                           | what is missing is: "bracket" costs more than "in")             |
    | title_first_word_in_query | the title's first word (often the brand: "BEHR ...") is in q    |
    | prefix_coverage           | share of q's 4-letter word prefixes among the title's: catches  |
    |                           | typos and forms that stemming misses ("mowe" ~ "mower")         |
    | phrase_in_title           | q's words appear in order and adjacent in the title             |
    | phrase_in_text            | ... in the title, the description or the attributes             |
    | bigram_coverage           | share of q's adjacent word pairs found adjacent in the title    |
    | trigram_containment       | share of q's character trigrams found in the title             |
    | trigram_jaccard           | Jaccard of q's and the title's character trigram sets           |
    | query_numbers             | distinct numbers in q ("3/4" = 0.75, "1-1/2" = 1.5)             |
    | number_match              | share of q's numbers that p states                              |
    | quantity_match            | share of q's number-unit pairs p states ("2 in." = "2-inch")    |
    | unit_conflict             | q's units that p states only with other numbers (2 in. vs 3 in.)|
    | attribute_values_in_query | p's attribute values whose every word is in q                   |
    | attribute_value_share     | attribute_values_in_query / attribute_count                     |

Words are Tantivy's analyzer output (search.text_analyzer: lower-cased, English-stemmed) for all
word features, and the unstemmed lower-case words for prefixes and trigrams. Units are normalised
(`UNITS`): in/inch/inches/" -> in, ft/feet/foot/' -> ft, gal/gallon -> gal, and so on.

Speed. The reward calls `RelevanceModel.score(q, rows)` (relevance.py), which computes these
features, for one query and 40-250 products at a time, thousands of times per GRPO step, so
everything per product is computed once per catalog (`_ProductTables`: the strings of every kind as
one CSR array of ids, phrase strings, numbers) and a call is a fixed number of NumPy operations over
the batch, one Tantivy top-K search for the rank feature (cached per query text with the rest of
the query's parse, as the reward scores the same q for each of its N rollouts), and exactly one
`inplace_predict`. That last one has a fixed cost whatever the batch (XGBoost re-reads the cgroup
CPU quota files on every call, and a syscall is slow on these VMs): `score_many` scores several
requests (a GRPO group, a whole step) with one prediction. tools/bench_relevance.py measures all
of it.

Edge cases, all defined: a query with no words scores 0.0 for every product (no model call:
nothing is relevant to no query; its features are 0 except engine_rank = K+1 and the product's
lengths); an unknown product id raises KeyError naming it, a row outside the catalog IndexError;
a product without description has zero description features.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading

import numpy as np

from leser_jax.catalog import Catalog
from leser_jax.search import TEXT_FIELDS, SearchEngine, field_texts, query_terms, text_analyzer

# Bump when a feature is added, removed, reordered or computed differently, here or in
# relevance_associations.py (the model's features are both modules' columns).
FEATURES_VERSION = 2
FEATURE_NAMES = (
    "bm25_title", "bm25_description", "bm25_attributes", "bm25_total", "bm25_vs_top",
    "engine_rank", "query_terms", "title_terms", "description_terms", "attribute_count",
    "title_coverage", "text_coverage", "title_precision", "head_term_in_title",
    "title_idf_coverage", "title_missing_idf", "title_first_word_in_query", "prefix_coverage",
    "phrase_in_title", "phrase_in_text", "bigram_coverage", "trigram_containment",
    "trigram_jaccard", "query_numbers", "number_match", "quantity_match", "unit_conflict",
    "attribute_values_in_query", "attribute_value_share",
)
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}

# Unit spellings -> one name; "sq. ft." and "cu. ft." (and their long forms) are matched whole
# by _UNIT, before "ft" can be.
UNITS = {
    "in": "in", "inch": "in", "inches": "in", '"': "in", "''": "in",
    "ft": "ft", "feet": "ft", "foot": "ft", "'": "ft", "gal": "gal", "gallon": "gal",
    "gallons": "gal", "qt": "qt", "quart": "qt", "quarts": "qt", "oz": "oz", "ounce": "oz",
    "ounces": "oz", "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb", "v": "v", "volt": "v",
    "volts": "v", "w": "w", "watt": "w", "watts": "w", "a": "amp", "amp": "amp", "amps": "amp",
    "btu": "btu", "mm": "mm", "cm": "cm", "gauge": "gauge", "ga": "gauge", "psi": "psi",
    "gpm": "gpm", "piece": "piece", "pieces": "piece", "pc": "piece", "pcs": "piece",
    "pack": "pack", "pk": "pack", "light": "light", "tooth": "tooth", "teeth": "tooth",
}
_NUMBER = r"(\d+\s*-\s*\d+/\d+|\d+\s+\d+/\d+|\d+/\d+|\d*\.\d+|\d+)"
_UNIT = (r"(sq\.?\s*f(?:ee|oo)?t|square\s+f(?:ee|oo)t|cu\.?\s*f(?:ee|oo)?t|cubic\s+f(?:ee|oo)t|"
         + "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True)) + r")")  # longest first
# A number, then perhaps a unit ("2-inch", "1-1/2 in.", '3/4"', "20V"). A number starts a word
# or follows an "x" ("2x4"); a unit must not run on into a word ("2 inches", not "2 inside").
_QUANTITY = re.compile(rf"(?<![a-wyz0-9_.]){_NUMBER}(?:\s*-?\s*{_UNIT}(?![a-wyz]|x[a-z]))?")


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

def quantities(text: str) -> tuple[set[str], set[str], set[str]]:
    """Numbers, number-unit pairs and units in `text`: '3/4"' -> ({"0.75"}, {"0.75 in"}, {"in"})."""
    numbers, pairs, units = set(), set(), set()
    for number, unit in _QUANTITY.findall(text.lower()):
        value = _number_value(number)
        if value is None:
            continue
        numbers.add(value)
        if unit:
            unit = _unit_name(unit)
            pairs.add(f"{value} {unit}")
            units.add(unit)
    return numbers, pairs, units


def _number_value(text: str) -> str | None:
    """'1-1/2' -> '1.5', '3/4' -> '0.75', '.5' -> '0.5', '02' -> '2'; None for '1/0'."""
    whole, _, fraction = re.sub(r"\s*-\s*|\s+", " ", text.strip()).rpartition(" ")
    if "/" in fraction:
        top, bottom = fraction.split("/")
        if int(bottom) == 0:
            return None
        value = (int(whole) if whole else 0) + int(top) / int(bottom)
    else:
        value = float(fraction)
    return f"{value:g}"


def _unit_name(unit: str) -> str:
    unit = unit.rstrip(".")
    if unit.startswith(("sq", "square")):
        return "sqft"
    if unit.startswith(("cu", "cubic")):
        return "cuft"
    return UNITS[unit]


def _trigrams(words: list[str]) -> set[int]:
    """Character trigrams of the words joined by spaces, padded (word edges count), each as the
    integer of its three code points (21 bits each): ' ab' -> (32 << 42) | (97 << 21) | 98."""
    text = f" {' '.join(words)} "
    return {(ord(a) << 42) | (ord(b) << 21) | ord(c)
            for a, b, c in zip(text, text[1:], text[2:])}


def _catalog_trigrams(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_trigrams` of every text at once (a per-string loop takes seconds on 55k titles).

    Returns (keys [G] sorted distinct trigrams, ids [nnz] each text's distinct trigrams as
    positions in keys, row by row, sizes [P] how many each text has).
    """
    # One string, texts separated by two NULs, so that no window spans two texts unseen.
    codes = np.frombuffer(("\0\0".join(texts) + "\0\0").encode("utf-32-le"), np.uint32)
    codes = codes.astype(np.int64)  # [L]
    keys = (codes[:-2] << 42) | (codes[1:-1] << 21) | codes[2:]  # [L - 2]: window at each char
    valid = (codes[:-2] != 0) & (codes[1:-1] != 0) & (codes[2:] != 0)
    lengths = np.fromiter(map(len, texts), np.int64, len(texts)) + 2
    row = np.repeat(np.arange(len(texts)), lengths)[:-2][valid]
    keys = keys[valid]
    # Sort-based distinct values: np.unique hashes, which is slower on millions of int64 keys.
    order = np.argsort(keys)
    first = np.r_[True, keys[order][1:] != keys[order][:-1]]
    distinct = keys[order][first]  # [G]
    local = np.empty_like(order)
    local[order] = np.cumsum(first) - 1  # each window's trigram as a position in distinct
    pairs = np.sort(row * len(distinct) + local)
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]  # each (text, trigram) once, by text
    rows, ids = np.divmod(pairs, len(distinct))
    return distinct, ids, np.bincount(rows, minlength=len(texts))


# Kinds of string that a product's "bag" holds. All kinds share one id space (each kind's ids
# follow the previous kind's), so that one gather and one membership test serve every overlap
# feature, and an id's kind is a lookup.
_KINDS = "txbpgnqu"  # title stem, text stem, title bigram, prefix, trigram, number, quantity, unit
_K = {kind: i for i, kind in enumerate(_KINDS)}


class _Vocab:
    """(kind, string) -> id. Strings are added per kind; `freeze` then fixes each kind's offset."""

    def __init__(self):
        self.local = {kind: {} for kind in _KINDS}  # kind -> string -> id within the kind
        self.base = None  # [K + 1] int64 after freeze: kind k's ids are base[k] .. base[k+1]-1

    def add(self, kind: str, items) -> list[int]:
        """Ids within the kind; add base[kind] after `freeze` for the shared id space."""
        local = self.local[kind]
        return [local.setdefault(item, len(local)) for item in items]

    def freeze(self) -> None:
        self.base = np.cumsum([0] + [len(self.local[k]) for k in _KINDS]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.base[-1])

    def get(self, kind: str, item: str, default: int = -1) -> int:
        local = self.local[kind].get(item)
        return default if local is None else int(self.base[_K[kind]] + local)

    def ids(self, strings: dict[str, object]) -> np.ndarray:
        """Sorted ids of {kind: strings} that it knows (an unseen string can match nothing)."""
        found = [self.base[_K[kind]] + i for kind, items in strings.items()
                 for i in map(self.local[kind].get, items) if i is not None]
        return np.unique(np.asarray(found, np.int64))


class Bags:
    """A set of ids per product, as CSR: the ids of row r are ids[ptr[r]:ptr[r + 1]] (also the
    product terms of relevance_associations.py)."""

    def __init__(self, lists: list[list[int]] | None = None, *, ptr=None, ids=None):
        if lists is not None:
            lengths = np.fromiter(map(len, lists), np.int64, len(lists))
            ptr = np.zeros(len(lists) + 1, np.int64)
            np.cumsum(lengths, out=ptr[1:])
            ids = np.fromiter((i for items in lists for i in items), np.int64, int(ptr[-1]))
        self.ptr, self.ids = ptr, ids.astype(np.int32)  # [P + 1] int64, [nnz] int32

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment, id) of every id of `rows`, flattened: segment[j] = which row (0..n-1)."""
        starts = self.ptr[rows]
        lengths = self.ptr[rows + 1] - starts  # [n]
        segment = np.repeat(np.arange(len(rows)), lengths)  # [total]
        # position of each element in its row, plus the row's start: a vectorised concat of ranges
        offsets = np.arange(len(segment)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return segment, self.ids[np.repeat(starts, lengths) + offsets]


def _member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """ids [m] in sorted_ids [s]? [m] bool, by binary search (s is a query's few dozen ids)."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[at] == ids


def _share(count: np.ndarray, total) -> np.ndarray:
    """count / total, 0 where total is 0 (count is then 0 too: a part of nothing)."""
    return count / np.maximum(total, 1)


def _idf(df, num_docs: int):
    """BM25's idf, as Tantivy computes it (search.py), of a document frequency."""
    df = np.asarray(df, np.float64)
    return np.log1p((num_docs - df + 0.5) / (df + 0.5))


@dataclasses.dataclass(frozen=True)
class _QueryState:
    """What a query contributes to every pair it is in: parsed once, cached by text."""

    num_stems: int  # distinct stemmed words
    phrase: str  # " w1 w2 " over stemmed words: a substring test finds the phrase in a title
    ids: np.ndarray  # [s] sorted vocabulary ids of every kind's strings of the query
    head: int  # id of the last word as a title word (-1 if no title has it)
    size: np.ndarray  # [K] float32: the query's number of distinct strings of each kind
    idf: float  # sum of the title idf of its distinct words
    unit_ids: tuple[tuple[int, np.ndarray], ...]  # (id of a unit, sorted ids of q's pairs in it)
    top_rows: np.ndarray  # [<=K] int64, ascending: the engine's top-K for q
    top_ranks: np.ndarray  # [<=K] float32: rank (1-based) of each of top_rows
    top_score: float  # the engine's best score for q (0 if no hits)


class _ProductTables:
    """Everything per product that a feature needs, computed once per catalog."""

    def __init__(self, catalog: Catalog, tokenizer: str):
        stem, plain = text_analyzer(tokenizer), text_analyzer("default")
        self.vocab = vocab = _Vocab()
        values: dict[str, int] = {}  # attribute value (its distinct stems, joined) -> item id
        flat = {kind: [] for kind in _KINDS}  # kind -> ids within the kind, row after row
        value_ids, value_stems, title_phrases, text_phrases, title_words = [], [], [], [], []
        num_products = len(catalog.products)
        lengths = np.zeros((num_products, 3), np.float32)  # [P, 3]: title, description, attributes
        sizes = np.zeros((num_products, len(_KINDS)), np.int64)  # [P, K]
        first = np.full(num_products, -1, np.int64)  # [P]: local id of the title's first word
        for row, product in enumerate(catalog.products):
            title, description, attributes = field_texts(product)
            t, d, a = (stem.analyze(x) if x else [] for x in (title, description, attributes))
            words = plain.analyze(title)
            numbers, pairs, units = quantities(" \n ".join((title, description,
                                                             *product.attributes.values())))
            strings = {  # kind -> this product's distinct strings of the kind
                "t": dict.fromkeys(t), "x": dict.fromkeys(t + d + a),
                "b": dict.fromkeys(map(" ".join, zip(t, t[1:]))), "p": {w[:4] for w in words},
                "n": numbers, "q": pairs, "u": units}  # trigrams ("g") after the loop
            title_words.append(f" {' '.join(words)} ")
            for kind, items in strings.items():
                flat[kind] += vocab.add(kind, items)
                sizes[row, _K[kind]] = len(items)
            lengths[row] = len(t), len(d), len(product.attributes)
            if t:
                first[row] = vocab.local["t"][t[0]]
            items = []
            for value in product.attributes.values():
                value_stem = dict.fromkeys(stem.analyze(value))
                if not value_stem:
                    continue
                key = " ".join(value_stem)
                if key not in values:
                    value_stems.append(vocab.add("x", value_stem))
                items.append(values.setdefault(key, len(values)))
            value_ids.append(list(dict.fromkeys(items)))
            title_phrases.append(f" {' '.join(t)} ")
            text_phrases.append(f" {' '.join(t)} | {' '.join(d)} | {' '.join(a)} ")
        trigrams, flat["g"], sizes[:, _K["g"]] = _catalog_trigrams(title_words)
        vocab.local["g"] = dict(zip(trigrams.tolist(), range(len(trigrams))))
        vocab.freeze()
        base = vocab.base
        # One CSR over all kinds: each kind's ids, shifted into the shared space, sorted by row.
        ids = np.concatenate([np.asarray(flat[k], np.int64) + base[_K[k]] for k in _KINDS])
        rows = np.concatenate([np.repeat(np.arange(num_products), sizes[:, i])
                               for i in range(len(_KINDS))])
        ptr = np.zeros(num_products + 1, np.int64)
        np.cumsum(sizes.sum(axis=1), out=ptr[1:])
        self.bags = Bags(ptr=ptr, ids=ids[np.argsort(rows, kind="stable")])
        self.kind = np.repeat(np.arange(len(_KINDS)), np.diff(base))  # [V]: each id's kind
        # idf of each title word (0 for the other kinds), from the title's document frequencies
        df = np.bincount(self.bags.ids, minlength=len(vocab))
        self.title_idf = np.where(self.kind == _K["t"], _idf(df, num_products), 0.0)  # [V]
        self.unknown_idf = float(_idf(0, num_products))  # of a word that no title has
        self.lengths, self.sizes = lengths, sizes.astype(np.float32)
        self.first_word = np.where(first >= 0, first + base[_K["t"]], -1)
        self.values = Bags(value_ids)
        self.value_stems = Bags([[i + base[_K["x"]] for i in items] for items in value_stems])
        self.value_sizes = np.diff(self.value_stems.ptr)  # [items]
        self.title_phrases = np.asarray(title_phrases, dtype=object)  # [P]
        self.text_phrases = np.asarray(text_phrases, dtype=object)  # [P]


class RelevanceFeatures:
    """Computes the FEATURE_NAMES of (query, product) pairs, one query against many products."""

    def __init__(self, engine: SearchEngine, *, rank_depth: int = 100,
                 query_cache_size: int = 1024):
        self.engine = engine
        self.catalog = engine.catalog
        self.rank_depth = rank_depth
        self._stem = text_analyzer(engine.config.tokenizer)
        self._plain = text_analyzer("default")
        self._tables = _ProductTables(engine.catalog, engine.config.tokenizer)
        self._boosts = np.asarray([engine.config.field_boosts[f] for f in TEXT_FIELDS],
                                  np.float32)  # [3]
        self._local = threading.local()
        # An lru_cache per instance (not on the method, which would keep every instance alive).
        self._query_state = functools.lru_cache(maxsize=query_cache_size)(self._parse_query)

    def clear_cache(self) -> None:
        self._query_state.cache_clear()

    def _mask(self) -> np.ndarray:
        """A [V] bool array per thread, kept all False between uses: a membership test of the
        rows' strings against the query's is then two scatters and a gather."""
        mask = getattr(self._local, "mask", None)
        if mask is None:
            mask = self._local.mask = np.zeros(len(self._tables.vocab), bool)
        return mask

    def query_words(self, query_text: str) -> tuple[str, ...]:
        """The query's distinct stemmed words, in order: the words of every word feature."""
        terms = query_terms(query_text, self.engine.config.max_query_terms)
        return tuple(dict.fromkeys(self._stem.analyze(" ".join(terms)))) if terms else ()

    def text_terms(self) -> tuple[dict[str, int], Bags]:
        """Every product's distinct stemmed words of title, description and attributes.

        Returns (vocabulary: word -> id in 0..T-1, bags: each product's word ids, [P] rows), the
        "x" strings that text_coverage counts, for the association features.
        """
        tables, x = self._tables, _K["x"]
        keep = tables.kind[tables.bags.ids] == x  # the CSR holds every kind, row by row
        ptr = np.zeros(len(tables.sizes) + 1, np.int64)
        np.cumsum(tables.sizes[:, x].astype(np.int64), out=ptr[1:])
        ids = tables.bags.ids[keep].astype(np.int64) - tables.vocab.base[x]
        return tables.vocab.local["x"], Bags(ptr=ptr, ids=ids)

    def has_words(self, query_text: str) -> bool:
        """Whether the query has a word that features can match (else every product scores 0)."""
        return isinstance(query_text, str) and self._query_state(query_text).num_stems > 0

    def rows_of(self, products) -> np.ndarray:
        """Catalog rows [n] int64 of product ids (strings) or rows (integers)."""
        array = np.asarray(products)
        if array.size == 0:
            return np.zeros(0, np.int64)
        if array.dtype.kind in "iu":
            rows = array.astype(np.int64, copy=False).reshape(-1)
            if rows.min() < 0 or rows.max() >= len(self.catalog.products):
                bad = (rows < 0) | (rows >= len(self.catalog.products))
                raise IndexError(f"row {rows[bad][0]} is not a row of catalog "
                                 f"{self.catalog.name!r} (0..{len(self.catalog.products) - 1})")
            return rows
        if array.dtype.kind in "UO":
            row_of = self.catalog.row_of
            try:
                return np.fromiter((row_of[p] for p in array.reshape(-1)), np.int64, array.size)
            except KeyError as e:
                raise KeyError(f"unknown product id {e.args[0]!r}: not in catalog "
                               f"{self.catalog.name!r}") from None
        raise TypeError(f"products must be product ids (str) or rows (int), got {array.dtype}")

    def _parse_query(self, text: str) -> _QueryState:
        tables, vocab = self._tables, self._tables.vocab
        terms = query_terms(text, self.engine.config.max_query_terms)
        joined = " ".join(terms)
        stems = self._stem.analyze(joined) if terms else []
        words = self._plain.analyze(joined) if terms else []
        numbers, pairs, units = quantities(text) if terms else (set(), set(), set())
        strings = {"t": dict.fromkeys(stems), "x": dict.fromkeys(stems),
                   "b": dict.fromkeys(map(" ".join, zip(stems, stems[1:]))),
                   "p": {w[:4] for w in words}, "g": _trigrams(words) if words else set(),
                   "n": numbers, "q": pairs, "u": units}
        ids = vocab.ids(strings)
        title_ids = [vocab.get("t", s, None) for s in strings["t"]]
        # Rank by score, not by position, so that ties (which search() breaks by catalog row, an
        # order that says nothing about relevance) cannot change a feature:
        # rank = 1 + hits that score higher. One hit more than K makes top-K membership a matter
        # of score too: a product tied with the (K+1)-th hit is out.
        hits = self.engine.search(text, self.rank_depth + 1) if terms else None  # best first
        top_rows, top_ranks = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if hits:
            scores = hits.scores
            keep = scores > scores[-1] if len(hits) > self.rank_depth else np.ones(len(hits), bool)
            rank = 1 + np.searchsorted(-scores, -scores, side="left")  # 1 + hits scoring higher
            order = np.argsort(hits.rows[keep])
            top_rows, top_ranks = hits.rows[keep][order], rank[keep][order].astype(np.float32)
        return _QueryState(
            num_stems=len(strings["t"]), phrase=f" {' '.join(stems)} ", ids=ids,
            head=vocab.get("t", stems[-1]) if stems else -1,
            size=np.asarray([len(strings[k]) for k in _KINDS], np.float32),
            idf=sum(tables.unknown_idf if i is None else tables.title_idf[i] for i in title_ids),
            unit_ids=tuple((vocab.get("u", unit),
                            vocab.ids({"q": [p for p in pairs if p.endswith(" " + unit)]}))
                           for unit in sorted(units)),
            top_rows=top_rows, top_ranks=top_ranks,
            top_score=float(hits.scores[0]) if hits else 0.0)

    def features(self, query_text: str, rows) -> np.ndarray:
        """The features of `query_text` against each of `rows`: [n, len(FEATURE_NAMES)] float32."""
        rows = self.rows_of(rows)
        n, tables = len(rows), self._tables
        x = np.zeros((n, len(FEATURE_NAMES)), np.float32)  # [n, F]
        x[:, _COL["title_terms"]:_COL["attribute_count"] + 1] = tables.lengths[rows]
        x[:, _COL["engine_rank"]] = self.rank_depth + 1
        q = self._query_state(query_text if isinstance(query_text, str) else "")
        if q.num_stems == 0 or n == 0:  # no words: nothing can match (see the module docstring)
            return x

        bm25 = self.engine.field_scores(query_text, rows)  # [n, 3]
        total = bm25 @ self._boosts  # [n]: what search() scores these rows with
        x[:, 0:3] = bm25
        x[:, _COL["bm25_total"]] = total
        if q.top_score > 0:
            x[:, _COL["bm25_vs_top"]] = total / np.float32(q.top_score)
        if len(q.top_rows):
            at = np.minimum(np.searchsorted(q.top_rows, rows), len(q.top_rows) - 1)  # [n]
            found = q.top_rows[at] == rows
            x[found, _COL["engine_rank"]] = q.top_ranks[at[found]]
        x[:, _COL["query_terms"]] = q.num_stems

        # Every overlap feature from one gather: the rows' strings of all kinds, those the query
        # has too, and their count per (row, kind).
        segment, ids = tables.bags.gather(rows)  # [m], [m]
        mask = self._mask()  # [V] bool, all False between calls
        mask[q.ids] = True
        hit = mask[ids]
        mask[q.ids] = False
        segment, ids = segment[hit], ids[hit]  # [h]: the shared strings only
        kind = tables.kind[ids]
        common = np.bincount(segment * len(_KINDS) + kind, minlength=n * len(_KINDS))
        common = common.reshape(n, len(_KINDS)).astype(np.float32)  # [n, K]
        sizes = tables.sizes[rows]  # [n, K]
        t, g = _K["t"], _K["g"]
        x[:, _COL["title_coverage"]] = common[:, t] / q.num_stems
        x[:, _COL["text_coverage"]] = common[:, _K["x"]] / q.num_stems
        x[:, _COL["title_precision"]] = _share(common[:, t], sizes[:, t])
        x[:, _COL["head_term_in_title"]] = np.bincount(segment[ids == q.head], minlength=n)
        matched_idf = np.bincount(segment, weights=tables.title_idf[ids], minlength=n)  # [n]
        x[:, _COL["title_idf_coverage"]] = _share(matched_idf, q.idf)
        x[:, _COL["title_missing_idf"]] = q.idf - matched_idf
        x[:, _COL["title_first_word_in_query"]] = _member(tables.first_word[rows], q.ids)
        x[:, _COL["prefix_coverage"]] = _share(common[:, _K["p"]], q.size[_K["p"]])
        x[:, _COL["bigram_coverage"]] = _share(common[:, _K["b"]], q.size[_K["b"]])
        x[:, _COL["trigram_containment"]] = _share(common[:, g], q.size[g])
        x[:, _COL["trigram_jaccard"]] = _share(common[:, g], q.size[g] + sizes[:, g] - common[:, g])
        # A substring test, " a b " in " x a b y " (words are space-padded), only where every
        # word of the query is present: elsewhere the phrase cannot be.
        for column, kind, phrases in (("phrase_in_title", t, tables.title_phrases),
                                      ("phrase_in_text", _K["x"], tables.text_phrases)):
            maybe = np.flatnonzero(common[:, kind] == q.num_stems)
            x[maybe, _COL[column]] = [q.phrase in s for s in phrases[rows[maybe]]]
        if q.size[_K["n"]]:
            x[:, _COL["query_numbers"]] = q.size[_K["n"]]
            x[:, _COL["number_match"]] = common[:, _K["n"]] / q.size[_K["n"]]
            x[:, _COL["quantity_match"]] = _share(common[:, _K["q"]], q.size[_K["q"]])
            for unit, unit_pairs in q.unit_ids:  # "2 in." against a product's "3 in."
                has_unit = np.bincount(segment[ids == unit], minlength=n) > 0
                has_pair = np.bincount(segment[_member(ids, unit_pairs)], minlength=n) > 0
                x[:, _COL["unit_conflict"]] += has_unit & ~has_pair
        if len(tables.value_sizes):
            self._attribute_features(q, rows, x)
        return x

    def _attribute_features(self, q: _QueryState, rows: np.ndarray, x: np.ndarray) -> None:
        """Attribute values all of whose words are in the query, e.g. "solid wood", "Sitwell"."""
        tables, n = self._tables, len(rows)
        segment, items = tables.values.gather(rows)  # [m]: the rows' attribute values
        item_segment, item_stems = tables.value_stems.gather(items)  # their words
        found = np.bincount(item_segment, weights=_member(item_stems, q.ids), minlength=len(items))
        matched = found == tables.value_sizes[items]  # [m]
        x[:, _COL["attribute_values_in_query"]] = np.bincount(segment[matched], minlength=n)
        x[:, _COL["attribute_value_share"]] = _share(x[:, _COL["attribute_values_in_query"]],
                                                     x[:, _COL["attribute_count"]])
