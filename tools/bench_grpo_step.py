"""Benchmark: one GRPO step of a model preset on synthetic rollouts: tokens/s and MFU by phase.

    python -m tools.bench_grpo_step --preset=llama3_2_1b --queries=32 --num_rollouts=4

The model step of GRPO without the search engine: random weights of --preset (bf16 for the
LLaMA presets, with the float32 master copy and AdamW state of optim.make_optimizer), Q random
prompts of P tokens, each sampled N times at temperature 0.9 for exactly T tokens (stop ids
that never occur, so the counts are exact), random rewards -> group advantages, the reference
model's log-probs (a second copy of the weights, as GRPOTrainer holds without LoRA), and one
update (grpo_trainer.grpo_update: the jitted, donating train step with grpo.rollout_loss). The
reward phase is tools/bench_reward's and tools/bench_grpo's business; here it is the few
microseconds of a random draw.

MFU = model FLOPs / (seconds x peak), with the FLOPs of `config.flops_per_token` (2N per token
forward plus attention, x3 for a training step) and the peak of an N^3 matmul in the model's
dtype measured in the same run. Phases:
  rollout:   prefill of the Q prompts (once per group) + R*T decode tokens at context ~P + T/2
  reference: forward over the Q prompts + R*T completion tokens (grpo.completion_logprobs)
  update:    forward + backward over the same tokens, plus the optimizer (x3 the forward;
             x2 with LoRA: no weight gradients for the frozen base)
Each phase is timed after block_until_ready; the first --warmup steps compile and are dropped;
the medians of --steps steps are printed.
"""

from __future__ import annotations

import os
import statistics

import jax
import numpy as np
from absl import flags
from flax import nnx

from experiments import cli
from leser_jax import grpo, sampler
from leser_jax.config import ModelConfig, flops_per_token, param_count
from leser_jax.grpo import GRPOConfig
from leser_jax.grpo_trainer import grpo_update, reference_logprobs
from leser_jax.lora import add_lora
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.sampler import SamplingConfig
from leser_jax.train import init_train_state
from tools.timing import matmul_peak_flops, timed
from tools.weights import random_model

flags.DEFINE_string("preset", "demo", "ModelConfig preset (llama3_2_1b on a GPU).")
flags.DEFINE_integer("queries", 8, "Q: prompts per step.", lower_bound=1)
flags.DEFINE_integer("num_rollouts", 4, "N: completions per prompt (R = Q * N rows).",
                     lower_bound=2)
flags.DEFINE_integer("prompt_len", 256, "P: prompt tokens.", lower_bound=1)
flags.DEFINE_integer("new_tokens", 96, "T: tokens every completion writes.", lower_bound=1)
flags.DEFINE_integer("lora_rank", 0, "LoRA rank (0 = full fine-tuning).", lower_bound=0)
flags.DEFINE_bool("remat", False, "Rematerialise each block's activations in the update.")
flags.DEFINE_integer("warmup", 1, "Steps run first and not measured (they compile).", lower_bound=0)
flags.DEFINE_integer("steps", 3, "Measured steps.", lower_bound=1)
flags.DEFINE_integer("peak_size", None, "N of the N^3 peak matmul; default 2048 on a CPU, 8192 "
                     "on an accelerator.", lower_bound=1)
FLAGS = flags.FLAGS


