"""Benchmark: how fast a decode step's matmuls run here, in XLA and in the BLAS libraries at hand.

    taskset -c 0,1 .venv/bin/python -m tools.bench_matmul --presets=demo,cpu --rows=32

A decode step multiplies B rows [B, D] by every weight matrix of the model. Its floor
(tools/bench_sampler.py) divides the step's FLOPs by the N x N x N matmul peak; this benchmark
asks whether any library reaches that peak at M = B rows. For each distinct kernel shape of the
presets (q, k/v, o, gate/up, down, head: [K_in, N_out]) it times [M, K_in] x [K_in, N_out] in
float32, in two cases:

- "hot": the same kernel again and again, so it stays in the caches after the first call;
- "streamed": ten distinct copies of the kernel in turn (ten times the kernel's bytes, past the
  L2 cache), as a decode step reads each layer's kernels once;

for XLA (jnp.matmul against the [K_in, N_out] layout nnx checkpoints keep, and "NT" against the
transposed [N_out, K_in] layout of the tied embedding), NumPy's BLAS (OpenBLAS in the pinned
wheel) and torch where it is installed (the oneDNN/MKL path of transformers' generate on a
CPU). XLA's products run ten to a jitted program, so that the fixed cost of a call (more than a
small product takes) is spread over ten; NumPy and torch are called from Python, one product a
call.

Each number is the best of --repeats calls (of --repeats / 10 where ten products make a call),
as GFLOP/s and as a share of the peak measured in the same run (the peaks are measured before
and after; the higher is used). A library at 60% of the peak puts a step made of these matmuls
alone at 1.7x the floor, before attention, norms and sampling add anything.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from leser_jax.config import ModelConfig
from tools.timing import matmul_peak_flops, timed

flags.DEFINE_list("presets", ["demo", "cpu"], "ModelConfig presets whose kernel shapes to time.")
flags.DEFINE_integer("rows", 32, "M: rows multiplied at once (the decode batch B).", lower_bound=1)
flags.DEFINE_integer("repeats", 100, "Timed calls per library and shape; the fastest is kept.",
                     lower_bound=1)
flags.DEFINE_integer("peak_size", 2048, "N of the N x N x N float32 matmul that measures the peak.",
                     lower_bound=1)
flags.DEFINE_integer("peak_repeats", 10, "Timed peak matmuls; the fastest gives the peak.",
                     lower_bound=1)
FLAGS = flags.FLAGS

CHAIN = 10  # products per XLA program, and distinct kernels in the "streamed" cases


def kernel_shapes(config: ModelConfig) -> dict[tuple[int, int], list[str]]:
    """{(K_in, N_out): kernel names} of one preset's decode-step matmuls."""
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes: dict[tuple[int, int], list[str]] = {}
    for name, shape in (("q", (c.d_model, q)), ("k/v", (c.d_model, kv)), ("o", (q, c.d_model)),
                        ("gate/up", (c.d_model, c.ffn_dim)), ("down", (c.ffn_dim, c.d_model)),
                        ("head", (c.d_model, c.vocab_size))):
        shapes.setdefault(shape, []).append(name)
    return shapes


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` blocked calls of a jitted fn, after one that compiles."""
    fn()
    return min(timed(fn)[1] for _ in range(repeats))


def time_shape(M: int, K: int, N: int, repeats: int) -> dict[str, float | None]:
    """Seconds of one [M, K] x [K, N] product per library and case (None: not installed)."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (M, K), jnp.float32)  # [M, K]
    w = jax.random.normal(jax.random.fold_in(key, 1), (K, N), jnp.float32)  # [K, N]
    copies = [w + i for i in range(CHAIN)]  # CHAIN distinct [K, N] kernels
    copies_t = [jnp.asarray(c.T) for c in copies]  # [N, K] each, their own buffers

    def chain(spec):
        # CHAIN independent products, each kept alive by a max over all its outputs (XLA
        # rewrites a sum of a product, or a slice of one, into a smaller computation).
        return jax.jit(lambda x, kernels: sum(jnp.max(jnp.einsum(spec, x, k)) for k in kernels))

    nn, nt = chain("MK,KN->MN"), chain("MK,NK->MN")
    chained = max(repeats // CHAIN, 3)
    seconds = {
        "xla hot": best_seconds(lambda: nn(x, [w] * CHAIN), chained) / CHAIN,
        "xla NT hot": best_seconds(lambda: nt(x, [copies_t[0]] * CHAIN), chained) / CHAIN,
        "xla streamed": best_seconds(lambda: nn(x, copies), chained) / CHAIN,
    }
    x_np, ws_np = np.asarray(x), [np.asarray(c) for c in copies]
    seconds["numpy hot"] = min(_host_seconds(lambda: x_np @ ws_np[0]) for _ in range(repeats))
    seconds["numpy streamed"] = min(_host_seconds(lambda: [x_np @ c for c in ws_np])
                                    for _ in range(chained)) / CHAIN
    try:
        import torch
    except ImportError:
        seconds["torch hot"] = seconds["torch streamed"] = None
    else:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        x_t, ws_t = torch.tensor(x_np), [torch.tensor(c) for c in ws_np]
        with torch.no_grad():
            seconds["torch hot"] = min(_host_seconds(lambda: x_t @ ws_t[0])
                                       for _ in range(repeats))
            seconds["torch streamed"] = min(_host_seconds(lambda: [x_t @ c for c in ws_t])
                                            for _ in range(chained)) / CHAIN
    return seconds


def _host_seconds(fn) -> float:
    """Seconds of a NumPy or torch call, whose result is ready when it returns (timing.timed
    would add a pytree walk, a sizeable part of a 20-microsecond product)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv):
    del argv
    M = FLAGS.rows
    peak_before = matmul_peak_flops(FLAGS.peak_size, FLAGS.peak_repeats)
    shapes: dict[tuple[int, int], list[str]] = {}
    for preset in FLAGS.presets:
        for shape, names in kernel_shapes(getattr(ModelConfig, preset)()).items():
            shapes.setdefault(shape, []).extend(f"{preset} {n}" for n in names)
    rows = [(shape, names, time_shape(M, *shape, FLAGS.repeats))
            for shape, names in shapes.items()]
    peak = max(peak_before, matmul_peak_flops(FLAGS.peak_size, FLAGS.peak_repeats))
    load = os.getloadavg()[0]
    print(f"device: {jax.devices()[0].platform}, {len(os.sched_getaffinity(0))} usable cores; "
          f"float32 {FLAGS.peak_size}^3 matmul peak {peak / 1e9:,.0f} GFLOP/s; M = {M} rows; "
          f"load average {load:.2f}; GFLOP/s (share of the peak), best of {FLAGS.repeats}")
    libraries = list(rows[0][2])
    header = ["kernel", "K_in x N_out"] + libraries
    table = []
    for (K, N), names, seconds in rows:
        flops = 2 * M * K * N
        table.append([", ".join(names), f"{K} x {N}"] + [
            "-" if s is None else f"{flops / s / 1e9:,.0f} ({flops / s / peak:.0%})"
            for s in seconds.values()])
    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + table:
        print(" | ".join(cell.rjust(w) for cell, w in zip(r, widths)))


if __name__ == "__main__":
    cli.run(main)
