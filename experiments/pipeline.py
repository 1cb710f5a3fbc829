"""The whole LESER pipeline in one command (what `make demo` runs).

    python -m experiments.pipeline --preset=demo --dataset=synthetic --run_dir=runs/demo

Every stage but the first is a subprocess of its own launcher (`python -m experiments.X`, with
its own flags, progress bars, log and resume logic), teed to RUN_DIR/logs/STAGE.log:

    dataset          synthetic only: the catalog in the canonical layout  -> DIR/dataset
    index            experiments.build_index (Tantivy BM25)                -> DIR/index
    relevance        experiments.train_relevance (XGBoost rel(q, p))       -> DIR/relevance
    pretrain         experiments.pretrain (tokenizer + the catalog's text) -> DIR/pretrain
                     (smol: `convert`, tools.convert_gguf_llama of SmolLM2-135M-Instruct
                     -> DIR/smollm2, then `format_0_shot` and `format_2_shot`,
                     experiments.measure_format of it on dev queries before any fine-tuning)
    teacher          experiments.teacher (search-guided warm-up data)      -> RUN_DIR/teacher.jsonl
    warmup           experiments.warmup (SFT on the teacher's answers)     -> RUN_DIR/warmup
    grpo             experiments.grpo from the warm-up                     -> RUN_DIR/grpo
    grpo_no_warmup   experiments.grpo from the pretrained model (the paper's ablation)
                                                                           -> RUN_DIR/grpo_no_warmup
    evaluate         experiments.evaluate on the TEST split: original query, RM3, teacher,
                     (smol: zero_shot, the converted model prompted with 2 worked examples)
                     warmup, grpo, grpo_no_warmup, and every --compare NAME=DIR
                     -> RUN_DIR/results.{json,md}, gains.png,
                     grpo_training.png (reward, KL and validity over GRPO steps)

DIR is --shared_dir (default RUN_DIR): the stages that no ablation flag changes. A stage is
skipped when its record, STAGE_ROOT/stages/STAGE.json, says that it finished with the same
command (paths compared as resolved paths, so runs/demo and its absolute form are one run) and
the file its launcher writes last exists; otherwise it runs, and its launcher resumes
from its own checkpoints, so a rerun after a crash or Ctrl-C goes on where it stopped. A record
with another command stops the pipeline before anything runs: that stage's outputs and
checkpoints came from other settings (use another --run_dir, or delete the stage's output and
record, and those of the stages after it). The end prints the results table and each stage's
wall time.

Every value comes from the preset, experiments/configs/NAME.py: each launcher gets --preset=NAME
and its section of the preset spelled out (so its record names every value), and the prompt's
context (k, token budget), the teacher's answer length and the longest answer go to every stage
that renders a prompt: the teacher, warm-up, GRPO and evaluation see the same prompt.

Ablations of issue 9, one command each (--shared_dir reuses the main run's dataset, index,
relevance model and pretraining):

    --reward_lambda=0|0.1|0.5|1   the coverage weight [lambda] of the teacher's and GRPO's reward
    --reward_version=1|2          the reward's formulas (version 1 reproduces the earlier runs)
    --reward_size=expected|count|hits   what the coverage term counts (version 2)
    --context_k=0|1|5|10|20       products in the context; the token budget scales with k up to
                                  the preset's cap (what the model's window holds: the demo
                                  model's 512 tokens fit a 256-token prompt bucket + 96 new
                                  tokens, so k > 5 shows no more than k = 5 there), or is
                                  --context_max_tokens. With k=0 the teacher still draws its
                                  candidates from the preset's context (it has none else)
    --warmup=false                no teacher data, warm-up, or GRPO from the warm-up
    --num_rollouts=2|4|8          GRPO's group size [N]
    --grpo_seeds=3                GRPO from the warm-up under seeds 0, 1, 2 (stages grpo,
                                  grpo_seed1, grpo_seed2); the results add each one's paired
                                  differences to the warm-up, RM3 and the original query, and
                                  their mean and range over the seeds
    e.g. python -m experiments.pipeline --run_dir=runs/demo_lambda0.5 --shared_dir=runs/demo --reward_lambda=0.5

Demo budget: `make demo` (install + this) must finish within 20 minutes on 2 CPU cores;
experiments/configs/demo.py's step counts are cut to it. The pipeline prints each stage's seconds
at the end; WORKSPACE.md logs them.

The smol preset puts a real pretrained, instruction-tuned policy in the loop (LoRA adapters on
SmolLM2-135M-Instruct, its prompt in the model's chat template; GRPO without warm-up is shown two
worked examples before every prompt, the paper's ablation from a model that can parse some
answers untrained), beside the cpu preset's small model on the same test queries:

    python -m experiments.pipeline --preset=smol --run_dir=runs/smol --shared_dir=runs/hd_cpu --compare=small_warmup=runs/hd_cpu/warmup --compare=small_grpo=runs/hd_cpu/grpo

The cpu and smol presets read Home Depot from $LESER_DATA_DIR (default ../shared/data) unless
--dataset names another; their tables and what they show are in WORKSPACE.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from absl import flags

from experiments import cli, common, configs
from leser_jax.data import canonical
from leser_jax.reward import SIZE_MODES, RewardConfig

common.define_dataset_flags()
flags.DEFINE_enum("preset", "demo", list(configs.NAMES),
                  "Every stage's settings: experiments/configs/NAME.py (demo: synthetic catalog, "
                  "minutes on a laptop; cpu: Home Depot, about an hour; smol: "
                  "SmolLM2-135M-Instruct on Home Depot, about 2 hours; tiny: the tests').")
flags.DEFINE_string("run_dir", None, "Where every stage writes its output.", required=True)
flags.DEFINE_string("shared_dir", None, "Where the dataset, index, relevance model and "
                    "pretraining go (default: --run_dir); point ablation runs at the main run.")
flags.register_validator("shared_dir", lambda d: d is None or d != "",
                         "--shared_dir must name a folder (leave it out for --run_dir)")
flags.DEFINE_float("reward_lambda", RewardConfig().lam,
                   "Coverage weight [lambda] of the reward (teacher, GRPO).", lower_bound=0)
flags.DEFINE_enum("reward_version", str(RewardConfig().version), ["1", "2"],
                  "Reward formulas of the teacher, GRPO and evaluation (leser_jax/reward.py).")
flags.DEFINE_enum("reward_size", RewardConfig().size, list(SIZE_MODES),
                  "What r_size counts (version 2): expected relevant products, products, hits.")
flags.DEFINE_integer("context_k", None, "Products shown as context (default: the preset's).",
                     lower_bound=0)
flags.DEFINE_integer("context_max_tokens", None, "Context token budget (default: the preset's, "
                     "scaled by context_k / the preset's k).", lower_bound=0)
flags.DEFINE_bool("warmup", True, "Run the teacher, the warm-up and GRPO from the warm-up.")
flags.DEFINE_bool("grpo_no_warmup", True, "Also run GRPO from the pretrained model (ablation).")
flags.DEFINE_integer("num_rollouts", 4, "GRPO rollouts per query [N] (the paper's 4).",
                     lower_bound=2)
flags.DEFINE_integer("grpo_steps", None, "GRPO steps (default: the preset's).", lower_bound=1)
flags.DEFINE_integer("grpo_seeds", 1, "GRPO from the warm-up once per seed 0..N-1; the "
                     "evaluation reports its differences over the seeds (mean and range).",
                     lower_bound=1)
flags.DEFINE_float("eval_temperature", 0.0, "Policies' decoding in the evaluation: 0 = greedy, "
                   "else sampled at this temperature (GRPO trains the T = 0.9 distribution).",
                   lower_bound=0)
flags.DEFINE_multi_string("compare", [], "NAME=DIR: another run's policy evaluated beside this "
                          "run's on the same queries (e.g. the cpu preset's warm-up); its context "
                          "must be this preset's.")
flags.DEFINE_bool("dry_run", False, "Print each stage's command and state; run nothing.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "..", "shared", "data")  # a preset's dataset, or LESER_DATA_DIR


# ----------------------------------------------------------------------------- stages

@dataclasses.dataclass(frozen=True)
class Stage:
    """A step of the pipeline: `command` (a launcher's module and flags) writes `output` last."""

    name: str
    command: tuple[str, ...]
    output: str
    root: str  # the run directory whose stages/ and logs/ hold this stage's record and log

    @property
    def record(self) -> str:
        return os.path.join(self.root, "stages", f"{self.name}.json")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "logs", f"{self.name}.log")


