"""ModelConfig.remat: each Block recomputed in the backward pass, with the same numbers.

What remat saves is memory, and XLA's CPU pipeline cannot show it for our unrolled layer loop
(it drops jax.checkpoint's optimization barriers before scheduling, so the recomputation is
scheduled early: tools/memory_plan.py's docstring); these tests check that the switch is on
and that it changes no number, the GPU check measures the memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leser_jax import grpo, sampler
from leser_jax.config import ModelConfig
from leser_jax.grpo import GRPOConfig
from leser_jax.lora import add_lora
from leser_jax.model import Llama
from leser_jax.sampler import SamplingConfig
from leser_jax.train import masked_lm_loss, trainable_split
from tests._tolerance import FORWARD_RTOL, GRAD_RTOL, assert_close

CONFIG = ModelConfig.tiny().replace(vocab_size=64, num_layers=1)


def _lm_batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 64, (3, 9)).astype(np.int32)
    pad_mask = np.ones((3, 8), bool)
    pad_mask[1, 6:] = False  # right padding
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "pad_mask": pad_mask,
            "weights": pad_mask.astype(np.float32)}


def _rollout_batch():
    rng = np.random.default_rng(1)
    Q, N, P, T = 2, 2, 6, 5
    prompt_mask = np.ones((Q, P), bool)
    prompt_mask[0, :2] = False  # a left-padded prompt
    return grpo.RolloutBatch(
        prompt_tokens=rng.integers(4, 64, (Q, P)).astype(np.int32), prompt_mask=prompt_mask,
        completion_tokens=rng.integers(4, 64, (Q * N, T)).astype(np.int32),
        completion_mask=np.arange(T)[None] < np.array([[5], [3], [1], [4]]),
        old_logp=rng.normal(-3, 0.3, (Q * N, T)).astype(np.float32),
        ref_logp=rng.normal(-3, 0.3, (Q * N, T)).astype(np.float32),
        advantages=rng.normal(0, 1, Q * N).astype(np.float32))


@functools.cache
def _params():
    return nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)))[1]


def _loss_and_grads(remat: bool, loss_fn, batch):
    # The same parameters under both graphs (the config, remat included, lives in the graphdef).
    graphdef = nnx.split(nnx.eval_shape(lambda: Llama(CONFIG.replace(remat=remat),
                                                      rngs=nnx.Rngs(0))))[0]
    params = _params()

    def objective(params):
        return loss_fn(nnx.merge(graphdef, params), batch)[0]

    grad_fn = jax.value_and_grad(objective)
    jaxpr = str(jax.make_jaxpr(grad_fn)(params))
    loss, grads = jax.jit(grad_fn)(params)
    return float(loss), grads, jaxpr


@pytest.mark.slow
def test_remat_changes_no_loss_and_no_gradient():
    # One objective through both entry points, so each graph compiles once: the uncached
    # forward (warm-up's loss) and the GRPO loss, which prefills each group's prompt into a
    # KV cache and runs the completions on it.
    config = GRPOConfig(queries_per_step=2, num_rollouts=2)
    batch = {"lm": _lm_batch(), "rollouts": _rollout_batch()}

    def loss_fn(model, batch):
        return (masked_lm_loss(model, batch["lm"], None)[0]
                + grpo.rollout_loss(model, batch["rollouts"], config)[0]), {}

    loss, grads, jaxpr = _loss_and_grads(False, loss_fn, batch)
    remat_loss, remat_grads, remat_jaxpr = _loss_and_grads(True, loss_fn, batch)
    # The switch is really on: one remat per block call (1 layer: forward, prompt, completions).
    assert "remat" not in jaxpr and remat_jaxpr.count("remat") >= 3
    assert_close(remat_loss, loss, rtol=FORWARD_RTOL)
    for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
        assert_close(a, b, rtol=GRAD_RTOL)


def _graphdefs(config):
    """(plain, remat) graphdefs of one config: the same parameters fit both."""
    return tuple(nnx.split(nnx.eval_shape(lambda: Llama(config.replace(remat=r),
                                                        rngs=nnx.Rngs(0))))[0]
                 for r in (False, True))


@pytest.mark.slow
def test_a_remat_model_samples_like_the_plain_one():
    # The sampler never differentiates, so it runs the plain blocks (a remat block inside the
    # decode while_loop once failed with a trace-level error).
    plain, remat = _graphdefs(CONFIG)
    prompts = np.random.default_rng(2).integers(4, 64, (2, 6)).astype(np.int32)
    config = SamplingConfig(temperature=0.9, max_new_tokens=5)
    out = [sampler.generate(g, _params(), prompts, np.ones_like(prompts, bool), jax.random.key(3),
                            config, stop_ids=[1], pad_id=0) for g in (plain, remat)]
    np.testing.assert_array_equal(out[0].tokens, out[1].tokens)
    assert_close(out[1].logprobs, out[0].logprobs, rtol=FORWARD_RTOL)


@pytest.mark.slow
def test_remat_with_lora_gives_the_adapters_the_same_gradient():
    # The trained adapters and the frozen base enter the gradient apart (train.trainable_split),
    # which nnx.remat could not handle; the blocks are now checkpointed as pure functions.
    config = GRPOConfig(queries_per_step=2, num_rollouts=2)
    lora = CONFIG.replace(lora_rank=2, lora_alpha=4.0)
    base = add_lora(Llama(CONFIG, rngs=nnx.Rngs(0)), rank=2, alpha=4.0)
    trained, frozen = trainable_split(nnx.state(base))
    # B starts at 0, which would make A's gradient 0: move the adapters so both are tested.
    trained = jax.tree.map(lambda x: x + 0.1, trained)
    grads = []
    for graphdef in _graphdefs(lora):
        def objective(trained):
            model = nnx.merge(graphdef, trained, frozen)
            return grpo.rollout_loss(model, _rollout_batch(), config)[0]

        grads.append(jax.jit(jax.grad(objective))(trained))
    assert jax.tree.leaves(grads[0])
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
        assert_close(a, b, rtol=GRAD_RTOL)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[0]))
