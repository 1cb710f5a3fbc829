"""LoRA: fresh adapters are the identity, adapted == merged kernels, only adapters train, the
GRPO reference is the base, runs resume bitwise, and the sharded update equals one device's."""

from __future__ import annotations

import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leser_jax import checkpoint, grpo, lm_data
from leser_jax.checkpoint import list_checkpoints
from leser_jax.config import ModelConfig, lora_param_count, param_count
from leser_jax.context import ContextConfig
from leser_jax.data.synthetic import SyntheticConfig, generate
from leser_jax.grpo import GRPOConfig
from leser_jax.grpo_trainer import GRPOLoopConfig, GRPOTrainer, reference_logprobs
from leser_jax.lora import add_lora, merge_lora
from leser_jax.model import Llama, init_cache
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.prompts import INSTRUCTION, AnswerFormat
from leser_jax.search import SearchEngine
from leser_jax.tokenizer import train_sentencepiece
from leser_jax.train import LoopConfig, init_train_state, make_train_step, masked_lm_loss, train_loop
from tests.test_checkpoint import SCHEDULE, TX, Crash, _leaves_equal, tiny_model
from tests.test_grpo_run import _breakdown, _rollout_batch
from tests._tolerance import FORWARD_RTOL, GRAD_RTOL, assert_close

CONFIG = ModelConfig.tiny().replace(num_layers=1, vocab_size=128, ffn_dim=64)  # compiles fast
RANK, ALPHA = 4, 8.0  # scale alpha / r = 2


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens):
    return nnx.merge(graphdef, params)(tokens)  # [B, T, V]


def forward(model, tokens):
    return _forward(*nnx.split(model), tokens)


def _random_b(model: Llama, seed: int = 1) -> Llama:
    """`model` with every adapter's B drawn at random (fresh adapters have B = 0), in place."""
    rng = np.random.default_rng(seed)
    for block in model.layers:
        for part in (block.attn, block.mlp):
            for name in part.KERNELS:
                lora = getattr(part, f"{name}_lora")
                lora.b[...] = jnp.asarray(rng.normal(0, 0.2, lora.b.shape), jnp.float32)
    return model


def _lora_model(seed=0, config=CONFIG) -> Llama:
    return add_lora(tiny_model(seed, config), rank=RANK, alpha=ALPHA, seed=seed)


TOKENS = np.random.default_rng(0).integers(1, CONFIG.vocab_size, (2, 9)).astype(np.int32)


@pytest.mark.slow
def test_fresh_adapters_compute_exactly_what_the_base_does():
    base = tiny_model()
    expected = np.asarray(forward(base, TOKENS))
    model = add_lora(base, rank=RANK, alpha=ALPHA)
    assert model.config.lora_rank == RANK and model.layers[0].attn.q_lora.scale == 2.0
    np.testing.assert_array_equal(np.asarray(forward(model, TOKENS)), expected)  # B = 0
    # A [in..., r] and B [r, out...], float32, on all seven kernels; counted by param_count.
    attn, mlp = model.layers[0].attn, model.layers[0].mlp
    assert attn.q_lora.a.shape == (64, RANK) and attn.q_lora.b.shape == (RANK, 4, 16)
    assert attn.o_lora.a.shape == (4, 16, RANK) and attn.o_lora.b.shape == (RANK, 64)
    assert mlp.down_lora.a.shape == (64, RANK) and mlp.down_lora.b.shape == (RANK, 64)  # F = 64
    adapters = jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
    assert {a.dtype for a in adapters} == {jnp.dtype(jnp.float32)}
    # Per layer: q (64 + 64) + k, v 2 * (64 + 32) + o (64 + 64) + gate, up, down 3 * (64 + 64)
    # = 128 + 192 + 128 + 384 = 832, x r = 4 -> 3328.
    assert sum(a.size for a in adapters) == lora_param_count(model.config) == 3328
    assert sum(a.size for a in jax.tree.leaves(nnx.state(model))) == param_count(model.config)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, rank=2, alpha=2.0)
    with pytest.raises(ValueError, match="lora_rank >= 0"):
        CONFIG.replace(lora_rank=-1)
    with pytest.raises(ValueError, match="lora_alpha > 0"):
        CONFIG.replace(lora_rank=4, lora_alpha=0.0)