class StageConflict(RuntimeError):
    """A stage's record holds another command: its outputs came from other settings."""


# Flags whose value is a file or folder: a record and a command name the same one if the paths
# resolve alike (a run dir given as runs/demo or in full is one run), each against its own cwd.
PATH_FLAGS = ("--dataset", "--index", "--relevance", "--out", "--run_dir", "--init",
              "--teacher_file", "--policy")


def resolved_command(command: Sequence[str], cwd: str) -> list[str]:
    """`command` with every path flag's value made absolute against `cwd` and resolved
    (--policy=NAME=DIR: the DIR part). e.g. --out=runs/demo -> --out=/home/me/leser/runs/demo."""
    out = []
    for arg in command:
        name, eq, value = arg.partition("=")
        if eq and name in PATH_FLAGS:
            label, sep, path = value.rpartition("=") if name == "--policy" else ("", "", value)
            arg = f"{name}={label}{sep}{os.path.realpath(os.path.join(cwd, path))}"
        out.append(arg)
    return out


def read_record(stage: Stage) -> dict | None:
    try:
        with open(stage.record) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(stage: Stage, **info) -> None:
    os.makedirs(os.path.dirname(stage.record), exist_ok=True)
    with open(stage.record + ".tmp", "w") as f:
        json.dump({"command": list(stage.command), "cwd": os.getcwd(), **info}, f, indent=1)
    os.replace(stage.record + ".tmp", stage.record)


