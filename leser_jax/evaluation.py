"""The evaluation table: every query-expansion system on the same held-out queries, side by side.

The paper's comparison (LESER, arXiv 2509.05570, its results table and the warm-up ablation):
the original query, a pseudo-relevance-feedback baseline, the teacher the warm-up imitates, and
the trained policies (warm-up only, GRPO without warm-up, warm-up + GRPO). Each system is run
through `metrics.evaluate` (relevance and retrieval gain, judged recall, judged nDCG@10,
validity, expansions per answer, all with bootstrap 95% intervals over queries) with one shared
`SearchFeedback`, so every system is measured by the reward's own code on the same searches.

Additions of ours:
- Latency is the system's wall time per query over the calls whose batch size it has already
  seen (`Timed`): a policy compiles its sampler on the first call of each batch shape, and a
  compile is not generation latency. Batches of `batch_size` queries, as a GRPO step would.
- Paired differences (`paired_differences`): the reference system (warm-up + GRPO) minus each
  other one, bootstrapped over the per-query differences. Both systems answer the same queries,
  so this interval, not the overlap of the two per-system intervals, says whether one beats the
  other. Also every system minus the warm-up and minus the original query (`differences`,
  results.json's "against"): what GRPO adds to the warm-up, and what each adds to no expansion.
- Per query kind (synthetic: exact, broad, brand, problem), the same tables again
  (results.json's "by_kind"): expansions exist for the vocabulary gap of problem queries, which
  a mean over all queries hides.

`make_systems` builds the side-by-side list (the baselines by name, then zero-shot systems, then
policy checkpoints, each checked to have been trained with the context it will be shown). A
zero-shot system is a model that was never fine-tuned (the converted SmolLM2-135M-Instruct, a GGUF
file or its converted directory) given the LESER prompt in its chat template, usually after k
worked examples (sft.few_shot_turns): its validity is the paper's format check before warm-up,
and the system is our stand-in for the paper's prompted-LLM baseline. `results_dict` is what
results.json holds; `markdown` renders it (so a table can be re-printed from results.json
alone); `write_results` writes both.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from flax import nnx

from leser_jax import checkpoint
from leser_jax.baselines import RM3Config, RM3Expansion, no_expansion
from leser_jax.catalog import Catalog, Query
from leser_jax.context import ContextConfig
from leser_jax.metrics import Estimate, Evaluation, System, bootstrap, evaluate
from leser_jax.policy import PolicySystem, Reparsed, load_policy
from leser_jax.prompts import AnswerFormat, ExampleTurn, ParsedAnswer
from leser_jax.reward import Relevance, RewardConfig, SearchFeedback
from leser_jax.sampler import SamplingConfig
from leser_jax.search import SearchEngine
from leser_jax.teacher import Teacher, TeacherConfig

# (metric, column title, signed): the table's columns in order; gains are signed.
COLUMNS = (("relevance_gain", "relevance gain", True), ("retrieval_gain", "retrieval gain", True),
           ("judged_recall", "judged recall", False), ("ndcg10", "nDCG@10", False),
           ("validity", "validity", False), ("n_expansions", "expansions", False),
           ("retrieved", "products", False), ("searches", "searches", False))
PAIRED = ("relevance_gain", "retrieval_gain", "judged_recall", "ndcg10")
AGAINST = ("warmup", "rm3", "original")  # every system minus these, paired, where evaluated
BASELINES = ("original", "rm3", "teacher")


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run directory of a policy: DIR itself, or DIR's parent when DIR is RUN/params."""
    path = Path(path)
    return path.parent if path.name == "params" and not (path / "checkpoints").is_dir() else path


def trained_configs(path: str | os.PathLike) -> dict:
    """The configs in the newest readable checkpoint of the policy's run ({} if there is none:
    pretrained or converted weights were never shown a prompt)."""
    for _, ckpt in reversed(checkpoint.list_checkpoints(run_dir_of(path))):
        try:
            return checkpoint.checkpoint_configs(ckpt)
        except (OSError, ValueError):
            continue
    return {}


def trained_context(path: str | os.PathLike) -> dict | None:
    """The context config the policy's run recorded (None if it records none)."""
    return trained_configs(path).get("context")


