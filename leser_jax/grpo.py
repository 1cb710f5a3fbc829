"""Group Relative Policy Optimization (GRPO): LESER's RL objective, as pure functions.

LESER samples N expansion sets per query and compares them with each other: the advantage of a
rollout is its reward minus the mean reward of its group, so no value model is needed, and the
one-to-many nature of query expansion (many good sets per query) is handled by ranking within the
group. The objective is PPO's clipped surrogate with a KL penalty towards the frozen reference
model (Shao et al. 2024, DeepSeekMath), per completion token t of rollout i:

    ratio_it   = exp(logp_it - old_logp_it)           current policy / policy that sampled
    surr_it    = -min(ratio_it * A_i, clip(ratio_it, 1 - eps, 1 + eps) * A_i)
    KL_it (k1) = logp_it - ref_logp_it
    KL_it (k3) = exp(ref_logp_it - logp_it) - (ref_logp_it - logp_it) - 1     (>= 0, unbiased)
    loss_it    = surr_it + beta * KL_it

aggregated over valid tokens either per sequence first ("sequence_mean": each rollout weighs the
same whatever its length, as in the GRPO paper) or over all tokens of the batch ("token_mean":
long completions weigh more, as in DAPO). The paper states A = r - mean(r) of the group; dividing
by the group's standard deviation (GRPO's original form) is an option, off by default.

Layout: rollouts arrive in contiguous groups [q0 x N, q1 x N, ...] (built once, in rollout.py),
so a group is a reshape to [B, N]; arrays here are [B * N] or [B * N, T].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")
AGGREGATIONS = ("sequence_mean", "token_mean")


def group_advantages(rewards: jax.Array, num_rollouts: int, *, normalize_std: bool = False,
                     eps: float = 1e-6) -> jax.Array:
    """A_i = r_i - mean of r over i's group (optionally / the group's std); rewards [B * N]."""
    if rewards.shape[0] % num_rollouts:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {num_rollouts}")
    r = rewards.reshape(-1, num_rollouts).astype(jnp.float32)  # [B, N]
    a = r - r.mean(axis=1, keepdims=True)  # [B, N]
    if normalize_std:
        a = a / (r.std(axis=1, keepdims=True) + eps)
    return a.reshape(-1)  # [B * N]


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_ratio = ref_logp - logp
        return jnp.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of x over mask == True (0 where nothing is valid)."""
    return jnp.where(mask, x, 0.0).sum(axis) / jnp.maximum(mask.sum(axis), 1)


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array,
              mask: jax.Array, *, clip_eps: float = 0.2, kl_coef: float = 0.04,
              kl_estimator: str = "k3", aggregation: str = "sequence_mean"
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (module docstring) and its diagnostics.

    Args:
      logp, old_logp, ref_logp: [B, T] log-probs of the sampled completion tokens under the
        current policy, the policy that sampled them and the frozen reference.
      advantages: [B], one per rollout.
      mask: [B, T], True at completion tokens (the stop token included, padding excluded).
    Returns:
      (loss [], aux) with aux: clip_fraction, kl, ratio, entropy (-mean logp of the sampled
      tokens, an estimate of the policy's entropy), and advantage mean/std/min/max.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask = mask.astype(bool)
    # Padding may hold anything (even inf): zero it before exp() so no NaN reaches the sums.
    logp, old_logp, ref_logp = (jnp.where(mask, x, 0.0) for x in (logp, old_logp, ref_logp))
    adv = advantages.astype(jnp.float32)[:, None]  # [B, 1]
    ratio = jnp.exp(logp - old_logp)  # [B, T]
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)  # [B, T]
    surrogate = -jnp.minimum(ratio * adv, clipped * adv)  # [B, T]
    kl = kl_penalty(logp, ref_logp, kl_estimator)  # [B, T]
    per_token = surrogate + kl_coef * kl  # [B, T]
    if aggregation == "sequence_mean":
        loss = masked_mean(per_token, mask, axis=1).mean()
    else:
        loss = masked_mean(per_token, mask)
    aux = {
        "clip_fraction": masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask),
        "kl": masked_mean(kl, mask),
        "ratio": masked_mean(ratio, mask),
        "entropy": masked_mean(-logp, mask),
        "advantage_mean": advantages.mean(),
        "advantage_std": advantages.std(),
        "advantage_min": advantages.min(),
        "advantage_max": advantages.max(),
    }
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)