def _merged_reference(model: Llama) -> Llama:
    """A plain model whose kernels are W + scale * A B, written out with explicit einsums."""
    c = model.config
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    specs = {"q": "Dr,rNH->DNH", "k": "Dr,rKH->DKH", "v": "Dr,rKH->DKH", "o": "NHr,rD->NHD",
             "gate": "Dr,rF->DF", "up": "Dr,rF->DF", "down": "Fr,rD->FD"}
    for layer in pure["layers"].values():
        for part in (layer["attn"], layer["mlp"]):
            for name in [k for k in part if k in specs]:
                lora = part.pop(f"{name}_lora")
                part[name] = part[name] + c.lora_alpha / c.lora_rank * jnp.einsum(
                    specs[name], lora["a"], lora["b"])
    plain = c.replace(lora_rank=0)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(plain, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@pytest.mark.slow
def test_adapted_forward_equals_the_merged_kernels_and_cached_decode():
    model = _random_b(_lora_model())
    adapted = np.asarray(forward(model, TOKENS))
    base = np.asarray(forward(tiny_model(), TOKENS))
    # The tiny init's logits are ~0.01 (embeddings of std 0.02, tied): tolerances are relative.
    assert np.abs(adapted - base).max() > 0.5 * np.abs(base).max()  # the adapters change the model
    reference = np.asarray(forward(_merged_reference(model), TOKENS))
    assert_close(adapted, reference, rtol=FORWARD_RTOL)
    merged = merge_lora(model)
    assert merged.config == CONFIG  # lora_rank 0: a plain model
    assert_close(forward(merged, TOKENS), reference, rtol=FORWARD_RTOL)
    np.testing.assert_array_equal(np.asarray(forward(model, TOKENS)), adapted)  # model untouched
    # The sampler's path: prefill of all but the last token, then one decode step.
    logits, cache = model.prefill(TOKENS[:, :-1], np.ones((2, 8), bool), init_cache(CONFIG, 2, 9))
    last, _ = model.decode_step(TOKENS[:, -1], cache)
    assert_close(logits, adapted[:, :-1], rtol=FORWARD_RTOL)
    assert_close(last, adapted[:, -1], rtol=FORWARD_RTOL)


def _lm_batch(seed=0, B=4, T=12):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(4, CONFIG.vocab_size, (B, T + 1)).astype(np.int32)
    return {"inputs": inputs[:, :-1], "targets": inputs[:, 1:],
            "weights": np.ones((B, T), np.float32), "pad_mask": np.ones((B, T), bool)}


def _buffers(params) -> list[int]:
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)]


@pytest.mark.slow
def test_only_the_adapters_train_and_the_frozen_base_stays_in_place():
    model = _lora_model()
    base_before = jax.tree.map(lambda x: np.array(x), nnx.state(model, nnx.Param))
    tx = optax.adam(1e-2)
    graphdef, state = init_train_state(model, tx, seed=0)
    # The optimizer state mirrors the adapters alone: Adam's m and v hold 2 x 3328 numbers.
    adam = state.opt_state[0]
    assert jax.tree.structure(adam.mu) == jax.tree.structure(nnx.state(model, nnx.LoRAParam))
    assert sum(x.size for x in jax.tree.leaves((adam.mu, adam.nu))) == 2 * 3328
    step = make_train_step(graphdef, tx, optax.constant_schedule(1e-2), masked_lm_loss)
    for s in range(3):
        state, metrics = step(state, _lm_batch(s))
        if s == 1:
            pointers = _buffers(state.params)
    assert float(metrics["grad_norm"]) > 0
    # Donated and returned unchanged: the base (and every array) reuses its buffer, no copy.
    assert _buffers(state.params) == pointers
    adapters, base = nnx.split_state(state.params, nnx.LoRAParam, ...)
    base_before = nnx.split_state(base_before, nnx.LoRAParam, ...)[1]
    assert _leaves_equal(base, base_before)  # bitwise
    fresh = nnx.state(_lora_model(), nnx.LoRAParam)
    moved = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(adapters),
                                                      jax.tree.leaves(fresh))]
    assert all(moved)  # every A and B moved (A from the second step: B = 0 at the first)


@pytest.mark.slow
def test_grpo_reference_with_adapters_off_is_the_base_model():
    config = CONFIG.replace(vocab_size=64)
    batch = _rollout_batch(V=64)
    base_graphdef, base_params = nnx.split(tiny_model(config=config))
    expected = np.asarray(reference_logprobs(base_graphdef, base_params, batch, 0.9))
    model = _random_b(_lora_model(config=config))
    graphdef, params = nnx.split(model)
    # Bitwise: zeroed adapters add exact zeros to the base's own products (reference_logprobs).
    np.testing.assert_array_equal(np.asarray(reference_logprobs(graphdef, params, batch, 0.9)),
                                  expected)
    # ... while the policy itself (adapters on) gives other log-probs.
    policy = grpo.completion_logprobs(model, batch.prompt_tokens, batch.prompt_mask,
                                      batch.completion_tokens, batch.completion_mask, 0.9)
    mask = batch.completion_mask
    assert np.abs(np.asarray(policy)[mask] - expected[mask]).max() > 1e-3


