"""The context: the original query's top results, filtered and compacted to a token budget."""

from __future__ import annotations

import numpy as np
import pytest

from leser_jax.catalog import CatalogBuilder, GradeScale
from leser_jax.context import ContextConfig, ContextItem, build_context
from leser_jax.search import SearchEngine


@pytest.fixture(scope="module")
def engine():
    b = CatalogBuilder("ctx", GradeScale(grade_min=0, grade_max=1, relevant_at=1))
    b.add_product("1", product_id="a", title="Red Office Chair with a very long title " * 5,
                  attributes={"color": "red", "feature": "lumbar support " * 10, "brand": "Acme",
                              "material": "leather"})
    b.add_product("2", product_id="b", title="Blue Office Chair", attributes={"color": "blue"})
    b.add_product("3", product_id="c", title="Office Lamp")
    return SearchEngine.build(b.build())


def test_items_follow_the_ranking_and_are_cut(engine):
    items = build_context("red office chair", engine, ContextConfig(k=3, max_tokens=10_000))
    assert [i.title.split()[0] for i in items] == ["Red", "Blue", "Office"]
    first = items[0]
    assert len(first.title) == 100  # max_title_chars
    assert [k for k, _ in first.attributes] == ["color", "feature", "brand"]  # max_attributes = 3
    assert len(dict(first.attributes)["feature"]) == 30  # max_value_chars


def test_k_limits_and_zero_disables(engine):
    assert len(build_context("office", engine, ContextConfig(k=2, max_tokens=10_000))) == 2
    assert build_context("office", engine, ContextConfig(k=0)) == []
    assert build_context("🙂", engine) == []


def test_budget_drops_attributes_then_items(engine):
    words = lambda text: len(text.split())  # noqa: E731 - a toy tokenizer: one token a word
    full = build_context("red office chair", engine, ContextConfig(k=3, max_tokens=10_000),
                         count_tokens=words)
    costs = [words(i.render()) for i in full]
    # A budget that holds the first item only without its attributes.
    title_only = words(ContextItem(full[0].title).render())
    items = build_context("red office chair", engine, ContextConfig(k=3, max_tokens=title_only),
                          count_tokens=words)
    assert len(items) == 1 and items[0].attributes == ()
    # Enough for everything: nothing is dropped.
    items = build_context("red office chair", engine, ContextConfig(k=3, max_tokens=sum(costs)),
                          count_tokens=words)
    assert items == full
    assert sum(words(i.render()) for i in items) <= sum(costs)


def test_relevance_filter(engine):
    class OnlyBlue:
        def score(self, query, rows):
            return np.array([1.0 if engine.catalog.products[r].product_id == "b" else 0.1 for r in rows])

    items = build_context("office chair", engine, ContextConfig(k=3, min_relevance=0.5),
                          relevance=OnlyBlue())
    assert [i.title for i in items] == ["Blue Office Chair"]
    with pytest.raises(ValueError, match="no relevance model"):
        build_context("office chair", engine, ContextConfig(min_relevance=0.5))