def stage_state(stage: Stage) -> str:
    """'done' (skip it), 'todo' (run or resume it) or 'conflict' (another command's outputs)."""
    record = read_record(stage)
    if record is None:
        return "todo"
    if _recorded_command(record) != resolved_command(stage.command, os.getcwd()):
        return "conflict"
    return "done" if record.get("done") and os.path.exists(stage.output) else "todo"


def _recorded_command(record: dict) -> list[str]:
    """A record's command, resolved against the cwd it ran in (records from before cwd was
    recorded: this one)."""
    return resolved_command(record.get("command") or [], record.get("cwd") or os.getcwd())


def conflict_message(stages: Sequence[Stage]) -> str:
    """What differs in each conflicting stage's command, and what to do about it."""
    lines = []
    for stage in stages:
        old = _recorded_command(read_record(stage))
        new = resolved_command(stage.command, os.getcwd())
        lines.append(f"stage {stage.name} ({stage.record}) ran with "
                     f"{' '.join(c for c in old if c not in new) or '(other order)'}; this run "
                     f"asks for {' '.join(c for c in new if c not in old) or '(other order)'}")
    return "\n".join(lines + [
        "Their outputs and checkpoints come from those settings. Use another --run_dir (with "
        "--shared_dir to reuse the shared stages), or delete those stages' outputs and records "
        "and those of the stages after them."])


def launch(stage: Stage) -> None:
    """Runs `python -m <command>`, its stdout and stderr teed to the console and stage.log."""
    os.makedirs(os.path.dirname(stage.log), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    with open(stage.log, "ab") as log, subprocess.Popen(
            [sys.executable, "-m", *stage.command], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env) as proc:
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, stage.command)


def run_stage(stage: Stage, runner: Callable[[Stage], None] = launch) -> dict:
    """Skips a finished stage, else runs (or resumes) it; returns {name, seconds, skipped}."""
    state = stage_state(stage)
    if state == "conflict":
        raise StageConflict(conflict_message([stage]))
    if state == "done":
        print(f"[pipeline] {stage.name}: done ({stage.output}), skipped", flush=True)
        return {"name": stage.name, "seconds": read_record(stage).get("seconds"), "skipped": True}
    print(f"\n[pipeline] {stage.name}: {' '.join(stage.command)}", flush=True)
    write_record(stage, done=False)
    start = time.perf_counter()
    runner(stage)
    seconds = round(time.perf_counter() - start, 1)
    if not os.path.exists(stage.output):
        raise RuntimeError(f"stage {stage.name} exited without writing {stage.output}")
    write_record(stage, done=True, seconds=seconds)
    return {"name": stage.name, "seconds": seconds, "skipped": False}


