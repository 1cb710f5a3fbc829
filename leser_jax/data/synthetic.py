"""The synthetic catalog: the embedded default dataset, built to need query expansion.

LESER (arXiv 2509.05570) trains a model to rewrite a shopper's query into expansions that a
lexical search engine answers better. Expansion only helps where the words of the query and the
words of the relevant products differ, so this generator builds that gap on purpose, and builds
queries where there is no gap to compare against. The tables it draws from are in
synthetic_vocab.py: 24 home-goods categories (office chair, sofa, ceiling fan, cordless drill,
interior paint, kitchen faucet, ...), each with its own attribute schema, optional features, and
problems that those features solve.

Products. A product has a category, a brand and one value of each of its category's attributes,
drawn uniformly, and each feature with probability `feature_rate`. Its title comes from one of
several templates of its category (different wording and word order) with a random name of the
category ("office chair", "desk chair", "task chair"); its description from shuffled sentence
templates; its `attributes` dict holds category, brand, the schema's values and its features.

Queries come in four kinds (`Query.kind`):
    exact    2-3 attribute values of an existing product with a category name, sometimes a feature:
             "navy mesh office chair with lumbar support". Lexical search does well.
    broad    a category name, perhaps with a word that names nothing: "cheap couch".
    brand    a brand and a category name: "ironclad cordless drill".
    problem  a category name and a need in the shopper's words: "chair for a sore lower back",
             relevant = products with the feature that meets it ("lumbar support"). No word of
             the need occurs in any product text (checked by `check_vocabulary` with the search
             engine's own analyzer, so not even a stem matches), so BM25 can only match the
             category name, which ranks the products with and without the feature alike. This
             is the vocabulary gap that query expansion must close: writing "lumbar support".
The category name in a problem query is kept on purpose: shoppers know they want a chair, it is
the feature they cannot name. Queries with no exact product in the catalog are dropped (and
counted in the load report), and query texts are unique.

Grades, on ESCI's 0..3 scale, follow from the query's intent (category, requested attribute
values, requested features), never from the text:
    3 exact        same category, every requested value and feature matches
    2 substitute   same category, something requested differs
    1 complement   a related category (a chair mat for an office chair)
    0 irrelevant   anything else
Real judgments are sparse and collected on what an engine showed, so they over-sample the top
of the ranking and include plausible mistakes. We emulate that without an engine in the loop:
for each query, `judgments_per_query` products are judged, stratified over the four grades
(`judged_mix`), and part of the irrelevant ones are "hard": they share a word with the query (same
color or brand in another category). Every emitted query has at least one judged exact product.

Everything is drawn from one `numpy.random.default_rng(seed)`, never from Python's salted
`hash()` or from the iteration order of a set, so a config gives the same catalog in any process.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import string

import numpy as np

from leser_jax.catalog import Catalog, CatalogBuilder, GradeScale
from leser_jax.data import synthetic_vocab as vocab

KINDS = ("exact", "broad", "brand", "problem")
SCALE = GradeScale(grade_min=0, grade_max=3, relevant_at=3, meaning=(
    "3 exact: right category and every requested attribute and feature; 2 substitute: right "
    "category, something requested differs; 1 complement: a related category; 0 irrelevant"))
MAX_PRODUCTS = 999_999  # ids are S + 6 digits
MAX_QUERIES = 99_999  # ids are sq + 5 digits
_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Size and make-up of the synthetic catalog.

    Attributes:
      seed: seeds the one numpy Generator that every random choice comes from.
      num_products: products, spread evenly over the categories.
      num_queries: queries asked for; fewer are emitted only if the vocabulary runs out of
        distinct texts with an exact product (possible for tiny catalogs).
      judgments_per_query: judged products per query (fewer when the catalog is smaller).
      exact_share, broad_share, brand_share, problem_share: shares of the query kinds.
      judged_mix: shares of grades 3, 2, 1, 0 among a query's judgments; a stratum with too few
        products gives its place to the irrelevant one.
      hard_negative_share: share of the irrelevant judgments that share a word with the query.
      feature_rate: probability that a product has each feature of its category.
      max_attributes: most attribute values in an exact query (at least 2 are used).
    """

    seed: int = 0
    num_products: int = 20_000
    num_queries: int = 2_000
    judgments_per_query: int = 50
    exact_share: float = 0.4
    broad_share: float = 0.1
    brand_share: float = 0.2
    problem_share: float = 0.3
    judged_mix: tuple[float, float, float, float] = (0.3, 0.3, 0.1, 0.3)
    hard_negative_share: float = 0.5
    feature_rate: float = 0.3
    max_attributes: int = 3

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")
        if not len(vocab.CATEGORIES) <= self.num_products <= MAX_PRODUCTS:
            raise ValueError(f"num_products must be in [{len(vocab.CATEGORIES)}, {MAX_PRODUCTS}] "
                             f"(at least one per category), got {self.num_products}")
        if not 1 <= self.num_queries <= MAX_QUERIES:
            raise ValueError(f"num_queries must be in [1, {MAX_QUERIES}], got {self.num_queries}")
        if self.judgments_per_query < 1:
            raise ValueError(f"judgments_per_query must be >= 1, got {self.judgments_per_query}")
        for what, shares in (("query kind shares", self.kind_shares),
                             ("judged_mix", self.judged_mix)):
            if len(shares) != 4 or min(shares) < 0 or not np.isclose(sum(shares), 1.0):
                raise ValueError(f"{what} must be 4 values >= 0 summing to 1, got {shares}")
        if self.judged_mix[0] == 0:
            raise ValueError("judged_mix[0] (exact) must be > 0: every query needs a judged "
                             "exact product")
        if not 0 <= self.hard_negative_share <= 1:
            raise ValueError(f"hard_negative_share must be in [0, 1], "
                             f"got {self.hard_negative_share}")
        if not 0 < self.feature_rate < 1:
            raise ValueError(f"feature_rate must be in (0, 1), got {self.feature_rate}")
        if self.max_attributes < 2:
            raise ValueError(f"max_attributes must be >= 2, got {self.max_attributes}")

    @property
    def kind_shares(self) -> tuple[float, float, float, float]:
        """Shares in the order of KINDS."""
        return (self.exact_share, self.broad_share, self.brand_share, self.problem_share)


