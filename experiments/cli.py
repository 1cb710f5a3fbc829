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

import dataclasses
import math
import re
import sys
import typing
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


# ----------------------------------------------------------------------------- config flags

def field_docs(cls) -> dict[str, str]:
    """Each field's text in `cls`'s Google-style `Attributes:` docstring section, one line
    (an entry "a, b: text" documents both; indented lines continue the entry above)."""
    docs, names, lines = {}, [], (cls.__doc__ or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return docs
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        head, colon, text = line.strip().partition(": ")
        if depth == indent and colon and re.fullmatch(r"\w+(, \w+)*", head):
            names = head.split(", ")
            for name in names:
                docs[name] = text
        elif depth > indent:
            for name in names:
                docs[name] += " " + line.strip()
    return docs


_PARSERS = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
            str: flags.DEFINE_string}


def define_flags(cls, base: Callable[[], object] | None = None, *, exclude: Sequence[str] = (),
                 from_preset: bool = True, flag_values: flags.FlagValues = FLAGS
                 ) -> tuple[str, ...]:
    """A flag per field of the dataclass `cls` but `exclude`, named as the field and typed by
    its annotation (int, float, bool or str, or one of them | None), its help the field's
    docstring line (`field_docs`). Every flag defaults to None, meaning `base()`'s value (a
    preset's stage config, or the dataclass's defaults when `base` is None; the help names the
    preset if `from_preset`, else the field's default); `override` applies the given ones. Each
    value is checked when the flags are parsed, by building `base()` with it and the other given
    flags, so the dataclass's own __post_init__ is the one statement of what is valid (a wrong
    value stops the launcher there, exit status 1).

    Returns the names defined, for `override`.
    """
    base = base or cls
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    # Registered as the caller's flags, so that its --helpshort lists them (absl names the main
    # module by its path).
    caller = sys._getframe(1).f_globals["__name__"]
    caller = sys.argv[0] if caller == "__main__" else caller
    names = []
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        kind = next(t for t in (hints[field.name], *typing.get_args(hints[field.name]))
                    if t in _PARSERS)
        default = ("the preset's" if from_preset or field.default is dataclasses.MISSING
                   else repr(field.default))
        text = docs.get(field.name, field.name)
        _PARSERS[kind](field.name, None, f"{text[:1].upper()}{text[1:]} (default: "
                       f"{default})", flag_values=flag_values, module_name=caller)
        names.append(field.name)
    for name in names:
        flags.register_validator(name, _builds(base, name, names, flag_values),
                                 flag_values=flag_values)
    return tuple(names)


def _builds(base, name, names, flag_values) -> Callable[[object], bool]:
    """A validator of --name: `base()` must take its value alone, and with every other given
    flag of `names` (a rule between two fields, e.g. eval_every needs eval_queries); a value
    wrong by itself is reported by its own flag's validator."""

    def fails(config, **values) -> str | None:
        try:
            dataclasses.replace(config, **values)
        except ValueError as e:
            return str(e)
        return None

    def check(value) -> bool:
        try:
            config = None if value is None else base()
        except ValueError:  # another flag that base() reads is wrong: its validator says so
            return True
        if config is None:  # unset, or a stage the preset does not have (main() says so)
            return True
        if (error := fails(config, **{name: value})) is None:
            given = {n: flag_values[n].value for n in names
                     if flag_values[n].value is not None}
            if any(fails(config, **{n: v}) for n, v in given.items()):
                return True
            error = fails(config, **given)
        if error:
            raise flags.ValidationError(error)
        return True
    return check


def override(config, names: Sequence[str], flag_values: flags.FlagValues = FLAGS):
    """`config` with the fields whose flag (`define_flags`) was given replaced by its value."""
    given = {n: flag_values[n].value for n in names if flag_values[n].value is not None}
    return dataclasses.replace(config, **given)


def as_flags(config, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The inverse of `override`: --field=value for every field of `config` but `exclude` (the
    pipeline spells each stage's preset out, so a stage record names every value it ran with)."""
    return tuple(f"--{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
                 if f.name not in exclude and getattr(config, f.name) is not None)


def parse_named(specs: Sequence[str], flag: str, what: str = "PATH") -> dict[str, str]:
    """{NAME: VALUE} of a repeated --flag=NAME=VALUE (evaluate's --policy, a tool's
    --relevance); a usage error for a spec without both parts or a name given twice."""
    named = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise app.UsageError(f"--{flag}={spec}: expected NAME={what}")
        if name in named:
            raise app.UsageError(f"--{flag}={spec}: the name {name!r} is taken")
        named[name] = value
    return named
