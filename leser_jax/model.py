"""The policy: a LLaMA-3-style decoder-only language model in flax.nnx, with a functional KV cache.

LESER (arXiv 2509.05570) fine-tunes LLaMA 3.2 (3B preferred to 3.1 8B for latency) with GRPO to
write query expansions that a search engine then runs. This module is that architecture, written
from scratch so that the same code runs a ~5M-parameter model on a laptop CPU and converted
LLaMA 3.2 1B/3B weights on an accelerator:

    tokens -> embed -> L x [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> logits

- RMSNorm (Zhang & Sennrich 2019), statistics in float32.
- Rotary position embeddings (Su et al. 2021) in the half-split ("rotate_half") layout that
  Hugging Face checkpoints use, with LLaMA 3's frequency scaling (`llama3_inv_freq`).
- Grouped-query attention (Ainslie et al. 2023): N query heads share K kv heads, G = N // K query
  heads per kv head; query head n reads kv head n // G, as in Hugging Face's `repeat_kv`.
- SwiGLU MLP (Shazeer 2020); optional tied input/output embeddings (LLaMA 3.2 ties them).
- Optional LoRA adapters (Hu et al. 2021) on the seven projections (lora.py's `LoRA`).

The paper says nothing about the model's internals beyond "LLaMA 3.2"; the departures here are
ours: initialisation (normal, std 0.02, residual output projections scaled by 1/sqrt(2L) as in
GPT-2) matters only for the small presets trained from scratch, and attention is a plain einsum
(no fused kernel) because it is the readable reference and the models here are small.

Axis letters (einsum and shape comments): B batch, T query positions, S key positions (cache
slots), D model, N query heads, K kv heads, G query heads per kv head (N = K * G), H head dim,
V vocab, F ffn, L layers.

The parts, each documented where it is defined:
- `Llama`: the model. `model(tokens)` is the uncached forward (training, GRPO's log-probs);
  `prefill` and `decode_step` write into a cache (the sampler's rollouts).
- `KVCache` (`init_cache`): keys and values as a pytree passed in and returned, not module state.
- `SharedPrefix` (`fork_cache`): one copy of a prompt's keys for the N rollouts of its GRPO group.

`ModelConfig` (hyperparameters and presets) and the parameter/FLOP counts are in config.py; the
LoRA adapters (`LoRA`, `add_lora`, `merge_lora`: trained over a frozen base, which is also GRPO's
reference model) are in lora.py.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leser_jax.config import ModelConfig
from leser_jax.lora import LoRA


def llama3_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies [H/2], with LLaMA 3's scaling when `rope_scaling_factor` is set.

    Plain RoPE: inv_freq_i = theta ** (-2i / H). LLaMA 3 (Meta's reference `apply_scaling`, and
    HF's `_compute_llama3_parameters`) keeps short wavelengths (< original_max / high_freq_factor),
    divides long ones (> original_max / low_freq_factor) by `factor`, and interpolates between:
      smooth = (original_max / wavelen - low) / (high - low)
      inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    Computed on the host in float64, then float32 like HF's buffer.
    """
    c = config
    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim))
    if c.rope_scaling_factor is not None:
        factor, low, high = c.rope_scaling_factor, c.rope_low_freq_factor, c.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        low_freq_wavelen = c.rope_original_max_len / low
        high_freq_wavelen = c.rope_original_max_len / high
        smooth = (c.rope_original_max_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(wavelen < high_freq_wavelen, inv_freq,
                            np.where(wavelen > low_freq_wavelen, inv_freq / factor, smoothed))
    return inv_freq.astype(np.float32)  # [H/2]


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B, T, heads, H] by positions [B, T], half-split layout, in float32."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [B, T, 1, H/2]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [B, T, heads, H/2] each
    # HF: x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1].
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)  # [B, T, heads, H]


def _normal(rngs: nnx.Rngs, shape, std: float, dtype: str) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype: str):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))  # [D]

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Cast before scaling, as HF does (`weight * hidden.to(input_dtype)`).
        return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


def _lora(config: ModelConfig, in_shape, out_shape, rngs: nnx.Rngs) -> LoRA | None:
    return LoRA(in_shape, out_shape, config, rngs=rngs) if config.lora_rank else None


