"""GRPO with the search engine in the loop: LESER's RL stage.

    python -m experiments.grpo --preset=demo --dataset=synthetic --init=runs/demo/warmup/params --index=runs/demo/index --relevance=runs/demo/relevance --run_dir=runs/demo/grpo

Each step samples --queries_per_step train queries, renders their prompts (each query's top-k
products as context), samples --num_rollouts completions per prompt at --temperature, rewards
every completion with r = r_rel + lambda * r_size (leser_jax.reward: Tantivy + the relevance
model, never the human judgments), and makes --mu updates of the clipped GRPO loss with a KL
penalty towards the --init model, which stays frozen as the reference (leser_jax.grpo_trainer).

--init: a warm-up checkpoint (experiments.warmup's RUN_DIR/params), a pretrained-only one
(experiments.pretrain's: the paper's "GRPO without warm-up" ablation), or converted LLaMA weights
(tools/convert_hf_llama.py, tools/convert_gguf_llama.py). --few_shot=K shows K worked examples
(teacher answers to train queries, from --teacher_file or written at start) before every prompt:
GRPO without warm-up from an instruction-tuned model, which then parses some answers before any
fine-tuning; the run records them, and evaluation shows them again. The context flags must be
those the warm-up used (the preset's): the policy was taught to read that prompt. --lora_rank=R
trains LoRA adapters on the frozen --init model instead of all its weights (the reference is then
that same base, adapters off: one copy of the weights, for LLaMA 3.2 3B on one accelerator;
tools/memory_plan.py).

Writes into --run_dir: metrics.jsonl and tb/ (one record per step: reward and its parts, format
validity and rejection reasons, KL, clip fraction, entropy, completion length, seconds by phase;
dev/* every --eval_every steps), checkpoints/ (rerun the same command after a crash: it resumes
at the last checkpoint with the same queries and keys), params/ (the final policy with its
tokenizer, LoRA adapters merged into the weights: what experiments.evaluate and measure_format
read) and DONE.json (the run's summary, written last).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags, logging

from experiments import cli, common, configs
from leser_jax import checkpoint, run_log
from leser_jax.context import ContextConfig
from leser_jax.grpo import GRPOConfig
from leser_jax.grpo_trainer import GRPOLoopConfig, GRPOTrainer
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.prompts import AnswerFormat
from leser_jax.relevance import RelevanceModel
from leser_jax.reward import RewardConfig, RewardFunction, SearchFeedback
from leser_jax.teacher import Teacher

common.define_preset_flag()
common.define_dataset_flags()
common.define_optim_flags()
common.define_mesh_flags()
common.define_lora_flags()
common.define_context_flags()
common.define_reward_flags()
common.define_few_shot_flags()
# --steps, --queries_per_step, --lr, --lora_rank, --eval_every, ...: the preset's GRPO run.
STAGE_FLAGS = cli.define_flags(configs.GRPO, lambda: common.preset().grpo)
# --num_rollouts, --temperature, --clip_eps, --kl_coef, ...: the algorithm (GRPOConfig's
# defaults); B, its micro-batches and the answer length come from the stage and the preset.
ALGORITHM_FLAGS = cli.define_flags(GRPOConfig, lambda: _algorithm(), from_preset=False,
                                   exclude=("queries_per_step", "micro_batches", "max_new_tokens"))
flags.DEFINE_integer("max_new_tokens", None, "Longest completion (default: the preset's).",
                     lower_bound=1)
flags.DEFINE_string("run_dir", None, "Output folder of this stage.", required=True)
flags.DEFINE_string("init", None, "Start policy and reference: a params checkpoint with its "
                    "tokenizer, or a run dir holding one at DIR/params.", required=True)
flags.DEFINE_string("relevance", None, "Folder of a model from experiments.train_relevance.",
                    required=True)
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (else built in "
                    "memory).")
flags.DEFINE_integer("samples_every", 10, "Log rollout texts every this many steps (0: never).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seeds each step's queries and sampling keys (with the step).",
                     lower_bound=0)
flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of 3 steady-state steps.")
FLAGS = flags.FLAGS


def _algorithm() -> GRPOConfig:
    """GRPOConfig's defaults with the run's B, micro-batches and answer length (the algorithm
    flags' base)."""
    stage = cli.override(common.preset().grpo, STAGE_FLAGS)
    return GRPOConfig(
        queries_per_step=stage.queries_per_step, micro_batches=stage.micro_batches,
        max_new_tokens=cli.preset_or(FLAGS.max_new_tokens, common.preset().max_new_tokens))


def configs_from_flags() -> tuple[configs.GRPO, GRPOConfig, OptimConfig, RewardConfig,
                                  ContextConfig, GRPOLoopConfig]:
    stage = cli.override(common.preset().grpo, STAGE_FLAGS)
    grpo = cli.override(_algorithm(), ALGORITHM_FLAGS)
    updates = stage.steps * grpo.mu  # the schedule counts optimizer updates
    # updates - 1 >= 0 since steps and mu are >= 1 (a run of one update has no warmup).
    optim = OptimConfig(lr=stage.lr, total_steps=updates,
                        warmup_steps=min(stage.warmup_steps, updates - 1),
                        weight_decay=stage.weight_decay, master_fp32=FLAGS.master_fp32)
    loop = GRPOLoopConfig(total_steps=stage.steps, checkpoint_every=stage.checkpoint_every,
                          keep_checkpoints=stage.keep_checkpoints, eval_every=stage.eval_every,
                          eval_queries=stage.eval_queries, samples_every=FLAGS.samples_every,
                          seed=FLAGS.seed, profile_dir=FLAGS.profile_dir)
    return stage, grpo, optim, common.reward_config(), common.context_config(), loop


def main(argv):
    del argv
    run_log.quiet_library_logs()
    mesh = common.setup_mesh()  # None on one device
    start = time.perf_counter()
    stage, grpo, optim, reward, context, loop = configs_from_flags()
    run_configs = {"grpo": grpo, "optim": optim, "reward": reward, "context": context, "loop": loop}
    for name, c in run_configs.items():
        common.log_config(name, c)

    init_model, _, tokenizer = checkpoint.load_init(FLAGS.init)
    init_model = common.training_model(init_model, stage.lora_rank)
    model_config = init_model.config
    common.log_config("model", model_config)
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    relevance = RelevanceModel.load(FLAGS.relevance, engine)
    reward_fn = RewardFunction(SearchFeedback(engine, relevance, reward))
    examples = common.worked_examples(
        FLAGS.few_shot, catalog=catalog, engine=engine, context=context,
        teacher_file=FLAGS.teacher_file, seed=FLAGS.few_shot_seed,
        teacher=Teacher(engine, relevance, context=context, reward=reward))
    tx, schedule = make_optimizer(optim)
    saved = {name: dataclasses.asdict(c) for name, c in run_configs.items()}
    saved.update(model=model_config.to_dict(), data={"dataset": FLAGS.dataset, "init": FLAGS.init,
                                                     "relevance": FLAGS.relevance})
    # Recorded with every checkpoint: a resume must show the same examples, and evaluation shows
    # the policy the prompt it was trained on (evaluation.trained_examples).
    saved["few_shot"] = [dataclasses.asdict(t) for t in examples]
    trainer = GRPOTrainer(
        FLAGS.run_dir, init_model=init_model, tokenizer=tokenizer, reward_fn=reward_fn,
        train_queries=catalog.split("train"), dev_queries=catalog.split("dev"), catalog=catalog,
        grpo_config=grpo, tx=tx, schedule=schedule, context=context, answer=AnswerFormat(),
        loop=loop, configs=saved, examples=examples, mesh=mesh)
    del init_model  # the trainer holds what it needs (with LoRA: nothing, after a resume)
    trainer.run()
    out = checkpoint.save_params(os.path.join(FLAGS.run_dir, "params"), trainer.policy(),
                                 overwrite=True, tokenizer=tokenizer)
    summary = {"steps": loop.total_steps, "seconds": round(time.perf_counter() - start, 1),
               "params": "params", "configs": saved}
    summary.update(trainer.summary())
    with open(os.path.join(FLAGS.run_dir, "DONE.json"), "w") as f:
        json.dump(summary, f, indent=1)
    logging.info("wrote %s", out)
    print(f"GRPO: {loop.total_steps} steps in {summary['seconds']:.0f} s; reward "
          f"{summary['reward_first']:.3f} (first {summary['window']} steps) -> "
          f"{summary['reward_last']:.3f} (last {summary['window']}); wrote {out}")


if __name__ == "__main__":
    cli.run(main)
