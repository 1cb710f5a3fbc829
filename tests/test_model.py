"""The policy model: cached decode == full forward, padding invariance, RoPE scaling, GQA, presets."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leser_jax.config import ModelConfig, flops_per_token, param_count
from leser_jax.model import KVCache, Llama, fork_cache, init_cache, llama3_inv_freq
from tests._tolerance import FORWARD_RTOL, GRAD_RTOL, assert_close


def _tokens(config, shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 1, config.vocab_size)  # [B, T]


# The entry points as a sampler and a trainer call them: jitted over nnx.split state, merged
# inside, with the graphdef static (one compilation per model structure and input shape) and the
# cache donated (it is replaced, never reused). Eager calls would compile every op separately.
@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(graphdef, state, tokens, pad_mask):
    return nnx.merge(graphdef, state)(tokens, pad_mask)


@functools.partial(jax.jit, static_argnums=0, static_argnames="last_only", donate_argnums=4)
def _prefill_jit(graphdef, state, tokens, pad_mask, cache, last_only=False):
    return nnx.merge(graphdef, state).prefill(tokens, pad_mask, cache, last_only=last_only)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _decode_jit(graphdef, state, tokens, cache):
    return nnx.merge(graphdef, state).decode_step(tokens, cache)


def forward(model, tokens, pad_mask=None):
    if pad_mask is None:
        pad_mask = jnp.ones(tokens.shape, bool)
    return _forward_jit(*nnx.split(model), tokens, pad_mask)


def prefill(model, tokens, pad_mask, cache, last_only=False):
    return _prefill_jit(*nnx.split(model), tokens, pad_mask, cache, last_only=last_only)


def decode(model, tokens, cache):
    return _decode_jit(*nnx.split(model), tokens, cache)


def _with_params(config, pure):
    """A model of `config` holding the given arrays, built without a random init."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def tiny():
    config = ModelConfig.tiny().replace(init_std=0.2)  # larger weights: logits far from uniform
    return config, Llama(config, rngs=nnx.Rngs(0))


def test_cached_decode_matches_full_forward(tiny):
    config, model = tiny
    tokens = _tokens(config, (2, 12))  # [B, T]
    full = forward(model, tokens)  # [B, T, V]
    assert float(jnp.std(full)) > 0.1  # the comparison below is not between near-constants

    cache = init_cache(config, batch=2, max_len=16)
    logits, cache = prefill(model, tokens[:, :5], jnp.ones((2, 5), bool), cache)
    steps = [logits]  # [B, 5, V]
    for t in range(5, 12):
        logits, cache = decode(model, tokens[:, t], cache)  # [B, V]
        steps.append(logits[:, None])
    assert_close(np.concatenate(steps, axis=1), full, rtol=FORWARD_RTOL)
    assert int(cache.index) == 12 and cache.pos.tolist() == [12, 12]


@pytest.mark.slow
def test_left_padded_rows_match_unpadded_rows(tiny):
    """Row 0 has 4 left pads, row 1 none; each row's real-token logits == that row run alone,
    through the full forward, through prefill, and through the decode steps that follow it."""
    config, model = tiny
    lengths = (6, 10)
    rows = [_tokens(config, (1, n), seed=10 + i) for i, n in enumerate(lengths)]
    more = _tokens(config, (2, 3), seed=20)  # tokens decoded after the prompt, [B, 3]
    T = max(lengths)
    tokens = jnp.concatenate([jnp.pad(r, ((0, 0), (T - r.shape[1], 0))) for r in rows])  # [B, T]
    pad_mask = jnp.arange(T)[None, :] >= (T - jnp.array(lengths))[:, None]  # [B, T]
    # Worked example: row 0 mask = [0 0 0 0 1 1 1 1 1 1], row 1 = all ones.
    assert pad_mask.sum(axis=1).tolist() == list(lengths)

    padded_full = forward(model, tokens, pad_mask)  # [B, T, V]
    cache = init_cache(config, batch=2, max_len=16)  # the shape of the test above: no recompile
    padded_prefill, cache = prefill(model, tokens, pad_mask, cache)  # [B, T, V]
    decoded = []
    for t in range(3):
        logits, cache = decode(model, more[:, t], cache)
        decoded.append(logits)
    decoded = jnp.stack(decoded, axis=1)  # [B, 3, V]

    for b, (row, n) in enumerate(zip(rows, lengths)):
        alone = forward(model, jnp.concatenate([row, more[b:b + 1]], axis=1))[0]  # [n + 3, V]
        assert_close(padded_full[b, T - n:], alone[:n], rtol=FORWARD_RTOL)
        assert_close(padded_prefill[b, T - n:], alone[:n], rtol=FORWARD_RTOL)
        assert_close(decoded[b], alone[n:], rtol=FORWARD_RTOL)
    assert cache.pos.tolist() == [6 + 3, 10 + 3]
    assert not bool(jnp.isnan(padded_full).any())  # pad queries see no key: uniform, not NaN


