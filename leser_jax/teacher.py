"""The warm-up's teacher: expansions chosen with the search engine, and a reasoning that names
where they came from.

LESER warms the policy up on expansions written by GPT-4.1 before GRPO, so that the answer
format is stable when RL starts. We have no external LLM on a CPU, so the teacher here is
search-guided, and it optimises the very reward that GRPO will (reward.py), measured with the
relevance model, never with the human judgments (those stay for evaluation):

1. Context. `context.build_context(q)`: the top-k products of q, as the policy will see them.
2. Candidates (`propose`). The query's head terms are its words that at least `head_share` of
   the context titles contain ("office chair" for "navy mesh office chair"). Candidates are the
   context's attribute values and title n-grams (2..max_ngram words) that add a word the query
   lacks, each joined with the head terms it lacks: "lumbar support" -> "lumbar support office
   chair" (with `whole_query`, also with every query word it lacks); plus the head terms alone
   (a broader search). They are ranked by how many context items contain them; the first
   `max_candidates` distinct word sets are kept.
3. Greedy choice (`Teacher.examples`). Start from Y = {}; each round measures Y + [c] for every
   remaining candidate c with `RewardFunction` (the same parse and the same reward as GRPO) and
   adds the best c while the reward improves by more than `min_gain`, up to m_max expansions
   (or `max_expansions`); with `distinct_starts`, only candidates whose first word no chosen
   expansion starts with are eligible.
   The first round always adds one (an answer needs one), so the chosen set's reward is at least
   the best single candidate's.
   With `answers_per_query` = K > 1 the greedy runs K times (`Teacher.example_sets`), each time
   without the first choices of the runs before it, so each answer is built around a different
   best candidate; an alternative is kept if its reward is at least `alternative_share` of the
   best answer's. LESER's warm-up had ~10,000 GPT-4.1 examples; a catalog with 1,575 train
   queries gives 1,575 best answers, and these alternatives are more examples of the same skill.
4. Reasoning: a short sentence that names the head terms and the context attributes and title
   phrases it used, in prompts.render_answer's format. Sources and expansions are listed in the
   order their sources first occur in the context (the reward does not depend on the order; a
   fixed order is easier for a small model to reproduce than the greedy's).

Speed: all queries of a chunk are measured together, one `RewardFunction` call per round, so each
round is one batch of searches through the engine's thread pool and one relevance-model call per
query. The rounds ask for the same candidate texts again, so the engine is wrapped in a per-chunk
cache (`_CachedSearch`): each candidate is searched once.

Examples are JSONL, one {"query", "think", "expansions", "reward"} object a line (`write_examples`);
`read_examples` imports such a file from elsewhere (e.g. a stronger LLM), validating every line
and reporting the bad ones with their line numbers. Departure from the paper: a rule-based,
reward-greedy teacher instead of GPT-4.1; its reasoning is a template, not free text.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from leser_jax.baselines import STOPWORDS
from leser_jax.context import ContextConfig, ContextItem, build_context
from leser_jax.prompts import AnswerFormat, ParsedAnswer, parse_answer, render_answer
from leser_jax.reward import RewardConfig, RewardFunction, SearchFeedback
from leser_jax.search import SearchEngine

_WORD = re.compile(r"[a-z0-9]+")
_TAG = re.compile(r"</?(?:think|answer)>")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """Attributes:
      max_candidates: candidate expansions per query (the greedy search measures each round).
      max_ngram: longest title n-gram proposed, in words.
      head_share: a query word is a head term if at least this share of context titles has it.
      max_head_terms: head terms kept (those in the most titles).
      min_gain: a round adds its best candidate only if the reward grows by more than this.
      max_expansions: most expansions chosen (None = the answer format's m_max); fewer make
        shorter answers, which the warm-up learns faster.
      whole_query: also join each phrase with every query word it lacks, not only the head terms
        ("memory foam rug underlay 1 4 in weavecraft"): the query kept whole and a context phrase
        added, as RM3 adds terms, which finds more on long, specific queries.
      distinct_starts: chosen expansions begin with different words. A small model trained on
        "saw by brackwell circular", "saw by ironclad circular" learns lists of near-copies and,
        sampling at T = 0.9, repeats one (parse_answer rejects duplicates: reward 0); lists whose
        items start differently teach it to start each new one afresh.
      head_join: join each phrase with the head terms. False with `whole_query`: with the whole
        query only, so that every expansion keeps the query whole and the policy never has to
        guess which form the teacher chose.
      name_join: the reasoning marks each context source with what its phrase was joined with,
        "+ head" (the head terms named after "results:") or "+ query" (every query word), so the
        policy decides the form in its reasoning before it writes the expansion.
      answers_per_query: answers written per query by `example_sets`: the best, then up to K - 1
        alternatives (module docstring, step 3). `examples` and evaluation use the best alone.
      alternative_share: an alternative is kept if its reward is at least this share of the
        best answer's.
      chunk_queries: queries measured together (one RewardFunction call per round).
    """

    max_candidates: int = 16
    max_ngram: int = 3
    head_share: float = 0.5
    max_head_terms: int = 3
    min_gain: float = 1e-3
    max_expansions: int | None = None
    whole_query: bool = False
    head_join: bool = True
    name_join: bool = False
    distinct_starts: bool = True
    answers_per_query: int = 1
    alternative_share: float = 0.9
    chunk_queries: int = 128

    def __post_init__(self):
        if min(self.max_candidates, self.max_ngram, self.max_head_terms, self.answers_per_query,
               self.chunk_queries) < 1:
            raise ValueError("max_candidates, max_ngram, max_head_terms, answers_per_query and "
                             "chunk_queries must be >= 1")
        if not (self.head_join or self.whole_query):
            raise ValueError("head_join=False needs whole_query=True (a phrase must be joined "
                             "with something)")
        if not 0 <= self.alternative_share <= 1:
            raise ValueError(f"alternative_share must be in [0, 1], got {self.alternative_share}")
        if not 0 < self.head_share <= 1:
            raise ValueError(f"head_share must be in (0, 1], got {self.head_share}")
        if self.min_gain < 0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain}")
        if self.max_expansions is not None and self.max_expansions < 1:
            raise ValueError(f"max_expansions must be >= 1, got {self.max_expansions}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    text: str  # the expansion, e.g. "lumbar support office chair"
    source: str  # what in the context it came from, e.g. 'features: lumbar support'
    order: int = -1  # where its source first occurs in the context (-1: the head terms alone)
    join: str = ""  # what the phrase was joined with: "head", "query" ("": the head terms alone)


@dataclasses.dataclass(frozen=True)
class TeacherExample:
    """One warm-up target: the completion for `query` is render_answer(think, expansions)."""

    query: str
    think: str
    expansions: tuple[str, ...]
    reward: float | None = None  # the reward the teacher reached (None for imported examples)

    @property
    def answer(self) -> str:
        return render_answer(self.think, self.expansions)

    def to_json(self) -> str:
        return json.dumps({"query": self.query, "think": self.think,
                           "expansions": list(self.expansions), "reward": self.reward},
                          ensure_ascii=False)


def head_terms(query: str, context: Sequence[ContextItem], share: float, limit: int) -> list[str]:
    """The query's words that at least `share` of the context titles contain: at most `limit`,
    those in the most titles (ties: the later word, as English puts the head noun last), in
    query order."""
    titles = [set(words(item.title)) for item in context]
    qwords = list(dict.fromkeys(words(query)))
    if not titles:
        return []
    counts = {w: sum(w in t for t in titles) for w in qwords}
    common = [i for i, w in enumerate(qwords) if counts[w] >= share * len(titles)]
    keep = sorted(sorted(common, key=lambda i: (-counts[qwords[i]], -i))[:limit])
    return [qwords[i] for i in keep]


def propose(query: str, context: Sequence[ContextItem], config: TeacherConfig = TeacherConfig()
            ) -> tuple[list[str], list[Candidate]]:
    """(head terms, candidates, most frequent in the context first); see the module docstring."""
    qwords = set(words(query))
    head = head_terms(query, context, config.head_share, config.max_head_terms)
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    # phrase (its words) -> (its text, where it came from); insertion order is context order.
    found: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(phrase: tuple[str, ...], text: str, source: str, seen: set) -> None:
        if not phrase or phrase in seen or set(phrase) <= qwords:
            return
        seen.add(phrase)
        counts[phrase] += 1
        found.setdefault(phrase, (text, source))

    for item in context:
        seen: set[tuple[str, ...]] = set()
        for name, value in item.attributes:  # the value as written: "1/4 in nap", not "1 4 in nap"
            add(tuple(words(value)), " ".join(value.lower().split()), f"{name}: {value}", seen)
        title = words(item.title)
        for n in range(2, config.max_ngram + 1):
            for i in range(len(title) - n + 1):
                gram = tuple(title[i:i + n])
                if gram[0] in STOPWORDS or gram[-1] in STOPWORDS or gram[-1].isdigit():
                    continue
                add(gram, " ".join(gram), f"title: {' '.join(gram)}", seen)
    seen_at = {phrase: i for i, phrase in enumerate(found)}
    ranked = sorted(found, key=lambda p: -counts[p])  # stable: first seen wins ties
    candidates, kept = [], set()
    if head and set(head) != qwords:
        candidates.append(Candidate(" ".join(head), f"common words: {' '.join(head)}"))
        kept.add(frozenset(head))
    # What each phrase is joined with: the head terms, and with whole_query the query itself.
    joins = [("head", head)] if config.head_join else []
    if config.whole_query:
        joins.append(("query", list(dict.fromkeys(words(query)))))
    for phrase in ranked:
        text, source = found[phrase]
        for name, join in joins:
            added = [w for w in join if w not in phrase]
            key = frozenset(phrase + tuple(added))
            if key in kept or key == qwords:
                continue
            kept.add(key)
            candidates.append(Candidate(" ".join([text, *added]), source, seen_at[phrase], name))
            if len(candidates) == config.max_candidates:
                return head, candidates
    return head, candidates


def reasoning(head: Sequence[str], chosen: Sequence[Candidate], name_join: bool = False) -> str:
    """The think text: names the head terms and every context attribute or phrase used, e.g.
    "results: office chair. context: features: lumbar support; title: mesh task chair." (a
    fixed, short template: a small model learns it in a few hundred examples). With
    `name_join`, each source says what its phrase was joined with: "features: lumbar support +
    head; title: mesh task chair + query"."""
    what = f"results: {' '.join(head)}." if head else "results: mixed."
    used = [f"{c.source} + {c.join}" if name_join and c.join else c.source for c in chosen]
    return f"{what} context: {'; '.join(used)}."


class _CachedSearch:
    """The engine with `search_many` memoised by (text, k): greedy rounds search the same
    candidate texts again. Everything else is the engine's."""

    def __init__(self, engine: SearchEngine):
        self._engine = engine
        self._cache: dict[tuple[str, int], object] = {}

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def search_many(self, texts: list[str], k: int = 40):
        missing = [t for t in dict.fromkeys(texts) if (t, k) not in self._cache]
        for t, hits in zip(missing, self._engine.search_many(missing, k)):
            self._cache[(t, k)] = hits
        return [self._cache[(t, k)] for t in texts]


class Teacher:
    """Search-guided teacher (module docstring). Also an evaluation system: `teacher(queries)`
    returns a ParsedAnswer per query, like the baselines."""

    def __init__(self, engine: SearchEngine, relevance, *,
                 context: ContextConfig = ContextConfig(), reward: RewardConfig = RewardConfig(),
                 config: TeacherConfig = TeacherConfig()):
        self.engine = engine
        self.relevance = relevance
        self.context_config = context
        self.reward_config = reward
        self.config = config
        self.num_searches = 0

    @property
    def m_max(self) -> int:
        m_max = self.reward_config.answer.m_max
        return min(m_max, self.config.max_expansions or m_max)

    def examples(self, queries: Sequence[str], progress=None) -> list[TeacherExample | None]:
        """The best example per query (None when its context gives no candidate), in query order.

        progress: optional callable(n) told how many queries each chunk finished (a tqdm.update).
        """
        return [s[0] if s else None for s in self._sets(queries, 1, progress)]

    def example_sets(self, queries: Sequence[str], progress=None) -> list[list[TeacherExample]]:
        """Per query, the best example and then its alternatives (at most `answers_per_query` in
        all; empty when the context gives no candidate), in query order."""
        return self._sets(queries, self.config.answers_per_query, progress)

    def __call__(self, queries: Sequence[str]) -> list[ParsedAnswer]:
        return [ParsedAnswer(expansions=e.expansions, think=e.think) if e else ParsedAnswer()
                for e in self.examples(queries)]

    def _sets(self, queries: Sequence[str], answers: int, progress) -> list[list[TeacherExample]]:
        out: list[list[TeacherExample]] = []
        step = self.config.chunk_queries
        for start in range(0, len(queries), step):
            out.extend(self._chunk(list(queries[start:start + step]), answers))
            if progress:
                progress(len(queries[start:start + step]))
        return out

    def _may_add(self, candidates: Sequence[Candidate], chosen: Sequence[int], c: int) -> bool:
        if not self.config.distinct_starts:
            return True
        first = words(candidates[c].text)[:1]
        return all(words(candidates[j].text)[:1] != first for j in chosen)

    def _chunk(self, queries: list[str], answers: int) -> list[list[TeacherExample]]:
        feedback = SearchFeedback(_CachedSearch(self.engine), self.relevance, self.reward_config)
        reward_fn = RewardFunction(feedback)
        proposals = [propose(q, build_context(q, self.engine, self.context_config), self.config)
                     for q in queries]
        sets: list[list[TeacherExample]] = [[] for _ in queries]
        banned: list[set[int]] = [set() for _ in queries]
        for k in range(answers):
            # Alternatives only for queries that have a best answer.
            todo = [i for i, (_, cands) in enumerate(proposals) if cands and (sets[i] or not k)]
            found = self._greedy([queries[i] for i in todo], [proposals[i][1] for i in todo],
                                 [banned[i] for i in todo], reward_fn)
            for i, (picks, r) in zip(todo, found):
                if not picks or r <= 0:  # none that makes a valid answer
                    continue
                banned[i].add(picks[0])  # the next run does without this run's first choice
                if k and r < self.config.alternative_share * sets[i][0].reward:
                    continue
                head, cands = proposals[i]
                # In context order, not in the order the greedy found them: the reward does not
                # depend on the order, and a model copying them learns to walk down the context.
                used = sorted((cands[j] for j in picks), key=lambda c: c.order)
                think = reasoning(head, used, self.config.name_join)
                sets[i].append(TeacherExample(query=queries[i], think=think,
                                              expansions=tuple(c.text for c in used),
                                              reward=float(r)))
        self.num_searches += feedback.num_searches
        return sets

    def _greedy(self, queries: list[str], candidates: list[list[Candidate]],
                banned: list[set[int]], reward_fn: RewardFunction) -> list[tuple[list[int], float]]:
        """Step 3 for every query at once: (the candidates chosen, in the order chosen; the
        reward they reach), never choosing a banned one."""
        chosen: list[list[int]] = [[] for _ in queries]
        best = [-math.inf] * len(queries)
        active = list(range(len(queries)))
        for _ in range(self.m_max):
            pairs = [(i, c) for i in active for c in range(len(candidates[i]))
                     if c not in chosen[i] and c not in banned[i]
                     and self._may_add(candidates[i], chosen[i], c)]
            if not pairs:
                break
            completions = [render_answer("", [candidates[i][j].text for j in chosen[i] + [c]])
                           for i, c in pairs]
            rewards = [r.reward for r in reward_fn([queries[i] for i, _ in pairs], completions)]
            round_best: dict[int, tuple[float, int]] = {}
            for (i, c), r in zip(pairs, rewards):
                if i not in round_best or r > round_best[i][0]:  # ties: the more frequent one
                    round_best[i] = (r, c)
            still = []
            for i in active:
                if i not in round_best:
                    continue
                r, c = round_best[i]
                if not chosen[i] or r > best[i] + self.config.min_gain:
                    chosen[i].append(c)
                    best[i] = r
                    still.append(i)
            active = still
        return list(zip(chosen, best))


# ----------------------------------------------------------------------------- files

def write_examples(path: str | os.PathLike, examples: Iterable[TeacherExample]) -> int:
    """Writes JSONL atomically (a temporary file, then rename); returns the number of lines."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    n = 0
    with open(tmp, "w") as f:
        for e in examples:
            f.write(e.to_json() + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


@dataclasses.dataclass
class ImportReport:
    """What `read_examples` kept, and every bad line with its number and reason."""

    path: str
    kept: int = 0
    bad: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def summary(self, show: int = 10) -> str:
        lines = [f"{self.path}: {self.kept:,} examples kept, {len(self.bad):,} bad lines"]
        lines += [f"  line {n}: {why}" for n, why in self.bad[:show]]
        if len(self.bad) > show:
            lines.append(f"  ... and {len(self.bad) - show:,} more")
        return "\n".join(lines)


def _validate(obj, fmt: AnswerFormat, exclude: set[str]) -> TeacherExample:
    """The example a JSONL object holds; ValueError saying what is wrong otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    missing = [k for k in ("query", "think", "expansions") if k not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    query, think, expansions = obj["query"], obj["think"], obj["expansions"]
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query is not a non-empty string")
    if query in exclude:
        raise ValueError(f"query {query!r} is in the dev or test split")
    if not isinstance(think, str):
        raise ValueError("think is not a string")
    if _TAG.search(think) or _TAG.search(query):
        raise ValueError("think or query contains a <think>/<answer> tag")
    if not isinstance(expansions, list):
        raise ValueError("expansions is not a list")
    parsed = parse_answer(render_answer(think, expansions), fmt)
    if not parsed.valid:
        raise ValueError(f"the answer does not parse: {parsed.reason}")
    reward = obj.get("reward")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))
                               or not math.isfinite(reward)):
        raise ValueError("reward is not a finite number")
    return TeacherExample(query=query, think=think.strip(), expansions=parsed.expansions,
                          reward=None if reward is None else float(reward))


def read_examples(path: str | os.PathLike, fmt: AnswerFormat = AnswerFormat(), *,
                  exclude_queries: Iterable[str] = ()) -> tuple[list[TeacherExample], ImportReport]:
    """Reads teacher JSONL (ours or external), validating every line: valid JSON object with a
    non-empty query, a think string without tags, and expansions that make an answer
    `parse_answer` accepts; a query in `exclude_queries` (dev/test) is a bad line too. Blank
    lines are skipped. Bad lines are counted in the report with their line numbers."""
    report = ImportReport(os.fspath(path))
    exclude = set(exclude_queries)
    examples = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                examples.append(_validate(json.loads(line), fmt, exclude))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                report.bad.append((n, str(e)))
    report.kept = len(examples)
    return examples, report


def mean_reward(examples: Sequence[TeacherExample]) -> float:
    rewards = [e.reward for e in examples if e.reward is not None]
    return float(np.mean(rewards)) if rewards else float("nan")
