"""The synthetic catalog: determinism, make-up, grading rules, and its vocabulary gap."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from leser_jax.data import canonical, synthetic
from leser_jax.data import synthetic_vocab as vocab
from leser_jax.search import SearchConfig, SearchEngine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = synthetic.SyntheticConfig(num_products=1_000, num_queries=100, judgments_per_query=30)
CATEGORY_BY_NAME = {cat.names[0]: cat for cat in vocab.CATEGORIES}
CATEGORY_BY_KEY = {cat.key: cat for cat in vocab.CATEGORIES}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def product_words(p) -> set[str]:
    return set(words(" ".join((p.title, p.description, p.attribute_text()))))


def fingerprint(catalog) -> str:
    """A digest of every product, query and judgment, to compare catalogs across processes."""
    h = hashlib.sha256()
    for p in catalog.products:
        h.update(repr((p.product_id, p.title, p.description, sorted(p.attributes.items())))
                 .encode())
    for q in catalog.queries:
        h.update(repr((q.query_id, q.text, q.kind, sorted(catalog.judgments[q.query_id].items())))
                 .encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def catalog():
    # Large enough that a category (~170 products) outnumbers the top-40 of a search.
    return synthetic.generate(synthetic.SyntheticConfig(num_products=4_000, num_queries=300))


@pytest.fixture(scope="module")
def engine(catalog):
    return SearchEngine.build(catalog, SearchConfig(num_threads=1))


def category_of(catalog, query_id: str) -> vocab.Category:
    """The query's category: that of its judged exact products (all share it)."""
    names = {catalog.product(pid).attributes["category"]
             for pid, g in catalog.judgments[query_id].items() if g == 3}
    assert len(names) == 1, (query_id, names)
    return CATEGORY_BY_NAME[names.pop()]


def test_same_seed_same_catalog_other_seed_differs():
    a, b = synthetic.generate(SMALL), synthetic.generate(SMALL)
    assert a.products == b.products and a.queries == b.queries and a.judgments == b.judgments
    c = synthetic.generate(synthetic.SyntheticConfig(
        seed=1, num_products=1_000, num_queries=100, judgments_per_query=30))
    assert [p.title for p in c.products] != [p.title for p in a.products]
    assert [q.text for q in c.queries] != [q.text for q in a.queries]


def test_same_catalog_in_another_process():
    # Python salts str hashes per process: a generator that iterated a set of strings, or used
    # hash(), would differ here. PYTHONHASHSEED forces two different salts.
    code = ("from leser_jax.data import synthetic; from tests.test_synthetic import fingerprint, "
            "SMALL; print(fingerprint(synthetic.generate(SMALL)))")
    digests = {subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, text=True,
                              capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}
                              ).stdout.strip() for seed in ("1", "2")}
    assert digests == {fingerprint(synthetic.generate(SMALL))}


def test_ids_sizes_and_report(catalog):
    assert len(catalog.products) == 4_000 and len(catalog.queries) == 300
    assert all(re.fullmatch(r"S\d{6}", p.product_id) for p in catalog.products)
    assert catalog.products[17].product_id == "S000017"
    assert all(re.fullmatch(r"sq\d{5}", q.query_id) for q in catalog.queries)
    assert catalog.report.kept["judgments"] == sum(len(j) for j in catalog.judgments.values())
    assert catalog.scale.grade_min == 0 and catalog.scale.grade_max == 3
    assert catalog.scale.relevant_at == 3


def test_categories_have_their_own_schemas(catalog):
    schemas = collections.defaultdict(set)  # category -> attribute keys
    values = collections.defaultdict(set)  # category -> (key, value) pairs
    for p in catalog.products:
        schemas[p.attributes["category"]].add(tuple(k for k in p.attributes if k != "features"))
        values[p.attributes["category"]].update(
            (k, v) for k, v in p.attributes.items() if k not in ("category", "brand", "features"))
    assert len(schemas) >= 20
    assert all(len(keys) == 1 for keys in schemas.values())  # one schema per category
    assert len({keys.pop() for keys in schemas.values()}) >= 15  # and they differ between them
    color_sets = {frozenset(v for k, v in pairs if k == "color") for pairs in values.values()}
    assert len(color_sets - {frozenset()}) >= 8  # same key, category-specific values


