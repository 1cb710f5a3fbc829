"""The sampler against the uncached forward: greedy == step-by-step argmax, recorded log-probs ==
teacher-forced log-probs, stops and masks, per-row independence, keys, and compile counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leser_jax import sampler
from leser_jax.config import ModelConfig
from leser_jax.model import Llama
from leser_jax.sampler import SamplingConfig, generate, stop_id_array, token_logprobs
from tests._tolerance import FORWARD_RTOL, assert_close

CONFIG = ModelConfig.tiny()
NEVER = [CONFIG.vocab_size]  # a stop id no token has: every row runs to max_new_tokens
PAD = 0


def _random_model(config, seed=0, std=0.2):
    """Host-made weights (no compiled random init); std 0.2 keeps logits far from uniform."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    pure = jax.tree.map(
        lambda x: jnp.asarray(1 + 0.1 * rng.normal(size=x.shape) if x.ndim == 1
                              else std * rng.normal(size=x.shape), x.dtype),
        nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def split():
    return nnx.split(_random_model(CONFIG))  # (graphdef, params)


def _rows(lengths, seed=0):
    """Real prompt token rows of the given lengths (ids 4.. so none is pad/bos/eos)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(4, CONFIG.vocab_size, n).tolist() for n in lengths]


def _left_pad(rows, P):
    tokens = np.full((len(rows), P), PAD, np.int32)  # [B, P]
    mask = np.zeros((len(rows), P), bool)  # [B, P]
    for b, row in enumerate(rows):
        tokens[b, P - len(row):] = row
        mask[b, P - len(row):] = True
    return tokens, mask


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens, pad_mask):
    return nnx.merge(graphdef, params)(tokens, pad_mask)  # [B, T, V]


def _sample(split, rows, P=16, key=0, stop=NEVER, **config):
    tokens, mask = _left_pad(rows, P)
    config = SamplingConfig(**{"max_new_tokens": 8, **config})
    return generate(*split, tokens, mask, jax.random.key(key), config, stop_ids=stop, pad_id=PAD)


# Every test samples 4 rows of a 16-token bucket (one compiled program per static setting), which
# keeps the file at a few compiles; rows of different lengths exercise the left padding.

@pytest.mark.slow
def test_greedy_equals_stepwise_argmax_of_uncached_forward(split):
    rows = _rows([5, 11, 1, 16])
    out = _sample(split, rows, temperature=0.0)
    assert out.tokens.shape == (4, 8) and bool(out.mask.all()) and out.lengths.tolist() == [8] * 4
    # Reference: each row unpadded at the left of a [4, 16 + 8] buffer, extended one argmax at a
    # time. Causal attention makes the junk to the right of a row irrelevant, so one compiled
    # shape (the teacher-forcing test's) serves every step and row.
    buf = np.zeros((4, 16 + 8), np.int32)
    for b, row in enumerate(rows):
        buf[b, :len(row)] = row
    for t in range(8):
        logits = _forward(*split, buf, np.ones_like(buf, bool))  # [4, 24, V]
        for b, row in enumerate(rows):
            buf[b, len(row) + t] = int(jnp.argmax(logits[b, len(row) + t - 1]))
    for b, row in enumerate(rows):
        assert out.tokens[b].tolist() == buf[b, len(row):len(row) + 8].tolist()


def test_logprobs_equal_teacher_forced_logprobs(split):
    """What GRPO recomputes: forward over prompt + completion, log-probs of the completion."""
    rows = _rows([3, 9, 16, 12], seed=1)
    P, T = 16, 8
    out = _sample(split, rows, P=P, key=3, temperature=0.9)
    prompt, prompt_mask = _left_pad(rows, P)
    tokens = np.concatenate([prompt, np.asarray(out.tokens)], axis=1)  # [B, P + T]
    mask = np.concatenate([prompt_mask, np.asarray(out.mask)], axis=1)
    logits = _forward(*split, tokens, mask)  # [B, P + T, V]
    # The logit that predicts completion token t sits at position P + t - 1.
    want = token_logprobs(logits[:, P - 1:P + T - 1], out.tokens, 0.9)  # [B, T]
    assert float(jnp.abs(out.logprobs).min()) > 0  # real log-probs, not zeros
    assert_close(out.logprobs, want, rtol=FORWARD_RTOL)


def test_token_logprobs_golden():
    logits = jnp.log(jnp.array([[1.0, 3.0]]))  # softmax = [1/4, 3/4]
    tokens = jnp.array([1])
    np.testing.assert_allclose(token_logprobs(logits, tokens, 1.0), [np.log(3 / 4)], rtol=1e-6)
    # Greedy (temperature 0) records temperature-1 log-probs.
    np.testing.assert_allclose(token_logprobs(logits, tokens, 0.0), [np.log(3 / 4)], rtol=1e-6)
    # T = 0.5 squares the odds: weights [1, 9] -> log(9/10).
    np.testing.assert_allclose(token_logprobs(logits, tokens, 0.5), [np.log(9 / 10)], rtol=1e-6)


@pytest.mark.slow
def test_top_k_1_and_tiny_top_p_equal_greedy(split):
    rows = _rows([4, 12, 2, 7], seed=2)
    greedy = _sample(split, rows, temperature=0.0)
    top_k1 = _sample(split, rows, key=7, temperature=0.9, top_k=1)
    assert top_k1.tokens.tolist() == greedy.tokens.tolist()
    # Log-probs are of the untruncated distribution at temperature 0.9, so not 0 despite top-1.
    assert float(top_k1.logprobs.max()) < 0
    # Tiny top-p keeps only the most likely token: the argmax, at any temperature. Checked on the
    # draw itself, which is all that top_p changes (a whole-loop run would be one more compile).
    logits = jax.random.normal(jax.random.key(0), (64, CONFIG.vocab_size))  # [B, V]
    draw = jax.jit(sampler.sample_tokens, static_argnames=("top_k", "top_p"))
    for key in range(3):
        got = draw(logits, jax.random.key(key), 1.3, top_p=1e-6)
        assert got.tolist() == jnp.argmax(logits, axis=-1).tolist()


def test_same_key_same_output_and_group_rollouts_differ(split):
    rows = _rows([6], seed=3) * 4  # one prompt tiled 4 times: a GRPO group
    a = _sample(split, rows, key=5, temperature=0.9)
    b = _sample(split, rows, key=5, temperature=0.9)
    c = _sample(split, rows, key=6, temperature=0.9)
    assert a.tokens.tolist() == b.tokens.tolist()
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert len({tuple(r) for r in a.tokens.tolist()}) > 1  # the group's rollouts differ
    assert a.tokens.tolist() != c.tokens.tolist()


def test_stop_token_ends_row_and_masks_the_rest(split):
    rows = _rows([5, 10, 3, 16], seed=4)
    free = _sample(split, rows, temperature=0.0)  # no stop
    stop = int(free.tokens[0, 2])  # row 0's third token becomes a stop id
    out = _sample(split, rows, temperature=0.0, stop=[stop] + NEVER)
    # Row 0: 3 tokens (stop included), then pad, mask False and log-prob 0.
    assert out.lengths[0] == 3
    assert out.tokens[0].tolist() == free.tokens[0, :3].tolist() + [PAD] * 5
    assert out.mask[0].tolist() == [True] * 3 + [False] * 5
    assert out.logprobs[0, 3:].tolist() == [0.0] * 5
    # Bitwise: one compiled program for both runs (stop ids are an argument, not a constant).
    np.testing.assert_array_equal(out.logprobs[0, :3], free.logprobs[0, :3])
    # The other rows are unaffected up to their own first stop (if they emit that token at all).
    for b in range(1, 4):
        row = free.tokens[b].tolist()
        n = row.index(stop) + 1 if stop in row else 8
        assert out.lengths[b] == n and out.tokens[b, :n].tolist() == row[:n]
    assert bool((out.mask.sum(axis=1) == out.lengths).all())


def test_all_rows_stopped_exits_loop_early(split):
    rows = _rows([7, 7, 2, 9], seed=5)
    free = _sample(split, rows, temperature=0.0)
    stops = sorted({int(free.tokens[0, 0]), int(free.tokens[1, 1]), int(free.tokens[2, 0]),
                    int(free.tokens[3, 1])})
    tokens, mask = _left_pad(rows, 16)
    config = SamplingConfig(temperature=0.0, max_new_tokens=8)
    state = sampler.prefill(*split, tokens, mask, jax.random.key(0), config,
                            stop_ids=stop_id_array(stops), pad_id=PAD)
    state = sampler.decode(*split, state, config, stop_ids=stop_id_array(stops), pad_id=PAD)
    assert bool(state.done.all()) and int(state.step) <= 2 < 8  # did not run 8 steps


@pytest.mark.slow
def test_row_alone_equals_row_in_batch(split):
    """Rows that stop early, and rows of other lengths, do not change a row's greedy output."""
    rows = _rows([3, 8, 13, 16], seed=6)
    free = _sample(split, rows, temperature=0.0)
    stop = [int(free.tokens[0, 1])] + NEVER  # row 0 stops after 2 tokens
    batch = _sample(split, rows, temperature=0.0, stop=stop)
    for b, row in enumerate(rows):
        alone = _sample(split, [row], temperature=0.0, stop=stop)
        assert alone.tokens[0].tolist() == batch.tokens[b].tolist()
        assert_close(alone.logprobs[0], batch.logprobs[b], rtol=FORWARD_RTOL)
    assert batch.lengths[0] == 2 and batch.lengths[1] > 2