def test_prefill_last_only_and_cache_is_a_pytree(tiny):
    config, model = tiny
    tokens = _tokens(config, (2, 7))
    cache = init_cache(config, batch=2, max_len=8)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(cache))
    assert len(cache.k) == config.num_layers
    assert cache.k[0].shape == (2, config.num_kv_heads, config.head_dim, 8)  # keys as columns
    assert cache.v[0].shape == (2, config.num_kv_heads, 8, config.head_dim)
    last, _ = prefill(model, tokens, jnp.ones((2, 7), bool), cache, last_only=True)  # [B, V]
    full = forward(model, tokens)
    assert last.shape == (2, config.vocab_size)
    assert_close(last, full[:, -1], rtol=FORWARD_RTOL)


@pytest.mark.slow
def test_forked_cache_equals_each_row_alone_forward_and_gradient(tiny):
    """fork_cache: N rows sharing a prompt's keys give, for every row, the logits of running
    [prompt, row] on its own, through prefill of right-padded continuations and a decode step
    after them; and the gradient through the shared prefix equals the gradient of the rows run
    alone (it reaches the prompt's activations from all N rows)."""
    config, model = tiny
    lengths, N, T = (4, 9), 3, 5
    prompts = [_tokens(config, (1, n), seed=30 + i) for i, n in enumerate(lengths)]
    P = max(lengths)
    prompt_tokens = jnp.concatenate([jnp.pad(r, ((0, 0), (P - r.shape[1], 0))) for r in prompts])
    prompt_mask = jnp.arange(P)[None, :] >= (P - jnp.array(lengths))[:, None]  # [Q, P], left pads
    rows = _tokens(config, (2 * N, T), seed=40)  # [B, T], row b continues prompt b // N
    row_mask = jnp.ones((2 * N, T), bool).at[1, 3:].set(False)  # row 1: 3 tokens, right pads
    nxt = _tokens(config, (2 * N,), seed=41)  # one decoded token after each row's T slots

    def forked(params):
        model_ = nnx.merge(graphdef, params)
        cache = init_cache(config, batch=2, max_len=P)
        _, cache = model_.prefill(prompt_tokens, prompt_mask, cache)
        cache = fork_cache(cache, N, T + 1)
        logits, cache = model_.prefill(rows, row_mask, cache)  # [B, T, V]
        last, cache = model_.decode_step(nxt, cache)  # [B, V]
        return logits, last, cache

    def alone(params):  # each row as one sequence [its prompt, its row, next], no cache
        model_ = nnx.merge(graphdef, params)
        tokens = jnp.concatenate([prompt_tokens.repeat(N, 0), rows, nxt[:, None]], axis=1)
        mask = jnp.concatenate([prompt_mask.repeat(N, 0), row_mask,
                                jnp.ones((2 * N, 1), bool)], axis=1)
        out = model_(tokens, mask)  # [B, P + T + 1, V]
        return out[:, P:P + T], out[:, -1]

    graphdef, params = nnx.split(model)
    logits, last, cache = jax.jit(forked)(params)
    want_logits, want_last = jax.jit(alone)(params)
    assert cache.prefix.k[0].shape[0] == 2 and cache.k[0].shape[0] == 2 * N  # not copied
    assert cache.pos.tolist() == [10, 8, 10, 15, 15, 15]  # prompt + real row tokens + 1
    assert_close(logits[row_mask], want_logits[row_mask], rtol=FORWARD_RTOL)
    assert_close(last, want_last, rtol=FORWARD_RTOL)

    weights = jax.random.normal(jax.random.key(5), want_last.shape)  # a loss that uses every row
    grad = jax.jit(jax.grad(lambda p: jnp.sum(forked(p)[1] * weights)))(params)
    want = jax.jit(jax.grad(lambda p: jnp.sum(alone(p)[1] * weights)))(params)
    for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want)):
        assert_close(g, w, rtol=GRAD_RTOL)
    with pytest.raises(ValueError, match="already"):
        fork_cache(cache, 2, 4)