def run_all(stages: Sequence[Stage], runners: dict[str, Callable[[Stage], None]] = {}
            ) -> list[dict]:
    """Checks every record first (a conflict stops the pipeline before anything runs), then
    runs the stages in order."""
    conflicts = [s for s in stages if stage_state(s) == "conflict"]
    if conflicts:
        raise StageConflict(conflict_message(conflicts))
    return [run_stage(s, runners.get(s.name, launch)) for s in stages]


# ----------------------------------------------------------------------------- the plan

@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the plan depends on (from the flags; tests build it directly)."""

    preset: str
    run_dir: str
    shared_dir: str
    dataset: str  # 'synthetic' or a folder
    dataset_flags: tuple[str, ...] = ()  # split fractions, --strict, --esci_locale
    reward_lambda: float = RewardConfig().lam
    reward_version: int = RewardConfig().version
    reward_size: str = RewardConfig().size
    context_k: int | None = None
    context_max_tokens: int | None = None
    warmup: bool = True
    grpo_no_warmup: bool = True
    num_rollouts: int = 4
    grpo_steps: int | None = None
    eval_temperature: float = 0.0
    compare: tuple[str, ...] = ()  # NAME=DIR: other policies evaluated beside this run's
    grpo_seeds: int = 1  # GRPO from the warm-up, once per seed 0..n-1

    def context(self) -> tuple[int, int]:
        """(k, token budget): the preset's, or the given k with a budget scaled to it (up to the
        preset's max_context_tokens), or the given budget."""
        p = configs.get(self.preset)
        k = p.context.k if self.context_k is None else self.context_k
        if self.context_max_tokens is not None:
            return k, self.context_max_tokens
        return k, min(round(p.context.max_tokens * k / p.context.k), p.max_context_tokens)