@pytest.mark.slow
def test_one_compile_per_bucket(split):
    """Ten calls with other prompts, lengths, keys, temperatures and stop ids: no recompile."""
    _sample(split, _rows([5, 5, 5, 5]), temperature=0.9)
    before = sampler.compiled_count()
    for i in range(10):
        rows = _rows([1 + i, 16 - i, 8, 1 + (5 * i) % 16], seed=10 + i)
        _sample(split, rows, key=i, temperature=[0.0, 0.5, 0.9, 1.3][i % 4],
                stop=[4 + i, 5 + 2 * i][:1 + i % 2])
    assert sampler.compiled_count() == before
    _sample(split, _rows([5, 5, 5, 5]), P=32)  # a new bucket compiles prefill and decode once each
    assert sampler.compiled_count() == before + 2


def test_draw_follows_the_truncated_softmax():
    """The inverse-CDF draw against exact probabilities; V = 300 is not a multiple of the block."""
    V, n = 300, 8_000
    logits = 2.0 * jax.random.normal(jax.random.key(0), (V,))  # [V]
    batch = jnp.broadcast_to(logits, (n, V))  # n independent draws
    draw = jax.jit(sampler.sample_tokens, static_argnames=("top_k", "top_p"))
    probs = np.asarray(jax.nn.softmax(logits / 0.7))
    freq = np.bincount(np.asarray(draw(batch, jax.random.key(1), 0.7)), minlength=V) / n
    # Each frequency's standard error is sqrt(p (1 - p) / n) <= 0.0056; allow about 4 of them.
    assert np.abs(freq - probs).max() < 0.022
    assert freq[np.argmax(probs)] > 0.05  # a peaked distribution, so the check has teeth
    top5 = set(np.argsort(-probs)[:5].tolist())
    assert set(np.asarray(draw(batch, jax.random.key(2), 0.7, top_k=5)).tolist()) == top5
    # Nucleus p = 0.5: the most likely tokens until the mass before the next one reaches 0.5.
    order = np.argsort(-probs)
    nucleus = set(order[:int(np.sum(np.cumsum(probs[order]) - probs[order] < 0.5))].tolist())
    assert set(np.asarray(draw(batch, jax.random.key(3), 0.7, top_p=0.5)).tolist()) == nucleus


