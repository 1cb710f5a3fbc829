"""Where the brand goes: what each system writes for the synthetic catalog's brand queries.

    python -m tools.brand_copies --results=runs/demo --systems=teacher,warmup,grpo

A brand query ("weavecraft throw pillow") is judged by the brand: another brand's pillow is a
substitute (grade 2), not a match, so an expansion that swaps the brand retrieves the wrong
products and one that drops it retrieves them mixed in. Reads an evaluation's answers.jsonl
(experiments.evaluate on a synthetic catalog) and counts, over the valid expansions of every
brand query, the share that holds the query's brand, only other brands, or no brand at all,
matched as whole words against the generator's brand tables (data/synthetic_vocab.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from absl import app, flags

from leser_jax import evaluation
from leser_jax.data import synthetic_vocab

flags.DEFINE_string("results", None, "An evaluation's output folder (experiments.evaluate --out).",
                    required=True)
flags.DEFINE_list("systems", [], "Systems to count, in order (default: every system).")
FLAGS = flags.FLAGS

OUTCOMES = ("query brand", "other brand", "no brand")


def brand_names() -> tuple[str, ...]:
    """Every brand of the synthetic catalog, lower-cased (attribute 0 of each category)."""
    return tuple(sorted({b.lower() for c in synthetic_vocab.CATEGORIES
                         for b in c.attributes[0][1]}))


def brands_in(text: str, names: Sequence[str]) -> set[str]:
    """The brands that occur in `text` as whole words ("linden home" but not "lindenhome")."""
    padded = " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "
    return {b for b in names if f" {b} " in padded}


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
                found = brands_in(expansion, names)
                counts[s][OUTCOMES[0] if found & wanted else OUTCOMES[1] if found
                          else OUTCOMES[2]] += 1
    out = {}
    for s, c in counts.items():
        n = sum(c.values())
        out[s] = {"expansions": n, **{k: v / n if n else float("nan") for k, v in c.items()}}
    return out


def table(copies: Mapping[str, Mapping]) -> str:
    lines = ["| system | expansions | " + " | ".join(OUTCOMES) + " |",
             "|---|---|" + "---|" * len(OUTCOMES)]
    for s, v in copies.items():
        lines.append(f"| {s} | {v['expansions']} | "
                     + " | ".join(f"{v[k]:.0%}" for k in OUTCOMES) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    rows = evaluation.read_answers(FLAGS.results)
    present = list(rows[0]["systems"]) if rows else []
    systems = FLAGS.systems or present
    unknown = [s for s in systems if s not in present]
    if unknown:
        raise app.UsageError(f"not in {FLAGS.results}: {', '.join(unknown)}; it has "
                             f"{', '.join(present)}")
    print(table(brand_copies(rows, systems, brand_names())))


if __name__ == "__main__":
    app.run(main)