def test_titles_vary_in_wording_and_order(catalog):
    patterns = collections.defaultdict(set)  # category -> title with its values replaced by slots
    for p in catalog.products:
        cat = CATEGORY_BY_NAME[p.attributes["category"]]
        title = p.title
        slots = [(v, k) for k, v in p.attributes.items() if k not in ("category", "features")]
        slots += [(f, "feature") for f in cat.features] + [(n, "name") for n in cat.names]
        for value, key in sorted(slots, key=lambda s: -len(s[0])):
            title = title.replace(value, "{" + key + "}")
        patterns[cat.key].add(title)
    assert all(len(p) >= 3 for p in patterns.values()), {k: len(p) for k, p in patterns.items()}
    # Word order varies too: the name is the first word group in some titles and not in others.
    starts = {k: {t.startswith("{name}") for t in p} for k, p in patterns.items()}
    assert sum(len(s) == 2 for s in starts.values()) >= 10


def test_query_kinds_and_shares(catalog):
    counts = collections.Counter(q.kind for q in catalog.queries)
    config = synthetic.SyntheticConfig()
    for kind, share in zip(synthetic.KINDS, config.kind_shares):
        assert abs(counts[kind] / len(catalog.queries) - share) <= 0.01, (kind, counts)
    assert len({q.text for q in catalog.queries}) == len(catalog.queries)  # no duplicate texts


def test_judgments_are_bounded_stratified_and_on_scale(catalog):
    mixes = collections.Counter()
    for q in catalog.queries:
        judged = catalog.judgments[q.query_id]
        assert 0 < len(judged) <= 50
        assert all(catalog.scale.contains(g) and g == int(g) for g in judged.values())
        assert 3 in judged.values(), q  # every emitted query has a judged exact product
        mixes.update(judged.values())
    assert set(mixes) == {0, 1, 2, 3}
    assert mixes[0] > mixes[1] and mixes[2] > mixes[1]  # complements are the smallest stratum


def test_grades_follow_the_rules(catalog):
    for q in catalog.queries:
        cat = category_of(catalog, q.query_id)
        related = {cat.names[0]} | {CATEGORY_BY_KEY[k].names[0] for k in cat.complements}
        # The values a query names; its category name may be a synonym of the product's.
        asked = set(words(q.text)) - vocab.STOPWORDS - set(words(" ".join(cat.names)))
        for pid, grade in catalog.judgments[q.query_id].items():
            p = catalog.product(pid)
            category = p.attributes["category"]
            if grade >= 2:
                assert category == cat.names[0]
            elif grade == 1:
                assert category in related and category != cat.names[0]
            else:
                assert category not in related
            if grade == 3 and q.kind in ("exact", "brand"):
                # Every value the query names is the product's: its words are all in the text.
                assert asked <= product_words(p), (q.text, p)
        if q.kind == "exact" and " with " not in q.text:
            # Without a feature, the query is values only, and a substitute lacks one of them.
            # (Feature words can occur in a substitute's other features: "edge support".)
            subs = [catalog.product(pid) for pid, g in catalog.judgments[q.query_id].items()
                    if g == 2]
            assert not any(asked <= product_words(p) for p in subs), q.text


def test_hard_negatives_share_words_with_the_query(catalog):
    # Where some unrelated product shares a word with the query (a color, a brand, "pillow"),
    # the judged irrelevant products include one, as an engine's results would.
    described_by = collections.defaultdict(set)  # word -> products whose title or values have it
    for p in catalog.products:
        values = " ".join(v for k, v in p.attributes.items() if k != "category")
        for w in words(p.title + " " + values):
            described_by[w].add(p.product_id)
    possible = judged = 0
    for q in catalog.queries:
        cat = category_of(catalog, q.query_id)
        related = {cat.names[0]} | {CATEGORY_BY_KEY[k].names[0] for k in cat.complements}
        hard = set().union(*(described_by[w] for w in set(words(q.text)) - vocab.STOPWORDS))
        hard = {pid for pid in hard if catalog.product(pid).attributes["category"] not in related}
        if hard:
            possible += 1
            negatives = {pid for pid, g in catalog.judgments[q.query_id].items() if g == 0}
            judged += bool(hard & negatives)
            assert all(catalog.product(pid).attributes["category"] not in related for pid in hard)
    assert possible > 0.6 * len(catalog.queries) and judged >= 0.95 * possible, (judged, possible)


