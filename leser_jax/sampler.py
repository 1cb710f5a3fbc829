"""The sampler: a completion for every row of a prompt batch, with each token's log-probability.

GRPO (LESER, arXiv 2509.05570) samples N completions per query at temperature 0.9 and needs,
for the ratio pi_theta / pi_old, the log-probability of each sampled token under the policy that
sampled it. This module is the device half of that: a jitted prefill over a left-padded prompt
batch, then ONE jitted `lax.while_loop` that decodes a token per row per iteration against the
KV cache, records the token and its log-prob, and stops when every row has emitted a stop token
or `max_new_tokens` columns are written. Host glue (tokenising, bucketing, tiling prompts into
groups, decoding texts) lives in leser_jax/rollout.py.

    prompt [B, P] --prefill--> logits of the last prompt token [B, V] --sample--> column 0
    while step < T_new and not all rows done:
        decode_step(column step-1) -> logits [B, V] --sample--> column step

## Log-probabilities (one definition, shared with the GRPO loss)
`token_logprobs(logits, tokens, temperature)` = log_softmax(logits / temperature)[token], in
float32, over the FULL vocabulary: the temperature-scaled model distribution BEFORE any top-k /
top-p truncation. That is the distribution the GRPO loss can recompute from a forward pass, so
old and new log-probs share one definition (truncation would make pi_old depend on a cut the
trainer does not see). Greedy decoding (temperature 0) records log-probs at temperature 1.

## What recompiles
Static (part of the compiled program, hashable): the graphdef, `max_new_tokens` (the output
shape), `num_rollouts` (the row count), `prefill_chunk` (the prefill's unrolled chunks),
`top_k` (`lax.top_k` needs a static k), `top_p` (whether the vocab is sorted at all: p = 1
skips the sort), `pad_id` (a tokenizer constant) and `row_sharding` (where the rows live on a
device mesh, leser_jax/sharding.py; None on one device). Passed as arrays, so
changing them never recompiles: the temperature (0 = greedy is a `lax.cond` on it, not a
Python branch), the stop ids (a fixed-size [MAX_STOP_IDS] int32 array padded with -1) and the
RNG key. The prompt shape [B, P] is static by nature: rollout.py pads P (and optionally B) to
a few buckets, one compile each.

## The loop state
`SamplerState` carries the KV cache (each prompt's P slots, shared by its rows, and each row's
T_new = max_new_tokens slots of its own, no more: attention reads every slot at every step),
the output buffers and the per-row flags. The prefill jit allocates the cache: the Q prompts
run against a cache of exactly their P slots (so that they attend over P keys, not P + T_new),
which `model.fork_cache` then hands to their N rows each as a shared prefix (not copied: the
rows of a group read one prompt's keys; "Shared prefixes" in leser_jax/model.py), beside T_new
empty slots per row for what they sample. The decode jit takes the state donated, because the
loop replaces every field, so XLA updates the cache in place instead of keeping a copy of it.

Profiling: the blocks are named "prefill", "decode", "decode_step" (the model's layers inside)
and "sample"; `prefill` and `decode` are separate jits so a caller can time them apart
(tools/bench_sampler.py measures both against transformers and the decode step against its
roofline floor).

Departures: the paper says nothing about its sampler; everything here is ours. Rows that have
finished keep running through the model (a batch shrinks only in shape-dynamic code); their
writes are ignored. Sampling is inverse-CDF with one uniform per row (`_draw`), not Gumbel-max,
which is several times dearer on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from leser_jax import sharding
from leser_jax.model import KVCache, fork_cache, init_cache

MAX_STOP_IDS = 8  # stop ids travel as a fixed-size array, so a different set never recompiles


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How completions are drawn.

    temperature: softmax temperature (the paper's 0.9 for GRPO rollouts); 0 = greedy (argmax),
      whose log-probs are recorded at temperature 1.
    top_k: keep the k most likely tokens before sampling; 0 = off.
    top_p: nucleus sampling, keep the smallest set of most likely tokens whose probability
      (at this temperature) reaches p; 1 = off.
    max_new_tokens: T_new, the most tokens a completion may have (its stop token included).
    prefill_chunk: prompt tokens the prefill runs at once; 0 = the whole prompt. A chunk that
      ends at slot e attends over e slots, not P, so the scores [Q, K, G*chunk, e] stay small
      and the causal half above the diagonal is skipped. Equal up to float rounding for any
      chunk.
    """

    temperature: float = 0.9
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256
    prefill_chunk: int = 32

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0 (0 = whole prompt), got "
                             f"{self.prefill_chunk}")


