"""The pipeline's stage records: a finished stage is skipped, an unfinished one runs again, a
stage recorded with other settings stops the run; and the plan's commands agree on the prompt."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest

from experiments import cli, configs, pipeline
from experiments.pipeline import Settings, Stage, plan, run_all, run_stage, stage_state


class Writer:
    """A stand-in launcher: counts its calls and writes the stage's output (or fails first)."""

    def __init__(self, fail_first: bool = False):
        self.calls, self.fail_first = 0, fail_first

    def __call__(self, stage: Stage) -> None:
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise subprocess.CalledProcessError(1, stage.command)  # a crash before its output
        with open(stage.output, "w") as f:
            f.write("{}")


def stage(tmp_path, name="index", *flags) -> Stage:
    return Stage(name, ("experiments.build_index", f"--out={tmp_path}", *flags),
                 str(tmp_path / f"{name}.out"), str(tmp_path))


def test_a_finished_stage_is_skipped_and_an_unfinished_one_runs_again(tmp_path):
    s, run = stage(tmp_path), Writer(fail_first=True)
    with pytest.raises(subprocess.CalledProcessError):
        run_stage(s, run)
    assert stage_state(s) == "todo" and not json.loads(open(s.record).read())["done"]
    assert run_stage(s, run)["skipped"] is False and run.calls == 2  # the rerun resumes it
    assert stage_state(s) == "done" and json.loads(open(s.record).read())["done"]
    again = run_stage(s, run)
    assert again["skipped"] is True and run.calls == 2  # not run a third time
    # Its output gone (deleted by hand): the record alone does not make it done.
    (tmp_path / "index.out").unlink()
    assert run_stage(s, run)["skipped"] is False and run.calls == 3


def test_a_stage_that_exits_without_its_output_is_not_done(tmp_path):
    s = stage(tmp_path)
    with pytest.raises(RuntimeError, match="without writing"):
        run_stage(s, lambda _: None)
    assert stage_state(s) == "todo"


def test_other_settings_stop_the_pipeline_before_anything_runs(tmp_path):
    first, second = stage(tmp_path, "index"), stage(tmp_path, "relevance", "--seed=0")
    run_all([first, second], {"index": Writer(), "relevance": Writer()})
    changed = stage(tmp_path, "relevance", "--seed=1")  # same stage, another command
    fresh = stage(tmp_path, "new")
    runs = {"new": Writer(), "index": Writer(), "relevance": Writer()}
    with pytest.raises(pipeline.StageConflict, match="--seed=0"):
        run_all([fresh, first, changed], runs)
    assert all(w.calls == 0 for w in runs.values())  # not even the stage before the conflict


def test_paths_in_commands_compare_as_paths(tmp_path, monkeypatch):
    """Issue 18: the same run dir given in full was refused ("stage index ran with
    --dataset=runs/demo/dataset ...; this run asks for --dataset=/abs/.../runs/demo/dataset")."""
    monkeypatch.chdir(tmp_path)
    relative = Settings(preset="demo", run_dir="runs/demo", shared_dir="runs/demo",
                        dataset="synthetic")
    stages = plan(relative)
    for s in stages:
        os.makedirs(os.path.dirname(s.output), exist_ok=True)
    run_all(stages, {s.name: Writer() for s in stages})
    absolute = dataclasses.replace(relative, run_dir=str(tmp_path / "runs" / "demo"),
                                   shared_dir=str(tmp_path / "runs" / "demo"))
    assert [stage_state(s) for s in plan(absolute)] == ["done"] * len(stages)
    # Run from another folder, the record's relative paths still mean what they meant.
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert [stage_state(s) for s in plan(absolute)] == ["done"] * len(stages)
    other = dataclasses.replace(absolute, shared_dir=str(tmp_path / "runs" / "shared"))
    assert "conflict" in [stage_state(s) for s in plan(other)]


def test_launch_tees_the_subprocess_and_raises_on_failure(tmp_path):
    source = tmp_path / "in.json"
    source.write_text('{"a": 1}')
    s = Stage("copy", ("json.tool", str(source), str(tmp_path / "out.json")),
              str(tmp_path / "out.json"), str(tmp_path))
    assert run_stage(s)["skipped"] is False  # the default runner: python -m json.tool IN OUT
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": 1}
    bad = Stage("bad", ("json.tool", str(tmp_path / "missing.json")), str(tmp_path / "x"),
                str(tmp_path))
    with pytest.raises(subprocess.CalledProcessError):
        run_stage(bad)
    assert "missing.json" in open(bad.log).read()  # stderr went to the stage's log


def flag(command, name):
    values = [c.split("=", 1)[1] for c in command if c.startswith(f"--{name}=")]
    assert len(values) <= 1, (name, command)
    return values[0] if values else None


