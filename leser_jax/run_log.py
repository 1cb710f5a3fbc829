"""Metrics of a training run: one line per step on stdout, JSONL and TensorBoard for the rest.

Every training stage (pretraining, warm-up, GRPO) logs through `RunLog`:

    RUN_DIR/metrics.jsonl   one JSON object per `log` call: {"step": s, "time": unix, ...metrics}
    RUN_DIR/tb/             TensorBoard scalars (tensorboardX) and text samples

`log(step, metrics, line=...)` prints one line, e.g.

    step   120/400 | loss 2.4311 | lr 2.9e-04 | gnorm 0.87 | tok/s 1,512 | step 0.34 s

A resumed run opens the same files: `RunLog(run_dir, resume_step=s)` first drops the JSONL lines
of steps after s (written by the run that crashed after its last checkpoint, and about to be
redone), so the file holds each step once. TensorBoard's event files are append-only; it shows
the latest value of a redone step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def _summary_writer():
    """tensorboardX.SummaryWriter, imported without torch.

    tensorboardX imports torch whenever it is installed (here it is, for the parity tests), only
    to accept torch tensors, which we never pass, and importing torch is slow. Hiding torch for
    the duration of the import makes tensorboardX fall back to numpy.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


def _number(value) -> float | int | str | None:
    """A JSON-able scalar: numpy and jax scalars become Python numbers, NaN becomes None."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_metric(name: str, value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{name} {value:,}"
    if isinstance(value, float):
        if name in ("lr",) or (value != 0 and abs(value) < 1e-3):
            return f"{name} {value:.1e}"
        if abs(value) >= 1000:
            return f"{name} {value:,.0f}"
        return f"{name} {value:.4g}"
    return f"{name} {value}"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The step records of RUN_DIR/metrics.jsonl in order (text samples and cut lines skipped)."""
    path = os.path.join(os.fspath(run_dir), METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a crash
                continue
            if "text" not in record:
                records.append(record)
    return records


class RunLog:
    """Writes metrics to stdout, RUN_DIR/metrics.jsonl and RUN_DIR/tb (module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, *, total_steps: int | None = None,
                 resume_step: int | None = None, tensorboard: bool = True, stream=None):
        self.run_dir = os.fspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.path = os.path.join(self.run_dir, METRICS_FILE)
        self._truncate_after(resume_step)
        self._jsonl = open(self.path, "a")
        self._tb = None
        if tensorboard:
            self._tb = _summary_writer()(os.path.join(self.run_dir, TB_DIR))

    def _truncate_after(self, step: int | None) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        if step is None:
            return
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", -1) <= step:
                    keep.append(line)
            except ValueError:  # a line cut short by the crash
                continue
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Mapping[str, object], *,
            line: Sequence[str] | None = None) -> None:
        """Records `metrics` at `step`; prints the names in `line` (all of them if None)."""
        record = {"step": int(step), "time": round(time.time(), 3),
                  **{k: _number(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(step))
        names = list(metrics) if line is None else [n for n in line if n in metrics]
        total = f"/{self.total_steps}" if self.total_steps else ""
        width = len(str(self.total_steps)) if self.total_steps else 0
        parts = [f"step {int(step):>{width}}{total}"]
        parts += [format_metric(n, record[n]) for n in names]
        print(" | ".join(parts), file=self.stream, flush=True)

    def text(self, step: int, tag: str, text: str) -> None:
        """A text sample (e.g. a rollout) in TensorBoard and the JSONL."""
        self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time(), 3),
                                      "text": {tag: text}}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.add_text(tag, text, int(step))

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DropLibraryInfo:
    """A logging filter: drops records below WARNING that come from the named packages."""

    def __init__(self, packages: Sequence[str]):
        self.markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(m in record.pathname for m in self.markers)


def quiet_library_logs(packages: Sequence[str] = ("orbax",)) -> None:
    """Launchers call this in main(): Orbax logs a dozen INFO lines per checkpoint through absl,
    which would bury the one metrics line per step. Its warnings and errors still show."""
    import logging

    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo(packages))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropLibraryInfo(packages))
