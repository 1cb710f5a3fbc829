"""A teacher file as an evaluation's answers.jsonl, one system per answer rank: what the warm-up
imitates, measured on the human judgments by `experiments.evaluate --recorded`.

    python -m experiments.teacher --dataset=synthetic --index=runs/demo/index --relevance=runs/demo/relevance --out=runs/demo/teacher_k3.jsonl --answers_per_query=3
    python -m tools.teacher_answers --teacher_file=runs/demo/teacher_k3.jsonl --out=runs/demo/teacher_k3
    python -m experiments.evaluate --dataset=synthetic --index=runs/demo/index --relevance=runs/demo/relevance --out=runs/demo/teacher_k3/eval --split=train --num_queries=1575 --baselines=original --recorded=answer1=runs/demo/teacher_k3 --recorded=answer2=runs/demo/teacher_k3 --recorded=answer3=runs/demo/teacher_k3 --reference=answer1

A query's k-th line in the file is its `answer{k}` (experiments.teacher writes each query's best
answer first, then its alternatives). A query with fewer than k answers gets a rejected one,
which the evaluation scores as the original query alone: system answer{k}'s validity is the share
of queries that have a k-th answer. Evaluate the train split: the teacher answers train queries
only. No scores are recorded, so evaluate compares none.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Sequence

from absl import flags

from experiments import cli
from leser_jax import evaluation
from leser_jax.teacher import TeacherExample, read_examples

flags.DEFINE_string("teacher_file", None, "Teacher examples, JSONL (experiments.teacher).",
                    required=True)
flags.DEFINE_string("out", None, "Output folder: OUT/answers.jsonl.", required=True)
flags.DEFINE_integer("ranks", 0, "Systems answer1..answerN (0: as many as the most answered "
                     "query has).", lower_bound=0)
FLAGS = flags.FLAGS


def rank_rows(examples: Sequence[TeacherExample], ranks: int = 0) -> list[dict]:
    """One answers.jsonl row per query, in first-seen order, with systems answer1..answer{ranks}."""
    by_query: dict[str, list[TeacherExample]] = collections.defaultdict(list)
    for e in examples:
        by_query[e.query].append(e)
    ranks = ranks or max((len(v) for v in by_query.values()), default=0)
    rows = []
    for query, answers in by_query.items():
        systems = {}
        for k in range(1, ranks + 1):
            if k <= len(answers):
                systems[f"answer{k}"] = {"expansions": list(answers[k - 1].expansions),
                                         "reason": None}
            else:
                systems[f"answer{k}"] = {"expansions": [], "reason": f"no answer of rank {k}"}
        rows.append({"query": query, "kind": None, "systems": systems})
    return rows


def write_rows(rows: Sequence[dict], out_dir: str | os.PathLike) -> str:
    """OUT/answers.jsonl, written atomically; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, evaluation.ANSWERS_FILE)
    with open(path + ".tmp", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    return path


def main(argv):
    del argv
    examples, report = read_examples(FLAGS.teacher_file)
    if report.bad:
        print(report.summary())
    rows = rank_rows(examples, FLAGS.ranks)
    path = write_rows(rows, FLAGS.out)
    counts = collections.Counter(name for row in rows for name, s in row["systems"].items()
                                 if s["reason"] is None)
    print(f"wrote {len(rows):,} queries to {path}: " +
          ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items())))


if __name__ == "__main__":
    cli.run(main)