def _project(spec: str, x: jax.Array, kernel: nnx.Param, lora: LoRA | None, dtype: str):
    """x W by the einsum `spec`, plus the adapter's update when there is one."""
    y = jnp.einsum(spec, x, kernel[...].astype(dtype))
    return y if lora is None else y + lora(x)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE. Kernels: q [D, N, H], k/v [D, K, H], o [N, H, D],
    each with its adapter (q_lora, ...) when lora_rank > 0, else None."""

    KERNELS = ("q", "k", "v", "o")

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        out_std = c.init_std / math.sqrt(2 * c.num_layers)
        self.q = _normal(rngs, (c.d_model, c.num_heads, c.head_dim), c.init_std, c.param_dtype)
        self.k = _normal(rngs, (c.d_model, c.num_kv_heads, c.head_dim), c.init_std, c.param_dtype)
        self.v = _normal(rngs, (c.d_model, c.num_kv_heads, c.head_dim), c.init_std, c.param_dtype)
        self.o = _normal(rngs, (c.num_heads, c.head_dim, c.d_model), out_std, c.param_dtype)
        D, NH, KH = (c.d_model,), (c.num_heads, c.head_dim), (c.num_kv_heads, c.head_dim)
        self.q_lora = _lora(c, D, NH, rngs)
        self.k_lora = _lora(c, D, KH, rngs)
        self.v_lora = _lora(c, D, KH, rngs)
        self.o_lora = _lora(c, NH, D, rngs)

    def __call__(self, x, positions, mask, inv_freq, cache=None, layer=None):
        """x [B, T, D], positions [B, T], mask [B, T, S'] (True = may attend).

        Without a cache S' = T and the keys are this call's tokens. With a `KVCache`, this call's
        keys and values are written into layer `layer` at slots cache.index .. cache.index + T - 1
        first (dynamic_update_slices of that layer's k [B, K, H, S] and v [B, K, S, H]: in place
        when donated), then attention reads the first S' <= S slots of that layer, after the P
        slots of the row's group when the cache follows a `SharedPrefix`; the updated cache is
        returned.
        """
        c = self.config
        dt = c.dtype
        q = _project("BTD,DNH->BTNH", x, self.q, self.q_lora, dt)  # [B, T, N, H]
        k = _project("BTD,DKH->BTKH", x, self.k, self.k_lora, dt)  # [B, T, K, H]
        v = _project("BTD,DKH->BTKH", x, self.v, self.v_lora, dt)  # [B, T, K, H]
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        # The cache's layouts (KVCache): keys as columns, so that q @ k is a plain matmul (XLA:CPU
        # runs the scores against [B, K, S, H] as a slower transposing product), values as rows.
        k = k.transpose(0, 2, 3, 1)  # [B, K, H, T]
        v = v.transpose(0, 2, 1, 3)  # [B, K, T, H]
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache.k[layer], k.astype(cache.k[layer].dtype),
                                             (0, 0, 0, cache.index))
            v = jax.lax.dynamic_update_slice(cache.v[layer], v.astype(cache.v[layer].dtype),
                                             (0, 0, cache.index, 0))
            cache = cache.replace(k=_put(cache.k, layer, k), v=_put(cache.v, layer, v))
            read = mask.shape[-1]  # the first S' <= S slots are read (Llama.prefill's read_slots)
            k, v = k[..., :read], v[:, :, :read]  # [B, K, H, S'], [B, K, S', H]
        B, T = x.shape[:2]
        K, G, H, S = c.num_kv_heads, c.kv_groups, c.head_dim, v.shape[2]
        # The G query heads of a kv head, at all T positions, as the G*T rows of one matrix: both
        # products are then plain matmuls batched over (B, K) (with T between G and S in the
        # einsums, XLA:CPU transposed them, which slowed the decode step).
        q = q.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
        scores = jnp.einsum("BKMH,BKHS->BKMS", q, k.astype(dt),
                            preferred_element_type=jnp.float32)  # [B, K, G*T, S]
        scores = scores.reshape(B, K, G, T, S) * (H ** -0.5)
        # where, not + (-inf): a row with no visible key (a left pad) gets a uniform softmax, not
        # NaN.
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        scores = scores.reshape(B, K, G * T, S)
        prefix = None if cache is None else cache.prefix
        if prefix is None:
            probs = jax.nn.softmax(scores, axis=-1).astype(dt)  # [B, K, G*T, S]
            out = jnp.einsum("BKMS,BKSH->BKMH", probs, v.astype(dt))  # [B, K, G*T, H]
        else:
            out = _attend_with_prefix(q, scores, v.astype(dt), prefix, layer, dt)
        out = out.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, c.num_heads, H)
        return _project("BTNH,NHD->BTD", out, self.o, self.o_lora, dt), cache  # [B, T, D]


def _attend_with_prefix(q, scores, v, prefix: SharedPrefix, layer: int, dt: str) -> jax.Array:
    """Attention over a group's shared prefix and each row's own slots (see `SharedPrefix`).

    q [B, K, M, H] (M = G*T query rows per kv head), scores [B, K, M, S] over the rows' own
    slots (scaled and masked), v [B, K, S, H]; the prefix holds Q prompts, rows q*N .. q*N + N-1
    continue prompt q (B = Q * N). Returns [B, K, M, H], the attention of one softmax over the
    P prefix slots and the S own slots together.
    """
    B, K, M, H = q.shape
    pk, pv = prefix.k[layer].astype(dt), prefix.v[layer].astype(dt)  # [Q, K, H, P], [Q, K, P, H]
    Q, P = pk.shape[0], pk.shape[3]
    N = B // Q

    def by_group(x):  # [B, K, M, X] -> [Q, K, N*M, X]: the N rows of a group as one matrix
        return x.reshape(Q, N, K, M, -1).transpose(0, 2, 1, 3, 4).reshape(Q, K, N * M, -1)

    def by_row(x):  # [Q, K, N*M, X] -> [B, K, M, X]
        return x.reshape(Q, K, N, M, -1).transpose(0, 2, 1, 3, 4).reshape(B, K, M, -1)

    # One matmul per (prompt, kv head) for all N*M query rows that read the prefix: its keys
    # are read once per group, not once per row.
    prefix_scores = jnp.einsum("QKMH,QKHP->QKMP", by_group(q), pk,
                               preferred_element_type=jnp.float32) * (H ** -0.5)
    prefix_scores = jnp.where(prefix.valid[:, None, None], prefix_scores,
                              jnp.finfo(jnp.float32).min)  # [Q, K, N*M, P]
    probs = jax.nn.softmax(jnp.concatenate([by_row(prefix_scores), scores], axis=-1),
                           axis=-1).astype(dt)  # [B, K, M, P + S]
    out = jnp.einsum("QKMP,QKPH->QKMH", by_group(probs[..., :P]), pv)  # [Q, K, N*M, H]
    return by_row(out) + jnp.einsum("BKMS,BKSH->BKMH", probs[..., P:], v)  # [B, K, M, H]


def _put(arrays: tuple, i: int, x: jax.Array) -> tuple:
    """The tuple with element i replaced by x."""
    return arrays[:i] + (x,) + arrays[i + 1:]


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up)). Kernels gate/up [D, F], down [F, D], each with
    its adapter (gate_lora, ...) when lora_rank > 0, else None."""

    KERNELS = ("gate", "up", "down")

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.dtype = c.dtype
        self.gate = _normal(rngs, (c.d_model, c.ffn_dim), c.init_std, c.param_dtype)
        self.up = _normal(rngs, (c.d_model, c.ffn_dim), c.init_std, c.param_dtype)
        self.down = _normal(rngs, (c.ffn_dim, c.d_model), c.init_std / math.sqrt(2 * c.num_layers),
                            c.param_dtype)
        D, F = (c.d_model,), (c.ffn_dim,)
        self.gate_lora = _lora(c, D, F, rngs)
        self.up_lora = _lora(c, D, F, rngs)
        self.down_lora = _lora(c, F, D, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        gate = _project("BTD,DF->BTF", x, self.gate, self.gate_lora, dt)  # [B, T, F]
        up = _project("BTD,DF->BTF", x, self.up, self.up_lora, dt)  # [B, T, F]
        return _project("BTF,FD->BTD", jax.nn.silu(gate) * up, self.down, self.down_lora, dt)


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.attn_norm = RMSNorm(c.d_model, eps=c.norm_eps, param_dtype=c.param_dtype)
        self.attn = Attention(c, rngs=rngs)
        self.mlp_norm = RMSNorm(c.d_model, eps=c.norm_eps, param_dtype=c.param_dtype)
        self.mlp = MLP(c, rngs=rngs)

    def __call__(self, x, positions, mask, inv_freq, cache=None, layer=None):
        with jax.named_scope("attention"):
            h, cache = self.attn(self.attn_norm(x), positions, mask, inv_freq, cache, layer)
            x = x + h
        with jax.named_scope("mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x, cache  # [B, T, D]


@flax.struct.dataclass
class SharedPrefix:
    """Keys and values that groups of N rows share, before their own slots: prompt q's, read by
    rows q*N .. q*N + N - 1.

    GRPO samples N completions of each prompt and scores them again in the loss; the N rows of a
    group all attend to the same prompt keys. `fork_cache` turns a cache of Q written prompts into
    one of Q * N rows whose prompt keys and values stay as ONE prefix per prompt (not N copies),
    with empty slots of the rows' own for what they write next:

        prefix  k, v [Q, K, H, P] / [Q, K, P, H], valid [Q, P]   read by rows q*N .. q*N + N - 1
        rows    k, v [B, K, H, S] / [B, K, S, H], valid [B, S]   B = Q * N, each row's own tokens

    Attention (`_attend_with_prefix`) then takes one softmax over the P prefix slots and the row's
    S own slots together, exactly as over a copied [P + S] cache, but computes the prefix scores
    and values as one matmul per (prompt, kv head) for all N*G*T query rows of the group: the
    prefix is read once per group instead of once per row, and the matmuls are N times taller
    (Hydragen, Juravsky et al. 2024, arXiv 2402.05099, makes the same split). tools/bench_sampler
    --num_rollouts=N measures the decode step with it. Rows of a group must be contiguous, the
    layout rollout.tile_groups makes.
    """

    k: tuple[jax.Array, ...]  # L x [Q, K, H, P]
    v: tuple[jax.Array, ...]  # L x [Q, K, P, H]
    valid: jax.Array  # [Q, P] bool: slot holds a real token


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, plus what a row needs to continue.

    A plain pytree (`flax.struct.dataclass`), not module state: it is passed in and returned, so
    a sampler can donate it to a jitted prefill and carry it through a `lax.while_loop`.

    All rows write the same slot at each step (`index`), and each row has its own RoPE position
    (`pos`), so a left-padded prompt batch needs no per-row scatter: a row with 3 pad tokens has
    slots 0..2 invalid and its first real token at slot 3 with position 0. Example, T=4,
    max_len=6:

        row 0: tokens [p p a b] pad_mask [0 0 1 1] -> slots 2,3 valid, positions 0,1, pos=2
        row 1: tokens [c d e f] pad_mask [1 1 1 1] -> slots 0..3 valid, positions 0..3, pos=4
        decode_step writes slot 4 for both rows, at positions 2 and 4; index becomes 5.

    The layout is what decoding on a CPU wants. Head-major, so that each (row, kv head) is one
    matrix that both attention products read without a transpose: with [B, S, K, H], XLA copied
    the whole cache layer into that layout at every decode step. Keys as columns [H, S], so that
    the scores are a plain matmul q [G, H] @ k [H, S]; values as rows [S, H] for probs [G, S] @ v.
    One array per layer, because a slice of a stacked [L, ...] array is copied before a dot reads
    it. tools/bench_sampler.py measures the decode step.

    Writing past `max_len` cannot be detected inside jit (`dynamic_update_slice` clamps the start
    index): a sampler must give the cache a slot for every token it writes (prompt length + max
    new tokens; with a shared prefix, max new tokens of the rows' own).
    """

    k: tuple[jax.Array, ...]  # L x [B, K, H, S]: keys as columns
    v: tuple[jax.Array, ...]  # L x [B, K, S, H]
    valid: jax.Array  # [B, S] bool: slot holds a real token (False for pads and unwritten slots)
    pos: jax.Array  # [B] int32: next RoPE position of each row = real tokens it has written
    index: jax.Array  # [] int32: next slot to write, shared by all rows
    prefix: SharedPrefix | None = None  # what every row's slots follow, shared by its group

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]


def fork_cache(cache: KVCache, num_rows: int, max_len: int) -> KVCache:
    """Each of the Q rows of `cache` becomes N = num_rows rows that share its slots as a prefix.

    cache: Q prompts, written (e.g. by `prefill`), without a prefix. Returns a cache of Q * N
    rows, row q*N + i continuing prompt q at its next position, with `max_len` empty slots of
    its own; the prompts' keys and values are not copied (see `SharedPrefix`).
    """
    if cache.prefix is not None:
        raise ValueError("the cache already follows a shared prefix")
    B = cache.valid.shape[0] * num_rows
    K, H = cache.v[0].shape[1], cache.v[0].shape[3]
    dtype = cache.v[0].dtype
    L = len(cache.v)
    return KVCache(
        k=tuple(jnp.zeros((B, K, H, max_len), dtype) for _ in range(L)),  # L x [B, K, H, S]
        v=tuple(jnp.zeros((B, K, max_len, H), dtype) for _ in range(L)),  # L x [B, K, S, H]
        valid=jnp.zeros((B, max_len), jnp.bool_),  # [B, S]
        pos=jnp.repeat(cache.pos, num_rows),  # [B]
        index=jnp.zeros((), jnp.int32),  # []
        prefix=SharedPrefix(k=cache.k, v=cache.v, valid=cache.valid))


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> KVCache:
    """An empty cache of `max_len` slots per row; dtype defaults to the model's compute dtype."""
    if not 0 < max_len <= config.max_seq_len:
        raise ValueError(f"max_len must be in [1, max_seq_len={config.max_seq_len}], got {max_len}")
    K, H = config.num_kv_heads, config.head_dim
    dtype = dtype or config.dtype
    L = config.num_layers
    return KVCache(
        k=tuple(jnp.zeros((batch, K, H, max_len), dtype) for _ in range(L)),  # L x [B, K, H, S]
        v=tuple(jnp.zeros((batch, K, max_len, H), dtype) for _ in range(L)),  # L x [B, K, S, H]
        valid=jnp.zeros((batch, max_len), jnp.bool_),  # [B, S]
        pos=jnp.zeros((batch,), jnp.int32),  # [B]
        index=jnp.zeros((), jnp.int32),  # []
    )


def positions_from_mask(pad_mask: jax.Array) -> jax.Array:
    """Positions [B, T] that count each row's real tokens from 0 (pads get the next position,
    harmless since nothing attends to them). E.g. mask [0 0 1 1 1 0] -> [0 0 0 1 2 3]."""
    return jnp.maximum(jnp.cumsum(pad_mask.astype(jnp.int32), axis=-1) - 1, 0)


class Llama(nnx.Module):
    """The policy model: GRPO samples rollouts from it and trains it on their rewards.

    Parameters live in the module; jitted code takes `graphdef, state = nnx.split(model)` and
    calls `nnx.merge(graphdef, state)` inside (see tests/test_model.py). Three entry points:

    - `model(tokens [B, T], pad_mask [B, T] | None, positions [B, T] | None) -> logits [B, T, V]`
      (float32): the full uncached causal forward, used for training and teacher-forced
      log-probs. `pad_mask` is True at real tokens. Padding may be on the left (prompts) and on
      the right (completions); a row's positions count its real tokens from 0, so a left-padded
      row gives the same logits at its real tokens as the same row unpadded. Logits at pad
      positions are garbage.
    - `model.prefill(tokens [B, T], pad_mask [B, T], cache) -> (logits, cache)`: writes T tokens
      per row into the `KVCache` and returns their logits ([B, T, V], or [B, V] for the last slot
      with `last_only=True`, which is what a sampler wants: a full [B, T, V] of a 128k vocab is
      large).
    - `model.decode_step(tokens [B], cache) -> (logits [B, V], cache)`: one new token per row.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.embed = _normal(rngs, (c.vocab_size, c.d_model), c.init_std, c.param_dtype)  # [V, D]
        self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.num_layers)])
        self.final_norm = RMSNorm(c.d_model, eps=c.norm_eps, param_dtype=c.param_dtype)
        # Tied: the output projection is embed.T, as in LLaMA 3.2.
        self.lm_head = (None if c.tie_embeddings else
                        _normal(rngs, (c.d_model, c.vocab_size), c.init_std, c.param_dtype))

    def _logits(self, x: jax.Array) -> jax.Array:
        dt = self.config.dtype
        x = self.final_norm(x)
        if self.lm_head is None:
            return jnp.einsum("BTD,VD->BTV", x, self.embed[...].astype(dt),
                              preferred_element_type=jnp.float32)  # [B, T, V]
        return jnp.einsum("BTD,DV->BTV", x, self.lm_head[...].astype(dt),
                          preferred_element_type=jnp.float32)  # [B, T, V]

    def _block(self, i: int, x, positions, mask, inv_freq, cache=None, remat=None):
        """Block i (with the cache's layer i when there is a cache); `remat` (default
        `config.remat`) wraps it in jax.checkpoint. The layer index and inv_freq (a host constant)
        are closed over: the index picks the cache's layer in Python, so it cannot be a traced
        argument."""
        layer = None if cache is None else i
        if not (self.config.remat if remat is None else remat):
            return self.layers[i](x, positions, mask, inv_freq, cache, layer)
        # jax.checkpoint of a pure function of the block's state rather than nnx.remat: a block
        # writes no variable, and nnx.remat's write-back fails on variables made at another trace
        # level (LoRA's frozen base inside the gradient, any model inside a while_loop).
        graphdef, state = nnx.split(self.layers[i])
        run = jax.checkpoint(lambda state, x, positions, mask, cache: nnx.merge(graphdef, state)(
            x, positions, mask, inv_freq, cache, layer))
        return run(state, x, positions, mask, cache)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed[...][tokens].astype(self.config.dtype)  # [B, T, D]

    def __call__(self, tokens: jax.Array, pad_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, *, last_n: int | None = None) -> jax.Array:
        """Full causal forward: tokens [B, T] -> logits [B, T, V] float32 (class docstring).

        last_n: only the logits of the last n positions, [B, n, V]. GRPO scores completions at
        the end of long prompts; the [B, T, V] head over the prompt would be most of the memory.
        """
        B, T = tokens.shape
        if pad_mask is None:
            pad_mask = jnp.ones((B, T), jnp.bool_)
        pad_mask = pad_mask.astype(jnp.bool_)
        if positions is None:
            positions = positions_from_mask(pad_mask)  # [B, T]
        causal = jnp.tril(jnp.ones((T, T), jnp.bool_))  # [T, S]
        mask = causal[None] & pad_mask[:, None, :]  # [B, T, S]
        inv_freq = llama3_inv_freq(self.config)
        x = self._embed(tokens)  # [B, T, D]
        for i in range(len(self.layers)):
            with jax.named_scope(f"layer_{i}"):
                x, _ = self._block(i, x, positions, mask, inv_freq)
        return self._logits(x if last_n is None else x[:, T - last_n:])

    def prefill(self, tokens: jax.Array, pad_mask: jax.Array, cache: KVCache, *,
                last_only: bool = False, remat: bool | None = None,
                read_slots: int | None = None) -> tuple[jax.Array, KVCache]:
        """Writes tokens [B, T] (pad_mask [B, T], True = real) at slots index .. index + T - 1.

        Returns logits [B, T, V] float32, or [B, V] of the last slot if `last_only` (a prompt
        batch is left-padded, so the last slot is every row's last real token), and the cache.
        Also usable to append a chunk to a cache that already holds tokens. remat: default
        `config.remat` (GRPO's loss differentiates through this path); the sampler passes False.
        read_slots: attention reads only the first `read_slots` slots of the cache (static; the
        caller knows that no slot after them is written yet, e.g. a chunked prefill, whose
        chunk ending at slot e reads e slots, not all S); None = all S.
        """
        B, T = tokens.shape
        c = self.config
        pad_mask = pad_mask.astype(jnp.bool_)
        positions = cache.pos[:, None] + positions_from_mask(pad_mask)  # [B, T]
        valid = jax.lax.dynamic_update_slice(cache.valid, pad_mask, (0, cache.index))  # [B, S]
        # Query at slot index + t sees valid slots s <= index + t.
        slots = jnp.arange(cache.max_len)  # [S]
        query_slots = cache.index + jnp.arange(T)  # [T]
        mask = (slots[None, :] <= query_slots[:, None])[None] & valid[:, None, :]  # [B, T, S]
        mask = mask[:, :, :read_slots]  # [B, T, S']: the slots attention reads
        inv_freq = llama3_inv_freq(c)
        x = self._embed(tokens)  # [B, T, D]
        for i in range(len(self.layers)):
            with jax.named_scope(f"layer_{i}"):
                x, cache = self._block(i, x, positions, mask, inv_freq, cache, remat)
        if last_only:
            x = x[:, -1:]
        logits = self._logits(x)  # [B, T, V] or [B, 1, V]
        cache = cache.replace(valid=valid, index=cache.index + T,
                              pos=cache.pos + pad_mask.sum(axis=-1, dtype=jnp.int32))
        return (logits[:, 0] if last_only else logits), cache

    def decode_step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One token per row, tokens [B], at slot `cache.index` and each row's own position.

        Returns logits [B, V] float32 and the cache. Rows that have finished keep writing (their
        tokens are ignored by the sampler); every write is marked valid. Never rematerialised:
        nothing differentiates a decode step.
        """
        return self.prefill(tokens[:, None], jnp.ones((tokens.shape[0], 1), jnp.bool_), cache,
                            last_only=True, remat=False)