def test_params_checkpoint_and_export_hold_the_merged_model(tmp_path):
    from tools.export_hf_llama import hf_state_dict

    model = _random_b(_lora_model())
    expected = np.asarray(forward(model, TOKENS))
    saved = checkpoint.save_params(tmp_path / "params", model)
    loaded, config = checkpoint.load_params(saved)
    assert config == CONFIG and json.loads((saved / "config.json").read_text())["lora_rank"] == 0
    assert_close(forward(loaded, TOKENS), expected, rtol=FORWARD_RTOL)  # merged vs adapted
    exported, plain = hf_state_dict(model), hf_state_dict(merge_lora(model))
    assert exported.keys() == plain.keys() and not any("lora" in k for k in exported)
    assert all(np.array_equal(exported[k], plain[k]) for k in exported)


def _lora_abstract():
    return Llama(CONFIG.replace(lora_rank=RANK, lora_alpha=ALPHA), rngs=nnx.Rngs(0))


def _sft_run(run_dir, rows, *, crash_at=None, compiled=None):
    def batch_fn(step):
        if step == crash_at:
            raise Crash(f"killed before step {step}")
        return lm_data.packed_batch(rows, 4, seed=5, step=step), {"tokens": rows[:4, 1:].size}

    loop = LoopConfig(total_steps=6, checkpoint_every=2, keep_checkpoints=2, seed=9)
    return train_loop(str(run_dir), model_fn=_lora_model, abstract_fn=_lora_abstract, tx=TX,
                      schedule=SCHEDULE, loss_fn=masked_lm_loss, batch_fn=batch_fn, loop=loop,
                      configs={}, compiled=compiled)


@pytest.mark.slow
def test_killed_and_resumed_lora_run_equals_the_uninterrupted_run(tmp_path):
    rows = np.random.default_rng(0).integers(4, CONFIG.vocab_size, (10, 17)).astype(np.int32)
    compiled = {}
    _, straight = _sft_run(tmp_path / "straight", rows, compiled=compiled)
    with pytest.raises(Crash):  # dies during step 5, after the checkpoint of step 4
        _sft_run(tmp_path / "resumed", rows, crash_at=5, compiled=compiled)
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [2, 4]
    # The restore target has the adapters (abstract_fn); model_fn is not called again.
    model, resumed = _sft_run(tmp_path / "resumed", rows, compiled=compiled)
    assert int(resumed.step) == 6 and model.config.lora_rank == RANK
    assert _leaves_equal(resumed.params, straight.params)
    assert _leaves_equal(resumed.opt_state, straight.opt_state)
    adapters, base = nnx.split_state(straight.params, nnx.LoRAParam, ...)
    init_adapters, init_base = nnx.split_state(nnx.state(_lora_model()), nnx.LoRAParam, ...)
    assert _leaves_equal(base, init_base) and not _leaves_equal(adapters, init_adapters)


class DistinctCharactersReward:
    """reward = distinct characters / 10: differs between rollouts of a random model, and needs
    no relevance model (the trainer reads only `feedback.engine` besides the call)."""

    def __init__(self, engine):
        self.feedback = types.SimpleNamespace(engine=engine)

    def __call__(self, queries, completions):
        return [_breakdown(len(set(text)) / 10) for text in completions]


@pytest.fixture(scope="module")
def grpo_setup():
    catalog = generate(SyntheticConfig(num_products=300, num_queries=60, seed=0))
    tokenizer = train_sentencepiece(lm_data.catalog_documents(catalog)
                                    + [INSTRUCTION.format(m_max=5)] * 50, vocab_size=512, seed=0)
    return catalog, SearchEngine.build(catalog), tokenizer


def _grpo_trainer(grpo_setup, run_dir) -> GRPOTrainer:
    catalog, engine, tokenizer = grpo_setup
    config = CONFIG.replace(vocab_size=tokenizer.vocab_size, max_seq_len=512)
    tx, schedule = _grpo_optimizer()
    return GRPOTrainer(
        str(run_dir), init_model=_lora_model(config=config), tokenizer=tokenizer,
        reward_fn=DistinctCharactersReward(engine), train_queries=catalog.split("train"),
        dev_queries=[], catalog=catalog,
        grpo_config=GRPOConfig(queries_per_step=2, num_rollouts=2, max_new_tokens=8),
        tx=tx, schedule=schedule, context=ContextConfig(k=1, max_tokens=24, max_attributes=1),
        answer=AnswerFormat(), loop=GRPOLoopConfig(total_steps=2, checkpoint_every=1,
                                                   samples_every=0, seed=3), configs={})