def plan(s: Settings) -> list[Stage]:
    """The stages in order, with their commands (see the module docstring)."""
    p = configs.get(s.preset)
    shared, run = s.shared_dir, s.run_dir
    data = os.path.join(shared, "dataset") if s.dataset == "synthetic" else s.dataset
    dataset = (f"--dataset={data}", *s.dataset_flags)
    index, relevance = os.path.join(shared, "index"), os.path.join(shared, "relevance")
    # The model that the warm-up and GRPO without warm-up start from: pretrained here, or the
    # instruction-tuned GGUF converted (the smol preset), never trained on a LESER prompt.
    pretrain = os.path.join(shared, "smollm2" if p.init_gguf else "pretrain")
    base = pretrain if p.init_gguf else os.path.join(pretrain, "params")
    few_shot = p.few_shot
    teacher_file = os.path.join(run, "teacher.jsonl")
    # Worked examples from the teacher's file (when this run writes one) for the systems that
    # were never fine-tuned on the LESER prompt.
    examples = (f"--teacher_file={teacher_file}",) if s.warmup else ()
    k, max_tokens = s.context()
    context = (f"--context_k={k}", f"--context_max_tokens={max_tokens}")
    # The teacher draws its candidates from the context: with none (k=0) it uses the preset's.
    teacher_context = context if k else (f"--context_k={p.context.k}",
                                         f"--context_max_tokens={p.context.max_tokens}")
    # Each launcher reads its defaults from the preset; its section is also spelled out, so a
    # stage record names every value it ran with (and an edited preset is not taken as done).
    preset = (f"--preset={s.preset}",)
    max_new_tokens = f"--max_new_tokens={p.max_new_tokens}"
    teacher_max = ((f"--teacher_max_expansions={p.teacher_max_expansions}",)
                   if p.teacher_max_expansions else ())  # else the answer format's m_max
    # Always spelled out: a record made under another default reward must not read as done.
    reward = (f"--reward_version={s.reward_version}", f"--reward_size={s.reward_size}",
              f"--reward_lambda={s.reward_lambda}")
    grpo_stage = dataclasses.replace(p.grpo, steps=cli.preset_or(s.grpo_steps, p.grpo.steps))
    grpo = ("experiments.grpo", *preset, *dataset, f"--index={index}",
            f"--relevance={relevance}", *context, *reward, f"--num_rollouts={s.num_rollouts}",
            max_new_tokens, *cli.as_flags(grpo_stage))

    def stage(name, command, output, root=run):
        return Stage(name, tuple(command), output, root)

    stages = []
    if s.dataset == "synthetic":
        stages.append(stage("dataset", ("dataset", *s.dataset_flags),
                            os.path.join(data, "dataset.json"), shared))
    stages += [
        stage("index", ("experiments.build_index", *dataset, f"--out={shared}"),
              os.path.join(shared, "stats.json"), shared),
        stage("relevance", ("experiments.train_relevance", *dataset, f"--out={relevance}"),
              os.path.join(relevance, "metrics.json"), shared),
        stage("pretrain", ("experiments.pretrain", *preset, *dataset, f"--run_dir={pretrain}",
                           *cli.as_flags(p.pretrain)),
              os.path.join(pretrain, "params", "config.json"), shared)
        if not p.init_gguf else
        stage("convert", ("tools.convert_gguf_llama", f"--out={pretrain}"),
              os.path.join(pretrain, "config.json"), shared)]
    zero_shot, format_stages = (), []
    if p.init_gguf:
        # The paper's format check before warm-up, without and with worked examples, and the
        # model as a prompted baseline in the evaluation (its few-shot form).
        for shots in sorted({0, few_shot}):
            out = os.path.join(run, f"format_{shots}_shot.json")
            format_stages.append(stage(f"format_{shots}_shot", (
                "experiments.measure_format", *preset, *dataset, f"--init={base}",
                f"--index={index}", *context, "--split=dev", "--num_queries=64", max_new_tokens,
                f"--examples={shots}",
                *(examples or (f"--relevance={relevance}",) if shots else ()),
                *teacher_max, f"--out={out}"), out))
        zero_shot = (f"--zero_shot=zero_shot={base}", f"--zero_shot_examples={few_shot}",
                     *(examples if few_shot else ()))
    policies, seed_group = [], ()
    if not s.warmup:
        stages += format_stages
    if s.warmup:
        stages += [
            stage("teacher", ("experiments.teacher", *preset, *dataset, f"--index={index}",
                              f"--relevance={relevance}", f"--out={teacher_file}",
                              *teacher_context, *reward, *(
                                  [f"--max_expansions={p.teacher_max_expansions}"]
                                  if p.teacher_max_expansions else [])),
                  teacher_file + ".summary.json"),
            *format_stages,
            stage("warmup", ("experiments.warmup", *preset, *dataset, f"--init={pretrain}",
                             f"--teacher_file={teacher_file}", f"--index={index}",
                             f"--run_dir={os.path.join(run, 'warmup')}", *context,
                             *cli.as_flags(p.warmup)),
                  os.path.join(run, "warmup", "format.json")),
            stage("grpo", (*grpo, f"--init={os.path.join(run, 'warmup', 'params')}",
                           f"--run_dir={os.path.join(run, 'grpo')}"),
                  os.path.join(run, "grpo", "DONE.json"))]
        policies += [f"--policy=warmup={os.path.join(run, 'warmup')}",
                     f"--policy=grpo={os.path.join(run, 'grpo')}"]
        # The same GRPO stage under other seeds (its queries, samples and LoRA init): the
        # evaluation summarises the differences over them (--seed_group).
        for seed in range(1, s.grpo_seeds):
            name = f"grpo_seed{seed}"
            stages.append(stage(name, (*grpo, f"--init={os.path.join(run, 'warmup', 'params')}",
                                       f"--run_dir={os.path.join(run, name)}", f"--seed={seed}"),
                                os.path.join(run, name, "DONE.json")))
            policies.append(f"--policy={name}={os.path.join(run, name)}")
        if s.grpo_seeds > 1:
            seed_group = ("--seed_group=" + ",".join(
                ["grpo"] + [f"grpo_seed{i}" for i in range(1, s.grpo_seeds)]),)
    if s.grpo_no_warmup:
        stages.append(stage("grpo_no_warmup", (
            *grpo, f"--init={base}", f"--run_dir={os.path.join(run, 'grpo_no_warmup')}",
            *((f"--few_shot={few_shot}", *examples) if few_shot else ())),
            os.path.join(run, "grpo_no_warmup", "DONE.json")))
        policies.append(f"--policy=grpo_no_warmup={os.path.join(run, 'grpo_no_warmup')}")
    compare = tuple(f"--policy={spec}" for spec in s.compare)
    stages.append(stage("evaluate", (
        "experiments.evaluate", *preset, *dataset, f"--index={index}",
        f"--relevance={relevance}", f"--out={run}", *context, *teacher_max, *reward,
        max_new_tokens,
        *((f"--temperature={s.eval_temperature}",) if s.eval_temperature else ()),
        f"--reference={'grpo' if s.warmup else 'grpo_no_warmup'}", *zero_shot, *policies,
        *compare, *seed_group,
        *((f"--num_queries={p.eval_queries}",) if p.eval_queries else ()),
        *(("--drop_duplicates",) if p.drop_duplicates else ())),
        os.path.join(run, "results.json")))
    return stages