def stop_id_array(stop_ids: Sequence[int]) -> jax.Array:
    """Stop ids as a [MAX_STOP_IDS] int32 array padded with -1 (an id no token has)."""
    stop_ids = sorted({int(i) for i in stop_ids})
    if not 0 < len(stop_ids) <= MAX_STOP_IDS or min(stop_ids) < 0:
        raise ValueError(f"need 1 to {MAX_STOP_IDS} non-negative stop ids, got {stop_ids}")
    return jnp.asarray(stop_ids + [-1] * (MAX_STOP_IDS - len(stop_ids)), jnp.int32)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature) -> jax.Array:
    """log softmax(logits / temperature) at `tokens`, float32; temperature 0 means 1 (greedy).

    logits [..., V], tokens [...] int -> [...]. The one definition of a token's log-probability
    that the sampler records and the GRPO loss recomputes (see the module docstring).
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    scaled = logits.astype(jnp.float32) / jnp.where(temperature > 0, temperature, 1.0)
    picked = jnp.take_along_axis(scaled, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(scaled, axis=-1)  # [...]


def _truncate(scaled: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets to -inf the logits [B, V] outside the top-k / top-p set (both static; 0 / 1 = off).

    Top-p keeps a token when the probability mass of the tokens ranked above it is < p, so the
    most likely token always stays. Worked example, sorted probs [.5 .3 .15 .05], p = .7: mass
    before each = [0 .5 .8 .95] -> keep the first two. Ties at the threshold logit are all kept.
    """
    if top_k == 0 and top_p >= 1:
        return scaled
    V = scaled.shape[-1]
    # Sorted descending: only the top k when top_k is set, else the whole vocab (top-p alone).
    ranked = jax.lax.top_k(scaled, min(top_k, V) if top_k else V)[0]  # [B, k]
    keep = ranked.shape[-1]
    if top_p < 1:
        probs = jax.nn.softmax(ranked, axis=-1)  # [B, k], renormalised within the top k
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, k]
        keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # [B, 1], >= 1
        threshold = jnp.take_along_axis(ranked, keep - 1, axis=-1)  # [B, 1]
    else:
        threshold = ranked[:, keep - 1:]  # [B, 1]: the k-th largest
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


_BLOCK = 128  # tokens per block of the two-level inverse-CDF draw


def _draw(scaled: jax.Array, key: jax.Array) -> jax.Array:
    """One draw per row from softmax(scaled) (scaled [B, V] float32, -inf = excluded) -> [B].

    Inverse-CDF sampling with ONE uniform per row, in two levels so that no cumulative sum runs
    over the whole vocabulary: pick the block of 128 tokens whose cumulative mass passes u, then
    the token inside it. Exact up to float32 rounding of the sums. Gumbel-max
    (`jax.random.categorical`) draws B*V random numbers and two logs each, which on a CPU costs
    a large share of the model's own decode step.
    Worked example, one block of 4, weights w = [.1 0 .6 .3]: cdf = [.1 .1 .7 1]; u' = .5 ->
    count(cdf < .5) = 2 -> token 2. A zero-weight token (index 1) has cdf equal to its
    predecessor's, so no u' in (0, total] selects it; u' <= total keeps the index in range.
    """
    B, V = scaled.shape
    num_blocks = -(-V // _BLOCK)
    scaled = jnp.pad(scaled, ((0, 0), (0, num_blocks * _BLOCK - V)), constant_values=-jnp.inf)
    w = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # [B, V'] unnormalised probs
    w = w.reshape(B, num_blocks, _BLOCK)  # [B, V'/128, 128]
    block_mass = jnp.sum(w, axis=-1)  # [B, V'/128]
    block_cdf = jnp.cumsum(block_mass, axis=-1)  # [B, V'/128]
    # u' in (0, total]: 1 - uniform avoids 0, which would select a leading zero-weight token.
    u = (1.0 - jax.random.uniform(key, (B, 1))) * block_cdf[:, -1:]  # [B, 1]
    block = jnp.sum(block_cdf < u, axis=-1, keepdims=True)  # [B, 1]
    block = jnp.minimum(block, num_blocks - 1)  # only float rounding can push it past the end
    in_block = jnp.take_along_axis(w, block[:, :, None], axis=1)[:, 0]  # [B, 128]
    cdf = jnp.cumsum(in_block, axis=-1)  # [B, 128]
    mass_before = (jnp.take_along_axis(block_cdf, block, axis=-1)
                   - jnp.take_along_axis(block_mass, block, axis=-1))  # [B, 1]
    u = jnp.clip(u - mass_before, jnp.finfo(jnp.float32).tiny, cdf[:, -1:])  # rounding guard
    token = jnp.sum(cdf < u, axis=-1)  # [B]
    return block[:, 0] * _BLOCK + token


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, *, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """One token per row from logits [B, V]: argmax where temperature == 0, else a draw from
    softmax(logits / temperature) truncated to top-k / top-p. Returns [B] int32."""
    temperature = jnp.asarray(temperature, jnp.float32)

    def draw():
        scaled = logits.astype(jnp.float32) / temperature  # [B, V]
        return _draw(_truncate(scaled, top_k, top_p), key).astype(jnp.int32)

    # A branch, so that a sampled step does not pay for an argmax (a variadic reduce over V)
    # nor a greedy one for the draw.
    return jax.lax.cond(temperature > 0, draw,
                        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))  # [B]


