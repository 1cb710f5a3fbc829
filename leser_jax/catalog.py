"""The product catalog: products, queries and graded human judgments.

Every dataset, real or synthetic, ends up as one `Catalog`. It is the input of every later stage of
LESER: the search index is built over its products, the relevance model is trained on its
judgments, and GRPO samples its training queries from `catalog.split("train")`.

Loaders never construct a `Catalog` directly. They feed rows, each with the file and line it came
from, into a `CatalogBuilder`, which is the one place where bad input is judged:

    duplicate product id   -> the first row wins, the repeat is skipped and counted
    missing id or title    -> skipped and counted
    a query, title or alt title with a line break
                           -> skipped and counted
    a text over its limit  -> skipped and counted (limits below)
    judgment of an unknown product or query, or a grade outside the dataset's scale
                           -> skipped and counted

Loaders report what only they can see through the same `skip`: a line that is not JSON, a quote
left open, bytes that are not UTF-8 (see data/canonical.py).

Queries and titles are one line of text everywhere downstream: an `<item>` of the prompt, a line
of queries.csv written by `canonical.write`. A line break in one is either a row that swallowed
the next (an unclosed quote in a CSV file) or pasted text, not a product name, so it is a bad row
rather than something to repair; a description may hold line breaks (ESCI's bullet points are one
a line). The length limits sit far above real data and far below what a merged row reaches (a few
hundred queries merged into one run to thousands of characters): a query is typed into a search
box (Home Depot's longest is 60 characters), a title is a product name (Home Depot's longest is
147; Amazon asks sellers for at most 200), a description is indexed but never shown in a prompt:

    MAX_QUERY_CHARS = 1,000   MAX_TITLE_CHARS = 2,000   MAX_DESCRIPTION_CHARS = 100,000

Nothing is dropped silently: every skipped row is counted by reason in a `LoadReport`, and the
first few of each reason are kept with `file:line` so that a user can look at them. With
`strict=True` the first problem raises `CatalogError` instead.

Queries are split into train/dev/test by a hash of their id, not by position, so that the split of
a query never changes when rows are added, removed or reordered.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re
from collections.abc import Iterable, Mapping

SPLITS = ("train", "dev", "test")
MAX_QUERY_CHARS = 1_000
MAX_TITLE_CHARS = 2_000  # product titles and alt titles
MAX_DESCRIPTION_CHARS = 100_000  # ~15,000 words: only merged rows or a pasted document

# The characters at which str.splitlines breaks a line: a text holding one is not one line.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class CatalogError(ValueError):
    """A dataset file is malformed (raised in strict mode, or when nothing usable is left)."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Product:
    """One catalog item. `attributes` maps a name (brand, color, ...) to its value as text."""

    product_id: str
    title: str
    description: str = ""
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    alt_titles: tuple[str, ...] = ()

    def attribute_text(self) -> str:
        """Attribute values as one string, the text of the index's `attributes` field."""
        return " ".join(f"{k} {v}" for k, v in self.attributes.items())


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Query:
    """A search query. `kind` is set by the synthetic generator (exact, broad, brand, problem)."""

    query_id: str
    text: str
    kind: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradeScale:
    """A dataset's judgment scale, as its dataset.json gives it.

    Attributes:
      grade_min, grade_max: the lowest (irrelevant) and highest (perfectly relevant) grade.
      relevant_at: the grade from which a product counts as relevant (judged recall, AUC).
      meaning: what the grades mean, in the dataset's own words.
    """

    grade_min: float
    grade_max: float
    relevant_at: float
    meaning: str = ""

    def __post_init__(self):
        if not (math.isfinite(self.grade_min) and math.isfinite(self.grade_max)):
            raise ValueError(f"grade bounds must be finite, got {self.grade_min}, {self.grade_max}")
        if self.grade_min >= self.grade_max:
            raise ValueError(f"grade_min {self.grade_min} must be below grade_max {self.grade_max}")
        if not self.grade_min <= self.relevant_at <= self.grade_max:
            raise ValueError(f"relevant_at {self.relevant_at} outside [{self.grade_min}, {self.grade_max}]")

    def contains(self, grade: float) -> bool:
        return math.isfinite(grade) and self.grade_min <= grade <= self.grade_max

    def normalise(self, grade: float) -> float:
        """Maps a grade to [0, 1]: 0 = grade_min (irrelevant), 1 = grade_max."""
        return (grade - self.grade_min) / (self.grade_max - self.grade_min)

    def is_relevant(self, grade: float) -> bool:
        return grade >= self.relevant_at


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Train/dev/test ratios of the query split; `salt` reshuffles it reproducibly."""

    train: float = 0.8
    dev: float = 0.1
    test: float = 0.1
    salt: str = "leser"

    def __post_init__(self):
        ratios = (self.train, self.dev, self.test)
        if min(ratios) < 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-9):
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got {ratios}")

    def split_of(self, query_id: str) -> str:
        """The split of a query, from a hash of its id: stable under any change to other rows."""
        digest = hashlib.blake2b(f"{self.salt}\x00{query_id}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
        if u < self.train:
            return "train"
        return "dev" if u < self.train + self.dev else "test"


class LoadReport:
    """What a load kept and what it skipped, by reason, with `file:line` of the first few."""

    MAX_EXAMPLES = 5  # per reason

    def __init__(self, source: str):
        self.source = source
        self.kept: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < self.MAX_EXAMPLES:
            self.examples[reason].append(f"{where}: {detail}" if detail else where)

    def summary(self) -> str:
        kept = ", ".join(f"{n:,} {what}" for what, n in self.kept.items())
        lines = [f"loaded {self.source}: {kept}"]
        if self.skipped:
            lines.append(f"skipped {self.num_skipped:,} rows:")
            for reason, n in sorted(self.skipped.items()):
                lines.append(f"  {reason}: {n:,}")
                lines.extend(f"    {example}" for example in self.examples[reason])
        else:
            lines.append("skipped 0 rows")
        return "\n".join(lines)


class Catalog:
    """Products, queries and judgments of one dataset, with the query split.

    Attributes:
      name: the dataset's name.
      scale: its grade scale.
      products: all products; a product's position here is its `row`, the integer id used by the
        search index and by arrays of per-product values.
      queries: all queries, in file order.
      judgments: query_id -> {product_id: grade}; sparse, as human judgments are.
      report: what the load kept and skipped.
      split_config: how queries are split into train/dev/test.
    """

    def __init__(
        self,
        *,
        name: str,
        scale: GradeScale,
        products: list[Product],
        queries: list[Query],
        judgments: dict[str, dict[str, float]],
        report: LoadReport | None = None,
        split_config: SplitConfig = SplitConfig(),
    ):
        self.name = name
        self.scale = scale
        self.products = products
        self.queries = queries
        self.judgments = judgments
        self.report = report if report is not None else LoadReport(name)
        self.split_config = split_config
        self.row_of = {p.product_id: row for row, p in enumerate(products)}
        self.query_by_id = {q.query_id: q for q in queries}
        if len(self.row_of) != len(products):
            raise CatalogError(f"{name}: duplicate product ids (build catalogs with CatalogBuilder)")

    def __repr__(self) -> str:
        n_judged = sum(len(j) for j in self.judgments.values())
        return (f"Catalog({self.name!r}: {len(self.products):,} products, "
                f"{len(self.queries):,} queries, {n_judged:,} judgments)")

    def product(self, product_id: str) -> Product:
        return self.products[self.row_of[product_id]]

    def split(self, name: str) -> list[Query]:
        """The queries of split `name` (train, dev or test), in file order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [q for q in self.queries if self.split_config.split_of(q.query_id) == name]

    def with_split(self, split_config: SplitConfig) -> Catalog:
        """The same catalog under other split ratios or salt."""
        return Catalog(name=self.name, scale=self.scale, products=self.products,
                       queries=self.queries, judgments=self.judgments, report=self.report,
                       split_config=split_config)

    def relevant(self, query_id: str) -> set[str]:
        """Product ids judged relevant (grade >= relevant_at) for a query."""
        return {pid for pid, g in self.judgments.get(query_id, {}).items()
                if self.scale.is_relevant(g)}


