"""Benchmark: sampler new tokens/s against Hugging Face transformers' `generate`, and the decode
step against its roofline floor.

    taskset -c 0,1 .venv/bin/python -m tools.bench_sampler --presets=demo,cpu --batch=32

The full grid of the issue (a long run on 2 cores): --batch=32,128 --prompt_len=128,256
--new_tokens=48,96.

GRPO's shape, 8 prompts x 4 rollouts, beside 32 distinct prompts: --num_rollouts=1,4.
The prompts prefilled in chunks of 32 tokens (the default) beside one pass: --prefill_chunk=32,0.

For every preset x batch B x rollouts per prompt N x prompt length P x new tokens T: a model of
the preset with random weights (tools.weights, normal std 0.02), B/N prompts of random tokens
[B/N, P] (no padding), each sampled N times (ours prefills a prompt once and its N rows share
its keys, model.fork_cache, as in rollout.py; transformers gets num_return_sequences=N and
copies the prompts before its prefill), and sampling at temperature 0.9 with stop ids that never
occur, so that every row writes exactly T tokens and the counts are exact. Ours:
`sampler.prefill` then `sampler.decode` (the while_loop), each timed after block_until_ready;
compile time is the first call minus a steady call, and the steady numbers are the best of
--repeats calls. Theirs: the same weights copied into a
transformers `LlamaForCausalLM` (tools/export_hf_llama; the logits are checked against ours
first), `generate(do_sample=True, temperature=0.9, top_k=0, max_new_tokens=T)` with no eos
token, on CPU torch with as many threads as this process may use, best of --repeats after one
warm-up call, at each of --hf_threads torch threads (the fastest is reported: on a loaded
2-core machine 2 threads can be much slower than 1). The two alternate call by call, so both see
the same machine load.
new tok/s = B * T / (prefill + decode).

The decode-step floor: a step must read every weight once and the keys and values of the tokens
written so far (on average P + T/2 per row), and do 2 FLOPs per weight per row plus attention
over those tokens (`config.flops_per_token`). floor = max(FLOPs / matmul peak, bytes / memory
bandwidth), with the N^3 matmul peak (in the first preset's dtype) and the read bandwidth (a
jitted sum over --bandwidth_mb MB) measured in the same run, before and after the models (the
higher is used).
"step / floor" is the measured decode step over that floor. "dense ms" is a step made of the
dense matmuls alone (`dense_call`: the FLOPs the floor counts, as XLA runs them at this B, with
nothing of attention, norms or sampling): the part of the gap to the floor that is the matmul
library's, not the sampler's. The machine is shared: the load
average is printed, and each number is a best-of, so the ratios err in our favour only as much
as the noise of a best-of does.
"""

from __future__ import annotations

import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from experiments import cli
from leser_jax import sampler
from leser_jax.config import ModelConfig, flops_per_token, param_count
from leser_jax.model import Llama
from leser_jax.profiling import StepProfiler
from leser_jax.sampler import SamplingConfig
from tools.timing import matmul_peak_flops, timed
from tools.weights import random_model

flags.DEFINE_list("presets", ["demo", "cpu"], "ModelConfig presets.")
flags.DEFINE_list("batch", ["32"], "Batch sizes B (rows sampled at once).")
flags.DEFINE_list("prompt_len", ["128"], "Prompt lengths P.")
flags.DEFINE_list("new_tokens", ["48"], "New tokens T per row (every row writes exactly T).")
flags.DEFINE_list("num_rollouts", ["1"], "Rows per prompt N: B/N distinct prompts, each sampled "
                  "N times (GRPO's groups; ours prefills each prompt once, transformers gets "
                  "num_return_sequences=N). 1 = B distinct prompts.")
flags.DEFINE_list("prefill_chunk", [str(SamplingConfig.prefill_chunk)],
                  "Prefill chunk sizes C to compare (SamplingConfig.prefill_chunk; 0 = the whole "
                  "prompt in one pass).")
flags.DEFINE_integer("repeats", 3, "Timed calls per configuration after compile/warm-up; best.",
                     lower_bound=1)
flags.DEFINE_bool("hf", True, "Also time transformers' generate on the same weights.")
flags.DEFINE_list("hf_threads", ["1", "2"], "torch thread counts to try; the fastest is reported.")
flags.DEFINE_float("temperature", 0.9, "Sampling temperature (the paper's 0.9).", lower_bound=0)
flags.DEFINE_enum("hf_device", "cpu", ["cpu", "cuda"], "Where transformers runs (cuda: in the "
                  "models' dtype, e.g. bf16 for llama3_2_1b).")
