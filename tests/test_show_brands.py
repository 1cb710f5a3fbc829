"""tools.show_answers --brands: the query's brand kept, swapped or dropped, per system."""

from __future__ import annotations

import numpy as np

from tools import show_answers

NAMES = show_answers.brand_names()


def _row(query, kind, **systems):
    return {"query": query, "kind": kind,
            "systems": {s: {"expansions": list(e)} for s, e in systems.items()}}


def test_brand_names_come_from_the_generators_tables():
    assert {"weavecraft", "dreamfield", "linden home"} <= set(NAMES)
    assert all(n == n.lower() for n in NAMES)


def test_brands_are_matched_as_whole_words():
    assert show_answers.brands_in("Linden Home rug pad", NAMES) == {"linden home"}
    assert show_answers.brands_in("lindenhome rug pad", NAMES) == set()
    assert show_answers.brands_in("weavecraft, dreamfield pillow", NAMES) == {"weavecraft",
                                                                               "dreamfield"}


def test_each_expansion_is_counted_once_per_outcome():
    rows = [
        _row("weavecraft throw pillow", "brand",
             teacher=["20 in weavecraft throw pillow", "weavecraft pillow"],
             warmup=["dreamfield throw pillow", "18 in throw pillow", "weavecraft pillow"]),
        _row("linden home brand rug pad", "brand", teacher=["linden home felt rug pad"],
             warmup=[]),
        # Not a brand query, or a brand query without a known brand: not counted.
        _row("weavecraft throw pillow", "exact", teacher=["x"], warmup=["dreamfield pillow"]),
        _row("acme pillow", "brand", teacher=["x"], warmup=["dreamfield pillow"]),
    ]
    copies = show_answers.brand_copies(rows, ["teacher", "warmup"], NAMES)
    assert copies["teacher"] == {"expansions": 3, "query brand": 1.0, "other brand": 0.0,
                                 "no brand": 0.0}
    assert copies["warmup"]["expansions"] == 3
    np.testing.assert_allclose([copies["warmup"][k] for k in show_answers.OUTCOMES],
                               [1 / 3, 1 / 3, 1 / 3])
    assert "| warmup | 3 | 33% | 33% | 33% |" in show_answers.brand_table(copies)


def test_a_system_without_brand_expansions_has_no_shares():
    rows = [_row("weavecraft throw pillow", "brand", warmup=[])]
    copies = show_answers.brand_copies(rows, ["warmup"], NAMES)
    assert copies["warmup"]["expansions"] == 0
    assert np.isnan(copies["warmup"]["query brand"])
    assert "| warmup | 0 | - | - | - |" in show_answers.brand_table(copies)
