"""The run's figures as PNG files: GRPO's training curves and every system's gains.

- `plot_training`: reward, its dev curve (the reward on dev queries at the training
  temperature, and the greedy judged recall), KL to the reference and format validity over GRPO
  steps, one line per run (warm-up + GRPO against GRPO without warm-up: the paper's ablation, where the run without
  warm-up starts from invalid answers and a reward near 0).
- `plot_gains`: relevance and retrieval gain of every system, and the judged recall and nDCG@10
  beside them, with the bootstrap 95% intervals as error bars. A policy that fools the relevance
  model shows a relevance gain without a judged-recall gain: the two panels side by side make
  that visible.

matplotlib's object API with the Agg canvas: no pyplot, no global backend, no display needed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TRAINING = (("reward", "reward"), ("dev_sampled/reward", "dev reward (training temperature)"),
            ("dev/judged_recall", "dev judged recall (greedy)"), ("kl", "KL to the reference"),
            ("valid", "format validity"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The step records of a metrics.jsonl (text samples and cut-off lines left out)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "step" in record and "text" not in record:
                records.append(record)
    return records


def _save(fig: Figure, path: str | os.PathLike) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return os.fspath(path)


def plot_training(runs: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                  metrics: Sequence[tuple[str, str]] = TRAINING) -> str:
    """One panel per metric, one line per run ({name: step records}); missing values skipped."""
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    for i, (key, title) in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for name, records in runs.items():
            points = [(r["step"], r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if points:  # dev metrics exist every eval_every steps only: mark their points
                ax.plot(*zip(*points), label=name, linewidth=1.2,
                        marker="o" if len(points) < len(records) else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_gains(results: Mapping, path: str | os.PathLike) -> str:
    """Grouped bars with 95% error bars from a results.json dict (evaluation.results_dict)."""
    panels = ((("relevance_gain", "relevance gain"), ("retrieval_gain", "retrieval gain")),
              (("judged_recall", "judged recall"), ("ndcg10", "judged nDCG@10")))
    names = list(results["systems"])
    fig = Figure(figsize=(max(6.0, 1.1 * len(names)) * 2, 3.8))
    width = 0.8 / len(panels[0])
    for p, metrics in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for j, (key, label) in enumerate(metrics):
            est = [results["systems"][n][key] for n in names]
            mean = [e["mean"] if e["mean"] is not None else math.nan for e in est]
            err = [[0 if e["low"] is None else e["mean"] - e["low"] for e in est],
                   [0 if e["high"] is None else e["high"] - e["mean"] for e in est]]
            xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, mean, width, yerr=err, capsize=3, label=label)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.axes[0].set_title("gains over the original query (relevance model)")
    fig.axes[1].set_title("human judgments")
    return _save(fig, path)
