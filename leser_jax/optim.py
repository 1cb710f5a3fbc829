"""The optimizer of every training stage: clipped AdamW with a weight-decay mask and a schedule.

Pretraining, the supervised warm-up and GRPO all update the policy with `make_optimizer`:

    clip_by_global_norm(clip_norm) -> AdamW(b1, b2, eps, weight_decay on a mask) at lr(step)

both in float32 on a master copy of bf16 parameters (`master_fp32`, below).

The paper says nothing about its optimizer beyond fine-tuning LLaMA; these are the usual choices
for LLaMA-style models (LLaMA's own: AdamW b2 0.95, decay 0.1, clip 1.0, warmup + cosine).

Weight-decay mask. Decay pulls weights towards zero; it is meant for the matrices that multiply
activations, not for the RMSNorm scales (a decayed scale fights the normalisation it undoes), so
the mask is "parameters with 2 or more dimensions" (nanoGPT's rule; our attention kernels are 3-D
[D, N, H], which the rule also covers). The embedding [V, D] is a matrix too, and with tied
embeddings (LLaMA 3.2 and our presets) it is also the output projection, so it is decayed by
default. The case against: decoupled decay shrinks every row every step, also the rows of tokens
that never occur in the data (their logits drift to 0 from below). `decay_embeddings=False`
exempts it; we keep it on for the small models trained from scratch, where it regularises the
largest matrix.

Schedule (ours, as in nanoGPT): linear warmup that already moves at step 0, then a half cosine
down to min_lr_ratio * lr at total_steps, flat after:

    lr(s) = lr * (s + 1) / warmup_steps                                   s < warmup_steps
    lr(s) = lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,  p = min(1, (s - warmup) / (total - warmup))

where s counts the updates already applied (optax's `count`: 0 for the first update).

bf16 parameters and a float32 master copy (issue 10; `with_float32_master`, on by default, acting
on bf16/fp16 parameters only). The LLaMA 3.2 presets keep their weights in bf16, whose significand
has 8 bits: in [1, 2) its values are 2^-7 = 0.0078 apart, so an AdamW update of lr = 1e-5 to a
weight of 1.5 (|step| ~ lr) rounds back to 1.5 and is lost, every step. The wrapper keeps a
float32 copy of each low-precision weight that the updates accumulate in, runs AdamW on that copy
(so m and v are float32 too), and writes the copy rounded to bf16 back into the model: the bf16
weights follow a float32 run rounded to bf16 (tests/test_optim.py). Bytes per bf16 parameter,
kept from step to step: 2 (the weight) + 4 (master) + 8 (m, v) = 14, plus the gradient (2, in
the parameter dtype, from the backward to the update; inside the update its float32 cast and the
float32 updates are elementwise transients that XLA may fuse away); plain AdamW on bf16 weights
would keep 2 + 4 (bf16 m and v) and lose the small updates. float32 parameters get no copy: for a
float32 model the wrapper is the identity, its state is AdamW's own (old checkpoints restore).

Rounding. train.make_train_step applies updates with `optax.apply_updates(p, u)`, which computes
p + u with dtype promotion and casts the sum to p's dtype. The wrapper returns the float32
difference u = float32(bf16(master)) - float32(p), so that p + u is computed in float32 and is
bf16(master) exactly whenever the new weight is 0 or |new| >= 2^-15 |p| (2^-13 for fp16): then
the difference of the two values fits float32's 24-bit significand. A weight that shrinks by
more in one update (it lands within 2^-15 |p| of 0, a zero crossing) can be off by up to half a
float32 ulp of |p|, which no float32 u avoids; the next update starts from the master again, so
the error does not accumulate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Attributes:
      lr: peak learning rate.
      warmup_steps: steps of the linear warmup (0 = start at the peak).
      total_steps: step at which the cosine reaches min_lr_ratio * lr.
      min_lr_ratio: final learning rate as a share of the peak.
      b1, b2, eps: Adam's moment decays and denominator floor.
      weight_decay: decoupled (AdamW) decay of the masked parameters, per unit of lr.
      decay_embeddings: decay the embedding matrix too (module docstring).
      clip_norm: global-norm gradient clipping threshold (0 = no clipping).
      master_fp32: keep a float32 master copy of bf16/fp16 parameters and AdamW's moments in
        float32 (module docstring); no effect on float32 parameters.
    """

    lr: float = 3e-4
    warmup_steps: int = 100
    total_steps: int = 1000
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = True
    clip_norm: float = 1.0
    master_fp32: bool = True

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and total_steps >= 1")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > total_steps ({self.total_steps})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1) or self.eps <= 0:
            raise ValueError("need 0 <= b1, b2 < 1 and eps > 0")
        if self.weight_decay < 0 or self.clip_norm < 0:
            raise ValueError("weight_decay and clip_norm must be >= 0")


