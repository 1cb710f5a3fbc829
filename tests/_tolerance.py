"""Float comparisons relative to the scale of the values compared, so they hold on any CPU.

Two float32 computations that take different code paths (a KV cache or none, a shared prefix or
each row alone, sharded or single-device reductions, micro-batches or one batch) round
differently, and how differently depends on the machine: XLA:CPU and OpenBLAS choose kernels and
blockings by CPU. The difference grows with the magnitude of the values and the length of the
sums, not with their units, so a tolerance is rtol times that magnitude. (A bare atol=1e-5 on
logits of size ~6 held here with a margin of 1.3 and failed on another machine of the same kind:
a difference of 1.25e-5.)

How rtol is chosen: float32 rounds to 6e-8 relative (epsilon 1.2e-7). The tiny test models
(2 layers, sums of <= 192 terms) give, along two code paths, forward outputs (logits, log-probs,
ours against transformers') that differ by up to 2e-6 of their largest magnitude, and gradients
by up to 3e-6 of each array's largest entry. FORWARD_RTOL and GRAD_RTOL leave a margin of 25x
and 30x over that. The bugs these tests exist for move outputs by about their whole scale:
a dropped prefix mask, positions that count left pads, pads left valid in the cache, a position
off by one after prefill, or the other GQA head grouping each changed some logit or log-prob by
0.45 to 1.4 times the largest one, some 10^4 times the tolerance.
"""

from __future__ import annotations

import numpy as np

FORWARD_RTOL = 5e-5  # float32 forward passes (logits, log-probs) of a few layers, two code paths
GRAD_RTOL = 1e-4  # their gradients and the parameters that one update moves by them


def assert_close(actual, expected, *, rtol: float, scale: float | None = None,
                 err_msg: str = "") -> None:
    """Asserts |actual - expected| <= rtol * scale everywhere; scale = max |expected| by default.

    One absolute tolerance for the whole array, tied to its magnitude: an entry near 0 gets the
    same allowance as the largest (rounding in a sum or a matmul is relative to the terms summed,
    not to the result), which an elementwise rtol would deny it. A NaN fails.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (err_msg, actual.shape, expected.shape)
    if not expected.size:
        return
    if scale is None:
        scale = float(np.max(np.abs(expected)))
    tolerance = rtol * scale
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= tolerance, (f"{err_msg}{': ' if err_msg else ''}max |actual - expected| = "
                               f"{diff:.3g} > tolerance {tolerance:.3g} = rtol {rtol:g} x scale "
                               f"{scale:.3g}")