def write_dataset(stage: Stage) -> None:
    """The dataset stage, in-process: the synthetic catalog in the canonical layout, so that
    every later stage reads the same files (and need not regenerate it)."""
    catalog = common.load_catalog()
    canonical.write(catalog, os.path.dirname(stage.output),
                    license="synthetic, generated by leser_jax")
    print(f"[dataset] {catalog!r} -> {os.path.dirname(stage.output)}")


def settings_from_flags() -> Settings:
    dataset = FLAGS.dataset
    preset = configs.get(FLAGS.preset)
    if not FLAGS["dataset"].present and preset.dataset != "synthetic":
        dataset = os.path.relpath(os.path.join(os.environ.get("LESER_DATA_DIR", DATA_DIR),
                                               preset.dataset))
    dataset_flags = [f"--dev_fraction={FLAGS.dev_fraction}",
                     f"--test_fraction={FLAGS.test_fraction}"]
    if dataset == "synthetic":
        # Only the dataset stage generates; what it generated is in its command (and record).
        dataset_flags = [f"--synthetic_seed={FLAGS.synthetic_seed}",
                         f"--synthetic_products={FLAGS.synthetic_products}",
                         f"--synthetic_queries={FLAGS.synthetic_queries}"] + dataset_flags
    else:
        dataset_flags += [f"--esci_locale={FLAGS.esci_locale}"] + (["--strict"] if FLAGS.strict
                                                                   else [])
    return Settings(preset=FLAGS.preset, run_dir=FLAGS.run_dir,
                    shared_dir=FLAGS.run_dir if FLAGS.shared_dir is None else FLAGS.shared_dir,
                    dataset=dataset,
                    dataset_flags=tuple(dataset_flags), reward_lambda=FLAGS.reward_lambda,
                    reward_version=int(FLAGS.reward_version), reward_size=FLAGS.reward_size,
                    context_k=FLAGS.context_k, context_max_tokens=FLAGS.context_max_tokens,
                    warmup=FLAGS.warmup, grpo_no_warmup=FLAGS.grpo_no_warmup,
                    num_rollouts=FLAGS.num_rollouts, grpo_steps=FLAGS.grpo_steps,
                    eval_temperature=FLAGS.eval_temperature, compare=tuple(FLAGS.compare),
                    grpo_seeds=FLAGS.grpo_seeds)


def main(argv):
    del argv
    settings = settings_from_flags()
    k, max_tokens = settings.context()
    print(f"[pipeline] context: k={k} products in at most {max_tokens} tokens "
          f"(teacher, warm-up, GRPO, evaluation)")
    stages = plan(settings)
    if FLAGS.dry_run:
        for s in stages:
            print(f"[{stage_state(s)}] {s.name}: {' '.join(s.command)}")
        return
    start = time.perf_counter()
    try:
        times = run_all(stages, runners={"dataset": write_dataset})
    except StageConflict as e:
        sys.exit(f"[pipeline] {e}")
    except subprocess.CalledProcessError as e:
        name = next(s for s in stages if s.command == tuple(e.cmd))
        sys.exit(f"[pipeline] stage {name.name} failed (exit {e.returncode}); its log is "
                 f"{name.log}. Rerun the same command to resume.")
    with open(os.path.join(settings.run_dir, "results.md")) as f:
        print("\n" + f.read())
    print("| stage | seconds | |\n|---|---|---|")
    for t in times:
        how = "skipped (done before)" if t["skipped"] else "ran"
        print(f"| {t['name']} | {t['seconds']} | {how} |")
    print(f"\n[pipeline] {time.perf_counter() - start:.0f} s; results, plots and logs in "
          f"{settings.run_dir}")


if __name__ == "__main__":
    cli.run(main)