@functools.cache
def _grpo_optimizer():  # one object: the trainers share one compiled update
    return make_optimizer(OptimConfig(lr=1e-2, total_steps=2, warmup_steps=0, weight_decay=0.0))


@pytest.mark.slow
def test_killed_and_resumed_lora_grpo_run_equals_the_uninterrupted_run(grpo_setup, tmp_path):
    straight = _grpo_trainer(grpo_setup, tmp_path / "straight")
    assert straight.ref_params is None  # the reference is the train state's own base
    straight.run()
    killed = _grpo_trainer(grpo_setup, tmp_path / "resumed")
    killed.train_step(0)
    checkpoint.save_checkpoint(tmp_path / "resumed", killed.state, step=1, configs={})
    del killed
    resumed = _grpo_trainer(grpo_setup, tmp_path / "resumed")
    assert int(resumed.state.step) == 1
    resumed.run()
    assert int(resumed.state.step) == int(straight.state.step) == 2
    assert _leaves_equal(resumed.state.params, straight.state.params)
    assert _leaves_equal(resumed.state.opt_state, straight.state.opt_state)
    adapters, base = nnx.split_state(straight.state.params, nnx.LoRAParam, ...)
    init = nnx.state(_lora_model(config=straight.policy().config.without_lora()))
    init_adapters, init_base = nnx.split_state(init, nnx.LoRAParam, ...)
    assert _leaves_equal(base, init_base) and not _leaves_equal(adapters, init_adapters)


# ---- GRPO with LoRA on 8 simulated devices ------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_report():
    """`_worker`'s report from 8 simulated CPU devices."""
    from tests.test_sharding import run_on_8_devices

    return run_on_8_devices(__file__)


@pytest.mark.slow
def test_sharded_lora_grpo_update_equals_the_single_device_update(sharded_report):
    r = sharded_report
    assert r["devices"] == 8
    assert r["adapter_spec"] == "P('fsdp', None)"  # q's A [D, r]: split along D
    for step in r["steps"]:
        # abs: a GRPO loss near 0 is a mean of terms A * ratio of order 1, rounded at that scale.
        assert step["loss_sharded"] == pytest.approx(step["loss_single"], rel=1e-5, abs=1e-6)
        assert step["params_rel_diff"] <= GRAD_RTOL
    assert r["base_unchanged"] and r["adapters_moved"]


def _worker():
    from leser_jax import sharding
    from tests.test_sharding import _max_diff, _rel_diff

    assert jax.device_count() == 8, jax.devices()
    config = CONFIG.replace(vocab_size=64)
    grpo_config = GRPOConfig(queries_per_step=8, num_rollouts=2, micro_batches=2)
    batches = [_rollout_batch(Q=8, N=2, P=6, T=5, V=64, seed=s) for s in (0, 1)]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5, momentum=0.9))

    def loss(model, batch, rng):
        return grpo.rollout_loss(model, batch, grpo_config)

    def fresh():  # each run its own arrays: both states are donated
        return init_train_state(_lora_model(config=config), tx, seed=0)

    graphdef, single_state = fresh()
    single = make_train_step(graphdef, tx, optax.constant_schedule(0.5), loss, micro_batches=2)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    state = sharding.shard_train_state(fresh()[1], mesh)
    sharded = make_train_step(graphdef, tx, optax.constant_schedule(0.5), loss, micro_batches=2,
                              shardings=sharding.train_step_shardings(state, batches[0], mesh))
    steps = []
    for batch in batches:
        batch = batch.replace(
            ref_logp=reference_logprobs(graphdef, single_state.params, batch, 0.9))
        single_state, m1 = single(single_state, batch)
        state, m2 = sharded(state, batch)
        steps.append({"loss_single": float(m1["loss"]), "loss_sharded": float(m2["loss"]),
                      "params_rel_diff": _rel_diff(state.params, single_state.params)})
    adapters, base = nnx.split_state(state.params, nnx.LoRAParam, ...)
    init_adapters, init_base = nnx.split_state(nnx.state(_lora_model(config=config)),
                                               nnx.LoRAParam, ...)
    print(json.dumps({
        "devices": jax.device_count(), "steps": steps,
        "adapter_spec": str(state.params["layers"][0]["attn"]["q_lora"]["a"][...].sharding.spec),
        "base_unchanged": _max_diff(base, init_base) == 0.0,
        "adapters_moved": _max_diff(adapters, init_adapters) > 0.0}))


if __name__ == "__main__":
    _worker()