@dataclasses.dataclass(frozen=True)
class _Intent:
    """What a query asks for; its grades follow from this, not from its text."""

    kind: str
    text: str
    category: int
    wanted: tuple[tuple[int, int], ...]  # (attribute index, value index) pairs
    features: tuple[int, ...]  # feature indices, all required


@dataclasses.dataclass
class _Products:
    """The catalog's products as arrays, by category, for fast grading."""

    category: np.ndarray  # [P] int: category index of each row
    rows: list[np.ndarray]  # per category c: [n_c] rows, ascending
    values: list[np.ndarray]  # per category c: [n_c, A_c] value index of each attribute
    features: list[np.ndarray]  # per category c: [n_c, F_c] bool
    complement_rows: list[np.ndarray]  # per category c: rows of its complement categories
    unrelated: np.ndarray  # [C, P] bool: product p is neither in category c nor a complement
    unrelated_rows: list[np.ndarray]  # per category c: np.flatnonzero(unrelated[c])
    word_rows: dict[str, np.ndarray]  # word -> rows whose name, values or features contain it

    def exact_mask(self, intent: _Intent) -> np.ndarray:
        """[n_c] bool: which products of the intent's category grade 3."""
        c = intent.category
        mask = np.ones(len(self.rows[c]), bool)
        for a, v in intent.wanted:
            mask &= self.values[c][:, a] == v
        for f in intent.features:
            mask &= self.features[c][:, f]
        return mask


def generate(config: SyntheticConfig = SyntheticConfig()) -> Catalog:
    """Builds the synthetic catalog; the same config gives the same catalog in any process."""
    check_vocabulary()
    rng = np.random.default_rng(config.seed)
    builder = CatalogBuilder("synthetic", SCALE, source=(
        f"synthetic(seed={config.seed}, num_products={config.num_products}, "
        f"num_queries={config.num_queries})"))
    products = _make_products(config, rng, builder)
    intents = _make_queries(config, products, rng, builder)
    for i, intent in enumerate(intents):
        query_id = f"sq{i:05d}"
        builder.add_query(f"synthetic:query {i}", query_id=query_id, text=intent.text,
                          kind=intent.kind)
        for row, grade in _judge(intent, products, config, rng).items():
            builder.add_judgment(f"synthetic:judgment {query_id}/S{row:06d}", query_id=query_id,
                                 product_id=f"S{row:06d}", grade=grade)
    return builder.build()


