"""The optimizer of every training stage: clipped AdamW with a weight-decay mask and a schedule.

Pretraining, the supervised warm-up and GRPO all update the policy with `make_optimizer`:

    clip_by_global_norm(clip_norm) -> AdamW(b1, b2, eps, weight_decay on a mask) at lr(step)

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
"""

from __future__ import annotations

import dataclasses
import math

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


def make_optimizer(config: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule): global-norm clipping, then masked AdamW at `schedule(step)`."""
    schedule = make_schedule(config)
    adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay,
                        mask=lambda p: decay_mask(p, decay_embeddings=config.decay_embeddings))
    clip = optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity()
    return optax.chain(clip, adamw), schedule
