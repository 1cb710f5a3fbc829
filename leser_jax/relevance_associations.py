"""Associations between query words and product terms, learned from the train split's judgments.

LESER (arXiv 2509.05570) scores expansions with a relevance model trained on human judgments, but
gives no features. The lexical ones (relevance_features.py) see only the words that a query and a
product share, and a problem query such as "chair for a sore lower back" shares none with the
products judged relevant to it ("lumbar support"): only the judgments link "sore" to "lumbar".
These features learn such links (for reward version 2, leser_jax/reward.py); they are ours.

Terms. A query word w is a distinct stemmed word of the query (the engine's analyzer, as the
lexical features use). A product term t is a distinct stemmed word anywhere in the product's text:
title, description, attribute names and values (`RelevanceFeatures.text_terms`). One term per word
wherever it occurs, because Home Depot's products have titles only; on the synthetic catalog a
feature ("lumbar support") is in the attributes, the description and sometimes the title, and
tagging words by field would split its evidence three ways; and the lexical features already hold
this vocabulary and every product's set of it.

Statistic. Over a set of judged (query, product) pairs, each labelled relevant (grade >= the
dataset's relevant_at) or not:
    N, R        pairs; relevant ones
    n_w, r_w    pairs whose query holds w; relevant ones
    n_wt, r_wt  pairs whose query holds w and whose product holds t; relevant ones
and, with Beta priors of strength m pseudo-pairs (`prior`), each centred on the coarser rate:
    p       = (R + 1) / (N + 2)
    p_w     = (r_w + m p) / (n_w + m)
    p_wt    = (r_wt + m p_w) / (n_wt + m)
    a(w, t) = logit(p_wt) - logit(p_w)
a is the log odds ratio of "judged relevant" for products holding t among the pairs of queries
holding w, against all of w's pairs, shrunk toward 0 while w and t have met in few pairs. A pair
that never occurred has a = 0 (p_wt = p_w), so a table holds only the pairs that occurred.
Worked example (tests): N=10, R=4, n_w=4, r_w=2, n_wt=r_wt=2, m=2: p = 5/12, p_w = 17/36,
p_wt = 53/72, a = ln(53/19) - ln(17/19) = ln(53/17) = 1.137.

Features of a pair (query q, product p), `ASSOCIATION_NAMES`, from best(w) = max and worst(w) =
min of a(w, t) over p's terms (a term that never met w counts 0, so best >= 0 >= worst unless p's
every term met w), for each word w of q that the judgments know (n_w > 0):

    | name              | what it measures                                                     |
    |-------------------|----------------------------------------------------------------------|
    | assoc_max         | max over q's words of best(w): p's strongest term for some word       |
    | assoc_min         | min over q's words of worst(w): p's term most judged against q        |
    | assoc_best_mean   | sum of best(w) / q's distinct words: how many of q's words p answers |
    | assoc_worst_mean  | sum of worst(w) / q's distinct words                                 |
    | assoc_known_words | share of q's distinct words that the judgments know (trust in these) |

Out of fold. A training row's own label must not be in its features, or a (w, t) pair seen in one
row only would be a perfect feature there and a useless one at inference (the planted-leak test).
The train queries are split into `folds` folds by a seeded hash of the query id; a training row's
features use the counts of the other folds (all counts less its fold's). Dev and test rows and
every reward call use the counts of all train judgments, so early stopping and calibration on dev
see the statistics that inference sees. Out-of-fold counts hold (folds - 1) / folds of the data:
training rows see slightly weaker associations than inference (the usual price of target
encoding). Query words are taken in sorted order, so that the same counts give the same floats
whichever vocabulary they came from.

Speed. Per query text (cached, as the reward scores one query for its N rollouts): its known
words. Per call: one gather of the products' terms; for each known word, its row of a scattered
into a dense [T] array, gathered at those terms and reset (as relevance_features' mask); one
reduceat over the products for best and one for worst.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading

import numpy as np

from leser_jax.catalog import Catalog, Query
from leser_jax.relevance_features import Bags, RelevanceFeatures

ASSOCIATION_NAMES = ("assoc_max", "assoc_min", "assoc_best_mean", "assoc_worst_mean",
                     "assoc_known_words")
TABLES_FILE = "relevance_associations.npz"


def fold_of(query_id: str, folds: int, seed: int) -> int:
    """The fold (0..folds-1) of a train query, from a seeded hash of its id (not Python's hash)."""
    digest = hashlib.blake2b(f"fold\x00{seed}\x00{query_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % folds


def log_odds_ratio(r_wt, n_wt, r_w, n_w, r, n, prior: float) -> np.ndarray:
    """a(w, t) of the module docstring, elementwise, float64."""
    p = (np.float64(r) + 1.0) / (np.float64(n) + 2.0)
    p_w = (np.asarray(r_w, np.float64) + prior * p) / (np.asarray(n_w, np.float64) + prior)
    p_wt = (np.asarray(r_wt, np.float64) + prior * p_w) / (np.asarray(n_wt, np.float64) + prior)
    return np.log(p_wt / (1.0 - p_wt)) - np.log(p_w / (1.0 - p_w))


def judgments_fingerprint(catalog: Catalog, queries: list[Query]) -> str:
    """A digest of what tables are learned from: these queries' ids, texts and judgments."""
    h = hashlib.blake2b(digest_size=16)
    for query in sorted(queries, key=lambda q: q.query_id):
        for product_id, grade in sorted(catalog.judgments.get(query.query_id, {}).items()):
            h.update(f"{query.query_id}\x00{query.text}\x00{product_id}\x00{grade!r}\n".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Counts:
    """Judgment counts per group of queries (a fold); summed over groups they are all of them.

    keys [E] int64 ascending: w * num_terms + t for each (word, term) pair that occurred.
    """

    num_terms: int
    keys: np.ndarray  # [E] int64
    pair: np.ndarray  # [G, 2, E] int64: n_wt, r_wt
    word: np.ndarray  # [G, 2, W] int64: n_w, r_w
    total: np.ndarray  # [G, 2] int64: N, R

    @classmethod
    def count(cls, bags: Bags, num_terms: int, num_words: int, query_words: list[np.ndarray],
              bounds: np.ndarray, rows: np.ndarray, relevant: np.ndarray,
              groups: np.ndarray, num_groups: int) -> Counts:
        """Counts of queries i = 0..Q-1: word ids query_words[i], judged rows
        rows[bounds[i]:bounds[i + 1]] with `relevant` labels [N] bool, group groups[i] [Q]."""
        num_queries = len(query_words)
        lengths = np.diff(bounds)  # [Q]
        relevant = np.asarray(relevant, np.int64)
        # (query, term) first: a query's words all meet the same terms, so count each term once
        # per query and only then spread it over the query's words.
        segment, term = bags.gather(rows)  # [M]
        query = np.repeat(np.arange(num_queries), lengths)[segment]  # [M]
        qt, inverse = np.unique(query * num_terms + term, return_inverse=True)  # [U]
        qt_n = np.bincount(inverse, minlength=len(qt))
        qt_r = np.bincount(inverse, weights=relevant[segment], minlength=len(qt)).astype(np.int64)
        qt_query, qt_term = np.divmod(qt, num_terms)
        num_qwords = np.fromiter(map(len, query_words), np.int64, num_queries)  # [Q]
        flat_words = np.concatenate([np.zeros(0, np.int64), *query_words]).astype(np.int64)
        word_start = np.cumsum(num_qwords) - num_qwords  # [Q]
        spread = num_qwords[qt_query]  # [U]: each (query, term) once per word of the query
        at = np.repeat(word_start[qt_query] - np.cumsum(spread) + spread, spread) \
            + np.arange(int(spread.sum()))
        word = flat_words[at]  # [U'] the word of each (query, word, term)
        group = groups[np.repeat(qt_query, spread)]
        keyed = (word * num_terms + np.repeat(qt_term, spread)) * num_groups + group
        distinct, inverse = np.unique(keyed, return_inverse=True)
        n = np.bincount(inverse, weights=np.repeat(qt_n, spread), minlength=len(distinct))
        r = np.bincount(inverse, weights=np.repeat(qt_r, spread), minlength=len(distinct))
        keys, position = np.unique(distinct // num_groups, return_inverse=True)  # [E]
        pair = np.zeros((num_groups, 2, len(keys)), np.int64)
        pair[distinct % num_groups, 0, position] = n
        pair[distinct % num_groups, 1, position] = r
        # Words and totals: a query's judged pairs count once for each of its words.
        query_n = lengths
        query_r = np.bincount(np.repeat(np.arange(num_queries), lengths), weights=relevant,
                              minlength=num_queries).astype(np.int64)  # [Q]
        word_counts = np.zeros((num_groups, 2, num_words), np.int64)
        owner = np.repeat(np.arange(num_queries), num_qwords)
        np.add.at(word_counts, (groups[owner], 0, flat_words), query_n[owner])
        np.add.at(word_counts, (groups[owner], 1, flat_words), query_r[owner])
        total = np.zeros((num_groups, 2), np.int64)
        np.add.at(total, (groups, 0), query_n)
        np.add.at(total, (groups, 1), query_r)
        return cls(num_terms, keys, pair, word_counts, total)


@dataclasses.dataclass(frozen=True)
class Table:
    """a(w, t) of the pairs that occurred in one view of the counts, by word: word w's pairs
    are [ptr[w], ptr[w + 1])."""

    ptr: np.ndarray  # [W + 1] int64
    terms: np.ndarray  # [E'] int64
    values: np.ndarray  # [E'] float32
    known: np.ndarray  # [W] bool: n_w > 0

    @classmethod
    def of(cls, counts: Counts, prior: float, exclude: int | None = None) -> Table:
        """The table of all groups' counts, less group `exclude` (a training row's own fold)."""
        pair, word, total = (x.sum(0) - (x[exclude] if exclude is not None else 0)
                             for x in (counts.pair, counts.word, counts.total))
        occurred = pair[0] > 0  # pairs only in the excluded fold would give a = 0, up to rounding
        w, t = np.divmod(counts.keys[occurred], counts.num_terms)
        values = log_odds_ratio(pair[1, occurred], pair[0, occurred], word[1, w], word[0, w],
                                total[1], total[0], prior)
        ptr = np.searchsorted(w, np.arange(word.shape[1] + 1))
        return cls(ptr=ptr, terms=t, values=values.astype(np.float32), known=word[0] > 0)


class Associations:
    """The association features (ASSOCIATION_NAMES) of (query, product) pairs."""

    def __init__(self, features: RelevanceFeatures, words: list[str], counts: Counts, *,
                 prior: float, folds: int, seed: int, fingerprint: str,
                 query_cache_size: int = 1024):
        if prior <= 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        self.features = features
        self.words = {w: i for i, w in enumerate(words)}  # query word -> id
        self.counts = counts
        self.prior, self.folds, self.seed, self.fingerprint = prior, folds, seed, fingerprint
        self.term_ids, self.bags = features.text_terms()
        self.bag_sizes = np.diff(self.bags.ptr)  # [P]
        self.table = Table.of(counts, prior)  # all train judgments: dev, test, inference
        self._fold_tables: dict[int, Table] = {}
        self._local = threading.local()
        self._query = functools.lru_cache(maxsize=query_cache_size)(
            lambda text: self._known(self.table, self.features.query_words(text)))

    @classmethod
    def fit(cls, features: RelevanceFeatures, queries: list[Query], bounds: np.ndarray,
            rows: np.ndarray, relevant: np.ndarray, *, prior: float, folds: int, seed: int,
            query_cache_size: int = 1024) -> Associations:
        """Counts of judged pairs: query i's rows are rows[bounds[i]:bounds[i + 1]], relevant [N].

        The model passes every judged pair of the train split, which `load` checks it gets.
        """
        words: dict[str, int] = {}
        query_words = [np.asarray([words.setdefault(w, len(words))
                                   for w in features.query_words(q.text)], np.int64)
                       for q in queries]
        term_ids, bags = features.text_terms()
        groups = np.fromiter((fold_of(q.query_id, folds, seed) for q in queries), np.int64,
                             len(queries))
        counts = Counts.count(bags, len(term_ids), len(words), query_words, bounds, rows,
                              relevant, groups, folds)
        return cls(features, list(words), counts, prior=prior, folds=folds, seed=seed,
                   fingerprint=judgments_fingerprint(features.catalog, queries),
                   query_cache_size=query_cache_size)

    def clear_cache(self) -> None:
        self._query.cache_clear()

    def features_of(self, query_text: str, rows: np.ndarray) -> np.ndarray:
        """[n, len(ASSOCIATION_NAMES)] float32, from all train judgments (dev, test, the reward)."""
        return self._aggregate(self.table, self._query(query_text if isinstance(query_text, str)
                                                       else ""), rows)

    def out_of_fold(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """The same for a TRAIN query's rows, from the train judgments outside its fold."""
        if len(self.counts.pair) != self.folds:
            raise ValueError("out-of-fold features need the counts of each fold, which only "
                             "`fit` has (`drop_fold_counts` and `load` keep their sum)")
        fold = fold_of(query.query_id, self.folds, self.seed)
        if fold not in self._fold_tables:
            self._fold_tables[fold] = Table.of(self.counts, self.prior, exclude=fold)
        table = self._fold_tables[fold]
        return self._aggregate(table, self._known(table, self.features.query_words(query.text)),
                               rows)

    def drop_fold_counts(self) -> None:
        """Keeps the summed counts only (all that inference needs), freeing the per-fold ones."""
        c = self.counts
        self.counts = Counts(c.num_terms, c.keys, c.pair.sum(0, keepdims=True),
                             c.word.sum(0, keepdims=True), c.total.sum(0, keepdims=True))
        self._fold_tables.clear()

    def _known(self, table: Table, words: tuple[str, ...]) -> tuple[np.ndarray, int]:
        """(ids [k] of the words that the table knows, in sorted word order; all words)."""
        ids = (self.words.get(w, -1) for w in sorted(words))
        return np.asarray([i for i in ids if i >= 0 and table.known[i]], np.int64), len(words)

    def _dense(self) -> np.ndarray:
        """A [T] float32 array per thread, all 0 between uses: one word's a(w, .) over terms."""
        dense = getattr(self._local, "dense", None)
        if dense is None:
            dense = self._local.dense = np.zeros(len(self.term_ids), np.float32)
        return dense

    def _aggregate(self, table: Table, known: tuple[np.ndarray, int], rows) -> np.ndarray:
        (ids, num_words), rows = known, np.asarray(rows, np.int64)
        n, k = len(rows), len(ids)
        x = np.zeros((n, len(ASSOCIATION_NAMES)), np.float32)  # [n, A]
        if k == 0 or n == 0:
            return x
        x[:, 4] = k / num_words
        _, term = self.bags.gather(rows)  # [m]: the rows' terms, row after row
        values = np.empty((len(term), k), np.float32)  # [m, k]: a(w, t), 0 if w never met t
        dense = self._dense()
        for j, w in enumerate(ids):
            lo, hi = table.ptr[w], table.ptr[w + 1]
            dense[table.terms[lo:hi]] = table.values[lo:hi]
            values[:, j] = dense[term]
            dense[table.terms[lo:hi]] = 0.0
        lengths = self.bag_sizes[rows]  # [n]
        full = lengths > 0  # a row without terms keeps best = worst = 0
        if full.any():
            starts = (np.cumsum(lengths) - lengths)[full]  # ascending: reduceat's segments
            best = np.zeros((n, k), np.float32)  # [n, k]: best(w) per row
            worst = np.zeros((n, k), np.float32)
            best[full] = np.maximum.reduceat(values, starts, axis=0)
            worst[full] = np.minimum.reduceat(values, starts, axis=0)
            x[:, 0], x[:, 1] = best.max(axis=1), worst.min(axis=1)
            x[:, 2] = best.sum(axis=1) / num_words
            x[:, 3] = worst.sum(axis=1) / num_words
        return x

    # ------------------------------------------------------------------------------------------
    # Saving: the all-train counts, by word and term strings, with the fingerprint of the data
    # ------------------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Writes PATH/relevance_associations.npz: summed counts, word and term strings."""
        terms = np.asarray(list(self.term_ids), dtype=str)  # id -> term
        word, term = np.divmod(self.counts.keys, self.counts.num_terms)
        used, term_index = np.unique(term, return_inverse=True)
        np.savez_compressed(
            os.path.join(path, TABLES_FILE), words=np.asarray(list(self.words), dtype=str),
            terms=terms[used], pair_word=word, pair_term=term_index,
            pair=self.counts.pair.sum(0), word=self.counts.word.sum(0),
            total=self.counts.total.sum(0), fingerprint=np.asarray(self.fingerprint),
            prior=np.asarray(self.prior), folds=np.asarray(self.folds),
            seed=np.asarray(self.seed))

    @classmethod
    def load(cls, path: str, features: RelevanceFeatures, *,
             query_cache_size: int = 1024) -> Associations:
        """Reads `save`'s file; the catalog must be the one whose train judgments it counted."""
        file = os.path.join(path, TABLES_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} not found: the model uses association features "
                                    f"(retrain it with experiments.train_relevance)")
        with np.load(file, allow_pickle=False) as z:
            saved = {name: z[name] for name in z.files}
        fingerprint = judgments_fingerprint(features.catalog, features.catalog.split("train"))
        if str(saved["fingerprint"]) != fingerprint:
            raise ValueError(f"{file} was learned from other judgments than the train split of "
                             f"catalog {features.catalog.name!r} (fingerprint "
                             f"{saved['fingerprint']} != {fingerprint}); retrain the model")
        term_ids, _ = features.text_terms()
        missing = [t for t in saved["terms"].tolist() if t not in term_ids]
        if missing:
            raise ValueError(f"{file}: term {missing[0]!r} is in no product of catalog "
                             f"{features.catalog.name!r}; retrain the model")
        term = np.asarray([term_ids[t] for t in saved["terms"].tolist()], np.int64)
        keys = saved["pair_word"].astype(np.int64) * len(term_ids) + term[saved["pair_term"]]
        order = np.argsort(keys)
        counts = Counts(num_terms=len(term_ids), keys=keys[order],
                        pair=saved["pair"][None][:, :, order], word=saved["word"][None],
                        total=saved["total"][None])
        return cls(features, saved["words"].tolist(), counts, prior=float(saved["prior"]),
                   folds=int(saved["folds"]), seed=int(saved["seed"]), fingerprint=fingerprint,
                   query_cache_size=query_cache_size)