def trained_examples(path: str | os.PathLike) -> tuple[ExampleTurn, ...]:
    """The worked examples the policy's GRPO run showed before every prompt (experiments.grpo
    --few_shot; none for the rest)."""
    return tuple(ExampleTurn(**e) for e in trained_configs(path).get("few_shot") or ())


def make_systems(baselines: Sequence[str], policies: Mapping[str, str], engine: SearchEngine,
                 relevance: Relevance, *, context: ContextConfig, reward: RewardConfig,
                 teacher: TeacherConfig = TeacherConfig(), rm3: RM3Config = RM3Config(),
                 max_new_tokens: int = 96, temperature: float = 0.0,
                 zero_shot: Mapping[str, str] = {},
                 examples: Sequence[ExampleTurn] = (),
                 recorded: Mapping[str, Recorded] = {},
                 drop_duplicates: bool = False) -> dict[str, System]:
    """{name: system}: the named `baselines` (of BASELINES) in that order, then each zero-shot
    model {name: GGUF file or params checkpoint} with the worked `examples` before every query,
    then the `recorded` systems (answers replayed from an earlier evaluation, which has no
    completions to re-parse: no +dedup twin), then each policy {name: params checkpoint or its
    run dir}; all decode greedily
    (temperature 0) or sample at `temperature` (GRPO optimises the T = 0.9 distribution; its
    greedy answers can differ in kind, e.g. repeat one expansion, which parse_answer rejects).
    A policy is shown the prompt it was trained on: with the worked examples its GRPO run showed
    (`trained_examples`), if any. drop_duplicates: each model's system is followed by NAME+dedup,
    its same completions with repeated expansions dropped instead of rejected (policy.Reparsed).

    ValueError for an unknown baseline, a name used twice, or a policy whose run recorded
    another context than `context` (it would be shown a prompt it never learnt to read).
    """
    known = {"original": lambda: no_expansion, "rm3": lambda: RM3Expansion(engine, rm3),
             "teacher": lambda: Teacher(engine, relevance, context=context, reward=reward,
                                        config=teacher)}
    unknown = [b for b in baselines if b not in known]
    names = [*baselines, *zero_shot, *recorded, *policies]
    taken = sorted({n for n in names if names.count(n) > 1})
    if unknown or taken:
        raise ValueError(f"unknown baselines {unknown} (known: {BASELINES}) or system names "
                         f"used twice {taken}")
    systems = {name: known[name]() for name in baselines}
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens)
    for name, path in zero_shot.items():
        model, _, tokenizer = load_policy(path)
        graphdef, params = nnx.split(model)
        systems[name] = PolicySystem(graphdef, params, tokenizer, engine, context=context,
                                     sampling=sampling, examples=examples)
    systems.update(recorded)
    for name, path in policies.items():
        systems[name] = policy_system(path, engine, context=context, sampling=sampling,
                                      name=name)
    if drop_duplicates:
        lenient = AnswerFormat(drop_duplicates=True)
        with_twins = {}
        for name, system in systems.items():
            with_twins[name] = system
            if isinstance(system, PolicySystem):
                with_twins[f"{name}+dedup"] = Reparsed(system, lenient)
        systems = with_twins
    return systems


def policy_system(path: str | os.PathLike, engine: SearchEngine, *, context: ContextConfig,
                  sampling: SamplingConfig, answer: AnswerFormat = AnswerFormat(),
                  seed: int = 0, batch_buckets: tuple[int, ...] = (8, 16, 32, 64),
                  name: str = "policy") -> PolicySystem:
    """A trained policy (a params checkpoint or its run dir) as a PolicySystem, shown the prompt
    it was trained on: `context`, checked against what its run recorded (ValueError if another),
    and the worked examples of its GRPO run (`trained_examples`). Evaluation, the expansion
    cache (experiments.expand) and the search service load policies through here."""
    trained = trained_context(path)
    if trained is not None and trained != dataclasses.asdict(context):
        raise ValueError(f"policy {name} ({path}) was trained with context {trained}, not "
                         f"{dataclasses.asdict(context)}")
    model, _, tokenizer = checkpoint.load_init(path)
    graphdef, params = nnx.split(model)
    return PolicySystem(graphdef, params, tokenizer, engine, context=context, answer=answer,
                        sampling=sampling, seed=seed, batch_buckets=batch_buckets,
                        examples=trained_examples(path))


