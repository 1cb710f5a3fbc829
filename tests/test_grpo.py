"""GRPO's pure functions against values worked out by hand, and the gradients that must vanish."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leser_jax.grpo import grpo_loss, group_advantages
from tests._tolerance import FORWARD_RTOL, assert_close


def test_group_advantages_golden():
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    # Groups of 3: [1, 2, 3] (mean 2) and [4, 0, 0] (mean 4/3).
    np.testing.assert_allclose(group_advantages(rewards, 3),
                               [-1, 0, 1, 8 / 3, -4 / 3, -4 / 3], rtol=1e-6)
    # With the std: group 1 std = sqrt(2/3) = 0.8164966 -> [-1.2247449, 0, 1.2247449]
    np.testing.assert_allclose(group_advantages(rewards, 3, normalize_std=True)[:3],
                               [-1.2247449, 0, 1.2247449], rtol=1e-5)
    # Groups of 2: [1, 2], [3, 4], [0, 0].
    np.testing.assert_allclose(group_advantages(rewards, 2), [-.5, .5, -.5, .5, 0, 0])
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)


def test_equal_rewards_give_zero_advantage_even_normalised():
    a = group_advantages(jnp.array([0.7] * 4 + [0.0] * 4), 4, normalize_std=True)
    assert np.all(np.asarray(a) == 0.0)


# Two rollouts, T = 3. Row 0: two valid tokens, A = 2; row 1: one valid token, A = -1.
LOGP = jnp.array([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
OLD = jnp.array([[-1.0, -2.5, 0.0], [-0.3, 0.0, 0.0]])
REF = jnp.array([[-1.5, -2.0, 0.0], [-0.5, 0.0, 0.0]])
ADV = jnp.array([2.0, -1.0])
MASK = jnp.array([[1, 1, 0], [1, 0, 0]], bool)


def test_grpo_loss_golden():
    # Row 0, token 0: ratio = exp(0) = 1, surrogate = -min(2, 2) = -2;
    #   k3 with d = ref - logp = -0.5: exp(-0.5) + 0.5 - 1 = 0.1065307; loss = -2 + 0.04 * 0.1065307
    #   = -1.9957388.
    # Row 0, token 1: ratio = exp(0.5) = 1.6487213, clipped to 1.2: -min(3.2974425, 2.4) = -2.4;
    #   KL = 0 (logp = ref); loss = -2.4.
    # Row 1, token 0: ratio = exp(-0.2) = 0.8187308 (inside [0.8, 1.2]), A = -1:
    #   -min(-0.8187308, -0.8187308) = 0.8187308; KL = 0.
    # sequence_mean = ((-1.9957388 - 2.4) / 2 + 0.8187308) / 2 = -0.6895693
    # token_mean    = (-1.9957388 - 2.4 + 0.8187308) / 3 = -1.1923360
    # abs=1e-6: the goldens above are rounded to 7 decimals, on values of order 1 (fixed inputs).
    loss, aux = grpo_loss(LOGP, OLD, REF, ADV, MASK)
    assert float(loss) == pytest.approx(-0.6895693, abs=1e-6)
    loss_t, _ = grpo_loss(LOGP, OLD, REF, ADV, MASK, aggregation="token_mean")
    assert float(loss_t) == pytest.approx(-1.1923360, abs=1e-6)
    # One of three valid tokens is outside [0.8, 1.2]; KL mean = 0.1065307 / 3 = 0.0355102.
    assert float(aux["clip_fraction"]) == pytest.approx(1 / 3)
    assert float(aux["kl"]) == pytest.approx(0.0355102, abs=1e-6)
    # entropy estimate = -mean logp over valid tokens = (1 + 2 + 0.5) / 3
    assert float(aux["entropy"]) == pytest.approx(3.5 / 3)
    assert float(aux["advantage_mean"]) == pytest.approx(0.5)
    # k1: row 0 token 0 KL = -1 - (-1.5) = 0.5: loss changes by 0.04 * 0.5 / 2 / 2 = 0.005 less the
    # k3 contribution 0.04 * 0.1065307 / 2 / 2 = 0.0010653.
    loss_k1, _ = grpo_loss(LOGP, OLD, REF, ADV, MASK, kl_estimator="k1")
    assert float(loss_k1) == pytest.approx(-0.6895693 + 0.005 - 0.0010653, abs=1e-6)


def grad_wrt_logp(logp, **kwargs):
    return jax.grad(lambda lp: grpo_loss(lp, OLD, REF, kwargs.pop("adv", ADV), MASK, **kwargs)[0])(logp)


def test_padding_gets_no_gradient_and_changes_nothing():
    g = grad_wrt_logp(LOGP)
    assert g[0, 2] == 0 and g[1, 1] == 0 and g[1, 2] == 0
    garbage = LOGP.at[:, 2].set(123.0)  # pads hold anything
    assert float(grpo_loss(garbage, OLD, REF, ADV, MASK)[0]) == float(grpo_loss(LOGP, OLD, REF, ADV, MASK)[0])


def test_equal_rewards_give_zero_policy_gradient():
    adv = group_advantages(jnp.array([0.5, 0.5]), 2)
    g = grad_wrt_logp(LOGP, adv=adv, kl_coef=0.0)
    assert np.all(np.asarray(g) == 0.0)


def test_kl_and_its_gradient_vanish_at_the_reference():
    # Policy == reference and no advantage: only the KL term acts, and k3's value and gradient are
    # 0 there (d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp) = 0).
    logp = REF
    loss, aux = grpo_loss(logp, OLD, REF, jnp.zeros(2), MASK, kl_coef=1.0)
    assert float(loss) == 0.0 and float(aux["kl"]) == 0.0
    g = jax.grad(lambda lp: grpo_loss(lp, OLD, REF, jnp.zeros(2), MASK, kl_coef=1.0)[0])(logp)
    assert np.all(np.asarray(g) == 0.0)


def test_clipped_tokens_get_no_gradient_on_their_advantage_side():
    # Row 0 token 1 has ratio 1.65 > 1.2 with A = +2: clipped, so no gradient pushes it further.
    g = grad_wrt_logp(LOGP, kl_coef=0.0)
    assert g[0, 1] == 0.0
    assert g[0, 0] != 0.0  # ratio 1: unclipped, gradient -A * ratio / 2 / 2 = -0.5
    assert float(g[0, 0]) == pytest.approx(-0.5)
    # The same ratio with A = -2 is on the other side: min() keeps the unclipped term, gradient flows.
    g_neg = grad_wrt_logp(LOGP, adv=jnp.array([-2.0, -1.0]), kl_coef=0.0)
    assert float(g_neg[0, 1]) == pytest.approx(2.0 * 1.6487213 / 2 / 2, rel=1e-6)
    # A ratio below 1 - eps with A < 0 is clipped too: row 1 with old logp far above.
    old = OLD.at[1, 0].set(0.5)  # ratio = exp(-1) = 0.37 < 0.8, A = -1
    g_low = jax.grad(lambda lp: grpo_loss(lp, old, REF, ADV, MASK, kl_coef=0.0)[0])(LOGP)
    assert g_low[1, 0] == 0.0


def test_bad_options_fail():
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(LOGP, OLD, REF, ADV, MASK, aggregation="sum")
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo_loss(LOGP, OLD, REF, ADV, MASK, kl_estimator="k2")


@pytest.mark.slow
def test_completion_logprobs_equal_the_samplers():
    """The loss recomputes exactly what the sampler recorded: ratio = 1 before any update."""
    from flax import nnx

    from leser_jax.config import ModelConfig
    from leser_jax.grpo import completion_logprobs
    from leser_jax.sampler import SamplingConfig, generate, stop_id_array
    from tests.test_sampler import _left_pad, _random_model, _rows

    config = ModelConfig.tiny()
    graphdef, params = nnx.split(_random_model(config))
    tokens, mask = _left_pad(_rows([5, 9, 12, 3]), 16)
    sample = functools.partial(generate, graphdef, params, tokens, mask, jax.random.key(3),
                               SamplingConfig(temperature=0.9, max_new_tokens=10), pad_id=0)
    # Stop at tokens that the first run sampled at columns 2 and 5, so rows stop early.
    first = sample(stop_ids=stop_id_array([config.vocab_size]))
    samples = sample(stop_ids=stop_id_array([int(first.tokens[0, 2]), int(first.tokens[1, 5])]))
    assert int(samples.lengths.min()) < 10  # some rows stopped early and are right-padded
    logp = completion_logprobs(nnx.merge(graphdef, params), tokens, mask, samples.tokens,
                               samples.mask, 0.9)
    assert_close(np.where(samples.mask, logp, 0), np.where(samples.mask, samples.logprobs, 0),
                 rtol=FORWARD_RTOL)


@pytest.mark.slow
def test_group_shared_prompts_give_the_per_rollout_forward_and_the_samplers_logprobs():
    """Rollouts of a group share their prompt's prefill, in the sampler and in the loss; both
    must equal running [prompt, completion] for every rollout on its own."""
    from flax import nnx

    from leser_jax.config import ModelConfig
    from leser_jax.grpo import completion_logprobs
    from leser_jax.sampler import SamplingConfig, generate, stop_id_array, token_logprobs
    from tests.test_sampler import _left_pad, _random_model, _rows

    config = ModelConfig.tiny()
    model = _random_model(config)
    graphdef, params = nnx.split(model)
    prompts, prompt_mask = _left_pad(_rows([5, 11]), 16)  # Q = 2 prompts
    rows = np.array([0, 0, 0, 1, 1, 1])  # N = 3 rollouts each, the group layout
    samples = generate(graphdef, params, prompts, prompt_mask, jax.random.key(0),
                       SamplingConfig(temperature=0.9, max_new_tokens=8),
                       stop_ids=stop_id_array([config.vocab_size]), pad_id=0, num_rollouts=3)
    assert len({tuple(t) for t in np.asarray(samples.tokens)[:3].tolist()}) > 1  # they differ
    shared = completion_logprobs(model, prompts, prompt_mask, samples.tokens, samples.mask, 0.9)

    # Reference: every rollout run alone as one sequence [its prompt, its completion].
    tokens = jnp.concatenate([prompts[rows], samples.tokens], axis=1)  # [R, P + T]
    mask = jnp.concatenate([prompt_mask[rows], samples.mask], axis=1)
    T = samples.tokens.shape[1]
    logits = model(tokens, mask)[:, -T - 1:-1]  # [R, T, V]: position P - 1 + t predicts token t
    alone = token_logprobs(logits, samples.tokens, 0.9)
    valid = np.asarray(samples.mask)
    assert_close(np.asarray(shared)[valid], np.asarray(alone)[valid], rtol=FORWARD_RTOL)
    assert_close(np.asarray(shared)[valid], np.asarray(samples.logprobs)[valid], rtol=FORWARD_RTOL)
    with pytest.raises(ValueError, match="groups"):
        completion_logprobs(model, prompts, prompt_mask, samples.tokens[:5], samples.mask[:5], 0.9)
