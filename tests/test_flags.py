"""Launcher flags mean what they say (issue 18, item 7).

Before: `--steps=0`, `--lr=0` and `--batch_size=0` ran the preset's values (`FLAGS.x or
preset[x]`), `--steps=-5` failed deep in OptimConfig blaming warmup_steps, and positional
arguments were dropped (`del argv`), so `pretrain steps=5` trained 400 steps. Now each stops at
flag parsing (experiments.cli): exit status 1, a message naming the flag or the argument, no
traceback, nothing loaded or written. The launchers run as subprocesses, as `python -m` runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from absl import flags

from experiments import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    # A timeout, not a hang, if a bad flag ever starts a run again.
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


# (module, flags, what stderr must say). RUN is the output folder, which must not appear;
# MISSING a path that does not exist (required inputs, never reached).
CASES = {
    "pretrain --steps=0": (
        "experiments.pretrain", ["--preset=tiny", "--run_dir=RUN", "--steps=0"],
        "flag --steps=0: steps must be >= 1, got 0"),
    "pretrain --steps=-5": (
        "experiments.pretrain", ["--preset=tiny", "--run_dir=RUN", "--steps=-5"],
        "flag --steps=-5: steps must be >= 1, got -5"),
    "warmup --batch_size=0": (
        "experiments.warmup", ["--preset=tiny", "--run_dir=RUN", "--init=MISSING",
                               "--teacher_file=MISSING", "--batch_size=0"],
        "flag --batch_size=0: batch_size must be >= 1, got 0"),
    "grpo --lr=0": (
        "experiments.grpo", ["--preset=tiny", "--run_dir=RUN", "--init=MISSING",
                             "--relevance=MISSING", "--lr=0"],
        "flag --lr=0.0: lr must be > 0, got 0.0"),
    "evaluate positional": (
        "experiments.evaluate", ["--out=RUN", "--relevance=MISSING", "steps=5"],
        "unexpected positional argument(s): 'steps=5' (flags are written --name=value)"),
    "evaluate --recorded without a name": (
        "experiments.evaluate", ["--out=RUN", "--relevance=MISSING", "--recorded=grpo"],
        "--recorded=grpo: expected NAME=PATH"),
    "evaluate --recorded from a missing folder": (
        "experiments.evaluate", ["--out=RUN", "--relevance=MISSING", "--recorded=warmup=MISSING"],
        "No such file or directory"),
    "evaluate --trained_by on the test split": (
        "experiments.evaluate", ["--out=RUN", "--relevance=MISSING", "--trained_by=MISSING"],
        "--trained_by needs --split=train"),
    "evaluate --trained_by an unfinished run": (
        "experiments.evaluate", ["--out=RUN", "--relevance=MISSING", "--split=train",
                                 "--trained_by=MISSING"],
        ": not a finished GRPO run ([Errno 2] No such file"),
    "pipeline positional": (
        "experiments.pipeline", ["--run_dir=RUN", "demo", "--dry_run"],
        "unexpected positional argument(s): 'demo'"),
    "expand --queries and --split": (
        "experiments.expand", ["--policy=MISSING", "--out=RUN", "--queries=MISSING",
                               "--split=test"],
        "give exactly one of --queries=FILE and --split=NAME"),
    "reward_fidelity --relevance without a name": (
        "tools.reward_fidelity", ["--relevance=MISSING"], "expected NAME=DIR"),
    "memory_plan positional": (
        "tools.memory_plan", ["--queries=4", "now", "--", "--rollouts=2"],
        "unexpected positional argument(s): 'now', '--rollouts=2'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_meaningless_flag_stops_the_launcher_before_any_work(case, tmp_path):
    module, argv, message = CASES[case]
    run = tmp_path / "run"
    argv = [a.replace("RUN", str(run)).replace("MISSING", str(tmp_path / "missing"))
            for a in argv]
    out = launch(module, *argv)
    assert out.returncode == 1, out.stderr[-2000:]
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "warmup_steps" not in out.stderr  # --steps=-5 used to blame OptimConfig's warmup_steps
    assert not run.exists()  # failed fast: no tokenizer, checkpoints, params or records


def test_valid_flags_still_run_and_explicit_values_reach_the_stages(tmp_path):
    run = tmp_path / "run"
    out = launch("experiments.pipeline", f"--run_dir={run}", "--dry_run", "--grpo_steps=1",
                 "--context_k=0", "--context_max_tokens=0")
    assert out.returncode == 0, out.stderr[-2000:]
    grpo = next(line for line in out.stdout.splitlines() if line.startswith("[todo] grpo:"))
    # The demo preset's are 12 steps and k=5 in 128 tokens: the given values win, zeros included.
    assert "--steps=1" in grpo.split() and "--context_k=0" in grpo.split()
    assert "--context_max_tokens=0" in grpo.split()


def test_argv_problems_names_positionals_and_non_finite_floats():
    fv = flags.FlagValues()
    flags.DEFINE_float("weight_decay", 0.1, "", lower_bound=0, flag_values=fv)
    flags.DEFINE_float("lr", None, "", flag_values=fv)
    rest = fv(["prog", "--weight_decay=nan", "steps=5", "--lr=inf", "x"])
    assert rest == ["prog", "steps=5", "x"]  # absl keeps both words, and NaN is within its bounds
    assert cli.argv_problems(rest, fv) == [
        "unexpected positional argument(s): 'steps=5', 'x' (flags are written --name=value)",
        "flag --lr=inf: must be a finite number",
        "flag --weight_decay=nan: must be a finite number"]
    assert cli.argv_problems(fv(["prog", "--weight_decay=0", "--lr=1e-3"]), fv) == []


def test_exclusive_bounds_reject_the_bound_itself_and_pass_an_unset_flag():
    fv = flags.FlagValues()
    flags.DEFINE_float("clip_eps", 0.2, "", flag_values=fv)
    flags.DEFINE_float("lr", None, "", flag_values=fv)
    cli.exclusive_bounds("clip_eps", lower=0, upper=1, flag_values=fv)
    cli.exclusive_bounds("lr", lower=0, flag_values=fv)
    for bad, message in (("--clip_eps=0", "--clip_eps must be in (0, 1)"),
                         ("--clip_eps=1", "--clip_eps must be in (0, 1)"),
                         ("--lr=0", "--lr must be > 0"), ("--lr=-1e-3", "--lr must be > 0")):
        with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
            fv(["prog", bad])
        fv.unparse_flags()
    fv(["prog", "--clip_eps=0.5"])
    assert fv.clip_eps == 0.5 and fv.lr is None  # None: the preset's lr, checked where it's made


def test_preset_or_keeps_an_explicit_zero():
    assert cli.preset_or(None, 400) == 400
    assert cli.preset_or(0, 400) == 0 and cli.preset_or(0.0, 2e-3) == 0.0