class Recorded:
    """A system's answers from an earlier evaluation's answers.jsonl, replayed (`read_recorded`):
    the same expansions measured again by this run's searches, relevance model and judgments,
    with no decoding. A GRPO seed evaluated on its own joins the other seeds' table this way
    (a SmolLM2 policy decodes 220 queries in minutes on 2 cores), and recorded answers can be
    scored under another reward. Its latency would be a lookup's, so `evaluate_systems` leaves
    it out."""

    def __init__(self, answers: Mapping[str, ParsedAnswer],
                 judged_recall: Mapping[str, float | None] = {}):
        self.answers = dict(answers)
        self.judged_recall = dict(judged_recall)  # what each query scored when recorded

    def __call__(self, queries: Sequence[str]) -> list[ParsedAnswer]:
        missing = [q for q in queries if q not in self.answers]
        if missing:
            raise ValueError(f"no recorded answer for {len(missing)} of {len(queries)} queries, "
                             f"e.g. {missing[0]!r}: record the same --split and --num_queries")
        return [self.answers[q] for q in queries]

    def disagreements(self, queries: Sequence[str], judged_recall: np.ndarray) -> int:
        """Queries whose judged recall [Q] now differs from the recorded one: nonzero when this
        run's catalog, index or search depth is not the recorded run's. Queries recorded without
        a score are not compared."""
        def same(then, now):
            return (then is None and math.isnan(now)) or (
                then is not None and math.isclose(then, now, rel_tol=1e-9, abs_tol=1e-12))
        return sum(not same(self.judged_recall[q], float(r))
                   for q, r in zip(queries, judged_recall) if q in self.judged_recall)


def read_recorded(path: str | os.PathLike, system: str) -> Recorded:
    """The answers of `system` in an evaluation's answers.jsonl (`write_answers`; a directory
    holding it, or the file) as a `Recorded` system. ValueError if a row lacks the system, or
    one query text has two different answers (sampled answers to repeated queries)."""
    answers, recall = {}, {}
    for row in read_answers(path):
        s = row["systems"].get(system)
        if s is None:
            raise ValueError(f"{os.fspath(path)} records no system {system!r} for "
                             f"{row['query']!r} (it has {sorted(row['systems'])})")
        answer = ParsedAnswer(expansions=tuple(s["expansions"]), reason=s["reason"])
        if answers.setdefault(row["query"], answer) != answer:
            raise ValueError(f"{os.fspath(path)}: {system} answered {row['query']!r} twice, "
                             "differently")
        if "judged_recall" in s:  # answers written elsewhere (tools.teacher_answers) have none
            recall[row["query"]] = s["judged_recall"]
    return Recorded(answers, recall)


class Timed:
    """A system that records (batch size, seconds) of every call, and why answers were rejected
    (parse_answer's reasons: what a policy gets wrong, not only how often)."""

    def __init__(self, system: System):
        self.system = system
        self.calls: list[tuple[int, float]] = []
        self.reasons: collections.Counter[str] = collections.Counter()

    @property
    def num_searches(self) -> int:
        """The wrapped system's own search count (metrics.evaluate's "searches")."""
        return getattr(self.system, "num_searches", 0)

    def __call__(self, queries: Sequence[str]):
        start = time.perf_counter()
        answers = self.system(queries)
        self.calls.append((len(queries), time.perf_counter() - start))
        self.reasons.update(a.reason for a in answers if not a.valid)
        return answers

    def latency_ms(self) -> float:
        """Milliseconds per query over repeated batch sizes (all calls if none repeats)."""
        calls = steady_calls(self.calls)
        return 1000 * sum(s for _, s in calls) / max(sum(n for n, _ in calls), 1)


