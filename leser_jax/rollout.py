"""Rollouts: N sampled completions per prompt, laid out as GRPO consumes them (host glue).

A GRPO step in LESER (arXiv 2509.05570) takes Q queries, renders each query's prompt (its
context items and the query, leser_jax.prompts), samples N completions per prompt at temperature
0.9, and scores each completion with the search engine; the advantage of a completion is its
reward minus the mean of its group, the N completions of the same prompt. This module turns
rendered prompt texts into that batch:

    texts [Q] --encode_prompts--> tokens [Q, P], mask [Q, P]   left-padded, P a length bucket
              (prompts.encode_prompt: in the chat template, if the tokenizer has one)
              --tile_groups-----> [q0 x N, q1 x N, ...] [Q*N, P] and group_ids [Q*N]
              --sampler.generate (key = fold_in(base_key, step))--> completions [Q*N, T_new]
              --tokenizer.decode up to the stop--> texts [Q*N]

`tile_groups` is the ONE place the group layout is made; group ids travel with the batch as an
int array (a known GRPO bug elsewhere is prompts without shared ids). Row r of a `Rollouts`
belongs to prompt `group_ids[r]`, i.e. prompts[group_ids[r]].

Buckets: P is rounded up to the smallest of `prompt_buckets`, and optionally the row count to
one of `batch_buckets`, then to whole groups of N (extra rows are whole groups of the first
prompt, dropped after sampling), so a run compiles the sampler once per bucket, not once per
batch. Stops: EOS, and `</answer>` where the tokenizer has it as one token (our SentencePiece
vocabulary); a Hugging Face LLaMA vocabulary spells it in several tokens, and its eos ends the
answer (the warm-up teaches eos after it).

Everything here is plain Python and NumPy; the device code is leser_jax/sampler.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from leser_jax import sampler, sharding
from leser_jax.prompts import ExampleTurn, encode_prompt
from leser_jax.sampler import SamplingConfig
from leser_jax.tokenizer import Tokenizer

DEFAULT_PROMPT_BUCKETS = (64, 128, 256, 512, 1024, 2048)
ANSWER_CLOSE = "</answer>"


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; ValueError if n exceeds the largest."""
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {max(buckets)}")


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The tokenizer's stop ids, plus `</answer>` when it is a single token."""
    ids = list(tokenizer.stop_ids)
    try:
        ids.append(tokenizer.token_id(ANSWER_CLOSE))
    except KeyError:
        pass  # several tokens in this vocabulary: eos ends the answer
    return tuple(dict.fromkeys(ids))