flags.DEFINE_integer("peak_size", None, "N of the N x N x N matmul (in the first preset's dtype) "
                     "that measures the peak; default 2048 on a CPU, 8192 on an accelerator.",
                     lower_bound=1)
flags.DEFINE_integer("peak_repeats", 10, "Timed matmuls; the fastest gives the peak.",
                     lower_bound=1)
flags.DEFINE_integer("bandwidth_mb", None, "Size of the array summed to measure read bandwidth; "
                     "default 256 on a CPU, 4096 on an accelerator (long enough to hide dispatch).",
                     lower_bound=1)
flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of our timed calls of the "
                    "first configuration here (scopes prefill, decode, decode_step, sample).")
FLAGS = flags.FLAGS


def read_bandwidth(megabytes: int, repeats: int = 10) -> float:
    """Bytes/s of a jitted sum over a float32 array (reads it once, writes one number)."""
    x = jnp.ones((megabytes * 2 ** 20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    timed(total, x)
    return x.nbytes / min(timed(total, x)[1] for _ in range(repeats))


def decode_floor(config: ModelConfig, B: int, P: int, T: int, peak: float, bandwidth: float):
    """(seconds, FLOPs, bytes) of the ideal decode step at the average context P + T/2."""
    context = P + T / 2
    flops = B * flops_per_token(config, int(context), training=False)
    itemsize = jnp.dtype(config.param_dtype).itemsize
    kv = 2 * config.num_layers * B * context * config.num_kv_heads * config.head_dim
    nbytes = param_count(config) * itemsize + kv * jnp.dtype(config.dtype).itemsize
    return max(flops / peak, nbytes / bandwidth), flops, nbytes


def ours_call(model: Llama, tokens: np.ndarray, T: int, temperature: float, N: int,
              prefill_chunk: int):
    """A function seed -> (prefill s, decode s) running our sampler on the prompts [B/N, P],
    N rows each (row b samples prompt b // N, the layout rollout.tile_groups makes), the prompts
    prefilled in chunks of prefill_chunk tokens (0: in one pass)."""
    graphdef, params = nnx.split(model)
    mask = np.ones(tokens.shape, bool)
    config = SamplingConfig(temperature=temperature, max_new_tokens=T,
                            prefill_chunk=prefill_chunk)
    never = sampler.stop_id_array([model.config.vocab_size])  # no token has this id

    def call(seed: int) -> tuple[float, float]:
        state, prefill_s = timed(lambda: sampler.prefill(
            graphdef, params, tokens, mask, jax.random.key(seed), config, stop_ids=never,
            pad_id=0, num_rollouts=N))
        state, decode_s = timed(lambda: sampler.decode(graphdef, params, state, config,
                                                       stop_ids=never, pad_id=0))
        assert int(state.lengths.min()) == T, "a row stopped early: counts would be wrong"
        return prefill_s, decode_s

    return call


def dense_call(model: Llama, B: int, T: int):
    """A function () -> seconds of T - 1 "decode steps" made of the step's dense matmuls alone.

    Each step multiplies B rows [B, D] through every layer's q, k, v, o, gate, up and down
    kernels and the output head, with the model's own weights, in one jitted fori_loop, and
    nothing else (no attention over the cache, no norms, no sampling). It is what XLA itself
    makes of the FLOPs the floor counts, at this B: how far its small matmuls stand from the
    N^3 peak, apart from anything the sampler adds."""
    c = model.config
    dt = c.dtype
    layers = [(a.q[...].reshape(c.d_model, -1), a.k[...].reshape(c.d_model, -1),
               a.v[...].reshape(c.d_model, -1), a.o[...].reshape(-1, c.d_model),
               m.gate[...], m.up[...], m.down[...])
              for a, m in ((b.attn, b.mlp) for b in model.layers)]
    # The head in the model's own layout: the tied embedding [V, D] (XLA:CPU's dot runs the
    # cpu preset's head faster against it than against a [D, V] copy).
    tied = model.lm_head is None
    head = model.embed[...] if tied else model.lm_head[...]  # [V, D] or [D, V]

    @jax.jit
    def steps(layers, head, x):  # x [B, D]
        def step(_, x):
            for wq, wk, wv, wo, gate, up, down in layers:
                q, k, v = (x @ w.astype(dt) for w in (wq, wk, wv))  # [B, N*H], [B, K*H] x 2
                # k and v feed the next step's rows so that XLA keeps their matmuls.
                x = x + q @ wo.astype(dt) + (k.sum() + v.sum()).astype(dt)  # [B, D]
                x = x + (jax.nn.silu(x @ gate.astype(dt)) * (x @ up.astype(dt))) @ down.astype(dt)
            logits = jnp.einsum("BD,VD->BV" if tied else "BD,DV->BV", x, head.astype(dt),
                                preferred_element_type=jnp.float32)  # [B, V]
            # Every logit feeds the next step: XLA turns a slice of a dot into a smaller dot.
            return x + jnp.max(logits, axis=-1, keepdims=True).astype(dt)
        return jax.lax.fori_loop(0, T - 1, step, x)

    x = jnp.zeros((B, c.d_model), dt)
    return lambda: timed(steps, layers, head, x)[1]


def hf_model(model: Llama, device: str):
    import torch
    import transformers

    from tools.export_hf_llama import hf_config_dict, hf_state_dict

    hf_dict = {k: v for k, v in hf_config_dict(model.config).items()
               if k not in ("model_type", "architectures")}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_dict)).eval()
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if device != "cpu":  # on a GPU, in the dtype ours computes in (bf16 for the LLaMA presets)
        hf = hf.to(device=device, dtype=getattr(torch, model.config.dtype))
    # No eos: every row runs to max_new_tokens, like ours (min_new_tokens would add a logits
    # processor that ours does not pay for).
    hf.generation_config.eos_token_id = None
    return hf