def test_plan_runs_every_stage_with_one_context(tmp_path):
    stages = plan(Settings(preset="demo", run_dir=str(tmp_path / "run"),
                           shared_dir=str(tmp_path / "run"), dataset="synthetic"))
    names = [s.name for s in stages]
    assert names == ["dataset", "index", "relevance", "pretrain", "teacher", "warmup", "grpo",
                     "grpo_no_warmup", "evaluate"]
    by = {s.name: s.command for s in stages}
    p = configs.get("demo")
    for name in ("teacher", "warmup", "grpo", "grpo_no_warmup", "evaluate"):
        assert flag(by[name], "context_k") == str(p.context.k)
        assert flag(by[name], "context_max_tokens") == str(p.context.max_tokens)
    assert flag(by["teacher"], "max_expansions") == flag(by["evaluate"], "teacher_max_expansions")
    assert flag(by["grpo"], "max_new_tokens") == flag(by["evaluate"], "max_new_tokens")
    assert flag(by["grpo"], "init").endswith("warmup/params")
    assert flag(by["grpo_no_warmup"], "init").endswith("pretrain/params")
    assert flag(by["grpo"], "steps") == str(p.grpo.steps)
    assert [c for c in by["evaluate"] if c.startswith("--policy=")] == [
        f"--policy={n}={tmp_path / 'run' / n}" for n in ("warmup", "grpo", "grpo_no_warmup")]
    # Every later stage reads the catalog the dataset stage wrote.
    assert {flag(by[n], "dataset") for n in names[1:]} == {str(tmp_path / "run" / "dataset")}


def test_smol_plan_converts_checks_the_format_and_shows_examples_where_untrained(tmp_path):
    """The smol preset: SmolLM2 converted instead of pretrained, its format checked before any
    fine-tuning, GRPO without warm-up and the zero-shot system given the same worked examples
    (from this run's teacher file), and other runs' policies evaluated beside on the same
    queries."""
    run, shared = str(tmp_path / "smol"), str(tmp_path / "hd")
    stages = plan(Settings(preset="smol", run_dir=run, shared_dir=shared, dataset="hd",
                           compare=("small=runs/hd_cpu/warmup",)))
    by = {s.name: s.command for s in stages}
    assert list(by) == ["index", "relevance", "convert", "teacher", "format_0_shot",
                        "format_2_shot", "warmup", "grpo", "grpo_no_warmup", "evaluate"]
    smol = os.path.join(shared, "smollm2")
    assert by["convert"] == ("tools.convert_gguf_llama", f"--out={smol}")
    assert flag(by["warmup"], "init") == smol and flag(by["grpo_no_warmup"], "init") == smol
    assert flag(by["format_0_shot"], "examples") == "0"
    assert flag(by["format_0_shot"], "teacher_file") is None
    teacher_file = os.path.join(run, "teacher.jsonl")
    for name in ("format_2_shot", "grpo_no_warmup", "evaluate"):
        assert flag(by[name], "teacher_file") == teacher_file
    assert flag(by["grpo_no_warmup"], "few_shot") == "2" and flag(by["grpo"], "few_shot") is None
    assert flag(by["evaluate"], "zero_shot") == f"zero_shot={smol}"
    assert flag(by["evaluate"], "zero_shot_examples") == "2"
    assert flag(by["evaluate"], "num_queries") == "150"
    assert "--policy=small=runs/hd_cpu/warmup" in by["evaluate"]
    assert all(flag(by[n], "lora_rank") == "16" for n in ("warmup", "grpo", "grpo_no_warmup"))
    # Without the teacher, the untrained systems' examples come from the teacher at start.
    by = {s.name: s.command for s in plan(Settings(preset="smol", run_dir=run,
                                                   shared_dir=shared, dataset="hd",
                                                   warmup=False))}
    assert list(by) == ["index", "relevance", "convert", "format_0_shot", "format_2_shot",
                        "grpo_no_warmup", "evaluate"]
    assert flag(by["format_2_shot"], "relevance") == os.path.join(shared, "relevance")
    assert flag(by["grpo_no_warmup"], "teacher_file") is None


def test_grpo_seeds_add_one_stage_each_and_a_seed_group(tmp_path):
    run = str(tmp_path / "run")
    by = {s.name: s.command for s in plan(Settings(preset="demo", run_dir=run, shared_dir=run,
                                                   dataset="synthetic", grpo_seeds=3))}
    assert [n for n in by if n.startswith("grpo")] == ["grpo", "grpo_seed1", "grpo_seed2",
                                                        "grpo_no_warmup"]
    for seed in (1, 2):
        name = f"grpo_seed{seed}"
        assert flag(by[name], "seed") == str(seed)
        assert flag(by[name], "run_dir") == os.path.join(run, name)
        # Everything else is the seed-0 stage's command.
        assert ([c for c in by[name] if not c.startswith(("--seed=", "--run_dir="))]
                == [c for c in by["grpo"] if not c.startswith("--run_dir=")])
        assert f"--policy={name}={os.path.join(run, name)}" in by["evaluate"]
    assert flag(by["evaluate"], "seed_group") == "grpo,grpo_seed1,grpo_seed2"
    assert flag(by["grpo"], "seed") is None  # seed 0: the command of a one-seed run
    one = {s.name: s.command for s in plan(Settings(preset="demo", run_dir=run, shared_dir=run,
                                                    dataset="synthetic"))}
    assert one["grpo"] == by["grpo"] and flag(one["evaluate"], "seed_group") is None


