"""Benchmark: one GRPO step by phase (rollout, reward, update), steady state.

    taskset -c 0,1 .venv/bin/python -m tools.bench_grpo --preset=demo --dataset=synthetic --init=runs/demo/warmup/params --relevance=runs/demo/relevance

Runs --warmup steps (they compile) and then --steps measured steps of GRPOTrainer.train_step in a
scratch run directory, with --preset's B queries, max_new_tokens and context (N rollouts).
Prints seconds by phase (rollout split into prefill and decode), rollouts/s, sampled tokens/s
and the reward's share of the step. A warmed-up --init gives realistic completion lengths and
valid answers (the reward phase does nothing for answers that do not parse).

Also times the update alone two ways on the last step's rollouts: prompts shared by each group
(grpo.completion_logprobs runs a group's prompt once) and the same batch with the prompt
repeated for every rollout, which is what running each [prompt, completion] alone costs.
"""

from __future__ import annotations

import os
import statistics
import tempfile

import jax
import numpy as np
from absl import flags

from experiments import cli, common
from leser_jax import checkpoint
from leser_jax.grpo import GRPOConfig
from leser_jax.grpo_trainer import GRPOLoopConfig, GRPOTrainer, grpo_update
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.prompts import AnswerFormat
from leser_jax.relevance import RelevanceModel
from leser_jax.reward import RewardConfig, RewardFunction, SearchFeedback
from tools.timing import timed

common.define_preset_flag()
common.define_dataset_flags()
common.define_context_flags()
flags.DEFINE_string("init", None, "Policy params checkpoint (with tokenizer).", required=True)
flags.DEFINE_string("relevance", None, "Relevance model folder.", required=True)
flags.DEFINE_string("index", None, "Index folder (else built in memory).")
flags.DEFINE_integer("queries_per_step", None, "Queries per step [B] (default: the preset's).",
                     lower_bound=1)
flags.DEFINE_integer("num_rollouts", 4, "Rollouts per query [N].", lower_bound=2)
flags.DEFINE_integer("max_new_tokens", None, "Longest completion (default: the preset's).",
                     lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Steps run first and not measured (compiles).", lower_bound=0)
flags.DEFINE_integer("steps", 5, "Measured steps.", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model, _, tokenizer = checkpoint.load_init(FLAGS.init)
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    reward_fn = RewardFunction(SearchFeedback(engine, RelevanceModel.load(FLAGS.relevance, engine),
                                              RewardConfig()))
    preset = common.preset()
    config = GRPOConfig(
        queries_per_step=cli.preset_or(FLAGS.queries_per_step, preset.grpo.queries_per_step),
        num_rollouts=FLAGS.num_rollouts,
        max_new_tokens=cli.preset_or(FLAGS.max_new_tokens, preset.max_new_tokens))
    total = FLAGS.warmup + FLAGS.steps
    tx, schedule = make_optimizer(OptimConfig(lr=1e-5, total_steps=total, warmup_steps=0))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = GRPOTrainer(
            run_dir, init_model=model, tokenizer=tokenizer, reward_fn=reward_fn,
            train_queries=catalog.split("train"), dev_queries=[], catalog=catalog,
            grpo_config=config, tx=tx, schedule=schedule,
            context=common.context_config(),
            answer=AnswerFormat(), loop=GRPOLoopConfig(total_steps=total, samples_every=0),
            configs={})
        records = []
        for step in range(total):
            metrics, _, _ = trainer.train_step(step)
            if step >= FLAGS.warmup:
                records.append(metrics)
        batch = trainer.last_batch

    def median(name):
        return statistics.median(r[name] for r in records)

    R = config.queries_per_step * config.num_rollouts
    P = batch.prompt_tokens.shape[1]
    T = batch.completion_tokens.shape[1]
    print(f"load average: {os.getloadavg()[0]:.2f}; {FLAGS.steps} steps after {FLAGS.warmup}; "
          f"{R} rollouts = {config.queries_per_step} queries x {config.num_rollouts}; prompt "
          f"bucket {P}, completions {median('length'):.0f} tokens on average (max {T}); "
          f"valid {median('valid'):.0%}")
    step_s = median("step_s")
    rows = [("rollout", median("rollout_s")), ("  prefill", median("prefill_s")),
            ("  decode", median("decode_s")), ("reward", median("reward_s")),
            ("update (ref log-probs + mu updates)", median("update_s")), ("step", step_s)]
    print("| phase | s (median) | share of step |")
    print("|-------|-----------:|--------------:|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {s / step_s:.1%} |")
    print(f"rollouts/s {R / step_s:.1f}; sampled tokens/s {median('tok_s'):,.0f}")

    # The update alone: group-shared prompts against a prompt per rollout.
    update = grpo_update(trainer.graphdef, tx, schedule, config)
    tiled = batch.replace(prompt_tokens=np.repeat(batch.prompt_tokens, config.num_rollouts, 0),
                          prompt_mask=np.repeat(batch.prompt_mask, config.num_rollouts, 0))
    print("| update alone | s (best of 3) |")
    print("|--------------|--------------:|")
    for name, b in (("prompt once per group", batch), ("prompt per rollout", tiled)):
        state = jax.tree.map(lambda x: x.copy(), trainer.state)
        (state, _), _ = timed(update, state, b)  # compiles for this shape
        best = float("inf")
        for _ in range(3):
            (state, _), seconds = timed(update, state, b)
            best = min(best, seconds)
        print(f"| {name} | {best:.3f} |")


if __name__ == "__main__":
    cli.run(main)