def _reference_llama3_inv_freq(theta, head_dim, factor, low, high, original):
    """Meta's llama3 `apply_scaling`, written out per frequency in plain Python."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(freq)
        elif wavelen > original / low:
            out.append(freq / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def test_llama3_rope_scaling_matches_reference():
    config = ModelConfig.llama3_2_3b()  # theta 5e5, H 128, factor 32, low 1, high 4, orig 8192
    got = llama3_inv_freq(config)
    want = _reference_llama3_inv_freq(500_000.0, 128, 32.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    plain = 1.0 / 500_000.0 ** (np.arange(0, 128, 2) / 128)
    ratio = plain / got
    # All three regimes occur: unchanged (high frequencies, wavelength < 8192/4 = 2048),
    # divided by 32 (wavelength > 8192), and interpolated in between.
    assert np.isclose(ratio[0], 1.0) and np.isclose(ratio[-1], 32.0)
    assert ((ratio > 1.001) & (ratio < 31.99)).any()
    # Without scaling the plain frequencies come back.
    np.testing.assert_allclose(llama3_inv_freq(config.replace(rope_scaling_factor=None)), plain,
                               rtol=1e-6)


@pytest.mark.parametrize("preset, low, high", [
    ("demo", 4e6, 6e6), ("cpu", 25e6, 35e6),
    ("llama3_2_1b", 1.23e9, 1.25e9), ("llama3_2_3b", 3.19e9, 3.23e9)])
def test_preset_param_counts(preset, low, high):
    config = getattr(ModelConfig, preset)()
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))  # shapes only, no memory
    counted = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert counted == param_count(config)
    assert low <= counted <= high, counted


def test_flops_per_token_golden():
    # tiny: per layer q,k,v,o = 64*16*(2*4 + 2*2) = 12288, mlp 3*64*192 = 36864 -> 49152;
    # 2 layers + output 64*512 = 32768 -> N_mm = 131072. forward = 2*131072 + 4*2*4*16*T.
    config = ModelConfig.tiny()
    assert flops_per_token(config, 10, training=False) == 2 * 131072 + 4 * 2 * 4 * 16 * 10
    assert flops_per_token(config, 10) == 3 * (2 * 131072 + 5120)


@pytest.mark.slow
def test_bf16_params_give_float32_logits(tiny):
    config, model = tiny
    bf16 = config.replace(dtype="bfloat16", param_dtype="bfloat16")
    pure = nnx.to_pure_dict(nnx.state(model))
    model16 = _with_params(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), pure))
    assert model16.embed[...].dtype == jnp.bfloat16
    tokens = _tokens(config, (2, 9))
    logits16 = forward(model16, tokens)
    assert logits16.dtype == jnp.float32
    logits32 = forward(model, tokens)
    # Same weights rounded to bf16: close to float32, but not equal (bf16 has 8 mantissa bits).
    err = float(jnp.abs(logits16 - logits32).max())
    assert 0 < err < 0.1 * float(jnp.abs(logits32).max()), err
    cache = init_cache(bf16, batch=2, max_len=10)
    assert cache.k[0].dtype == jnp.bfloat16
    step, _ = prefill(model16, tokens, jnp.ones((2, 9), bool), cache, last_only=True)
    assert step.dtype == jnp.float32


def test_gqa_equals_mha_with_repeated_kv_heads(tiny):
    """K=2 kv heads for N=4 query heads == MHA whose kv head n is GQA's kv head n // 2
    (Hugging Face's repeat_kv order). Fails if query heads were grouped the other way."""
    config, gqa = tiny
    assert config.num_kv_heads < config.num_heads
    mha_config = config.replace(num_kv_heads=config.num_heads)
    G = config.kv_groups
    tokens = _tokens(config, (2, 8))
    want = forward(gqa, tokens)

    def mha_logits(expand):
        pure = nnx.to_pure_dict(nnx.state(gqa))
        for layer in pure["layers"].values():
            for name in ("k", "v"):
                layer["attn"][name] = expand(layer["attn"][name])  # [D, K, H] -> [D, N, H]
        return forward(_with_params(mha_config, pure), tokens)

    assert_close(mha_logits(lambda w: jnp.repeat(w, G, axis=1)), want, rtol=FORWARD_RTOL)
    # The other grouping (query head n reads kv head n % K) gives different logits.
    wrong = mha_logits(lambda w: jnp.tile(w, (1, G, 1)))
    assert float(jnp.abs(wrong - want).max()) > 1e-2 * float(jnp.abs(want).max())


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelConfig.tiny().replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig.tiny().replace(dtype="float8")
    with pytest.raises(ValueError, match="max_len"):
        init_cache(ModelConfig.tiny(), batch=1, max_len=10_000)
    assert ModelConfig.from_dict(ModelConfig.llama3_2_1b().to_dict()) == ModelConfig.llama3_2_1b()
    assert isinstance(init_cache(ModelConfig.tiny(), 1, 4), KVCache)