class CatalogBuilder:
    """Collects rows from a loader, judging each one; `build()` returns the Catalog.

    Every `add_*` method takes `where`, the row's origin as "path:line", and returns whether the
    row was kept. Products must be added before the judgments that name them.
    """

    def __init__(self, name: str, scale: GradeScale, *, source: str = "", strict: bool = False):
        self.name = name
        self.scale = scale
        self.strict = strict
        self.report = LoadReport(source or name)
        self._products: list[Product] = []
        self._product_ids: set[str] = set()
        self._queries: dict[str, Query] = {}
        self._judgments: dict[str, dict[str, float]] = collections.defaultdict(dict)

    def skip(self, where: str, reason: str, detail: str = "") -> bool:
        """Records a bad row (or raises in strict mode). Returns False, for `return self.skip(...)`."""
        if self.strict:
            raise CatalogError(f"{where}: {reason}" + (f": {detail}" if detail else ""))
        self.report.skip(where, reason, detail)
        return False

    def add_product(self, where: str, *, product_id, title, description="", attributes=None,
                    alt_titles: Iterable[str] = ()) -> bool:
        product_id = _clean(product_id)
        title, description = _clean(title), _clean(description)
        alt_titles = tuple(t for t in map(_clean, alt_titles) if t)
        if not product_id:
            return self.skip(where, "product without id")
        if not title:
            return self.skip(where, "product without title", f"product_id={product_id}")
        # A bad row is judged before the duplicate check, so that it cannot claim its id.
        label = f"product_id={product_id}"
        titles = [(label, title)] + [(f"{label} alt_titles[{i}]", alt)
                                     for i, alt in enumerate(alt_titles)]
        if not all(self._text_ok(where, "product title", t, MAX_TITLE_CHARS, which)
                   for which, t in titles):
            return False
        if not self._text_ok(where, "product description", description, MAX_DESCRIPTION_CHARS,
                             label, one_line=False):
            return False
        if product_id in self._product_ids:
            return self.skip(where, "duplicate product id", label)
        attributes = {str(k).strip(): _clean(v) for k, v in (attributes or {}).items()}
        self._products.append(Product(
            product_id=product_id, title=title, description=description,
            attributes={k: v for k, v in attributes.items() if k and v}, alt_titles=alt_titles))
        self._product_ids.add(product_id)
        return True

    def add_query(self, where: str, *, query_id, text, kind: str = "") -> bool:
        query_id, text = _clean(query_id), _clean(text)
        if not query_id:
            return self.skip(where, "query without id")
        if not text:
            return self.skip(where, "query without text", f"query_id={query_id}")
        if not self._text_ok(where, "query", text, MAX_QUERY_CHARS, f"query_id={query_id}"):
            return False
        if query_id in self._queries:
            return self.skip(where, "duplicate query id", f"query_id={query_id}")
        self._queries[query_id] = Query(query_id=query_id, text=text, kind=kind)
        return True

    def add_judgment(self, where: str, *, query_id, product_id, grade) -> bool:
        query_id, product_id = _clean(query_id), _clean(product_id)
        try:
            grade = float(grade)
        except (TypeError, ValueError):
            return self.skip(where, "grade not a number", f"grade={grade!r}")
        if not self.scale.contains(grade):
            return self.skip(where, "grade outside scale",
                             f"grade={grade} not in [{self.scale.grade_min}, {self.scale.grade_max}]")
        if query_id not in self._queries:
            return self.skip(where, "judgment of unknown query", f"query_id={query_id}")
        if product_id not in self._product_ids:
            return self.skip(where, "judgment of unknown product", f"product_id={product_id}")
        if product_id in self._judgments[query_id]:
            return self.skip(where, "duplicate judgment", f"query_id={query_id} product_id={product_id}")
        self._judgments[query_id][product_id] = grade
        return True

    def _text_ok(self, where: str, what: str, text: str, limit: int, label: str, *,
                 one_line: bool = True) -> bool:
        """Skips (returns False) a text with a line break, where it must be one line, or too long."""
        if one_line and (brk := _LINE_BREAK.search(text)):
            return self.skip(where, f"{what} with a line break",
                             f"{label}: {brk.group()!r} at character {brk.start() + 1}")
        if len(text) > limit:
            return self.skip(where, f"{what} too long",
                             f"{label}: {len(text):,} characters, the limit is {limit:,}")
        return True

    def build(self, split_config: SplitConfig = SplitConfig()) -> Catalog:
        if not self._products:
            raise CatalogError(f"{self.report.source}: no valid products\n{self.report.summary()}")
        judgments = {q: j for q, j in self._judgments.items() if j}
        self.report.kept.update(products=len(self._products), queries=len(self._queries),
                                judgments=sum(len(j) for j in judgments.values()))
        return Catalog(name=self.name, scale=self.scale, products=self._products,
                       queries=list(self._queries.values()), judgments=judgments,
                       report=self.report, split_config=split_config)


def _clean(value) -> str:
    """A field as stripped text; None and NaN (missing cells in parquet and CSV) become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()
