"""Benchmark: policy forward and AdamW train-step throughput, with MFU against a measured peak.

    taskset -c 0,1 .venv/bin/python -m tools.bench_model --presets=demo,cpu --batch=8 --seq_len=256

For each preset: the full uncached forward (logits [B, T, V] float32, what GRPO's log-probs need)
and one train step exactly as the training launchers run it (leser_jax.train.make_train_step:
next-token cross-entropy, global-norm clipping, masked AdamW on a warmup-cosine schedule, the
TrainState donated), both jitted over nnx.split state. Compile time (first call) is reported apart from the steady state (mean of
--steps calls after one warm-up call); every clock is read after block_until_ready. MFU =
model FLOPs (`config.flops_per_token`: 2N + attention forward, 3x that for a train step) per second
divided by the float32 matmul peak measured in the same run (the best of --peak_repeats jitted
N x N x N matmuls, 2 N^3 FLOPs each, measured before and after the models; the higher is used),
so the number is relative to what this machine can do now.

    .venv/bin/python -m tools.bench_model --presets=runs/smollm2 --lora_rank=16 --batch=8 --seq_len=320 --window=64

A preset may be a params folder (its config, random weights). --lora_rank trains adapters alone,
as the warm-up and GRPO do (a train step is then counted as 2x the forward's FLOPs, not 3x: no
gradient for the frozen weights). --window=A adds the warm-up's answer-window step
(lm_data.example_batch's window: targets on the last A positions, the head over them alone),
timed in alternation with the full step so that both see the same machine.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
from absl import flags

from flax import nnx
from experiments import cli
from leser_jax.checkpoint import load_config
from leser_jax.config import ModelConfig, flops_per_token, param_count
from leser_jax.model import Llama
from tools.timing import matmul_peak_flops, timed
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.train import init_train_state, make_train_step, masked_lm_loss

flags.DEFINE_list("presets", ["demo", "cpu"], "ModelConfig presets to benchmark.")
flags.DEFINE_integer("batch", 8, "B: sequences per call.", lower_bound=1)
flags.DEFINE_integer("seq_len", 256, "T: tokens per sequence.", lower_bound=1)
flags.DEFINE_integer("steps", 5, "Timed calls after the compile call and one warm-up call.",
                     lower_bound=1)
flags.DEFINE_integer("peak_size", 2048, "N of the N x N x N float32 matmul that measures the peak.",
                     lower_bound=1)
flags.DEFINE_integer("peak_repeats", 20, "Timed matmuls; the fastest gives the peak.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 3e-4, "AdamW learning rate (the value does not affect speed).")
cli.exclusive_bounds("learning_rate", lower=0)
flags.DEFINE_integer("lora_rank", 0, "LoRA rank (0: train every parameter).", lower_bound=0)
flags.DEFINE_integer("window", 0, "A > 0: also time the train step with targets on the last A "
                     "positions (the warm-up's answer window).", lower_bound=0)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the preset's).")
FLAGS = flags.FLAGS


def bench_preset(config: ModelConfig, batch: int, seq_len: int, steps: int, lr: float,
                 window: int = 0):
    init_start = time.perf_counter()
    model = Llama(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    jax.block_until_ready(params)
    init_s = time.perf_counter() - init_start
    tx, schedule = make_optimizer(OptimConfig(lr=lr, warmup_steps=10, total_steps=1000))
    # One extra token so that the train step's forward, over tokens[:, :-1], also sees T tokens.
    tokens = jax.random.randint(jax.random.key(2), (batch, seq_len + 1), 0,
                                config.vocab_size)  # [B, T + 1]
    inputs = tokens[:, :-1]  # [B, T]
    train_batch = {"inputs": inputs, "targets": tokens[:, 1:],
                   "weights": jnp.ones((batch, seq_len), jnp.float32),
                   "pad_mask": jnp.ones((batch, seq_len), bool)}

    @jax.jit
    def forward(params, tokens):
        return nnx.merge(graphdef, params)(tokens)  # [B, T, V]

    train_step = make_train_step(graphdef, tx, schedule, masked_lm_loss)  # donates the state

    _, fwd_compile = timed(forward, params, inputs)
    timed(forward, params, inputs)
    fwd_s = sum(timed(forward, params, inputs)[1] for _ in range(steps)) / steps

    batches = {"train": train_batch}
    if window:
        batches["window"] = {**train_batch, "targets": train_batch["targets"][:, -window:],
                             "weights": train_batch["weights"][:, -window:]}
    _, state = init_train_state(model, tx, seed=0)
    compile_s = {}
    for name, b in batches.items():
        (state, _), compile_s[name] = timed(train_step, state, b)
        (state, _), _ = timed(train_step, state, b)
    times = {name: [] for name in batches}
    for i in range(steps):
        for name, b in batches.items():
            with jax.profiler.StepTraceAnnotation(name, step_num=i):
                (state, metrics), t = timed(train_step, state, b)
            times[name].append(t)
    train_s = sum(times["train"]) / steps
    window_s = sum(times["window"]) / steps if window else float("nan")
    n_tokens = batch * seq_len
    # forward + backward to the activations, + to the weights unless they are frozen (LoRA).
    train_factor = 2 if config.lora_rank else 3
    return dict(
        params=param_count(config), init_s=init_s,
        fwd_compile_s=fwd_compile, fwd_tok_s=n_tokens / fwd_s,
        fwd_flops=flops_per_token(config, seq_len, training=False) * n_tokens / fwd_s,
        train_compile_s=compile_s["train"], train_tok_s=n_tokens / train_s,
        window_tok_s=n_tokens / window_s, window_speedup=train_s / window_s,
        train_flops=train_factor * flops_per_token(config, seq_len, training=False) * n_tokens
        / train_s,
        loss=float(metrics["loss"]))


def main(argv):
    del argv
    peak_before = matmul_peak_flops(FLAGS.peak_size, FLAGS.peak_repeats)
    header = ("preset", "params", "init s", "fwd compile s", "fwd tok/s", "fwd GFLOP/s", "fwd MFU",
              "train compile s", "train tok/s", "train GFLOP/s", "train MFU") + (
                  ("window tok/s", "window speed-up") if FLAGS.window else ())
    rows, results = [], []
    for name in FLAGS.presets:
        config = (load_config(name) if os.path.isdir(name) else getattr(ModelConfig, name)()
                  ).replace(lora_rank=FLAGS.lora_rank)
        if FLAGS.dtype:
            config = config.replace(dtype=FLAGS.dtype)
        r = bench_preset(config, FLAGS.batch, FLAGS.seq_len, FLAGS.steps, FLAGS.learning_rate,
                         min(FLAGS.window, FLAGS.seq_len))
        results.append((name, r))
    # A shared machine's speed drifts: the peak is measured before and after, and the higher one
    # is used, so MFU errs low rather than high.
    peak_after = matmul_peak_flops(FLAGS.peak_size, FLAGS.peak_repeats)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; float32 matmul peak "
          f"{FLAGS.peak_size}^3: {peak_before / 1e9:.0f} GFLOP/s before, {peak_after / 1e9:.0f} "
          f"after; B={FLAGS.batch} T={FLAGS.seq_len}, mean of {FLAGS.steps} steps after compile "
          f"+ 1 warm-up")
    peak = max(peak_before, peak_after)
    for name, r in results:
        rows.append((name, f"{r['params'] / 1e6:.1f}M", f"{r['init_s']:.1f}",
                     f"{r['fwd_compile_s']:.1f}", f"{r['fwd_tok_s']:,.0f}",
                     f"{r['fwd_flops'] / 1e9:.0f}", f"{r['fwd_flops'] / peak:.0%}",
                     f"{r['train_compile_s']:.1f}", f"{r['train_tok_s']:,.0f}",
                     f"{r['train_flops'] / 1e9:.0f}", f"{r['train_flops'] / peak:.0%}") + (
                         (f"{r['window_tok_s']:,.0f}", f"{r['window_speedup']:.2f}x")
                         if FLAGS.window else ()))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print(" | ".join(str(x).rjust(w) for x, w in zip(row, widths)))


if __name__ == "__main__":
    cli.run(main)
