"""Faults of whole launcher runs (issue 18): a diverging run and a run directory that holds
another configuration stop with a clear error, and leave what was there as it was."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from leser_jax import checkpoint

# Both run the pretraining launcher in a subprocess: `make test-fast` skips them.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_CATALOG = ("--synthetic_products=600", "--synthetic_queries=150")


def _pretrain(run_dir, *flags) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments.pretrain", "--preset=tiny", *SMALL_CATALOG,
               f"--run_dir={run_dir}", *flags]
    return subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=600)


def _files(root) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, f), root): os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(root) for f in fs}


def test_a_diverging_pretraining_exits_nonzero_and_writes_no_params(tmp_path):
    """`--lr=1e3` used to exit 0 with all-NaN params/ (and GRPO from them ran, at reward 0)."""
    out = _pretrain(tmp_path, "--steps=20", "--lr=1e3", "--checkpoint_every=1",
                    "--keep_checkpoints=20")
    assert out.returncode != 0
    error = out.stderr.strip().splitlines()[-1]
    found = re.search(r"NonFiniteError: step (\d+): (loss|grad_norm) = (nan|inf)", error)
    assert found, error
    failed_at = int(found.group(1))
    assert not (tmp_path / "params").exists()
    # Every step before the one that failed was saved, finite; nothing after.
    steps = [s for s, _ in checkpoint.list_checkpoints(tmp_path)]
    assert steps == list(range(1, failed_at))
    assert f"newest checkpoint: step {failed_at - 1}" in error


def test_another_model_in_a_finished_run_dir_is_refused_before_anything_changes(tmp_path):
    """`--model=demo` in a finished `--model=tiny` run dir used to start afresh, prune the
    tiny run's checkpoints and overwrite its params/."""
    first = _pretrain(tmp_path, "--steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    before = _files(tmp_path / "checkpoints"), _files(tmp_path / "params")
    config = (tmp_path / "params" / "config.json").read_text()
    metrics = (tmp_path / "metrics.jsonl").read_text()

    again = _pretrain(tmp_path, "--steps=2", "--model=demo")
    assert again.returncode != 0
    assert "CheckpointMismatch" in again.stderr
    tiny_d, demo_d = json.loads(config)["d_model"], 256
    assert f"model.d_model: {tiny_d} there, {demo_d} now" in again.stderr, again.stderr[-2000:]
    assert (_files(tmp_path / "checkpoints"), _files(tmp_path / "params")) == before
    assert (tmp_path / "params" / "config.json").read_text() == config
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
