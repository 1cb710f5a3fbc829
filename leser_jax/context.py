"""The context LESER shows the policy: what the original query already retrieves.

The paper feeds the model the top-k products of the original query (pseudo-relevance feedback),
so that it expands towards the catalog's own vocabulary: a shopper writes "chair for back pain",
the results say "lumbar support", and an expansion that uses those words finds what the query
alone misses. It also observes that these results can be noisy and can filter them with the
relevance model; `min_relevance` does that (off by default).

Each item (`ContextItem`, `<item>title (name: value; ...)</item>` in the prompt that
prompts.render_prompt writes) is the product's title and a few attributes, cut to fixed lengths,
and the list is compacted to a token budget: items are added in rank order while they fit; an
item that does not fit in full is tried without its attributes; the first that does not fit at
all ends the list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from leser_jax.search import SearchEngine

if TYPE_CHECKING:  # an annotation only: reward.py imports prompts.py, which imports this module
    from leser_jax.reward import Relevance


@dataclasses.dataclass(frozen=True)
class ContextItem:
    """A product shown to the policy: its title and (a few of) its attributes."""

    title: str
    attributes: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        """The item as the prompt shows it, inside <context> (prompts.render_prompt)."""
        attrs = "; ".join(f"{k}: {v}" for k, v in self.attributes)
        return f"<item>{self.title}" + (f" ({attrs})" if attrs else "") + "</item>"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContextConfig:
    """Attributes:
      k: products of the original query shown (the paper's context size; 0 = no context).
      max_tokens: token budget of the whole context.
      max_attributes: attributes shown per product, in the catalog's order.
      max_title_chars, max_value_chars: longer titles and attribute values are cut.
      max_query_chars: the query as the prompt shows it is cut here, so that no query can push
        a prompt past the model's window (searches, the reward and metrics use it whole).
      min_relevance: if set, only products whose relevance score is at least this are shown.
    """

    k: int = 10
    max_tokens: int = 192
    max_attributes: int = 3
    max_title_chars: int = 100
    max_value_chars: int = 30
    max_query_chars: int = 120
    min_relevance: float | None = None

    def __post_init__(self):
        if self.k < 0 or self.max_tokens < 0 or self.max_attributes < 0:
            raise ValueError("k, max_tokens and max_attributes must be >= 0")
        if self.max_query_chars < 1:
            raise ValueError(f"max_query_chars must be >= 1, got {self.max_query_chars}")
        if self.min_relevance is not None and not 0 <= self.min_relevance <= 1:
            raise ValueError(f"min_relevance must be in [0, 1], got {self.min_relevance}")


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters a token), for when none is at hand."""
    return len(text) // 4 + 1


def build_context(query: str, engine: SearchEngine, config: ContextConfig = ContextConfig(), *,
                  relevance: Relevance | None = None,
                  count_tokens: Callable[[str], int] = approx_tokens) -> list[ContextItem]:
    """The items shown for `query`, best first, within `config.max_tokens`."""
    if config.k == 0:
        return []
    hits = engine.search(query, config.k)
    rows = hits.rows
    if config.min_relevance is not None and len(rows):
        if relevance is None:
            raise ValueError("min_relevance is set but no relevance model was given")
        rows = rows[relevance.score(query, rows) >= config.min_relevance]
    items, used = [], 0
    for row in rows.tolist():
        full = _item(engine.catalog.products[row], config)
        for candidate in (full, ContextItem(full.title)):
            cost = count_tokens(candidate.render())
            if used + cost <= config.max_tokens:
                items.append(candidate)
                used += cost
                break
        else:
            break
    return items


def _item(product, config: ContextConfig) -> ContextItem:
    attributes = tuple((name, value[:config.max_value_chars])
                       for name, value in list(product.attributes.items())[:config.max_attributes])
    return ContextItem(product.title[:config.max_title_chars], attributes)