def _make_products(config: SyntheticConfig, rng: np.random.Generator,
                   builder: CatalogBuilder) -> _Products:
    num_categories = len(vocab.CATEGORIES)
    category = rng.permutation(np.arange(config.num_products) % num_categories)  # [P], balanced
    rows = [np.flatnonzero(category == c) for c in range(num_categories)]
    values, features = [], []
    for c, cat in enumerate(vocab.CATEGORIES):
        n = len(rows[c])
        values.append(np.stack([rng.integers(len(vals), size=n) for _, vals in cat.attributes],
                               axis=1))  # [n_c, A_c]
        features.append(rng.random((n, len(cat.features))) < config.feature_rate)  # [n_c, F_c]
    local = np.empty(config.num_products, np.int64)  # [P]: position within its category
    for c in range(num_categories):
        local[rows[c]] = np.arange(len(rows[c]))
    # Every wording choice of a product comes from its row of `u`, drawn here in one call; the
    # order of its description's attributes from `order` (a permutation of 0..3, sliced).
    u = rng.random((config.num_products, 7)).tolist()  # [P, 7] uniforms
    order = np.argsort(rng.random((config.num_products, 4)), axis=1).tolist()  # [P, 4]
    values_lists = [v.tolist() for v in values]  # Python ints: the loop below is per product
    features_lists = [f.tolist() for f in features]

    for row, (c, i) in enumerate(zip(category.tolist(), local.tolist())):
        cat = vocab.CATEGORIES[c]
        vals = [options[j] for (_, options), j in zip(cat.attributes, values_lists[c][i])]
        feats = [f for f, has in zip(cat.features, features_lists[c][i]) if has]
        title, description, attributes = _compose(cat, vals, feats, u[row], order[row])
        builder.add_product(f"synthetic:product {row}", product_id=f"S{row:06d}", title=title,
                            description=description, attributes=attributes)

    # Which products a word describes, through their category name, values or features: the
    # pool of hard negatives. Built from the arrays, not the texts, to keep it cheap.
    word_rows = collections.defaultdict(list)
    for c, cat in enumerate(vocab.CATEGORIES):
        for word in _words(" ".join(cat.names)):
            word_rows[word].append(rows[c])
        for a, (_, vals) in enumerate(cat.attributes):
            for v, value in enumerate(vals):
                for word in _words(value):
                    word_rows[word].append(rows[c][values[c][:, a] == v])
        for f, feature in enumerate(cat.features):
            for word in _words(feature):
                word_rows[word].append(rows[c][features[c][:, f]])

    index = {cat.key: c for c, cat in enumerate(vocab.CATEGORIES)}
    complements = [[index[k] for k in cat.complements] for cat in vocab.CATEGORIES]
    complement_rows = [np.sort(np.concatenate([rows[j] for j in js] or [np.zeros(0, np.int64)]))
                       for js in complements]
    unrelated = np.ones((num_categories, config.num_products), bool)  # [C, P]
    for c in range(num_categories):
        unrelated[c, rows[c]] = False
        unrelated[c, complement_rows[c]] = False
    return _Products(category=category, rows=rows, values=values, features=features,
                     complement_rows=complement_rows, unrelated=unrelated,
                     unrelated_rows=[np.flatnonzero(m) for m in unrelated],
                     word_rows={w: np.concatenate(r) for w, r in word_rows.items()})


def _pick(options, u: float):
    """The option that a uniform number in [0, 1) falls on."""
    return options[int(u * len(options))]


def _compose(cat: vocab.Category, vals: list[str], feats: list[str], u: list[float],
             order: list[int]) -> tuple[str, str, dict[str, str]]:
    """Title, description and attributes of one product, worded by the uniforms `u` [7]."""
    keys = [key for key, _ in cat.attributes]
    slots = dict(zip(keys, vals))
    templates = [t for t in cat.titles if feats or "{feature}" not in t]
    title = _pick(templates, u[0]).format(
        name=_pick(cat.names, u[1]), feature=_pick(feats, u[2]) if feats else "", **slots)

    name = cat.names[0]  # the description always names the category plainly
    details = list(zip(keys[1:], vals[1:]))  # the brand has its own sentence
    details = [details[j] for j in order if j < len(details)]
    form = _pick(("{k}: {v}", "{k} {v}", "{k} - {v}"), u[3])
    sentences = [_pick(vocab.INTROS, u[4]).format(name=name, brand=vals[0]),
                 _pick(vocab.DETAIL_LEADS, u[5]) + " "
                 + ", ".join(form.format(k=k, v=v) for k, v in details) + "."]
    if feats:
        listed = feats[0] if len(feats) == 1 else ", ".join(feats[:-1]) + " and " + feats[-1]
        sentences.append(_pick(vocab.FEATURE_LEADS, u[6]).format(features=listed))
    else:
        sentences.append(_pick(vocab.PLAIN_ENDINGS, u[6]).format(name=name))
    description = " ".join(s for s in sentences if s)

    attributes = {"category": name, **slots}
    if feats:
        attributes["features"] = ", ".join(feats)
    return title, description, attributes


