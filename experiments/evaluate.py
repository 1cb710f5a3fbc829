"""Evaluates query-expansion systems side by side on held-out queries (the paper's results table).

    python -m experiments.evaluate --dataset=synthetic --index=runs/demo/index --relevance=runs/demo/relevance --out=runs/demo --policy=warmup=runs/demo/warmup --policy=grpo=runs/demo/grpo --policy=grpo_no_warmup=runs/demo/grpo_no_warmup

Systems, in this order: `original` (the query alone, Y = {}), `rm3` (pseudo-relevance feedback,
leser_jax.baselines), `teacher` (the search-guided teacher the warm-up imitates; it optimises the
reward with the relevance model, never the judgments), every --zero_shot NAME=PATH (a model that
was never fine-tuned, e.g. SmolLM2-135M-Instruct as a GGUF file or as converted by
tools.convert_gguf_llama, given the LESER prompt in its chat template after
--zero_shot_examples worked examples: the format check before warm-up, and the stand-in for the
paper's prompted-LLM baseline) and every --policy NAME=DIR (a params checkpoint with its
tokenizer, or a run dir holding one at DIR/params; greedy decoding, the prompt it was trained
on). For each, on the --split queries: relevance gain, retrieval gain,
judged recall, judged nDCG@10, format validity, expansions per answer (95% bootstrap intervals
over queries) and generation latency per query; then --reference (warm-up + GRPO) minus each
other system, paired over the same queries (leser_jax.evaluation).

The worked examples are teacher answers to train queries drawn in a seeded order
(sft.few_shot_turns): looked up in --teacher_file if given, else written by the teacher baseline
at start (a few seconds). A zero-shot SmolLM2 with two examples:

    python -m tools.convert_gguf_llama --out=runs/smollm2
    python -m experiments.evaluate --dataset=synthetic --index=runs/demo/index --relevance=runs/demo/relevance --out=runs/smol_eval --baselines=original --zero_shot=smol_2shot=runs/smollm2 --zero_shot_examples=2 --max_new_tokens=128 --reference=smol_2shot

A policy needs to decode its answers only once: --recorded NAME=DIR[:SYSTEM] replays what
SYSTEM wrote in an earlier evaluation's DIR/answers.jsonl, measured again here (latency n/a; a
warning if a query's judged recall differs from the recorded one). A GRPO seed trained later
joins the earlier ones, summarised over seeds by --seed_group:

    python -m experiments.evaluate --dataset=synthetic --index=runs/demo/index --relevance=runs/demo/relevance --out=runs/demo_seeds --baselines=original,rm3 --recorded=warmup=runs/demo:warmup --recorded=grpo=runs/demo:grpo --policy=grpo_seed1=runs/demo/grpo_seed1 --reference=grpo --seed_group=grpo,grpo_seed1

Did GRPO learn the queries it trained on, or fail to carry that to new ones? --trained_by=RUN
evaluates on the train queries the finished GRPO run RUN drew, beside its warm-up:

    python -m experiments.evaluate --dataset=synthetic --index=runs/demo/index --relevance=runs/demo/relevance --out=runs/demo_seen --split=train --trained_by=runs/demo/grpo --baselines=original --policy=warmup=runs/demo/warmup --policy=grpo=runs/demo/grpo

The context flags must be those the policies were trained with: a policy's run records them in
its checkpoints, and a mismatch is an error. The teacher flags should be those that wrote the
warm-up data. Writes OUT/results.json, OUT/results.md, OUT/answers.jsonl (every system's
expansions per query, with the judged numbers they scored: `python -m tools.show_answers
--results=OUT` prints them by query kind), OUT/gains.png and, when a policy's run dir has GRPO
metrics, OUT/grpo_training.png (reward, KL and validity over steps); prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging

from experiments import cli, common
from leser_jax import evaluation, grpo_trainer, plots, run_log
from leser_jax.baselines import RM3Config
from leser_jax.relevance import RelevanceModel
from leser_jax.reward import SearchFeedback
from leser_jax.teacher import Teacher, TeacherConfig

common.define_preset_flag()
common.define_dataset_flags()
common.define_context_flags()
common.define_reward_flags()
flags.DEFINE_string("out", None, "Output folder: results.json, results.md, answers.jsonl, *.png.",
                    required=True)
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (else built in "
                    "memory).")
flags.DEFINE_string("relevance", None, "Folder of a model from experiments.train_relevance.",
                    required=True)
flags.DEFINE_multi_string("policy", [], "NAME=DIR: a policy checkpoint to evaluate (repeatable).")
flags.DEFINE_multi_string("zero_shot", [], "NAME=PATH: a model never fine-tuned (a GGUF file or a "
                          "converted params dir) prompted with the LESER prompt in its chat "
                          "template, after --zero_shot_examples worked examples (repeatable).")
flags.DEFINE_multi_string("recorded", [], "NAME=DIR[:SYSTEM]: the answers SYSTEM (default NAME) "
                          "wrote in an earlier evaluation's DIR/answers.jsonl, measured again "
                          "here without decoding, e.g. the warm-up and GRPO seed 0 beside a new "
                          "seed (repeatable; same --split and --num_queries).")
common.define_few_shot_flags("zero_shot_examples")
flags.DEFINE_bool("drop_duplicates", False, "Also report each model as NAME+dedup: its same "
                  "answers with repeated expansions dropped instead of rejected (how a deployed "
                  "system would use them), beside the strict parse of the reward.")
flags.DEFINE_list("seed_group", [], "Systems that differ only in a seed (e.g. grpo,grpo_seed1,"
                  "grpo_seed2): their differences to the warm-up, RM3 and the original query "
                  "summarised over seeds (mean and range).")
flags.DEFINE_list("baselines", list(evaluation.BASELINES), "Baseline systems to include.")
flags.DEFINE_string("reference", "grpo", "System the others are compared with, paired.")
flags.DEFINE_enum("split", "test", ["train", "dev", "test"], "Queries to evaluate on.")
flags.DEFINE_integer("num_queries", 0, "Evaluate the first this many queries (0 = all).",
                     lower_bound=0)
flags.DEFINE_string("trained_by", None, "A finished GRPO run's folder: evaluate on the train "
                    "queries its steps drew (first draw first; then --num_queries cuts them), "
                    "to tell learning those queries from generalising. Needs --split=train.")
flags.DEFINE_integer("max_new_tokens", None, "Longest policy answer (default: the "
                     "preset's, which GRPO samples).",
                     lower_bound=1)
flags.DEFINE_float("temperature", 0.0, "Policies' decoding: 0 = greedy, else sampled at this "
                   "temperature (GRPO's rollouts use 0.9), with the seed of --seed.",
                   lower_bound=0)
flags.DEFINE_integer("batch_size", 32, "Queries per system call.", lower_bound=1)
flags.DEFINE_integer("teacher_max_expansions", None, "Teacher: most expansions per answer "
                     "(default: the preset's, else m_max).",
                     lower_bound=1)
flags.DEFINE_integer("teacher_max_candidates", TeacherConfig().max_candidates,
                     "Teacher: candidates per query.", lower_bound=1)
flags.DEFINE_bool("teacher_whole_query", TeacherConfig().whole_query, "Teacher: also join each "
                  "context phrase with every query word (the teacher's --whole_query).")
flags.DEFINE_bool("teacher_head_join", TeacherConfig().head_join, "Teacher: join each context "
                  "phrase with the head terms (the teacher's --head_join).")
flags.register_multi_flags_validator(
    ["teacher_head_join", "teacher_whole_query"],
    lambda f: f["teacher_head_join"] or f["teacher_whole_query"],
    "--noteacher_head_join needs --teacher_whole_query")
flags.DEFINE_integer("rm3_expansions", RM3Config().num_expansions, "RM3: expansions per answer "
                     "(a policy's answer may hold up to m_max; compare at equal searches).",
                     lower_bound=1)
flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples of the queries.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Bootstrap seed.", lower_bound=0)
flags.register_multi_flags_validator(
    ["trained_by", "split"], lambda f: not f["trained_by"] or f["split"] == "train",
    "--trained_by needs --split=train")
FLAGS = flags.FLAGS


def parse_recorded(specs: list[str]) -> dict[str, evaluation.Recorded]:
    """{name: Recorded} from --recorded NAME=DIR[:SYSTEM] specs."""
    recorded = {}
    for name, spec in cli.parse_named(specs, "recorded").items():
        path, sep, system = spec.rpartition(":")
        if not sep:  # NAME=DIR: the system of the same name
            path, system = spec, name
        try:
            recorded[name] = evaluation.read_recorded(path, system)
        except (OSError, ValueError) as e:  # before any work: a usage error, not a traceback
            raise app.UsageError(f"--recorded={name}={spec}: {e}") from e
    return recorded


def grpo_draws(run_dir: str) -> tuple[int, int, int]:
    """(queries a step, seed, steps) of a finished GRPO run, from its DONE.json: what
    grpo_trainer.drawn_queries needs to list the train queries the run saw."""
    try:
        with open(os.path.join(run_dir, "DONE.json")) as f:
            configs = json.load(f)["configs"]
        return (configs["grpo"]["queries_per_step"], configs["loop"]["seed"],
                configs["loop"]["total_steps"])
    except (OSError, ValueError, KeyError) as e:
        raise app.UsageError(f"--trained_by={run_dir}: not a finished GRPO run ({e})") from e


def main(argv):
    del argv
    run_log.quiet_library_logs()
    start = time.perf_counter()
    policies = cli.parse_named(FLAGS.policy, "policy")
    zero_shot = cli.parse_named(FLAGS.zero_shot, "zero_shot")
    recorded = parse_recorded(FLAGS.recorded)
    draws = grpo_draws(FLAGS.trained_by) if FLAGS.trained_by else None
    context = common.context_config()
    reward = common.reward_config()
    preset = common.preset()
    max_new_tokens = cli.preset_or(FLAGS.max_new_tokens, preset.max_new_tokens)
    teacher_config = TeacherConfig(
        max_candidates=FLAGS.teacher_max_candidates, whole_query=FLAGS.teacher_whole_query,
        head_join=FLAGS.teacher_head_join,
        max_expansions=cli.preset_or(FLAGS.teacher_max_expansions, preset.teacher_max_expansions))
    rm3 = RM3Config(num_expansions=FLAGS.rm3_expansions)
    for name, c in (("context", context), ("reward", reward), ("teacher", teacher_config),
                    ("rm3", rm3)):
        common.log_config(name, c)
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    relevance = RelevanceModel.load(FLAGS.relevance, engine)
    queries = catalog.split(FLAGS.split)
    if draws:
        queries = grpo_trainer.drawn_queries(queries, *draws)
    queries = queries[:FLAGS.num_queries] if FLAGS.num_queries else queries
    examples = common.worked_examples(
        FLAGS.zero_shot_examples if zero_shot else 0, catalog=catalog, engine=engine,
        context=context, teacher_file=FLAGS.teacher_file, seed=FLAGS.zero_shot_examples_seed,
        teacher=Teacher(engine, relevance, context=context, reward=reward, config=teacher_config))
    systems = evaluation.make_systems(FLAGS.baselines, policies, engine, relevance,
                                      context=context, reward=reward, teacher=teacher_config,
                                      rm3=rm3, max_new_tokens=max_new_tokens,
                                      temperature=FLAGS.temperature, zero_shot=zero_shot,
                                      examples=examples, recorded=recorded,
                                      drop_duplicates=FLAGS.drop_duplicates)
    feedback = SearchFeedback(engine, relevance, reward)
    results, reasons = evaluation.evaluate_systems(systems, queries, catalog, feedback,
                                          batch_size=FLAGS.batch_size,
                                          bootstrap_samples=FLAGS.bootstrap_samples,
                                          seed=FLAGS.seed)
    for name, system in recorded.items():
        changed = system.disagreements([q.text for q in queries],
                                       results[name].per_query["judged_recall"])
        if changed:
            logging.warning("recorded %s: %d of %d queries score another judged recall than "
                            "when recorded (another catalog, index or --reward_k?)", name,
                            changed, len(queries))
    # Judged recall is defined where a query has a judged-relevant product: the same queries for
    # every system.
    judged = next(iter(results.values())).metrics["judged_recall"].n
    description = (
        f"{len(queries)} {FLAGS.split} queries of {catalog.name} ({judged} with a judged-relevant "
        f"product); context k={context.k}, {context.max_tokens} tokens; {reward.describe()}; "
        f"policies decode "
        f"{'greedily' if FLAGS.temperature == 0 else f'at temperature {FLAGS.temperature}'} "
        f"(up to {max_new_tokens} tokens), "
        f"latency in batches of {FLAGS.batch_size} (first call of each size, which compiles, "
        "left out). Means with 95% bootstrap intervals over queries."
        + (f" Zero-shot systems ({', '.join(zero_shot)}): never fine-tuned, the prompt in their "
           f"chat template after {len(examples)} worked examples (teacher answers to train "
           "queries)." if zero_shot else ""))
    info = {"description": description, "split": FLAGS.split, "queries": len(queries),
            "dataset": FLAGS.dataset, "context": dataclasses.asdict(context),
            "reward": dataclasses.asdict(reward), "teacher": dataclasses.asdict(teacher_config),
            "rm3": dataclasses.asdict(rm3),
            "max_new_tokens": max_new_tokens, "temperature": FLAGS.temperature,
            "batch_size": FLAGS.batch_size,
            "policies": policies, "zero_shot": zero_shot, "recorded": FLAGS.recorded,
            "zero_shot_examples": [{"prompt": t.prompt, "answer": t.answer} for t in examples],
            "seconds": round(time.perf_counter() - start, 1)}
    table = evaluation.write_results(FLAGS.out, evaluation.results_dict(
        results, reference=FLAGS.reference, reasons=reasons, info=info,
        seed_group=FLAGS.seed_group, bootstrap_samples=FLAGS.bootstrap_samples, seed=FLAGS.seed))
    evaluation.write_answers(FLAGS.out, queries, results)
    written = [plots.plot_gains(evaluation.read_results(FLAGS.out),
                                os.path.join(FLAGS.out, "gains.png"))]
    curves = {}
    for name, path in policies.items():
        metrics_file = evaluation.run_dir_of(path) / run_log.METRICS_FILE
        records = plots.read_jsonl(metrics_file) if metrics_file.is_file() else []
        if any("reward" in r for r in records):  # GRPO's log (a warm-up's has a loss only)
            curves[name] = records
    if curves:
        written.append(plots.plot_training(curves, os.path.join(FLAGS.out, "grpo_training.png")))
    print("\n" + table)
    print(f"wrote {os.path.join(FLAGS.out, 'results.json')}, results.md, answers.jsonl, "
          f"{', '.join(os.path.basename(w) for w in written)} in "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli.run(main)
