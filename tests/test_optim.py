"""The optimizer: schedule golden values, the weight-decay mask, and what one update does."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leser_jax.model import Llama, ModelConfig
from leser_jax.optim import OptimConfig, decay_mask, make_optimizer, make_schedule


def test_schedule_golden_values():
    schedule = make_schedule(OptimConfig(lr=1e-3, warmup_steps=4, total_steps=14, min_lr_ratio=0.1))
    golden = {
        0: 2.5e-4,  # warmup: 1e-3 * (0 + 1) / 4: the first update already moves
        1: 5.0e-4,  # 1e-3 * 2 / 4
        3: 1.0e-3,  # 1e-3 * 4 / 4: the peak
        4: 1.0e-3,  # cosine, p = 0: 1e-4 + 9e-4 * (1 + cos 0) / 2 = 1e-3
        9: 5.5e-4,  # p = 5 / 10: 1e-4 + 9e-4 * (1 + cos(pi / 2)) / 2 = 1e-4 + 4.5e-4
        14: 1.0e-4,  # p = 1: the floor, min_lr_ratio * lr
        100: 1.0e-4,  # flat after total_steps
    }
    for step, lr in golden.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step
    # No warmup: the cosine starts at the peak.
    assert float(make_schedule(OptimConfig(lr=2e-3, warmup_steps=0, total_steps=10))(0)) == \
        pytest.approx(2e-3)


def tiny_params(config=ModelConfig.tiny(), seed=0):
    """The tiny model's nnx.State filled from numpy (an eager random init compiles every op)."""
    _, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    pure = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.02, x.shape).astype(x.dtype)),
                        nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return state


@pytest.fixture(scope="module")
def params():
    return tiny_params()


def _by_name(mask):
    return {jax.tree_util.keystr(path): bool(v)
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}


def test_decay_mask_decays_matrices_not_norm_scales(params):
    mask = _by_name(decay_mask(params))
    assert mask["['embed'].value"]  # [V, D], tied output projection: decayed by default
    assert mask["['layers'][0]['attn']['q'].value"]  # [D, N, H]
    assert mask["['layers'][1]['mlp']['down'].value"]  # [F, D]
    assert not mask["['final_norm']['scale'].value"]  # [D]
    assert not mask["['layers'][0]['attn_norm']['scale'].value"]
    assert sum(mask.values()) == 1 + 2 * (4 + 3)  # embed + per layer q k v o, gate up down
    assert len(mask) - sum(mask.values()) == 1 + 2 * 2  # final norm + two norms per layer
    no_embed = _by_name(decay_mask(params, decay_embeddings=False))
    assert not no_embed["['embed'].value"] and no_embed["['layers'][0]['attn']['q'].value"]


def test_update_decays_masked_params_only(params):
    # With zero gradients Adam's step is 0 / (sqrt(0) + eps) = 0, so the update is the decay
    # alone: p <- p - lr(0) * wd * p = p * (1 - 2.5e-4 * 0.1) for decayed params.
    config = OptimConfig(lr=1e-3, warmup_steps=4, total_steps=14, weight_decay=0.1)
    tx, schedule = make_optimizer(config)

    @jax.jit
    def one_update(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zeros, tx.init(params), params)
        return optax.apply_updates(params, updates)

    new = one_update(params)
    flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    flat_new = dict(jax.tree_util.tree_flatten_with_path(new)[0])
    for path, old in flat_old.items():
        factor = 1 - 2.5e-4 * 0.1 if old.ndim >= 2 else 1.0
        np.testing.assert_allclose(flat_new[path], old * factor, rtol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(schedule(0)) == pytest.approx(2.5e-4)


def test_clipping_comes_before_adam():
    # eps = 1 makes Adam's first step lr * g / (|g| + 1) (bias correction: mu_hat = g,
    # nu_hat = g^2), so the gradient's scale shows. g = 10 in 4 coordinates has global norm 20;
    # clipped to norm 1 it is 0.5 each: step = 1e-3 * 0.5 / 1.5 = 3.333e-4.
    # Unclipped it would be 1e-3 * 10 / 11 = 9.09e-4.
    grads = {"w": jnp.full((4,), 10.0)}
    config = OptimConfig(lr=1e-3, warmup_steps=0, total_steps=10, eps=1.0, weight_decay=0.0,
                         clip_norm=1.0)
    tx, _ = make_optimizer(config)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose(updates["w"], -1e-3 * 0.5 / 1.5, rtol=1e-5)
    tx, _ = make_optimizer(dataclasses.replace(config, clip_norm=0.0))  # 0 = no clipping
    updates, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose(updates["w"], -1e-3 * 10 / 11, rtol=1e-5)


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(warmup_steps=20, total_steps=10),
                                 dict(min_lr_ratio=1.5), dict(b2=1.0), dict(clip_norm=-1.0)])
def test_config_rejects_impossible_values(bad):
    with pytest.raises(ValueError):
        OptimConfig(**bad)
