"""Rollouts: group layout and ids, prompt encoding and buckets, stop ids, keys per step, texts,
one compile per bucket, and the profiler helper."""

import jax
import numpy as np
import pytest
from flax import nnx

from leser_jax import rollout, sampler
from leser_jax.config import ModelConfig
from leser_jax.profiling import StepProfiler, phase
from leser_jax.rollout import bucket, encode_prompts, generate_rollouts, tile_groups
from leser_jax.sampler import SamplingConfig
from leser_jax.tokenizer import train_sentencepiece
from tests.test_sampler import _random_model

BUCKETS = (16, 32, 64)
PROMPTS = ["cordless drill", "white paint for a bathroom ceiling", "lumbar support chair"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"<query>{p}</query><answer>[\"{p} set\"]</answer>" for p in PROMPTS] * 20
    return train_sentencepiece(texts, vocab_size=320)


@pytest.fixture(scope="module")
def split(tokenizer):
    """A tiny policy over the tokenizer's vocabulary (any id it samples decodes)."""
    return nnx.split(_random_model(ModelConfig.tiny().replace(vocab_size=tokenizer.vocab_size)))


def test_tile_groups_layout_and_ids():
    tokens = np.array([[1, 2], [3, 4]])  # q0, q1
    mask = np.array([[True, True], [False, True]])
    tiled, tiled_mask, ids = tile_groups(tokens, mask, 3)
    assert tiled.tolist() == [[1, 2]] * 3 + [[3, 4]] * 3  # [q0 q0 q0 q1 q1 q1]
    assert tiled_mask.tolist() == [[True, True]] * 3 + [[False, True]] * 3
    assert ids.tolist() == [0, 0, 0, 1, 1, 1] and ids.dtype == np.int32
    with pytest.raises(ValueError, match="num_rollouts"):
        tile_groups(tokens, mask, 0)


def test_group_ids_follow_their_prompt_through_shuffles():
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, 100, (5, 4))  # 5 distinct prompt rows
    order = rng.permutation(5)  # shuffle the prompts before tiling
    shuffled = prompts[order]
    tiled, _, ids = tile_groups(shuffled, np.ones_like(shuffled, bool), 4)
    assert (tiled == shuffled[ids]).all()  # every row is a completion of prompts-list[its id]
    assert (tiled == prompts[order[ids]]).all()
    # Rows shuffled afterwards, ids with them: the grouping survives.
    perm = rng.permutation(len(ids))
    assert (tiled[perm] == shuffled[ids[perm]]).all()
    assert sorted(np.bincount(ids[perm]).tolist()) == [4] * 5


