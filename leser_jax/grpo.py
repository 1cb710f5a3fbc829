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
so a group is a reshape to [B, N]; arrays here are [B * N] or [B * N, T]. What an update reads is
a `RolloutBatch`: each group's prompt once, and its N completions with their log-probs and
advantages.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from leser_jax.model import fork_cache, init_cache
from leser_jax.sampler import token_logprobs

KL_ESTIMATORS = ("k1", "k3")
AGGREGATIONS = ("sequence_mean", "token_mean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig:
    """GRPO's settings (paper symbols in brackets; defaults are the seed's values).

    Attributes:
      num_rollouts: completions sampled per query [N], 4 in the paper.
      temperature: sampling temperature of the rollouts, 0.9 in the paper.
      clip_eps: ratio clipping [epsilon].
      kl_coef: weight of the KL penalty to the reference model [beta].
      kl_estimator: "k3" (non-negative, low variance) or "k1" (log-ratio).
      aggregation: "sequence_mean" or "token_mean" (module docstring).
      normalize_std: divide advantages by the group's std (GRPO's original form; LESER: off).
      mu: optimizer updates per batch of rollouts [mu]; ratio != 1 only from the second.
      micro_batches: gradient accumulation: the rollout batch is split into this many parts,
        each of whole groups (queries_per_step must be a multiple).
      queries_per_step: queries per step [B]; a step has B * N rollouts.
      max_new_tokens: longest completion.
    """

    num_rollouts: int = 4
    temperature: float = 0.9
    clip_eps: float = 0.2
    kl_coef: float = 0.04
    kl_estimator: str = "k3"
    aggregation: str = "sequence_mean"
    normalize_std: bool = False
    mu: int = 1
    micro_batches: int = 1
    queries_per_step: int = 16
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.num_rollouts < 2:
            raise ValueError(f"num_rollouts must be >= 2 (a group compares rollouts), got {self.num_rollouts}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampled rollouts, got {self.temperature}")
        if not 0 < self.clip_eps < 1 or self.kl_coef < 0:
            raise ValueError(f"need 0 < clip_eps < 1 and kl_coef >= 0, got {self.clip_eps}, {self.kl_coef}")
        if self.kl_estimator not in KL_ESTIMATORS or self.aggregation not in AGGREGATIONS:
            raise ValueError(f"kl_estimator in {KL_ESTIMATORS}, aggregation in {AGGREGATIONS}")
        if min(self.mu, self.micro_batches, self.queries_per_step, self.max_new_tokens) < 1:
            raise ValueError("mu, micro_batches, queries_per_step and max_new_tokens must be >= 1")
        if self.queries_per_step % self.micro_batches:
            # A micro-batch holds whole groups: their prompt is run once (completion_logprobs).
            raise ValueError(f"{self.queries_per_step} queries (groups) do not split into "
                             f"{self.micro_batches} micro-batches")


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


def completion_logprobs(model, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        completion_tokens: jax.Array, completion_mask: jax.Array,
                        temperature) -> jax.Array:
    """Teacher-forced log-probs [R, T] of completion tokens under `model`.

    Exactly the quantity the sampler records (sampler.token_logprobs: temperature-scaled, before
    any top-k/top-p cut), so at the first update ratio = exp(logp - old_logp) is 1 up to float
    rounding.

    prompt_tokens/prompt_mask [Q, P] (left-padded) hold each GROUP's prompt once; the
    completions [R, T] (right-padded) are in the group layout, R = Q * N, row r continuing prompt
    r // N. The N rollouts of a group share their prompt, so the prompt is run once per group
    (`model.prefill` into a KV cache that `model.fork_cache` makes the shared prefix of its N
    rows, not copied) and only the completions are run per rollout: with a 300-token prompt and
    60-token completions that is about a third of the work of running [prompt, completion] per
    rollout, forward and backward (the gradient reaches the prompt's activations through the
    shared keys and values, from all N rows of the group). The logits at the prompt's last
    token predict completion token 0, those at completion token t predict token t + 1:

        prompt  [pad p0 p1] -> cache, logits at p1 (-> c0)
        rollout [c0 c1 pad] -> logits at c0 (-> c1), c1 (-> pad, masked)
    """
    Q, P = prompt_tokens.shape
    R, T = completion_tokens.shape
    if R % Q:
        raise ValueError(f"{R} completions do not form groups of the {Q} prompts")
    cache = init_cache(model.config, Q, P)
    first, cache = model.prefill(prompt_tokens, prompt_mask, cache, last_only=True)  # [Q, V]
    cache = fork_cache(cache, R // Q, T)  # R rows of T slots, each group's prompt shared
    rest, _ = model.prefill(completion_tokens, completion_mask, cache)  # [R, T, V]
    logits = jnp.concatenate([jnp.repeat(first, R // Q, axis=0)[:, None], rest[:, :-1]], axis=1)
    return token_logprobs(logits, completion_tokens, temperature)  # [R, T]


@flax.struct.dataclass
class RolloutBatch:
    """What one GRPO update reads: the N rollouts (LESER: N = 4 expansion sets) of each of Q
    queries, Q*N rows in the group layout (rollout.tile_groups: rows q*N .. q*N + N - 1
    continue prompt q), their old log-probs and advantages, and the reference's log-probs.

    Each group's prompt is held once, not once per rollout: `completion_logprobs` runs it once
    per group. T is the longest completion rounded up to grpo_trainer.COMPLETION_BUCKET (at most
    max_new_tokens). A pytree of arrays (host or device), rows first: train.make_train_step
    splits every array into the same number of micro-batches by rows, so each part holds whole
    groups (GRPOConfig checks that queries_per_step divides), and a mesh splits it by rows.

    ref_logp is None until the frozen reference has scored the completions
    (grpo_trainer.reference_logprobs, which reads the rest of the batch); GRPOTrainer does that
    only when an update follows, then sets it with `batch.replace(ref_logp=...)`. The loss
    (`rollout_loss`) needs it.
    """

    prompt_tokens: jax.Array  # [Q, P] int32, left-padded: each group's prompt once
    prompt_mask: jax.Array  # [Q, P] bool, True at real prompt tokens
    completion_tokens: jax.Array  # [Q*N, T] int32, right-padded after the stop token
    completion_mask: jax.Array  # [Q*N, T] bool, True at sampled tokens up to the stop, included
    old_logp: jax.Array  # [Q*N, T] float32, under the policy that sampled (sampler.token_logprobs)
    advantages: jax.Array  # [Q*N] float32, `group_advantages` of the rollouts' rewards
    ref_logp: jax.Array | None = None  # [Q*N, T] float32, under the frozen reference


def rollout_loss(model, batch: RolloutBatch, config) -> tuple[jax.Array, dict[str, jax.Array]]:
    """grpo_loss of a rollout batch (its ref_logp set) under `model`, the policy being trained.

    config: a GRPOConfig (temperature, clip_eps, kl_coef, kl_estimator, aggregation).
    """
    if batch.ref_logp is None:
        raise ValueError("the batch has no reference log-probs (grpo_trainer.reference_logprobs)")
    logp = completion_logprobs(model, batch.prompt_tokens, batch.prompt_mask,
                               batch.completion_tokens, batch.completion_mask,
                               config.temperature)
    return grpo_loss(logp, batch.old_logp, batch.ref_logp, batch.advantages,
                     batch.completion_mask, clip_eps=config.clip_eps, kl_coef=config.kl_coef,
                     kl_estimator=config.kl_estimator, aggregation=config.aggregation)
