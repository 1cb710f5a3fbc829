"""Clocks for the benchmarks: a blocked timer and the float32 matmul peak measured in the run.

MFU and "x the floor" are only meaningful against a peak measured on the same machine at the
same time (the CPUs here are shared), so every benchmark measures its own.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def timed(fn, *args):
    """(fn(*args), seconds), after block_until_ready: device work is inside the time."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def matmul_peak_flops(n: int, repeats: int, dtype: str = "float32") -> float:
    """FLOP/s of the fastest of `repeats` jitted n x n x n matmuls in `dtype` (after a compile).

    The peak a model in that dtype can reach here: float32 on a CPU, bfloat16 on a GPU's tensor
    cores (the benchmarks' default n: 2048 on a CPU, 8192 on an accelerator)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    timed(matmul, a, b)  # compile
    return 2 * n ** 3 / min(timed(matmul, a, b)[1] for _ in range(repeats))