def _make_queries(config: SyntheticConfig, products: _Products, rng: np.random.Generator,
                  builder: CatalogBuilder) -> list[_Intent]:
    """Distinct queries of each kind, each with at least one exact product, in random order."""
    shares = np.asarray(config.kind_shares)
    counts = np.floor(shares * config.num_queries).astype(int)  # [4]
    # Largest remainders get the queries that flooring left over (ties: the order of KINDS).
    for k in np.argsort(-(shares * config.num_queries - counts), kind="stable")[
            :config.num_queries - counts.sum()]:
        counts[k] += 1
    makers = {"exact": _exact_query, "broad": _broad_query, "brand": _brand_query,
              "problem": _problem_query}
    intents, seen = [], set()  # `seen` is only tested for membership, never iterated
    for kind, count in zip(KINDS, counts):
        accepted = 0
        for _ in range(20 * count + 100):  # bounded: a tiny catalog may run out of texts
            if accepted == count:
                break
            intent = makers[kind](config, products, rng)
            if intent.text in seen:
                continue
            seen.add(intent.text)
            if not products.exact_mask(intent).any():
                builder.skip("synthetic:candidate query", "query without exact products",
                             f"{kind}: {intent.text!r}")
                continue
            intents.append(intent)
            accepted += 1
    return [intents[i] for i in rng.permutation(len(intents))]


def _exact_query(config: SyntheticConfig, products: _Products, rng: np.random.Generator) -> _Intent:
    # Values of an existing product: shoppers search for things that exist.
    c = int(rng.integers(len(vocab.CATEGORIES)))
    cat = vocab.CATEGORIES[c]
    anchor = int(rng.integers(len(products.rows[c])))
    num = int(rng.integers(2, min(config.max_attributes, len(cat.attributes)) + 1))
    attrs = rng.choice(len(cat.attributes), size=num, replace=False)
    wanted = tuple((int(a), int(products.values[c][anchor, a])) for a in attrs)
    words = [cat.attributes[a][1][v] for a, v in wanted]
    name = str(_pick(cat.names, rng.random()))
    where = int(rng.integers(len(words) + 1))  # the name goes anywhere among the values
    text = " ".join(words[:where] + [name] + words[where:])
    has = np.flatnonzero(products.features[c][anchor])
    features = ()
    if len(has) and rng.random() < 0.3:
        features = (int(rng.choice(has)),)
        text += " with " + cat.features[features[0]]
    return _Intent("exact", text.lower(), c, wanted, features)


def _broad_query(config: SyntheticConfig, products: _Products, rng: np.random.Generator) -> _Intent:
    c = int(rng.integers(len(vocab.CATEGORIES)))
    name = _pick(vocab.CATEGORIES[c].names, rng.random())
    return _Intent("broad", f"{_pick(vocab.BROAD_FILLERS, rng.random())} {name}".strip(), c, (), ())


def _brand_query(config: SyntheticConfig, products: _Products, rng: np.random.Generator) -> _Intent:
    c = int(rng.integers(len(vocab.CATEGORIES)))
    cat = vocab.CATEGORIES[c]
    brand = int(rng.integers(len(cat.attributes[0][1])))  # attribute 0 is the brand
    frame = _pick(vocab.BRAND_FRAMES, rng.random())
    text = frame.format(brand=cat.attributes[0][1][brand], noun=_pick(cat.names, rng.random()))
    return _Intent("brand", text.lower(), c, ((0, brand),), ())


def _problem_query(config: SyntheticConfig, products: _Products,
                   rng: np.random.Generator) -> _Intent:
    c = int(rng.integers(len(vocab.CATEGORIES)))
    cat = vocab.CATEGORIES[c]
    problem = _pick(cat.problems, rng.random())
    text = _pick(vocab.PROBLEM_FRAMES, rng.random()).format(
        noun=_pick(cat.names, rng.random()), problem=_pick(problem.phrases, rng.random()))
    features = tuple(cat.features.index(f) for f in problem.features)
    return _Intent("problem", text, c, (), features)