def test_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-0.1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="prefill_chunk"):
        SamplingConfig(prefill_chunk=-1)
    with pytest.raises(ValueError, match="stop ids"):
        stop_id_array([])
    with pytest.raises(ValueError, match="stop ids"):
        stop_id_array(range(sampler.MAX_STOP_IDS + 1))
    assert stop_id_array([3, 7, 3]).tolist() == [3, 7] + [-1] * (sampler.MAX_STOP_IDS - 2)


def test_prompt_plus_new_tokens_beyond_max_seq_len_is_refused(split):
    # tiny's max_seq_len is 256: a 16-token prompt leaves room for 240 new tokens, not 241.
    with pytest.raises(ValueError, match="max_seq_len"):
        _sample(split, _rows([5]), max_new_tokens=CONFIG.max_seq_len - 15)


@pytest.mark.slow
def test_chunked_prefill_equals_whole_prompt_prefill(split):
    # P = 16 in chunks of 5: 5, 5, 5, 1 tokens; the 3-token row's first chunks are all padding.
    rows = _rows([3, 9, 16, 12], seed=3)
    whole = _sample(split, rows, prefill_chunk=0, temperature=0.0)
    chunked = _sample(split, rows, prefill_chunk=5, temperature=0.0)
    np.testing.assert_array_equal(chunked.tokens, whole.tokens)
    assert_close(chunked.logprobs, whole.logprobs, rtol=FORWARD_RTOL)
    sampled = [_sample(split, rows, prefill_chunk=c, key=4) for c in (0, 5)]
    np.testing.assert_array_equal(sampled[0].tokens, sampled[1].tokens)