def test_ablations_pass_through_and_reuse_the_shared_stages(tmp_path):
    main, run = str(tmp_path / "main"), str(tmp_path / "ablation")
    stages = plan(Settings(preset="cpu", run_dir=run, shared_dir=main, dataset="synthetic",
                           reward_lambda=0.5, context_k=10, warmup=False, num_rollouts=8))
    by = {s.name: s for s in stages}
    assert list(by) == ["dataset", "index", "relevance", "pretrain", "grpo_no_warmup", "evaluate"]
    assert all(by[n].root == main for n in ("dataset", "index", "relevance", "pretrain"))
    assert all(by[n].root == run for n in ("grpo_no_warmup", "evaluate"))
    grpo = by["grpo_no_warmup"].command
    assert flag(grpo, "reward_lambda") == "0.5" and flag(grpo, "num_rollouts") == "8"
    # k = 10 doubles the preset's 5-product budget of 128 tokens; k = 20 would quadruple it,
    # but the cpu preset caps it at 256 (a 512-position model); the demo's at 128.
    assert flag(grpo, "context_k") == "10" and flag(grpo, "context_max_tokens") == "256"
    assert Settings(preset="cpu", run_dir=run, shared_dir=main, dataset="synthetic",
                    context_k=20).context() == (20, 256)
    assert Settings(preset="demo", run_dir=run, shared_dir=main, dataset="synthetic",
                    context_k=1).context() == (1, 26)  # 128 * 1 / 5 = 25.6
    assert Settings(preset="demo", run_dir=run, shared_dir=main, dataset="synthetic",
                    context_k=20, context_max_tokens=300).context() == (20, 300)
    assert flag(by["evaluate"].command, "reference") == "grpo_no_warmup"
    # No context (k = 0): the teacher still draws its candidates from the preset's context.
    stages = plan(Settings(preset="demo", run_dir=run, shared_dir=main, dataset="synthetic",
                           context_k=0))
    by = {s.name: s.command for s in stages}
    assert flag(by["warmup"], "context_k") == "0" and flag(by["grpo"], "context_k") == "0"
    assert flag(by["teacher"], "context_k") == "5"


@pytest.mark.parametrize("name", ["demo", "cpu", "smol"])
def test_every_stage_gets_its_presets_values(name, tmp_path):
    """Issue 22: a preset's values exist once (experiments/configs/NAME.py); the pipeline passes
    each launcher the preset's name and its section spelled out, so a launcher run by hand with
    --preset=NAME runs what the pipeline runs, and a stage record names every value."""
    p = configs.get(name)
    run = str(tmp_path / "run")
    by = {s.name: s.command for s in plan(Settings(preset=name, run_dir=run, shared_dir=run,
                                                   dataset="synthetic"))}
    sections = {"warmup": p.warmup, "grpo": p.grpo, "grpo_no_warmup": p.grpo}
    if p.pretrain is not None:
        sections["pretrain"] = p.pretrain
    for stage, section in sections.items():
        for field in dataclasses.fields(section):
            assert flag(by[stage], field.name) == str(getattr(section, field.name)), (stage, field)
    launchers = [n for n in by if n not in ("dataset", "index", "relevance", "convert")]
    assert all(flag(by[n], "preset") == name for n in launchers)
    for n in set(launchers) - {"pretrain"}:  # each renders the prompt
        assert flag(by[n], "context_k") == str(p.context.k)
        assert flag(by[n], "context_max_tokens") == str(p.context.max_tokens)
    for n in ("grpo", "grpo_no_warmup", "evaluate"):
        assert flag(by[n], "max_new_tokens") == str(p.max_new_tokens)
    assert flag(by["teacher"], "max_expansions") == str(p.teacher_max_expansions)
    assert flag(by["evaluate"], "teacher_max_expansions") == str(p.teacher_max_expansions)
    assert flag(by["evaluate"], "num_queries") == (str(p.eval_queries) if p.eval_queries
                                                    else None)
    assert ("--drop_duplicates" in by["evaluate"]) == p.drop_duplicates
    assert ("convert" in by) == p.init_gguf
    # Nothing else sets a stage's value: each section flag appears once in its command.
    for stage, section in sections.items():
        names = [c.split("=")[0] for c in by[stage]]
        assert all(names.count(f"--{f.name}") == 1 for f in dataclasses.fields(section))


def test_as_flags_and_override_are_inverse(tmp_path):
    """The pipeline's spelled-out section, parsed by a launcher's generated flags, is the
    preset's section again."""
    from absl import flags

    for name in configs.NAMES:
        for section in (configs.get(name).warmup, configs.get(name).grpo):
            fv = flags.FlagValues()
            names = cli.define_flags(type(section), lambda: section, flag_values=fv)
            fv(["prog", *cli.as_flags(section)])
            assert cli.override(dataclasses.replace(section, steps=section.steps + 1), names,
                                fv) == section