@flax.struct.dataclass
class SamplerState:
    """What the decode loop carries from one token to the next (B rows, T_new = max_new_tokens)."""

    cache: KVCache  # rows' k L x [B, K, H, T_new], v L x [B, K, T_new, H]; valid, pos, index;
    #                 prefix: the Q prompts' k L x [Q, K, H, P], v L x [Q, K, P, H], valid [Q, P]
    tokens: jax.Array  # [B, T_new] int32: sampled tokens, pad_id after a row's stop token
    logprobs: jax.Array  # [B, T_new] float32: token_logprobs of each sampled token, 0 after stop
    done: jax.Array  # [B] bool: the row has emitted a stop token
    lengths: jax.Array  # [B] int32: tokens generated so far, stop token included
    step: jax.Array  # [] int32: columns written so far (the next column to write)
    key: jax.Array  # [] PRNG key of this call; column t is drawn with fold_in(key, t)


@flax.struct.dataclass
class Samples:
    """The sampler's result, all device arrays (B rows, T_new = max_new_tokens)."""

    tokens: jax.Array  # [B, T_new] int32, pad_id after the stop token
    logprobs: jax.Array  # [B, T_new] float32, token_logprobs at the sampling temperature
    mask: jax.Array  # [B, T_new] bool: generated tokens up to and including the stop token
    lengths: jax.Array  # [B] int32: mask.sum(axis=1)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything the jitted programs are specialised on, as one hashable value (the jit's cache
    key): a SamplingConfig's shape-giving fields, the rows per prompt, the pad id and where the
    rows live. The temperature is not in it: it is traced, so a new one does not recompile."""

    max_new_tokens: int
    prefill_chunk: int
    top_k: int
    top_p: float
    pad_id: int
    num_rollouts: int = 1
    row_sharding: jax.sharding.NamedSharding | None = None

    @classmethod
    def of(cls, config: SamplingConfig, *, pad_id: int, num_rollouts: int = 1,
           row_sharding: jax.sharding.NamedSharding | None = None) -> _Static:
        return cls(max_new_tokens=config.max_new_tokens, prefill_chunk=config.prefill_chunk,
                   top_k=config.top_k, top_p=float(config.top_p), pad_id=int(pad_id),
                   num_rollouts=int(num_rollouts), row_sharding=row_sharding)


def _record(state: SamplerState, logits: jax.Array, temperature, stop_ids,
            static: _Static) -> SamplerState:
    """Samples column `state.step` from logits [B, V] and writes it for the rows still running."""
    with jax.named_scope("sample"):
        key = jax.random.fold_in(state.key, state.step)
        token = sample_tokens(logits, key, temperature, top_k=static.top_k,
                              top_p=static.top_p)  # [B]
        logprob = token_logprobs(logits, token, temperature)  # [B]
        live = ~state.done  # [B]
        token = jnp.where(live, token, static.pad_id)
        logprob = jnp.where(live, logprob, 0.0)
        stopped = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)  # [B]; -1 never matches
        column = (0, state.step)
        return state.replace(
            tokens=jax.lax.dynamic_update_slice(state.tokens, token[:, None], column),
            logprobs=jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], column),
            done=state.done | (live & stopped),
            lengths=state.lengths + live.astype(jnp.int32),
            step=state.step + 1)


def _shard_rows(state: SamplerState,
                row_sharding: jax.sharding.NamedSharding | None) -> SamplerState:
    """Pins every per-row array [B, ...] of the state (cache, outputs, flags) to `row_sharding`
    and the prompts' shared prefix [Q, ...] to the matching split of Q rows (a device holds the
    prompts of its rows when the mesh divides Q); the shared scalars (slot index, step, key)
    stay replicated. None (one device): unchanged."""
    if row_sharding is None:
        return state
    prefix = state.cache.prefix
    state = jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, row_sharding) if x.ndim else x,
        state.replace(cache=state.cache.replace(prefix=None)))
    if prefix is not None:
        prompts = sharding.row_sharding(row_sharding.mesh, prefix.valid.shape[0])
        prefix = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, prompts), prefix)
    return state.replace(cache=state.cache.replace(prefix=prefix))


@functools.partial(jax.jit, static_argnums=(0, 7))
def _prefill(graphdef, params, prompt_tokens, prompt_mask, key, temperature, stop_ids,
             static: _Static) -> SamplerState:
    """Prefill prompts [Q, P], fork each into its N = static.num_rollouts rows (B = Q * N, row b
    continues prompt b // N), and sample column 0.

    Rollouts of one prompt share its prefill: the prompt runs once, its keys and values become
    the shared prefix of its N rows (`model.fork_cache`) and its last logits are repeated for
    them. The cache is made here, inside the jit (an XLA allocation, nothing to transfer or
    donate). static.row_sharding: where the B sampled rows live on a mesh
    (sharding.row_sharding; None = one device); the parameters keep the sharding they arrive with.
    """
    model = nnx.merge(graphdef, params)
    max_new_tokens, num_rollouts, pad_id = (static.max_new_tokens, static.num_rollouts,
                                            static.pad_id)
    Q, P = prompt_tokens.shape
    B = Q * num_rollouts
    if P + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"max_seq_len {model.config.max_seq_len}")
    with jax.named_scope("prefill"):
        # A cache of exactly P slots: the prompt attends over its own P keys, not over the
        # T_new empty slots a decode needs (T_new / (P + T_new) of the attention's work),
        # chunk by chunk (SamplingConfig.prefill_chunk): the chunk ending at slot e reads e.
        cache = init_cache(model.config, Q, P)
        chunk = static.prefill_chunk or P
        for start in range(0, P, chunk):
            end = min(start + chunk, P)
            logits, cache = model.prefill(prompt_tokens[:, start:end], prompt_mask[:, start:end],
                                          cache, last_only=True, remat=False,
                                          read_slots=end)  # [Q, V] of the chunk's last token
        cache = fork_cache(cache, num_rollouts, max_new_tokens)  # rows [B, ..., T_new]
        logits = jnp.repeat(logits, num_rollouts, axis=0)  # [B, V]
        state = SamplerState(
            cache=cache,
            tokens=jnp.full((B, max_new_tokens), pad_id, jnp.int32),  # [B, T_new]
            logprobs=jnp.zeros((B, max_new_tokens), jnp.float32),  # [B, T_new]
            done=jnp.zeros((B,), jnp.bool_),  # [B]
            lengths=jnp.zeros((B,), jnp.int32),  # [B]
            step=jnp.zeros((), jnp.int32),  # []
            key=key)
        state = _record(state, logits, temperature, stop_ids, static)
        return _shard_rows(state, static.row_sharding)


# The state (KV cache included) is replaced by the loop: donating it lets XLA update it in place.
@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=2)
def _decode(graphdef, params, state: SamplerState, temperature, stop_ids,
            static: _Static) -> SamplerState:
    """Decodes columns state.step .. T_new - 1 in one while_loop; stops when all rows are done."""
    model = nnx.merge(graphdef, params)
    max_new_tokens = state.tokens.shape[1]

    def running(s: SamplerState):
        return (s.step < max_new_tokens) & ~jnp.all(s.done)

    def step(s: SamplerState) -> SamplerState:
        last = jax.lax.dynamic_index_in_dim(s.tokens, s.step - 1, axis=1, keepdims=False)  # [B]
        with jax.named_scope("decode_step"):
            logits, cache = model.decode_step(last, s.cache)  # [B, V]
        s = _record(s.replace(cache=cache), logits, temperature, stop_ids, static)
        return _shard_rows(s, static.row_sharding)  # the loop carry keeps the rows in place

    with jax.named_scope("decode"):
        return jax.lax.while_loop(running, step, state)


def _stop_array(stop_ids: jax.Array | Sequence[int]) -> jax.Array:
    return stop_ids if isinstance(stop_ids, jax.Array) else stop_id_array(stop_ids)


def prefill(graphdef, params, prompt_tokens, prompt_mask, key, config: SamplingConfig, *,
            stop_ids: jax.Array | Sequence[int], pad_id: int, num_rollouts: int = 1,
            row_sharding: jax.sharding.NamedSharding | None = None) -> SamplerState:
    """The first half of `generate`: prefill and column 0 (exposed so callers can time it).
    Arguments as in `generate`."""
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    return _prefill(graphdef, params, jnp.asarray(prompt_tokens, jnp.int32),
                    jnp.asarray(prompt_mask, jnp.bool_), key,
                    jnp.asarray(config.temperature, jnp.float32), _stop_array(stop_ids),
                    _Static.of(config, pad_id=pad_id, num_rollouts=num_rollouts,
                               row_sharding=row_sharding))


def decode(graphdef, params, state: SamplerState, config: SamplingConfig, *,
           stop_ids: jax.Array | Sequence[int], pad_id: int,
           row_sharding: jax.sharding.NamedSharding | None = None) -> SamplerState:
    """The second half of `generate`: the decode loop. `state` is donated (do not reuse it)."""
    # The decode is specialised on the rows' count through the state's shapes, not num_rollouts.
    return _decode(graphdef, params, state, jnp.asarray(config.temperature, jnp.float32),
                   _stop_array(stop_ids), _Static.of(config, pad_id=pad_id,
                                                     row_sharding=row_sharding))


def finish(state: SamplerState) -> Samples:
    """The loop state's outputs; mask[b, t] = t < lengths[b]."""
    columns = jnp.arange(state.tokens.shape[1])  # [T_new]
    return Samples(tokens=state.tokens, logprobs=state.logprobs, lengths=state.lengths,
                   mask=columns[None, :] < state.lengths[:, None])  # [B, T_new]


def generate(graphdef, params, prompt_tokens, prompt_mask, key: jax.Array,
             config: SamplingConfig, *, stop_ids: jax.Array | Sequence[int],
             pad_id: int, num_rollouts: int = 1,
             row_sharding: jax.sharding.NamedSharding | None = None) -> Samples:
    """Samples `num_rollouts` completions of every prompt of a left-padded prompt batch.

    graphdef, params: `nnx.split(model)`. prompt_tokens [Q, P] int, prompt_mask [Q, P] bool (True
    at real tokens; left padding, so the last column is every row's last prompt token). `key`: a
    PRNG key (rollout.py derives one per step with fold_in). stop_ids: a `stop_id_array` (or a
    sequence of ids, converted here). Rows stop after any stop id; the loop stops when all have.
    num_rollouts: N rows per prompt, B = Q * N, in the group layout: row b continues prompt
      b // N (rollout.tile_groups). Each prompt is prefilled once and its N rows share its keys.
    row_sharding: on a device mesh, the sharding of the B sampled rows (KV cache, tokens,
      log-probs; sharding.row_sharding(mesh, B)), with `params` placed by
      sharding.param_shardings; None (one device) leaves the programs as they are. Random draws
      do not depend on the sharding (JAX's partitionable threefry), so a key gives the same
      tokens on one device and on a mesh.
    """
    stop_ids = _stop_array(stop_ids)
    state = prefill(graphdef, params, prompt_tokens, prompt_mask, key, config,
                    stop_ids=stop_ids, pad_id=pad_id, num_rollouts=num_rollouts,
                    row_sharding=row_sharding)
    return finish(decode(graphdef, params, state, config, stop_ids=stop_ids, pad_id=pad_id,
                         row_sharding=row_sharding))


def compiled_count() -> int:
    """How many programs the prefill and decode jits hold (a test counts recompilations)."""
    return _prefill._cache_size() + _decode._cache_size()

