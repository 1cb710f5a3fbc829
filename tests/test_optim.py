"""The optimizer: schedule golden values, the weight-decay mask, what one update does, and the
float32 master copy of bf16 parameters (its rounding, its trajectory, its checkpoint)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leser_jax import lm_data
from leser_jax.checkpoint import restore_latest, save_checkpoint
from leser_jax.config import ModelConfig
from leser_jax.model import Llama
from leser_jax.optim import (Float32MasterState, OptimConfig, decay_mask, make_optimizer,
                             make_schedule, with_float32_master)
from leser_jax.train import (abstract_train_state, init_train_state, make_train_step,
                             masked_lm_loss)


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


# ------------------------------------------------------------ bf16 params, float32 master copy

def _leaves_equal(a, b) -> bool:
    """Bitwise: same structure, dtypes and values."""
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(x.dtype == y.dtype and np.array_equal(x, y)
                    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _to(params, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), params)


def _updater(tx):
    @jax.jit
    def apply(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return apply


def _assert_rounded_master(new, master, old, ratio=2.0 ** -15):
    """new == master rounded to new's dtype, bitwise, where that value is 0 or at least `ratio`
    times |old|; elsewhere (a weight that shrank by more in one update) within half a float32 ulp
    of |old|, the best a float32 update can do (optim.py, Rounding). Returns the exact share."""
    target = np.asarray(master).astype(new.dtype).astype(np.float32)
    got, old = np.asarray(new, np.float32), np.abs(np.asarray(old, np.float32))
    exact = (np.abs(target) >= ratio * old) | (target == 0)
    np.testing.assert_array_equal(got[exact], target[exact])
    assert np.all(np.abs(got - target)[~exact] <= np.spacing(old[~exact]) / 2)
    return exact.mean()


@pytest.mark.parametrize("dtype, ratio", [(jnp.bfloat16, 2.0 ** -15), (jnp.float16, 2.0 ** -13)])
def test_update_lands_on_the_rounded_master(dtype, ratio):
    # Old params p and masters m that disagree (as after many steps), new master m + g (the inner
    # optimizer is the identity), values over 20 binades, sign flips, exact zeros:
    # optax.apply_updates(p, u) must be the new master rounded to p's dtype.
    rng = np.random.default_rng(0)
    n = 20_000
    low = 1e-7 if dtype == jnp.float16 else 1e-10  # float16: 65504 down to 6e-8 (subnormal)
    p = jnp.asarray((rng.normal(size=n) * 10.0 ** rng.uniform(-2, 2, n)).astype(dtype))
    new = (rng.normal(size=n) * 10.0 ** rng.uniform(np.log10(low), 2, n)).astype(np.float32)
    new[:500] = -np.asarray(p[:500], np.float32) * 1.01  # crosses zero
    new[500:1000] = 0.0
    master = jnp.asarray(rng.normal(size=n).astype(np.float32))
    tx = with_float32_master(optax.identity())
    state = Float32MasterState(master={"w": master}, inner=optax.EmptyState())
    grads = {"w": jnp.asarray(new) - master}  # so that the new master is m + g
    out, state = _updater(tx)({"w": p}, state, grads)
    np.testing.assert_array_equal(state.master["w"], master + grads["w"])
    assert out["w"].dtype == dtype
    exact = _assert_rounded_master(out["w"], state.master["w"], p, ratio)
    assert 0.1 < exact < 0.9  # both cases well represented


def _constant_adam(lr, **kw):
    """Adam at a constant lr, no decay, no clipping: with a constant gradient g every step is
    lr * g / (|g| + eps) = lr (bias correction makes m_hat = g and v_hat = g^2 from step 1)."""
    return make_optimizer(OptimConfig(lr=lr, warmup_steps=0, total_steps=100, min_lr_ratio=1.0,
                                      weight_decay=0.0, clip_norm=0.0, **kw))[0]


def test_master_copy_keeps_updates_below_bf16_resolution():
    # bf16 steps are 2^-7 = 0.0078125 in [1, 2): a step of lr = 1e-3 rounds back to 1.5 in bf16.
    params = {"w": jnp.full((4,), 1.5, jnp.bfloat16)}
    grads = {"w": jnp.ones((4,), jnp.bfloat16)}
    plain, master = _constant_adam(1e-3, master_fp32=False), _constant_adam(1e-3)
    p_plain, s_plain = params, plain.init(params)
    p_master, s_master = params, master.init(params)
    apply_plain, apply_master = _updater(plain), _updater(master)
    seen = []
    for _ in range(12):
        p_plain, s_plain = apply_plain(p_plain, s_plain, grads)
        p_master, s_master = apply_master(p_master, s_master, grads)
        seen.append(float(p_master["w"][0]))
    assert float(p_plain["w"][0]) == 1.5  # plain AdamW on bf16 lost all 12 updates
    assert s_plain[1][0].mu["w"].dtype == jnp.bfloat16  # and kept bf16 moments
    # The master after k steps is 1.5 - k * 1e-3. bf16 rounds it to 1.4921875 (1.5 - 2^-7) once
    # it is below the midpoint 1.49609375: k > 3.9, so from step 4; to 1.484375 below
    # 1.48828125: k > 11.7, at step 12.
    assert seen == [1.5] * 3 + [1.4921875] * 8 + [1.484375]
    np.testing.assert_allclose(s_master.master["w"], 1.5 - 12e-3, rtol=1e-6)
    assert s_master.master["w"].dtype == s_master.inner[1][0].mu["w"].dtype == jnp.float32
    assert s_master.inner[1][0].nu["w"].dtype == jnp.float32


def test_bf16_with_master_follows_the_float32_run_rounded(params):
    # The same float32 gradients into a float32-param run and a bf16 + master run, with
    # clipping, warmup and decay on: the master IS the float32 run's params (bitwise), and the
    # bf16 params are them rounded to bf16, at every step (_assert_rounded_master).
    p16 = _to(params, jnp.bfloat16)
    p32 = _to(p16, jnp.float32)  # the same starting values
    tx, _ = make_optimizer(OptimConfig(lr=1e-3, warmup_steps=2, total_steps=10))
    s16, s32 = tx.init(p16), tx.init(p32)
    assert isinstance(s16, Float32MasterState) and _leaves_equal(s16.master, p32)
    apply = _updater(tx)
    rng = np.random.default_rng(1)
    for _ in range(4):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32), p32)
        old16 = p16
        p16, s16 = apply(p16, s16, grads)
        p32, s32 = apply(p32, s32, grads)
        assert _leaves_equal(s16.master, p32)
        assert _leaves_equal(s16.inner, s32)  # float32 moments, the same numbers
        jax.tree.map(_assert_rounded_master, p16, p32, old16)
    assert not _leaves_equal(p16, _to(params, jnp.bfloat16))  # and the bf16 params moved


def test_float32_params_are_untouched_by_the_master_option(params):
    # float32 params: no copy, AdamW's own state (old checkpoints restore), bitwise the same run.
    with_master, plain = make_optimizer(OptimConfig(lr=1e-3))[0], \
        make_optimizer(OptimConfig(lr=1e-3, master_fp32=False))[0]
    s1, s2 = with_master.init(params), plain.init(params)
    assert not isinstance(s1, Float32MasterState) and _leaves_equal(s1, s2)
    p1 = p2 = params
    apply1, apply2 = _updater(with_master), _updater(plain)
    rng = np.random.default_rng(2)
    for _ in range(3):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32), p1)
        p1, s1 = apply1(p1, s1, grads)
        p2, s2 = apply2(p2, s2, grads)
    assert _leaves_equal(p1, p2) and _leaves_equal(s1, s2)


def test_mixed_precision_copies_only_the_bf16_leaves(params, tmp_path):
    # bf16 matrices with float32 norm scales: the scales get no master (a MaskedNode, no
    # array), and their updates are AdamW's own. The state round-trips through a checkpoint.
    mixed = jax.tree_util.tree_map_with_path(
        lambda path, x: x if "scale" in jax.tree_util.keystr(path) else x.astype(jnp.bfloat16),
        params)
    tx, _ = make_optimizer(OptimConfig(lr=1e-3))
    state = tx.init(mixed)
    n_bf16 = sum(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(mixed))
    assert n_bf16 == 1 + 2 * 7 and len(jax.tree.leaves(state.master)) == n_bf16
    grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.1, x.dtype), mixed)
    new, state = _updater(tx)(mixed, state, grads)
    scale = new["final_norm"]["scale"][...]
    # The scale [D] starts at 0.02 * N(0, 1); Adam's first step moves it by lr(0) = 1e-3 / 100
    # (warmup: lr * 1 / warmup_steps), undecayed (1-D).
    np.testing.assert_allclose(scale, mixed["final_norm"]["scale"][...] - 1e-5, rtol=1e-5)
    save_checkpoint(tmp_path, state, step=1)
    restored, _ = restore_latest(tmp_path, jax.eval_shape(tx.init, mixed))
    assert isinstance(restored, Float32MasterState) and _leaves_equal(restored, state)


BF16 = ModelConfig.tiny().replace(num_layers=1, vocab_size=128, ffn_dim=64,
                                  param_dtype="bfloat16", dtype="bfloat16")


@pytest.mark.slow
def test_bf16_llama_train_steps_checkpoint_and_resume(tmp_path):
    """End to end through train.make_train_step: bf16 params stay the rounded float32 master
    after every step, and the state restores (into its own types) and continues bitwise."""
    def abstract_fn():
        return Llama(BF16, rngs=nnx.Rngs(0))

    graphdef, model_state = nnx.split(nnx.eval_shape(abstract_fn))
    rng = np.random.default_rng(0)
    nnx.replace_by_pure_dict(model_state, jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.02, x.shape).astype(x.dtype)),
        nnx.to_pure_dict(model_state)))
    tx, schedule = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, total_steps=10))
    _, state = init_train_state(nnx.merge(graphdef, model_state), tx, seed=0)
    # Committed to the device, as a restored state is, so that both use one compiled step.
    state = jax.device_put(state, jax.devices()[0])
    step = make_train_step(graphdef, tx, schedule, masked_lm_loss)
    rows = rng.integers(4, BF16.vocab_size, (4, 17)).astype(np.int32)
    losses = []
    for s in range(3):
        old = jax.tree.map(np.asarray, state.params)  # the step donates (deletes) the state
        state, metrics = step(state, lm_data.packed_batch(rows, 4, seed=0, step=s))
        losses.append(float(metrics["loss"]))
        opt = state.opt_state
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
        assert {x.dtype for x in jax.tree.leaves(opt.master)} == {jnp.dtype(jnp.float32)}
        assert opt.inner[1][0].mu["embed"][...].dtype == jnp.float32
        # With lr = 1e-2 on weights of 0.02 one embedding entry lands within 2^-15 of 0 at step 1.
        jax.tree.map(_assert_rounded_master, state.params, opt.master, old)
    assert losses[-1] < losses[0]  # the same 4 rows each step: it learns them
    save_checkpoint(tmp_path, state, step=3)
    _, abstract = abstract_train_state(abstract_fn, tx)
    restored, _ = restore_latest(tmp_path, abstract)
    assert isinstance(restored.opt_state, Float32MasterState)
    assert isinstance(restored.opt_state.inner[1][0], optax.ScaleByAdamState)
    assert _leaves_equal(restored, state)
    batch = lm_data.packed_batch(rows, 4, seed=0, step=3)
    resumed, _ = step(restored, batch)
    straight, _ = step(state, batch)
    assert _leaves_equal(resumed, straight)
