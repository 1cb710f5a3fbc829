"""A policy as an evaluation *system* (metrics.System): query texts -> parsed answers.

The policy sees exactly the prompt GRPO trained it on (prompts.prompt_for: the original query's
top-k products as context, then the query; in its tokenizer's chat template if it has one,
prompts.encode_prompt), decodes greedily by default, and its completion is parsed with
parse_answer; an answer that does not parse is returned as such and evaluated as Y = {}
(metrics.py).

The same class evaluates a model that was never fine-tuned (the zero-shot system of
experiments/evaluate.py: the converted SmolLM2-135M-Instruct, `load_policy` of its GGUF file or
converted directory), then usually with k worked examples before each query (`examples`,
sft.few_shot_turns): the paper's format check before warm-up, and our stand-in for its
prompted-LLM baseline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax

from leser_jax.context import ContextConfig
from leser_jax.prompts import AnswerFormat, ExampleTurn, ParsedAnswer, parse_answer, prompt_for
from leser_jax.rollout import generate_rollouts
from leser_jax.sampler import SamplingConfig
from leser_jax.search import SearchEngine
from leser_jax.tokenizer import Tokenizer


def load_policy(path: str | os.PathLike):
    """(model, config, tokenizer) of a GGUF file (gguf_llama: dequantized to float32, its own
    tokenizer and chat template) or of what `--init=DIR` names (checkpoint.load_init)."""
    from leser_jax import checkpoint, gguf_llama
    from leser_jax.tokenizer import tokenizer_from_gguf

    if os.fspath(path).endswith(".gguf"):
        file = gguf_llama.read_gguf(path)
        model, config = gguf_llama.load_gguf_llama(file)
        return model, config, tokenizer_from_gguf(file.metadata)
    return checkpoint.load_init(path)


class PolicySystem:
    """Expands queries with a policy (graphdef, params = nnx.split(model)); `examples`: worked
    examples shown before every query (none for a fine-tuned policy)."""

    def __init__(self, graphdef, params, tokenizer: Tokenizer, engine: SearchEngine, *,
                 context: ContextConfig, answer: AnswerFormat = AnswerFormat(),
                 sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=96),
                 seed: int = 0, batch_buckets: tuple[int, ...] = (8, 16, 32, 64),
                 examples: Sequence[ExampleTurn] = ()):
        self.graphdef, self.params = graphdef, params
        self.tokenizer, self.engine = tokenizer, engine
        self.context, self.answer, self.sampling = context, answer, sampling
        self.batch_buckets = batch_buckets
        self.examples = tuple(examples)
        self._key = jax.random.key(seed)
        self._calls = 0
        self.last_texts: list[str] = []  # the raw completions of the last call, for inspection
        self.texts: dict[tuple[str, ...], list[str]] = {}  # each call's queries -> completions

    def complete(self, queries: Sequence[str], *, step: int) -> list[str]:
        """The raw completion of each query, sampled with key fold_in(seed's key, step): a caller
        that names the step (experiments.expand: the batch's index) gets the same samples
        whatever ran before. Nothing is recorded."""
        prompts = [prompt_for(q, self.engine, self.context, self.answer) for q in queries]
        return generate_rollouts(self.graphdef, self.params, self.tokenizer, prompts,
                                 num_rollouts=1, sampling=self.sampling, base_key=self._key,
                                 step=step, batch_buckets=self.batch_buckets,
                                 examples=self.examples).texts

    def __call__(self, queries: list[str]) -> list[ParsedAnswer]:
        texts = self.complete(queries, step=self._calls)
        self._calls += 1
        self.last_texts = self.texts[tuple(queries)] = texts
        return [parse_answer(t, self.answer) for t in texts]


class Reparsed:
    """The completions of `system` (a PolicySystem) parsed with another answer format, e.g.
    duplicates dropped: how the policy would be used, beside the strict parse that the reward
    applies. It reuses the completions the system wrote for the same queries (so a sampled
    evaluation compares the same samples); it asks the system only for queries it has not seen,
    and its own latency is the parse's alone."""

    def __init__(self, system: PolicySystem, answer: AnswerFormat):
        self.system, self.answer = system, answer

    def __call__(self, queries: list[str]) -> list[ParsedAnswer]:
        key = tuple(queries)
        if key not in self.system.texts:
            self.system(queries)
        return [parse_answer(t, self.answer) for t in self.system.texts[key]]
