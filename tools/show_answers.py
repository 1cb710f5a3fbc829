"""What the policies wrote, by query kind: the diagnosis beside an evaluation's numbers.

    python -m tools.show_answers --results=runs/demo --systems=warmup,grpo,teacher --per_kind=3

Reads an evaluation's output folder (experiments.evaluate: results.json and answers.jsonl) and
prints, for every query kind and for all queries together:
- each system's mean gain over the original query in judged recall, and its share of the
  teacher's gain (the warm-up's target: issue 21 asks for 75%, RM3's share is the bar to beat);
- a few queries with each system's expansions and the judged recall they reached. `--order=differ`
  picks the queries on which the first two systems differ most (where a change of policy
  showed), `first` the first ones evaluated;
- with `--brands` (synthetic catalog only), where the brand goes. A brand query ("weavecraft
  throw pillow") is judged by the brand: another brand's pillow is a substitute (grade 2), so an
  expansion that swaps the brand retrieves the wrong products and one that drops it retrieves them
  mixed in. Over the valid expansions of every brand query: the share that holds the query's
  brand, only other brands, or no brand, matched as whole words against the generator's brand
  tables (data/synthetic_vocab.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags

from leser_jax import evaluation
from leser_jax.data import synthetic_vocab

flags.DEFINE_string("results", None, "An evaluation's output folder (experiments.evaluate --out).",
                    required=True)
flags.DEFINE_list("systems", [], "Systems to show, in order (default: every system).")
flags.DEFINE_string("metric", "judged_recall", "The metric of the share table.")
flags.DEFINE_integer("per_kind", 3, "Queries shown per kind (0: the share table only).",
                     lower_bound=0)
flags.DEFINE_enum("order", "differ", ["differ", "first"], "Which queries are shown: where the "
                  "first two systems differ most in judged recall, or the first evaluated.")
flags.DEFINE_bool("brands", False, "Also count where the brand of each brand query goes "
                  "(synthetic catalog only): kept, swapped for another, dropped.")
FLAGS = flags.FLAGS


def _mean(cell) -> float:
    return cell["mean"] if isinstance(cell, Mapping) else float("nan")


def kind_shares(results: Mapping, systems: Sequence[str], *, metric: str = "judged_recall",
                base: str = "original", target: str = "teacher") -> dict[str, dict]:
    """{kind: {"queries": n, "gain": {system: mean minus base}, "share": {system: gain / the
    target's gain}}}, kind "all" first, from results.json's systems and by_kind (means; the
    paired intervals are in results.md)."""
    everything = results.get("queries", results["systems"][base][metric]["n"])
    groups = {"all": (everything, results["systems"])}
    groups.update({kind: (v["queries"], v["systems"])
                   for kind, v in results.get("by_kind", {}).items()})
    out = {}
    for kind, (n, by_system) in groups.items():
        gain = {s: _mean(by_system[s][metric]) - _mean(by_system[base][metric])
                for s in systems if s in by_system}
        reach = gain.get(target, float("nan"))
        share = {s: g / reach if reach > 0 else float("nan") for s, g in gain.items()}
        out[kind] = {"queries": n, "gain": gain, "share": share}
    return out


def pick(rows: Sequence[Mapping], systems: Sequence[str], per_kind: int, order: str
         ) -> dict[str, list[Mapping]]:
    """Up to `per_kind` rows of each kind: the first ones, or those where systems[0] and
    systems[1] differ most in judged recall (ties in evaluated order)."""
    by_kind: dict[str, list[Mapping]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"] or "all", []).append(row)
    if order == "differ" and len(systems) >= 2:
        a, b = systems[:2]

        def gap(row):
            x, y = row["systems"][a]["judged_recall"], row["systems"][b]["judged_recall"]
            return -abs(x - y) if x is not None and y is not None else 0.0

        by_kind = {k: sorted(v, key=gap) for k, v in by_kind.items()}
    return {k: v[:per_kind] for k, v in sorted(by_kind.items())}


def share_table(shares: Mapping[str, Mapping], systems: Sequence[str], metric: str) -> str:
    lines = [f"{metric} minus the original query's (share of the teacher's gain):", "",
             "| kind | queries | " + " | ".join(systems) + " |",
             "|---|---|" + "---|" * len(systems)]
    for kind, v in shares.items():
        cells = [f"{v['gain'][s]:+.3f} ({v['share'][s]:.0%})"
                 if np.isfinite(v['share'].get(s, np.nan)) else f"{v['gain'].get(s, np.nan):+.3f}"
                 for s in systems]
        lines.append(f"| {kind} | {v['queries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show_rows(picked: Mapping[str, Sequence[Mapping]], systems: Sequence[str]) -> str:
    width = max(len(s) for s in systems)
    lines = []
    for kind, rows in picked.items():
        lines.append(f"\n## {kind}")
        for row in rows:
            lines.append(f"\n{row['query']!r}")
            for s in systems:
                a = row["systems"][s]
                recall = a["judged_recall"]
                what = (", ".join(repr(y) for y in a["expansions"]) or "(none)") + (
                    f"  [rejected: {a['reason']}]" if a["reason"] else "")
                lines.append(f"  {s:<{width}}  "
                             f"{'  -  ' if recall is None else f'{recall:.3f}'}  {what}")
    return "\n".join(lines)


OUTCOMES = ("query brand", "other brand", "no brand")


def brand_names() -> tuple[str, ...]:
    """Every brand of the synthetic catalog, lower-cased (attribute 0 of each category)."""
    return tuple(sorted({b.lower() for c in synthetic_vocab.CATEGORIES
                         for b in c.attributes[0][1]}))


def brands_in(text: str, names: Sequence[str]) -> set[str]:
    """The brands that occur in `text` as whole words ("linden home" but not "lindenhome")."""
    padded = " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "
    return {b for b in names if f" {b} " in padded}


def brand_outcome(wanted: set[str], found: set[str]) -> str:
    """One of OUTCOMES for an expansion naming brands `found`, of a query naming `wanted`."""
    if found & wanted:
        return "query brand"
    return "other brand" if found else "no brand"


def brand_copies(rows: Sequence[Mapping], systems: Sequence[str], names: Sequence[str]
                 ) -> dict[str, dict]:
    """{system: {"expansions": n, outcome: share of the n}} over the brand queries' valid
    expansions (a query whose text names no known brand is skipped)."""
    counts = {s: dict.fromkeys(OUTCOMES, 0) for s in systems}
    for row in rows:
        wanted = brands_in(row["query"], names) if row["kind"] == "brand" else set()
        if not wanted:
            continue
        for s in systems:
            for expansion in row["systems"][s]["expansions"]:
                counts[s][brand_outcome(wanted, brands_in(expansion, names))] += 1
    out = {}
    for s, c in counts.items():
        n = sum(c.values())
        out[s] = {"expansions": n, **{k: v / n if n else float("nan") for k, v in c.items()}}
    return out


def brand_table(copies: Mapping[str, Mapping]) -> str:
    lines = ["| system | expansions | " + " | ".join(OUTCOMES) + " |",
             "|---|---|" + "---|" * len(OUTCOMES)]
    for s, v in copies.items():
        lines.append(f"| {s} | {v['expansions']} | "
                     + " | ".join(f"{v[k]:.0%}" if v["expansions"] else "-" for k in OUTCOMES)
                     + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    results = evaluation.read_results(FLAGS.results)
    systems = FLAGS.systems or list(results["systems"])
    unknown = [s for s in systems if s not in results["systems"]]
    if unknown:
        raise app.UsageError(f"not in {FLAGS.results}: {', '.join(unknown)}; it has "
                             f"{', '.join(results['systems'])}")
    if "original" not in results["systems"]:
        raise app.UsageError("the gains are over the original query: evaluate with "
                             "--baselines=original,teacher")
    # Without the teacher there is no share to give, only the gains (its column would be NaN).
    columns = ["teacher"] * ("teacher" in results["systems"]) + [
        s for s in systems if s not in ("original", "teacher")]
    print(share_table(kind_shares(results, columns, metric=FLAGS.metric), columns, FLAGS.metric))
    rows = evaluation.read_answers(FLAGS.results) if FLAGS.per_kind or FLAGS.brands else []
    if FLAGS.per_kind:
        print(show_rows(pick(rows, systems, FLAGS.per_kind, FLAGS.order), systems))
    if FLAGS.brands:
        copies = brand_copies(rows, systems, brand_names())
        print("\nWhere the brand of a brand query goes (valid expansions):\n")
        print(brand_table(copies))


if __name__ == "__main__":
    app.run(main)