def make_schedule(config: OptimConfig) -> optax.Schedule:
    """lr(step): linear warmup, then cosine to min_lr_ratio * lr (module docstring)."""
    c = config
    peak, floor = c.lr, c.lr * c.min_lr_ratio
    decay_steps = max(c.total_steps - c.warmup_steps, 1)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = peak * (s + 1) / max(c.warmup_steps, 1)
        p = jnp.clip((s - c.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = floor + (peak - floor) * 0.5 * (1 + jnp.cos(math.pi * p))
        return jnp.where(s < c.warmup_steps, warm, cosine)

    return schedule


def decay_mask(params, *, decay_embeddings: bool = True):
    """True for the parameters AdamW decays: every >= 2-D array, less `embed` if asked.

    Works on any params pytree (an nnx.State, a pure dict); the result has its structure.
    """

    def decays(path, x) -> bool:
        names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
        return x.ndim >= 2 and (decay_embeddings or "embed" not in names)

    return jax.tree_util.tree_map_with_path(decays, params)


_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _is_low_precision(x) -> bool:
    return jnp.dtype(x.dtype) in _LOW_PRECISION


def _has_master(m) -> bool:
    """Whether a leaf of Float32MasterState.master is a copy (not the MaskedNode placeholder)."""
    return not isinstance(m, optax.MaskedNode)


class Float32MasterState(NamedTuple):
    """with_float32_master's state. A NamedTuple, so that Orbax restores it into this type
    against a target from jax.eval_shape(tx.init, params) (train.abstract_train_state)."""

    # params' structure: a float32 copy of each bf16/fp16 leaf, MaskedNode() at the others
    master: optax.Params
    inner: optax.OptState  # the inner optimizer's state over the float32 working params


def with_float32_master(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` run on float32 copies of the low-precision (bf16/fp16) parameters.

    update(grads, state, params): the gradients are cast to float32, `inner` updates the working
    params (the master copy for low-precision leaves, the parameter itself for the others), the
    update is added to the master, and the returned updates make `optax.apply_updates(params,
    updates)` the new master rounded to each parameter's dtype (module docstring, Rounding).
    Other leaves get `inner`'s own updates. Params with no low-precision leaf: `inner` itself,
    state and all (no copy, bitwise the same updates).
    """

    def needs_master(params) -> bool:
        return any(_is_low_precision(p) for p in jax.tree.leaves(params))

    def working(params, master):
        return jax.tree.map(lambda p, m: m if _has_master(m) else p, params, master)

    def init(params):
        if not needs_master(params):
            return inner.init(params)
        master = jax.tree.map(
            lambda p: p.astype(jnp.float32) if _is_low_precision(p) else optax.MaskedNode(),
            params)
        return Float32MasterState(master=master, inner=inner.init(working(params, master)))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("with_float32_master needs the params in update()")
        if not needs_master(params):
            return inner.update(grads, state, params)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        updates, inner_state = inner.update(grads, state.inner, working(params, state.master))
        master = jax.tree.map(lambda p, m, u: m + u if _has_master(m) else m,
                              params, state.master, updates)
        # u = bf16(master) - p, both exact in float32: p + u == bf16(master) (module docstring).
        updates = jax.tree.map(
            lambda p, m, u: (m.astype(p.dtype).astype(jnp.float32) - p.astype(jnp.float32)
                             if _has_master(m) else u),
            params, master, updates)
        return updates, Float32MasterState(master=master, inner=inner_state)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule): global-norm clipping, then masked AdamW at `schedule(step)`; with
    `master_fp32` both run in float32 on a master copy of bf16/fp16 params (module docstring)."""
    schedule = make_schedule(config)
    adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay,
                        mask=lambda p: decay_mask(p, decay_embeddings=config.decay_embeddings))
    clip = optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity()
    tx = optax.chain(clip, adamw)
    return (with_float32_master(tx) if config.master_fp32 else tx), schedule