def encode_prompts(tokenizer: Tokenizer, texts: Sequence[str], *,
                   buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
                   examples: Sequence[ExampleTurn] = (), max_len: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Prompt texts -> left-padded tokens [Q, P] int32 and mask [Q, P] bool (True = real token).

    Each text is encoded as the model reads it (prompts.encode_prompt: bos + text, or the
    tokenizer's chat template; after the worked `examples`, if any, the same for every text), as
    the warm-up encodes it (lm_data.encode_example).

    P = bucket(longest prompt). Left padding puts every row's last prompt token in the last
    column, where the sampler reads the first next-token logits. Example, P = 4:
        "ab" -> tokens [pad pad a b], mask [0 0 1 1]
    max_len: the most a prompt may take (the model's max_seq_len - max_new_tokens): buckets are
    cut to it (a 258-token prompt with max_len 416 pads to 416, not to bucket 512), and a longer
    prompt is a ValueError that says so.
    """
    encoded = [encode_prompt(tokenizer, t, examples) for t in texts]
    longest = max(len(e) for e in encoded)
    if max_len is not None:
        if longest > max_len:
            raise ValueError(f"a prompt of {longest} tokens is longer than the {max_len} the "
                             "model's max_seq_len leaves beside max_new_tokens")
        buckets = sorted({min(b, max_len) for b in buckets})
    P = bucket(longest, buckets)
    tokens = np.full((len(encoded), P), tokenizer.pad_id, np.int32)  # [Q, P]
    mask = np.zeros((len(encoded), P), np.bool_)  # [Q, P]
    for q, ids in enumerate(encoded):
        tokens[q, P - len(ids):] = ids
        mask[q, P - len(ids):] = True
    return tokens, mask


def tile_groups(tokens: np.ndarray, mask: np.ndarray,
                num_rollouts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[q0, q1, ...] -> [q0 x N, q1 x N, ...]: the one place the GRPO group layout is made.

    tokens, mask [Q, P] -> tokens [Q*N, P], mask [Q*N, P], group_ids [Q*N] int32, where
    group_ids[r] = q is the prompt row r was tiled from. E.g. Q = 2, N = 3:
        rows [q0 q0 q0 q1 q1 q1], group_ids [0 0 0 1 1 1]
    """
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    group_ids = np.repeat(np.arange(len(tokens), dtype=np.int32), num_rollouts)  # [Q*N]
    return tokens[group_ids], mask[group_ids], group_ids


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """N completions for each of Q prompts, rows in group layout (R = Q*N rows), host arrays.

    Row r is a completion of prompts[group_ids[r]]; rows of one group are contiguous.
    """

    prompt_tokens: np.ndarray  # [R, P] int32, left-padded
    prompt_mask: np.ndarray  # [R, P] bool, True at real prompt tokens
    group_prompt_tokens: np.ndarray  # [Q, P] int32: each group's prompt once (rows r*N..r*N+N-1)
    group_prompt_mask: np.ndarray  # [Q, P] bool
    completion_tokens: np.ndarray  # [R, T_new] int32, pad after the stop token
    completion_mask: np.ndarray  # [R, T_new] bool, generated tokens up to and including the stop
    logprobs: np.ndarray  # [R, T_new] float32, sampler.token_logprobs at the sampling temperature
    group_ids: np.ndarray  # [R] int32, index of the row's prompt
    lengths: np.ndarray  # [R] int32, completion_mask.sum(axis=1)
    texts: list[str]  # [R] completions decoded up to the stop (stop and pad tokens dropped)
    num_rollouts: int  # N
    timing: dict[str, float]  # prefill_s, decode_s, detokenize_s, new_tokens, new_tokens_per_s


def _to_host(tree):
    """NumPy copies of device arrays. On several hosts the sampled rows are spread over all
    processes' devices: process_allgather gives every process all of them (each then scores
    the same rollouts and builds the same update batch)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def generate_rollouts(graphdef, params, tokenizer: Tokenizer, prompts: Sequence[str], *,
                      num_rollouts: int, sampling: SamplingConfig, base_key: jax.Array,
                      step: int, stop: Sequence[int] | None = None,
                      prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
                      batch_buckets: Sequence[int] | None = None,
                      examples: Sequence[ExampleTurn] = (),
                      mesh: jax.sharding.Mesh | None = None) -> Rollouts:
    """Samples `num_rollouts` completions of each rendered prompt text.

    graphdef, params: `nnx.split(policy)`. The sampling key of this call is
    `fold_in(base_key, step)`, so a run is reproducible step by step. `stop` defaults to
    `stop_ids(tokenizer)`. Prefill and decode are timed apart (each after block_until_ready).
    examples: worked examples shown before every prompt (few-shot; encode_prompts).
    mesh: on a device mesh (params placed by sharding.param_shardings), the sampled rows are
    split over it (sharding.row_sharding); None = one device.
    """
    if not prompts:
        raise ValueError("no prompts")
    # The cache holds prompt + max_new_tokens slots, at most the model's max_seq_len.
    max_len = nnx.merge(graphdef, params).config.max_seq_len - sampling.max_new_tokens
    prompt_tokens, prompt_mask = encode_prompts(tokenizer, prompts, buckets=prompt_buckets,
                                                examples=examples, max_len=max_len)
    tokens, mask, group_ids = tile_groups(prompt_tokens, prompt_mask, num_rollouts)  # [R, P]
    R = len(group_ids)
    rows = bucket(R, batch_buckets) if batch_buckets else R
    # The prompts are prefilled once per group and their N rows share the prompt's keys
    # (sampler.prefill's num_rollouts), then each row samples on its own. Filler prompts (up to
    # ceil(rows / N) groups, so a bucket's shapes never depend on Q) repeat prompt 0: a real
    # prompt, so no all-pad row reaches the model; their rows are dropped below.
    num_prompts = -(-rows // num_rollouts)
    filler = np.zeros(num_prompts - len(prompt_tokens), np.int64)
    padded_tokens = np.concatenate([prompt_tokens, prompt_tokens[filler]])  # [Q', P]
    padded_mask = np.concatenate([prompt_mask, prompt_mask[filler]])
    rows = num_prompts * num_rollouts  # whole groups: row r continues padded prompt r // N
    stop_array = sampler.stop_id_array(stop_ids(tokenizer) if stop is None else stop)
    key = jax.random.fold_in(base_key, step)
    row_sharding = None if mesh is None else sharding.row_sharding(mesh, rows)

    start = time.perf_counter()
    state = sampler.prefill(graphdef, params, padded_tokens, padded_mask, key, sampling,
                            stop_ids=stop_array, pad_id=tokenizer.pad_id,
                            num_rollouts=num_rollouts, row_sharding=row_sharding)
    jax.block_until_ready(state)
    prefilled = time.perf_counter()
    state = sampler.decode(graphdef, params, state, sampling, stop_ids=stop_array,
                           pad_id=tokenizer.pad_id, row_sharding=row_sharding)
    samples = _to_host(sampler.finish(state))  # blocks until done
    decoded = time.perf_counter()

    completion = np.asarray(samples.tokens)[:R]  # [R, T_new]
    lengths = np.asarray(samples.lengths)[:R]  # [R]
    texts = [tokenizer.decode(row[:n]) for row, n in zip(completion.tolist(), lengths.tolist())]
    new_tokens = int(lengths.sum())
    timing = dict(prefill_s=prefilled - start, decode_s=decoded - prefilled,
                  detokenize_s=time.perf_counter() - decoded, new_tokens=float(new_tokens),
                  new_tokens_per_s=new_tokens / (decoded - start))
    return Rollouts(prompt_tokens=tokens, prompt_mask=mask, group_prompt_tokens=prompt_tokens,
                    group_prompt_mask=prompt_mask, completion_tokens=completion,
                    completion_mask=np.asarray(samples.mask)[:R],
                    logprobs=np.asarray(samples.logprobs)[:R], group_ids=group_ids,
                    lengths=lengths, texts=texts, num_rollouts=num_rollouts, timing=timing)