def hf_call(hf, tokens: np.ndarray, T: int, temperature: float, N: int):
    """A function threads -> seconds of one transformers generate call on the prompts [B/N, P],
    N sequences each (num_return_sequences)."""
    import torch

    inputs = torch.from_numpy(tokens.astype(np.int64)).to(hf.device)

    def call(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=True,
                              temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=T,
                              num_return_sequences=N, pad_token_id=0)
        if out.is_cuda:
            torch.cuda.synchronize()
        assert out.shape == (tokens.shape[0] * N, tokens.shape[1] + T)
        return time.perf_counter() - start

    return call


def bench(model: Llama, hf, tokens: np.ndarray, T: int, N: int, C: int, temperature: float,
          repeats: int, hf_threads: list[int], profiler: StepProfiler, first_step: int):
    """Ours and theirs alternately (so both see the same load), best of `repeats` each; theirs
    at each thread count, the fastest kept (2 threads can collapse on a loaded 2-core machine:
    OpenMP barriers wait for a descheduled thread)."""
    ours = ours_call(model, tokens, T, temperature, N, C)
    theirs = hf_call(hf, tokens, T, temperature, N) if hf is not None else None
    dense = dense_call(model, len(tokens) * N, T)
    first = ours(0)
    if theirs:
        theirs(hf_threads[0])  # warm-up
    dense()  # compile
    runs, hf_runs, dense_runs = [], [], []
    for i in range(repeats):
        with profiler.step(first_step + i):
            runs.append(ours(i + 1))
        dense_runs.append(dense())
        if theirs:
            hf_runs.extend((theirs(n), n) for n in hf_threads)
    prefill_s = min(r[0] for r in runs)
    decode_s = min(r[1] for r in runs)
    return dict(compile_s=sum(first) - prefill_s - decode_s, prefill_s=prefill_s,
                decode_s=decode_s, step_s=decode_s / (T - 1),  # column 0 comes from prefill
                dense_step_s=min(dense_runs) / (T - 1),
                hf_s=min(hf_runs)[0] if hf_runs else None,
                hf_threads=min(hf_runs)[1] if hf_runs else None)