def steady_calls(calls: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The (batch size, seconds) calls after the first of each batch size, which compiles the
    sampler; all of them if no size repeats."""
    seen, steady = set(), []
    for size, seconds in calls:
        if size in seen:
            steady.append((size, seconds))
        seen.add(size)
    return steady or list(calls)


def evaluate_systems(systems: Mapping[str, System], queries: Sequence[Query], catalog: Catalog,
                     feedback: SearchFeedback, *, batch_size: int = 32,
                     bootstrap_samples: int = 1000, seed: int = 0,
                     log=print) -> tuple[dict[str, Evaluation], dict[str, dict[str, int]]]:
    """metrics.evaluate for each system on the same queries, with `Timed` latency (NaN for a
    `Recorded` one); also each system's rejection reasons {name: {reason: answers}}."""
    out, reasons = {}, {}
    for name, system in systems.items():
        timed = Timed(system)
        result = evaluate(timed, queries, catalog, feedback, batch_size=batch_size,
                          bootstrap_samples=bootstrap_samples, seed=seed)
        latency = float("nan") if isinstance(system, Recorded) else timed.latency_ms()
        out[name] = dataclasses.replace(result, latency_ms=latency)
        reasons[name] = dict(timed.reasons.most_common())
        m = result.metrics
        speed = "replayed" if math.isnan(latency) else f"{latency:.1f} ms/query"
        log(f"[evaluate] {name}: relevance gain {m['relevance_gain']}, retrieval gain "
            f"{m['retrieval_gain']}, validity {m['validity'].mean:.3f} "
            f"{reasons[name] or ''}, {speed} ({sum(s for _, s in timed.calls):.1f} s)")
    return out, reasons


def paired_differences(evaluations: Mapping[str, Evaluation], reference: str, *,
                       metrics: Sequence[str] = PAIRED, samples: int = 1000,
                       seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """{other system: {metric: mean and 95% interval of reference - other over the queries}}.

    A query left out of a metric (NaN: no judged-relevant product) is left out for both
    systems alike, since it depends on the query's judgments only.
    """
    ref = evaluations[reference].per_query
    return {name: {m: bootstrap(ref[m] - e.per_query[m], samples=samples, seed=seed)
                   for m in metrics}
            for name, e in evaluations.items() if name != reference}


def differences(evaluations: Mapping[str, Evaluation], base: str, *,
                mask: np.ndarray | None = None, metrics: Sequence[str] = PAIRED,
                samples: int = 1000, seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """{other system: {metric: other - base, paired over the queries (those of `mask`)}}."""
    ref = evaluations[base].per_query
    keep = slice(None) if mask is None else mask
    return {name: {m: bootstrap((e.per_query[m] - ref[m])[keep], samples=samples, seed=seed)
                   for m in metrics}
            for name, e in evaluations.items() if name != base}


def _asdict(estimates: Mapping[str, Mapping[str, Estimate]]) -> dict:
    return {name: {m: dataclasses.asdict(e) for m, e in d.items()}
            for name, d in estimates.items()}


def seed_summary(against: Mapping[str, Mapping], group: Sequence[str]) -> dict:
    """Runs of one stage that differ only in their seed (`group`, e.g. grpo, grpo_seed1,
    grpo_seed2), minus each base of `against` ({base: {system: {metric: estimate dict}}}): per
    metric, each seed's paired mean, their mean and range, and how many seeds' 95% intervals lie
    above 0 (one run's table is not evidence: float rounding differs across CPUs, and a short
    run amplifies it)."""
    out = {}
    for base, minus in against.items():
        runs = [minus[name] for name in group if name in minus]
        if len(runs) < 2:
            continue
        out[base] = {}
        for m in PAIRED:
            means = [r[m]["mean"] for r in runs]
            out[base][m] = {"means": means, "mean": float(np.mean(means)), "min": min(means),
                            "max": max(means),
                            "above_0": sum(bool(r[m]["n"]) and r[m]["low"] > 0 for r in runs)}
    return out


def results_dict(evaluations: Mapping[str, Evaluation], *, reference: str | None = None,
                 against: Sequence[str] = AGAINST, seed_group: Sequence[str] = (),
                 reasons: Mapping[str, Mapping[str, int]] = {}, info: Mapping[str, object] = {},
                 bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """What results.json holds: `info` (split, queries, configs), every system's metrics,
    latency and rejection reasons in the order given; the paired differences against
    `reference` if it is one of them ("paired": reference minus each); each system minus each
    system of `against` that is there ("against": the warm-up, RM3 and the original query);
    `seed_summary` of the `seed_group` systems ("seeds"); and the same per query kind where the
    queries have kinds ("by_kind")."""
    opts = dict(samples=bootstrap_samples, seed=seed)
    out = {**info, "systems": {name: {**e.as_dict(), "rejected": dict(reasons.get(name, {}))}
                               for name, e in evaluations.items()}}
    if reference in evaluations and len(evaluations) > 1:
        diffs = paired_differences(evaluations, reference, **opts)
        out["paired"] = {"reference": reference, "minus": _asdict(diffs)}
    bases = [b for b in against if b in evaluations and len(evaluations) > 1]
    if bases:
        out["against"] = {b: _asdict(differences(evaluations, b, **opts)) for b in bases}
        group = [name for name in seed_group if name in evaluations]
        if len(group) > 1:
            out["seeds"] = {"systems": group, "minus": seed_summary(out["against"], group)}
    kinds = next(iter(evaluations.values())).kinds if evaluations else None
    if kinds is not None and any(kinds):
        out["by_kind"] = {}
        for kind in sorted(set(kinds)):
            mask = kinds == kind
            out["by_kind"][kind] = {
                "queries": int(mask.sum()),
                "systems": {name: {m: dataclasses.asdict(bootstrap(v[mask], **opts))
                                   for m, v in e.per_query.items()}
                            for name, e in evaluations.items()},
                "against": {b: _asdict(differences(evaluations, b, mask=mask, **opts))
                            for b in bases}}
    return out


def _cell(e: Mapping[str, float] | None, signed: bool) -> str:
    """One estimate as "mean [low, high]"; n/a if undefined or absent (older results.json)."""
    if e is None or e["mean"] is None or not math.isfinite(e["mean"]):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(e['mean'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def _signed(x: float) -> str:
    """+0.123; a rounding residue such as -1e-17 prints as +0.000, not -0.000."""
    return f"{round(x, 3) + 0.0:+.3f}"


def _systems_table(systems: Mapping[str, Mapping], latency: bool = True) -> list[str]:
    head = "| system | " + " | ".join(title for _, title, _ in COLUMNS)
    lines = [head + (" | ms/query |" if latency else " |"),
             "|---" * (len(COLUMNS) + 1 + latency) + "|"]
    for name, s in systems.items():
        cells = [_cell(s.get(m), signed) for m, _, signed in COLUMNS]
        ms = s.get("latency_ms")  # None or NaN: a recorded system's, never measured
        measured = ms is not None and math.isfinite(ms)
        tail = (f" | {ms:.1f} |" if measured else " | n/a |") if latency else " |"
        lines.append(f"| {name} | " + " | ".join(cells) + tail)
    return lines


def _minus_table(minus: Mapping[str, Mapping]) -> list[str]:
    titles = dict((m, t) for m, t, _ in COLUMNS)
    lines = ["| | " + " | ".join(titles[m] for m in PAIRED) + " |",
             "|---" * (len(PAIRED) + 1) + "|"]
    for name, d in minus.items():
        excludes_0 = {m: d[m]["n"] and (d[m]["low"] > 0 or d[m]["high"] < 0) for m in PAIRED}
        cells = [_cell(d[m], True) + (" *" if excludes_0[m] else "") for m in PAIRED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _against_tables(against: Mapping[str, Mapping]) -> list[str]:
    lines = []
    for base, minus in against.items():
        lines += ["", f"Each system minus {base}, paired:", "", *_minus_table(minus)]
    return lines


def markdown(results: Mapping) -> str:
    """The results tables in markdown, from a `results_dict`: the systems; the reference minus
    each (paired; * = the 95% interval excludes 0); each minus the warm-up and the original
    query; and the same per query kind."""
    lines = []
    if "description" in results:
        lines += [str(results["description"]), ""]
    lines += _systems_table(results["systems"])
    paired = results.get("paired")
    if paired:
        lines += ["", f"{paired['reference']} minus each system, paired over the same queries "
                  "(95% bootstrap interval; * = the interval excludes 0):", "",
                  *_minus_table(paired["minus"])]
    lines += _against_tables(results.get("against", {}))
    seeds = results.get("seeds")
    if seeds:
        titles = dict((m, t) for m, t, _ in COLUMNS)
        n = len(seeds["systems"])
        lines += ["", f"Over {n} seeds ({', '.join(seeds['systems'])}), paired: mean of the "
                  f"seeds' means [min, max]; seeds whose 95% interval is above 0, of {n}:", "",
                  "| minus | " + " | ".join(titles[m] for m in PAIRED) + " |",
                  "|---" * (len(PAIRED) + 1) + "|"]
        for base, d in seeds["minus"].items():
            cells = [f"{_signed(d[m]['mean'])} [{_signed(d[m]['min'])}, "
                     f"{_signed(d[m]['max'])}] ({d[m]['above_0']}/{n})" for m in PAIRED]
            lines.append(f"| {base} | " + " | ".join(cells) + " |")
    for kind, k in results.get("by_kind", {}).items():
        lines += ["", f"### queries of kind {kind!r} ({k['queries']})", "",
                  *_systems_table(k["systems"], latency=False), *_against_tables(k["against"])]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, results: Mapping) -> str:
    """Writes OUT/results.json and OUT/results.md (each atomically); returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    table = markdown(results)
    for name, text in (("results.json", json.dumps(_finite(results), indent=1) + "\n"),
                       ("results.md", table)):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return table


ANSWERS_FILE = "answers.jsonl"


def write_answers(out_dir: str | os.PathLike, queries: Sequence[Query],
                  evaluations: Mapping[str, Evaluation]) -> str:
    """Writes OUT/answers.jsonl (atomically): one line per query, in the evaluated order, with
    its kind and, per system, the expansions, the rejection reason (null if valid), judged
    recall and judged nDCG@10 (null where undefined). What a policy wrote, beside the numbers
    it scored: tools/show_answers.py reads it."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, ANSWERS_FILE)
    with open(path + ".tmp", "w") as f:
        for i, q in enumerate(queries):
            systems = {name: {"expansions": list(e.answers[i].expansions),
                              "reason": e.answers[i].reason,
                              "judged_recall": e.per_query["judged_recall"][i],
                              "ndcg10": e.per_query["ndcg10"][i]}
                       for name, e in evaluations.items()}
            row = {"query": q.text, "kind": q.kind, "systems": systems}
            f.write(json.dumps(_finite(row), ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    return path


def read_answers(path: str | os.PathLike) -> list[dict]:
    """answers.jsonl as written by `write_answers` (a directory holding it, or the file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ANSWERS_FILE)
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite(x):
    """NaN (a metric no query defines) as null: JSON has no NaN."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        return _finite(x.item())
    return x


def read_results(path: str | os.PathLike) -> dict:
    """results.json as written by `write_results` (a directory holding it, or the file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        return json.load(f)


def added_products_summary(rows_by_query, rel_by_query, labels_by_query, tau: float,
                           scale) -> dict:
    """What a set of products per query is, by the relevance model and by the human labels
    (tools/added_products.py, issue 9's reward-hacking check).

    rows_by_query: per query, the catalog rows (e.g. what a system adds beyond S_k(q));
    rel_by_query: their relevance-model scores; labels_by_query: per query {row: grade};
    tau: the hit threshold; scale: the catalog's GradeScale. Returns per_query (rows a query),
    mean_rel, hit_share (rel >= tau), judged_share (rows with a label), judged_relevant (share
    of the judged rows the labels call relevant) and judged_hit (share of the judged rows the
    model calls hits): the last two side by side are the model's precision where labels exist.
    """
    rows = np.concatenate(rows_by_query) if rows_by_query else np.zeros(0, np.int64)
    rel = np.concatenate(rel_by_query) if rel_by_query else np.zeros(0)
    grades = [g for labels, r in zip(labels_by_query, rows_by_query) for g in
              (labels.get(int(x)) for x in r)]
    judged = np.array([g is not None for g in grades], bool)
    relevant = np.array([g is not None and scale.is_relevant(g) for g in grades], bool)
    hit = rel >= tau
    n = max(len(rows), 1)
    return {"per_query": len(rows) / max(len(rows_by_query), 1),
            "mean_rel": float(rel.mean()) if len(rel) else float("nan"),
            "hit_share": hit.sum() / n, "judged_share": judged.sum() / n,
            "judged_relevant": relevant[judged].mean() if judged.any() else float("nan"),
            "judged_hit": hit[judged].mean() if judged.any() else float("nan")}