def step_flops(config: ModelConfig, Q: int, R: int, P: int, T: int) -> dict[str, float]:
    """Model FLOPs of each phase (module docstring). With LoRA the update's backward computes
    the activations' gradients but no weight gradient of the frozen base: 2 forwards, not 3
    (the adapters' own matmuls are under 1% and not counted)."""
    prompt = Q * P * flops_per_token(config, P, training=False)
    completions = R * T * flops_per_token(config, P + T // 2, training=False)
    backward = 1 if config.lora_rank else 2
    return {"rollout": prompt + completions, "reference": prompt + completions,
            "update": (1 + backward) * (prompt + completions)}


def main(argv):
    del argv
    config = getattr(ModelConfig, FLAGS.preset)().replace(remat=FLAGS.remat)
    Q, N, P, T = FLAGS.queries, FLAGS.num_rollouts, FLAGS.prompt_len, FLAGS.new_tokens
    R = Q * N
    peak_size = FLAGS.peak_size
    if peak_size is None:
        peak_size = 2048 if jax.default_backend() == "cpu" else 8192
    peak = matmul_peak_flops(peak_size, 10, config.dtype)
    grpo_config = GRPOConfig(queries_per_step=Q, num_rollouts=N, max_new_tokens=T)
    sampling = SamplingConfig(temperature=grpo_config.temperature, max_new_tokens=T)
    tx, schedule = make_optimizer(OptimConfig(lr=1e-6, warmup_steps=0, total_steps=1000))

    model = random_model(config)
    # The reference: a copy of the start weights (with LoRA, the base itself: no copy).
    ref_params = None if FLAGS.lora_rank else jax.tree.map(jax.numpy.copy, nnx.state(model))
    if FLAGS.lora_rank:
        model = add_lora(model, rank=FLAGS.lora_rank, alpha=2.0 * FLAGS.lora_rank)
    graphdef, state = init_train_state(model, tx, seed=0)
    update = grpo_update(graphdef, tx, schedule, grpo_config)
    never = sampler.stop_id_array([config.vocab_size])  # no token has this id
    rng = np.random.default_rng(0)

    records = []
    for step in range(FLAGS.warmup + FLAGS.steps):
        prompts = rng.integers(4, config.vocab_size, (Q, P)).astype(np.int32)  # [Q, P]
        mask = np.ones((Q, P), bool)
        key = jax.random.fold_in(jax.random.key(0), step)
        s, prefill_s = timed(lambda: sampler.prefill(
            graphdef, state.params, prompts, mask, key, sampling, stop_ids=never, pad_id=0,
            num_rollouts=N))
        s, decode_s = timed(lambda: sampler.decode(graphdef, state.params, s, sampling,
                                                   stop_ids=never, pad_id=0))
        samples = sampler.finish(s)
        assert int(samples.lengths.min()) == T, "a row stopped early: counts would be wrong"
        rewards = rng.random(R).astype(np.float32)  # [R]
        batch = grpo.RolloutBatch(prompt_tokens=prompts, prompt_mask=mask,
                                  completion_tokens=samples.tokens,
                                  completion_mask=samples.mask, old_logp=samples.logprobs,
                                  advantages=grpo.group_advantages(rewards, N))
        ref = state.params if FLAGS.lora_rank else ref_params
        ref_logp, reference_s = timed(
            reference_logprobs, graphdef, ref, batch, grpo_config.temperature)
        batch = batch.replace(ref_logp=ref_logp)
        (state, metrics), update_s = timed(update, state, batch)
        assert np.isfinite(float(metrics["loss"])), metrics
        if step >= FLAGS.warmup:
            records.append({"prefill": prefill_s, "decode": decode_s,
                            "rollout": prefill_s + decode_s, "reference": reference_s,
                            "update": update_s})
        print(f"step {step}: " + ", ".join(f"{k} {v:.3f} s" for k, v in
                                           (("rollout", prefill_s + decode_s),
                                            ("reference", reference_s), ("update", update_s))),
              flush=True)

    median = {k: statistics.median(r[k] for r in records) for k in records[0]}
    step_s = median["rollout"] + median["reference"] + median["update"]
    flops = step_flops(model.config, Q, R, P, T)
    trained = "all" if not FLAGS.lora_rank else f"LoRA r={FLAGS.lora_rank}"
    print(f"device: {jax.devices()[0].device_kind}; {FLAGS.preset} "
          f"({param_count(config) / 1e9:.2f}B params, {config.dtype}, trained: {trained}, remat "
          f"{FLAGS.remat}); {config.dtype} matmul peak {peak / 1e12:.1f} TFLOP/s; R = {Q} x {N} = "
          f"{R} rollouts, P = {P}, T = {T}; median of {FLAGS.steps} steps after {FLAGS.warmup}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| phase | s | tokens/s | model TFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|")
    tokens = {"rollout": R * T, "reference": Q * P + R * T, "update": Q * P + R * T}
    for name in ("rollout", "reference", "update"):
        seconds = median[name]
        print(f"| {name} | {seconds:.3f} | {tokens[name] / seconds:,.0f} | "
              f"{flops[name] / seconds / 1e12:.1f} | {flops[name] / seconds / peak:.1%} |")
    total = sum(flops.values())
    print(f"| step | {step_s:.3f} | {R * T / step_s:,.0f} sampled | {total / step_s / 1e12:.1f} | "
          f"{total / step_s / peak:.1%} |")
    print(f"rollout = prefill {median['prefill']:.3f} s + decode {median['decode']:.3f} s "
          f"({median['decode'] / (T - 1) * 1e3:.2f} ms a step for {R} rows)")
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            print(f"peak device memory {stats['peak_bytes_in_use'] / 2 ** 30:.1f} GiB")


if __name__ == "__main__":
    cli.run(main)
