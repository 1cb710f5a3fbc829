"""A policy checkpoint as an evaluation *system* (metrics.System): query texts -> parsed answers.

The policy sees exactly the prompt GRPO trained it on (sft.prompt_for: the original query's
top-k products as context, then the query), decodes greedily by default, and its completion is
parsed with parse_answer; an answer that does not parse is returned as such and evaluated as
Y = {} (metrics.py).
"""

from __future__ import annotations

import jax

from leser_jax.context import ContextConfig
from leser_jax.prompts import AnswerFormat, ParsedAnswer, parse_answer
from leser_jax.rollout import generate_rollouts
from leser_jax.sampler import SamplingConfig
from leser_jax.search import SearchEngine
from leser_jax.sft import prompt_for
from leser_jax.tokenizer import Tokenizer


class PolicySystem:
    """Expands queries with a policy (graphdef, params = nnx.split(model))."""

    def __init__(self, graphdef, params, tokenizer: Tokenizer, engine: SearchEngine, *,
                 context: ContextConfig, answer: AnswerFormat = AnswerFormat(),
                 sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=96),
                 seed: int = 0, batch_buckets: tuple[int, ...] = (8, 16, 32, 64)):
        self.graphdef, self.params = graphdef, params
        self.tokenizer, self.engine = tokenizer, engine
        self.context, self.answer, self.sampling = context, answer, sampling
        self.batch_buckets = batch_buckets
        self._key = jax.random.key(seed)
        self._calls = 0
        self.last_texts: list[str] = []  # the raw completions of the last call, for inspection

    def __call__(self, queries: list[str]) -> list[ParsedAnswer]:
        prompts = [prompt_for(q, self.engine, self.context, self.answer) for q in queries]
        rollouts = generate_rollouts(self.graphdef, self.params, self.tokenizer, prompts,
                                     num_rollouts=1, sampling=self.sampling, base_key=self._key,
                                     step=self._calls, batch_buckets=self.batch_buckets)
        self._calls += 1
        self.last_texts = rollouts.texts
        return [parse_answer(t, self.answer) for t in rollouts.texts]