def test_problem_queries_share_no_word_with_their_products(catalog):
    # The problem query keeps its category's name ("chair for back pain"): shoppers know what
    # they want, not the feature's name. Every other content word is absent from its exact
    # products, and from the whole catalog.
    all_words = set().union(*(product_words(p) for p in catalog.products))
    problems = [q for q in catalog.queries if q.kind == "problem"]
    assert problems
    for q in problems:
        cat = category_of(catalog, q.query_id)
        content = set(words(q.text)) - vocab.STOPWORDS - set(words(" ".join(cat.names)))
        assert content, q.text
        exact = [catalog.product(pid) for pid, g in catalog.judgments[q.query_id].items() if g == 3]
        for p in exact:
            assert not content & product_words(p), (q.text, p.title)
            # ... while each exact product names the feature that solves the problem.
            assert any(f in p.description and f in p.attributes["features"] for f in cat.features)
        assert not content & all_words, (q.text, content & all_words)


def test_problem_words_find_nothing_even_stemmed(catalog, engine):
    # The engine stems ("pains" -> "pain"): no content word of a problem query may hit anything.
    for q in catalog.queries:
        if q.kind == "problem":
            cat = category_of(catalog, q.query_id)
            for w in set(words(q.text)) - vocab.STOPWORDS - set(words(" ".join(cat.names))):
                assert len(engine.search(w, k=1)) == 0, (q.text, w)


def test_bm25_misses_what_problem_queries_want(catalog, engine):
    # Share of the judged exact products that the original query's top-40 contains, by kind.
    # Exact-attribute queries are answered lexically; problem queries can match only the
    # category name, so their top-40 is a lottery over the category: the vocabulary gap.
    recall = collections.defaultdict(list)
    texts = [q.text for q in catalog.queries]
    for q, hits in zip(catalog.queries, engine.search_many(texts, k=40)):
        exact = {pid for pid, g in catalog.judgments[q.query_id].items() if g == 3}
        recall[q.kind].append(len(exact & set(hits.product_ids)) / len(exact))
    mean = {kind: float(np.mean(r)) for kind, r in recall.items()}
    assert mean["problem"] < 0.5, mean
    assert mean["exact"] > 0.8 and mean["exact"] > mean["problem"] + 0.4, mean


def test_round_trip_through_the_canonical_layout(tmp_path):
    original = synthetic.generate(SMALL)
    canonical.write(original, str(tmp_path))
    loaded = canonical.load(str(tmp_path))
    assert loaded.name == original.name and loaded.scale == original.scale
    assert loaded.products == original.products
    assert loaded.queries == original.queries
    assert loaded.judgments == original.judgments
    assert loaded.report.num_skipped == 0


def test_queries_without_exact_products_are_dropped():
    # One product per category: most problems have no product with their features, so most
    # problem intents are dropped (and counted), never emitted without an exact product.
    tiny = synthetic.generate(synthetic.SyntheticConfig(
        num_products=len(vocab.CATEGORIES), num_queries=50, exact_share=0.0, broad_share=0.0,
        brand_share=0.0, problem_share=1.0))
    assert 0 < len(tiny.queries) <= 50
    assert all(3 in tiny.judgments[q.query_id].values() for q in tiny.queries)
    assert tiny.report.skipped["query without exact products"] > 0


@pytest.mark.parametrize("bad", [
    dict(seed=-1), dict(num_products=3), dict(num_queries=0), dict(judgments_per_query=0),
    dict(exact_share=0.9), dict(judged_mix=(0.0, 0.5, 0.25, 0.25)), dict(feature_rate=1.0),
    dict(hard_negative_share=1.5), dict(max_attributes=1), dict(judged_mix=(1.0, 0.0, 0.0)),
])
def test_config_rejects_impossible_values(bad):
    with pytest.raises(ValueError):
        synthetic.SyntheticConfig(**bad)


def test_vocabulary_check_catches_a_leaking_problem_word(monkeypatch):
    # A problem phrase that reuses a product word ("leather") would close the gap by accident.
    cat = vocab.CATEGORIES[0]
    leaky = vocab.Problem(phrases=("a leather lover",), features=cat.features[:1])
    broken = dataclasses.replace(cat, problems=cat.problems + (leaky,))
    monkeypatch.setattr(vocab, "CATEGORIES", (broken,) + vocab.CATEGORIES[1:])
    synthetic.check_vocabulary.cache_clear()
    try:
        with pytest.raises(ValueError, match="leather"):
            synthetic.check_vocabulary()
    finally:
        synthetic.check_vocabulary.cache_clear()