def _judge(intent: _Intent, products: _Products, config: SyntheticConfig,
           rng: np.random.Generator) -> dict[int, int]:
    """A stratified sample of judged products for one query: row -> grade."""
    c = intent.category
    exact = products.exact_mask(intent)  # [n_c]
    pools = {3: products.rows[c][exact], 2: products.rows[c][~exact],
             1: products.complement_rows[c]}
    n = config.judgments_per_query
    judged: dict[int, int] = {}
    for grade, share in zip((3, 2, 1), config.judged_mix):
        take = min(len(pools[grade]), max(int(round(share * n)), int(grade == 3)))
        judged.update((int(r), grade) for r in rng.choice(pools[grade], take, replace=False))

    # The rest are irrelevant: first "hard" ones that share a word with the query, then random.
    num_irrelevant = max(n - len(judged), 0)
    shares_word = np.zeros(len(products.category), bool)  # [P]
    for word in _words(intent.text):
        if word not in vocab.STOPWORDS:
            shares_word[products.word_rows.get(word, [])] = True
    hard = np.flatnonzero(shares_word & products.unrelated[c])
    take = min(len(hard), int(round(config.hard_negative_share * num_irrelevant)))
    judged.update((int(r), 0) for r in rng.choice(hard, take, replace=False))
    pool = products.unrelated_rows[c]
    extra = rng.choice(pool, min(len(pool), num_irrelevant), replace=False)
    extra = [int(r) for r in extra if r not in judged][:num_irrelevant - take]
    judged.update((r, 0) for r in extra)
    return dict(sorted(judged.items()))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@functools.cache
def check_vocabulary() -> None:
    """Checks the tables of synthetic_vocab; raises ValueError naming what is wrong.

    The rule that makes problem queries a vocabulary gap: no word of a problem phrase, problem
    frame or broad filler (stopwords aside) has the same stem, under the search engine's analyzer
    (Tantivy's English stemmer), as any word that product text can contain.
    """
    import tantivy  # the engine's analyzer, so that "no match" means no match in search.py

    analyzer = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
                .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.stemmer("english"))
                .build())
    product_text = [*vocab.INTROS, *vocab.DETAIL_LEADS, *vocab.FEATURE_LEADS,
                    *vocab.PLAIN_ENDINGS, "category features"]
    errors = []
    keys = [cat.key for cat in vocab.CATEGORIES]
    for cat in vocab.CATEGORIES:
        attribute_keys = [key for key, _ in cat.attributes]
        product_text += [*cat.names, *cat.features, *cat.titles, *attribute_keys]
        product_text += [value for _, values in cat.attributes for value in values]
        if attribute_keys[0] != "brand" or len(set(attribute_keys)) != len(attribute_keys):
            errors.append(f"{cat.key}: attributes must start with brand and have distinct keys")
        if len(attribute_keys) > 5:  # _make_products shuffles at most 4 description details
            errors.append(f"{cat.key}: more than 5 attributes")
        # A value whose words are all inside another value ("battery kit", "two battery kit")
        # would make a substitute match an exact query word for word.
        value_words = [(v, set(_words(v))) for _, values in cat.attributes for v in values]
        for v, w in value_words:
            if any(w <= w2 and v != v2 for v2, w2 in value_words):
                errors.append(f"{cat.key}: value {v!r} is contained in another value")
        for template in cat.titles:
            slots = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            if not slots <= {"name", "brand", "feature", *attribute_keys}:
                errors.append(f"{cat.key}: title {template!r} names unknown slots")
        if any(f not in cat.features for p in cat.problems for f in p.features):
            errors.append(f"{cat.key}: a problem names a feature the category does not have")
        if not set(cat.complements) <= set(keys) - {cat.key}:
            errors.append(f"{cat.key}: unknown complements {cat.complements}")
        if not cat.problems:
            errors.append(f"{cat.key}: no problems")
    product_stems = {s for text in product_text for s in analyzer.analyze(text)}
    query_only = [phrase for cat in vocab.CATEGORIES for problem in cat.problems
                  for phrase in problem.phrases]
    query_only += [*vocab.BROAD_FILLERS, *vocab.PROBLEM_FRAMES]
    for text in query_only:
        plain = text.replace("{noun}", " ").replace("{problem}", " ")
        clash = [w for w in _words(plain) if w not in vocab.STOPWORDS
                 and set(analyzer.analyze(w)) & product_stems]
        if clash:
            errors.append(f"query words {clash} of {text!r} occur in product text")
    if errors:
        raise ValueError("synthetic_vocab is inconsistent:\n  " + "\n  ".join(errors))
