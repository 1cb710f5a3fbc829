"""Strict command lines for every launcher (experiments/) and tool (tools/).

absl parses `--name=value` and hands every other word to main() as argv, which the launchers
drop: `python -m experiments.pretrain steps=5` used to train the preset's 400 steps without a
word. `run(main)` is absl's app.run with a parser that, after absl's own checks (unknown flags,
bounds, validators), also rejects positional arguments and NaN or infinite floats, reported as
absl reports a bad flag: one line on stderr, exit status 1, before main() runs or anything is
loaded or written.

The flag definitions share two helpers: `exclusive_bounds`, for the strict bounds (lr > 0) that
absl's inclusive lower_bound/upper_bound cannot say, and `preset_or`, for flags whose default
comes from a preset (a given value is never replaced by the preset's, as `FLAGS.x or preset[x]`
replaced 0).

Imports absl only: the tools that need neither a dataset nor JAX use it too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

FLAGS = flags.FLAGS


def argv_problems(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """What absl accepted but no launcher means: words left over after the flags (argv[0] is
    the program), and float flags given as nan or inf (absl's bounds let NaN through)."""
    problems = []
    if len(argv) > 1:
        words = ", ".join(repr(a) for a in argv[1:])
        problems.append(f"unexpected positional argument(s): {words} (flags are written "
                        "--name=value)")
    for name in sorted(flag_values):
        flag = flag_values[name]
        if (name == flag.name and flag.present and isinstance(flag.parser, flags.FloatParser)
                and flag.value is not None and not math.isfinite(flag.value)):
            problems.append(f"flag --{name}={flag.value}: must be a finite number")
    return problems


def parse_flags(argv: list[str]) -> list[str]:
    """app.run's flags_parser: absl's parse_flags_with_usage, then `argv_problems`."""
    argv = app.parse_flags_with_usage(argv)  # exits on absl's own errors
    problems = argv_problems(argv)
    if problems:
        # absl's format and status for a flag error (app.parse_flags_with_usage): no traceback,
        # since an exception raised by a flags_parser escapes app.run with one.
        for problem in problems:
            sys.stderr.write(f"FATAL Flags parsing error: {problem}\n")
        sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    return argv


def run(main: Callable[[list[str]], object]) -> None:
    """absl.app.run(main) with `parse_flags`; main(argv) gets [program] only."""
    app.run(main, flags_parser=parse_flags)


def exclusive_bounds(name: str, lower: float | None = None, upper: float | None = None, *,
                     flag_values: flags.FlagValues = FLAGS) -> None:
    """Requires lower < --name < upper (either side optional; None, a preset's default, passes).
    Combine with DEFINE_*'s inclusive lower_bound/upper_bound for (0, 1]."""
    if lower is not None and upper is not None:
        what = f"in ({lower:g}, {upper:g})"
    else:
        what = f"> {lower:g}" if lower is not None else f"< {upper:g}"

    def holds(value):
        return value is None or ((lower is None or value > lower)
                                 and (upper is None or value < upper))

    flags.register_validator(name, holds, f"--{name} must be {what}", flag_values=flag_values)


def preset_or(value, default):
    """`value` if the flag was given, else `default` (the preset's or the model's): unlike
    `value or default`, an explicit 0 or 0.0 is never replaced."""
    return default if value is None else value
