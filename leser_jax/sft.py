"""The supervised warm-up: teacher examples as token sequences, and the format check after it.

LESER fine-tunes the policy on teacher expansions before GRPO "so that the format is stable".
An example is the prompt the policy will see in GRPO, `prompts.prompt_for(query)`, followed
by the teacher's completion `render_answer(think, expansions)` and eos; the loss is on the
completion and its eos only (lm_data.Encoded shows the mask). The context is rebuilt here
(context.build_context) with the same ContextConfig that GRPO uses, never taken from the
teacher file, so imported examples (query, think, expansions) fit the policy's real prompts.

`sample_answers` + `format_report` measure what the warm-up is for: the share of answers sampled
at GRPO's temperature (0.9), the way GRPO samples them (leser_jax.rollout), that `parse_answer`
accepts, and why the others fail.

The prompt text is the same for every model; how a model reads it (bos + text, or the text in
the tokenizer's chat template) is prompts.encode_prompt's, which the warm-up's encoding and the
sampler both call. `few_shot_turns` gives k worked examples (prompts.ExampleTurn) for prompting a
model that was never fine-tuned (the paper's format check before warm-up, and our stand-in for
its prompted-LLM baseline): teacher answers to train queries drawn in a seeded order.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from leser_jax import sampler
from leser_jax.context import ContextConfig
from leser_jax.lm_data import Encoded, encode_example
from leser_jax.prompts import AnswerFormat, ExampleTurn, parse_answer, prompt_for
from leser_jax.rollout import generate_rollouts
from leser_jax.search import SearchEngine
from leser_jax.teacher import Teacher, TeacherExample
from leser_jax.tokenizer import Tokenizer


def encode_examples(examples: Sequence[TeacherExample], tokenizer: Tokenizer,
                    engine: SearchEngine, context: ContextConfig, *, max_len: int,
                    fmt: AnswerFormat = AnswerFormat()) -> tuple[list[Encoded], int]:
    """Teacher examples -> token sequences of at most `max_len` tokens; also the number dropped
    for being longer (a truncated answer would teach the model to stop mid-JSON)."""
    out, dropped = [], 0
    for e in examples:
        enc = encode_example(tokenizer, prompt_for(e.query, engine, context, fmt), e.answer)
        if len(enc) > max_len:
            dropped += 1
            continue
        out.append(enc)
    return out, dropped


def few_shot_turns(k: int, queries: Sequence[str], engine: SearchEngine, context: ContextConfig,
                   *, examples: Sequence[TeacherExample] = (), teacher: Teacher | None = None,
                   seed: int = 0, fmt: AnswerFormat = AnswerFormat()) -> tuple[ExampleTurn, ...]:
    """k worked examples for few-shot prompts: the `queries` (train queries: an example must
    not be an evaluated query) in the seeded order permutation(default_rng([seed, 3])), each
    answered by `examples` (a teacher file's, looked up by query) if given, else by `teacher`
    (run on 2k queries at a time until k are answered); the first k answered, as
    (prompt_for(query), answer) turns. Fewer than k if fewer queries are answered."""
    if k < 1:
        return ()
    if examples:
        by_query = {e.query: e for e in examples}
        answer = lambda batch: [by_query.get(q) for q in batch]  # noqa: E731
    elif teacher is not None:
        answer = teacher.examples
    else:
        raise ValueError("few-shot examples need teacher examples or a teacher")
    order = np.random.default_rng([seed, 3]).permutation(len(queries))
    chosen: list[TeacherExample] = []
    for start in range(0, len(order), 2 * k):
        chosen += [e for e in answer([queries[i] for i in order[start:start + 2 * k]]) if e]
        if len(chosen) >= k:
            break
    return tuple(ExampleTurn(prompt_for(e.query, engine, context, fmt), e.answer)
                 for e in chosen[:k])


def sample_answers(model: nnx.Module, tokenizer: Tokenizer, prompts: Sequence[str], *,
                   config: sampler.SamplingConfig, batch_size: int = 32, seed: int = 0,
                   examples: Sequence[ExampleTurn] = ()) -> tuple[list[str], dict]:
    """One completion per prompt, sampled exactly as GRPO samples its rollouts
    (rollout.generate_rollouts: same buckets, same stops), `batch_size` prompts per call (the
    last call padded to the same row count, so the sampler compiles once per prompt bucket);
    call i draws with fold_in(key(seed), i). examples: worked examples before every prompt
    (`few_shot_turns`; none for a fine-tuned policy). Timing: the first call (which compiles)
    apart; new_tok_s counts the other calls (all of them if there is one).
    """
    graphdef, params = nnx.split(model)
    texts: list[str] = []
    new_tokens, first_tokens, first_s, start = 0, 0, 0.0, time.perf_counter()
    for i, first in enumerate(range(0, len(prompts), batch_size)):
        rollouts = generate_rollouts(graphdef, params, tokenizer, prompts[first:first + batch_size],
                                     num_rollouts=1, sampling=config, base_key=jax.random.key(seed),
                                     step=i, batch_buckets=(batch_size,), examples=examples)
        texts.extend(rollouts.texts)
        new_tokens += int(rollouts.lengths.sum())
        if i == 0:
            first_tokens, first_s = new_tokens, time.perf_counter() - start
    seconds = time.perf_counter() - start
    steady_tokens, steady_s = new_tokens - first_tokens, seconds - first_s
    if len(prompts) <= batch_size:  # one call only: its time includes the compile
        steady_tokens, steady_s = new_tokens, seconds
    return texts, {"seconds": seconds, "first_call_s": first_s, "new_tokens": new_tokens,
                   "new_tok_s": steady_tokens / max(steady_s, 1e-9)}


def format_report(texts: Sequence[str], fmt: AnswerFormat = AnswerFormat()) -> dict:
    """Parse rate of completions and a count of each rejection reason."""
    parsed = [parse_answer(t, fmt) for t in texts]
    reasons = collections.Counter(p.reason for p in parsed if not p.valid)
    valid = [p for p in parsed if p.valid]
    return {"samples": len(texts), "parsed": len(valid),
            "parse_rate": len(valid) / max(len(texts), 1),
            "reasons": dict(reasons.most_common()),
            "mean_expansions": float(np.mean([len(p.expansions) for p in valid])) if valid else 0.0}