def check_same_weights(model: Llama, hf, tokens: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        inputs = torch.from_numpy(tokens[:2, :32].astype(np.int64)).to(hf.device)
        theirs = hf(inputs).logits.float().cpu().numpy()
    graphdef, params = nnx.split(model)  # params as an argument: not baked into the program
    forward = jax.jit(lambda params, t: nnx.merge(graphdef, params)(t))
    ours = np.asarray(forward(params, tokens[:2, :32]), np.float32)
    err = float(np.abs(ours - theirs).max())
    if model.config.dtype == "float32":
        assert err < 1e-3, f"converted weights disagree: max |logit diff| {err}"
    # In bf16 the two frameworks round each layer differently: the difference is printed with
    # the logits' scale, to be read, not asserted.
    print(f"{model.config.dtype} logits: max |ours - theirs| {err:.3g}, max |ours| "
          f"{np.abs(ours).max():.3g}")
    return err


def main(argv):
    del argv
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    on_cpu = jax.default_backend() == "cpu"
    peak_size = (2048 if on_cpu else 8192) if FLAGS.peak_size is None else FLAGS.peak_size
    bandwidth_mb = (256 if on_cpu else 4096) if FLAGS.bandwidth_mb is None else FLAGS.bandwidth_mb
    peak_dtype = getattr(ModelConfig, FLAGS.presets[0])().dtype
    peak_before = matmul_peak_flops(peak_size, FLAGS.peak_repeats, peak_dtype)
    bw_before = read_bandwidth(bandwidth_mb)
    rows = []
    profiler = StepProfiler(FLAGS.profile_dir, start_step=0, num_steps=FLAGS.repeats,
                            name="sample")
    for name in FLAGS.presets:
        config = getattr(ModelConfig, name)()
        model = random_model(config)
        hf = hf_model(model, FLAGS.hf_device) if FLAGS.hf else None
        err = check_same_weights(model, hf, np.arange(64).reshape(2, 32) + 4) if hf else None
        for B, N, P, T, C in itertools.product(*(map(int, f) for f in (
                FLAGS.batch, FLAGS.num_rollouts, FLAGS.prompt_len, FLAGS.new_tokens,
                FLAGS.prefill_chunk))):
            if B % N:
                raise app.UsageError(f"--num_rollouts {N} must divide --batch {B}")
            tokens = np.random.default_rng(B * P + T).integers(4, config.vocab_size, (B // N, P))
            r = bench(model, hf, tokens, T, N, C, FLAGS.temperature, FLAGS.repeats,
                      [int(n) for n in FLAGS.hf_threads], profiler, len(rows) * FLAGS.repeats)
            rows.append((name, config, B, N, P, T, C, r, r["hf_s"], err))
            print(f"done {name} B={B} N={N} P={P} T={T} C={C}", flush=True)
    profiler.close()
    peak = max(peak_before, matmul_peak_flops(peak_size, FLAGS.peak_repeats, peak_dtype))
    bandwidth = max(bw_before, read_bandwidth(bandwidth_mb))
    load_after = os.getloadavg()

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {cores} usable cores; "
          f"{peak_dtype} matmul peak {peak / 1e9:,.0f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} "
          f"GB/s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"temperature {FLAGS.temperature}, best of {FLAGS.repeats}; transformers "
          f"{transformers.__version__} on torch {torch.__version__}, threads tried "
          f"{','.join(FLAGS.hf_threads)} on {FLAGS.hf_device}")
    header = ("preset", "B", "N", "P", "T", "C", "compile s", "prefill s", "decode s", "ours tok/s",
              "HF tok/s", "HF thr", "ours/HF", "step ms", "dense ms", "floor ms", "step/floor")
    table = []
    for name, config, B, N, P, T, C, r, hf_s, err in rows:
        ours_tps = B * T / (r["prefill_s"] + r["decode_s"])
        floor_s, _, _ = decode_floor(config, B, P, T, peak, bandwidth)
        table.append((name, B, N, P, T, C, f"{r['compile_s']:.1f}", f"{r['prefill_s']:.2f}",
                      f"{r['decode_s']:.2f}", f"{ours_tps:,.0f}",
                      f"{B * T / hf_s:,.0f}" if hf_s else "-", r["hf_threads"] or "-",
                      f"{ours_tps * hf_s / (B * T):.2f}x" if hf_s else "-",
                      f"{r['step_s'] * 1e3:.2f}", f"{r['dense_step_s'] * 1e3:.2f}",
                      f"{floor_s * 1e3:.2f}", f"{r['step_s'] / floor_s:.1f}x"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    for row in (header, tuple("-" * w for w in widths), *table):
        print(" | ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    if any(r[-1] is not None for r in rows):
        print("same weights: max |logit diff| ours vs transformers "
              + ", ".join(f"{r[0]} {r[-1]:.1e}" for r in rows if r[-1] is not None))


if __name__ == "__main__":
    cli.run(main)