def test_bucket_and_left_padded_encoding(tokenizer):
    assert [bucket(n, BUCKETS) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
    with pytest.raises(ValueError, match="largest bucket"):
        bucket(65, BUCKETS)
    tokens, mask = encode_prompts(tokenizer, PROMPTS, buckets=BUCKETS)
    lengths = [len(tokenizer.encode(p, bos=True)) for p in PROMPTS]
    assert tokens.shape == mask.shape == (3, bucket(max(lengths), BUCKETS))
    P = tokens.shape[1]
    for q, n in enumerate(lengths):
        assert mask[q].tolist() == [False] * (P - n) + [True] * n  # left padding
        assert tokens[q, P - n:].tolist() == tokenizer.encode(PROMPTS[q], bos=True)
        assert (tokens[q, :P - n] == tokenizer.pad_id).all()


def test_stop_ids_add_the_answer_tag_when_it_is_one_token(tokenizer):
    answer = tokenizer.token_id("</answer>")
    assert rollout.stop_ids(tokenizer) == (tokenizer.eos_id, answer)

    class MultiTokenTag(type(tokenizer)):  # an HF-like vocabulary: the tag is several tokens
        def token_id(self, tag):
            raise KeyError(tag)

    assert rollout.stop_ids(MultiTokenTag(tokenizer.model_proto)) == (tokenizer.eos_id,)


def _rollouts(split, tokenizer, prompts=PROMPTS, step=0, **kwargs):
    kwargs = {"num_rollouts": 2, "sampling": SamplingConfig(temperature=0.9, max_new_tokens=6),
              "base_key": jax.random.key(0), "step": step, "prompt_buckets": BUCKETS,
              "batch_buckets": (8,), **kwargs}  # 6 rows padded to 8: one batch shape per file
    return generate_rollouts(*split, tokenizer, prompts, **kwargs)


@pytest.mark.slow
def test_generate_rollouts_layout_keys_and_texts(split, tokenizer):
    out = _rollouts(split, tokenizer)  # 6 rows padded to 8, then cut
    R = 3 * 2
    assert out.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.completion_tokens.shape == out.logprobs.shape == out.completion_mask.shape == (R, 6)
    prompt_tokens, prompt_mask = encode_prompts(tokenizer, PROMPTS, buckets=BUCKETS)
    assert (out.prompt_tokens == prompt_tokens[out.group_ids]).all()
    assert (out.prompt_mask == prompt_mask[out.group_ids]).all()
    assert (out.completion_mask.sum(axis=1) == out.lengths).all()
    for r in range(R):
        n = out.lengths[r]
        assert out.texts[r] == tokenizer.decode(out.completion_tokens[r, :n].tolist())
    assert out.timing["new_tokens"] == out.lengths.sum() and out.timing["decode_s"] > 0

    # The key of step s is fold_in(base_key, s): the sampler called with it gives the same rows.
    direct = sampler.generate(*split, np.concatenate([out.prompt_tokens, out.prompt_tokens[:2]]),
                              np.concatenate([out.prompt_mask, out.prompt_mask[:2]]),
                              jax.random.fold_in(jax.random.key(0), 0),
                              SamplingConfig(temperature=0.9, max_new_tokens=6),
                              stop_ids=rollout.stop_ids(tokenizer), pad_id=tokenizer.pad_id)
    assert np.asarray(direct.tokens)[:R].tolist() == out.completion_tokens.tolist()
    again = _rollouts(split, tokenizer)
    assert again.completion_tokens.tolist() == out.completion_tokens.tolist()
    later = _rollouts(split, tokenizer, step=1)
    assert later.completion_tokens.tolist() != out.completion_tokens.tolist()


def test_texts_end_at_the_stop_token(split, tokenizer):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
    never = [tokenizer.vocab_size]  # no token has this id
    free = _rollouts(split, tokenizer, sampling=greedy, stop=never)
    assert (free.lengths == 6).all()
    first = int(free.completion_tokens[0, 0])
    stopped = _rollouts(split, tokenizer, sampling=greedy, stop=[first])
    assert stopped.lengths[0] == 1 and stopped.texts[0] == tokenizer.decode([first])
    assert (stopped.completion_tokens[0, 1:] == tokenizer.pad_id).all()


@pytest.mark.slow
def test_steps_with_other_prompts_in_one_bucket_compile_once(split, tokenizer):
    words = "drill paint chair lamp rug sofa desk shelf hose rake".split()
    _rollouts(split, tokenizer, prompt_buckets=(64,))
    before = sampler.compiled_count()
    for step in range(10):
        prompts = [" ".join(words[:1 + step]), words[step], words[-step]]  # 4 to 42 tokens
        out = _rollouts(split, tokenizer, prompts=prompts, step=step, prompt_buckets=(64,))
        assert out.prompt_tokens.shape[1] == 64
    assert sampler.compiled_count() == before


def test_step_profiler_traces_only_its_window(tmp_path):
    double = jax.jit(lambda x: 2 * x)
    profiler = StepProfiler(tmp_path / "trace", start_step=1, num_steps=2)
    for step in range(4):
        with profiler.step(step), phase("host_work"):
            jax.block_until_ready(double(np.ones(4)))
    assert profiler.traced_steps == [1, 2] and not profiler.active
    assert list((tmp_path / "trace").rglob("*.xplane.pb"))
    off = StepProfiler(None)
    with off.step(3):
        pass
    assert off.traced_steps == [] and not (tmp_path / "none").exists()


def test_prompt_buckets_stop_at_the_room_the_model_leaves(tokenizer):
    """A bucket is cut to max_len (max_seq_len - max_new_tokens), and a prompt longer than that
    is a clear error, not a cache overflow deep inside the sampler."""
    text = "word " * 40
    n = len(tokenizer.encode(text, bos=True))
    tokens, mask = encode_prompts(tokenizer, [text], buckets=(8, 4096), max_len=n + 3)
    assert tokens.shape == (1, n + 3) and mask.sum() == n  # not 4096
    with pytest.raises(ValueError, match="longer than"):
        encode_prompts(tokenizer, [text], buckets=(8, 4096), max_len=n - 1)
