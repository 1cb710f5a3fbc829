"""Sharding: a sharded GRPO update and sharded sampling equal their single-device runs.

The equivalence checks need 8 devices; CPU JAX simulates them with
XLA_FLAGS=--xla_force_host_platform_device_count=8, which must be set before JAX starts, so
they run in a subprocess (this file run as a script, `_worker`) and the rest of the suite keeps
its one device. The subprocess computes both runs and reports their differences and where the
sharded arrays lived; the tests assert on that report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from jax.sharding import PartitionSpec as P

from leser_jax.sharding import MeshConfig, distributed_init, fsdp_spec
from tests._tolerance import FORWARD_RTOL, GRAD_RTOL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fsdp_spec_splits_the_largest_divisible_dim_and_replicates_the_rest():
    assert fsdp_spec((512, 64), 4) == P("fsdp", None)  # embedding [V, D]: V
    assert fsdp_spec((64, 4, 16), 4) == P("fsdp", None, None)  # q kernel [D, N, H]: D
    assert fsdp_spec((4, 16, 64), 4) == P(None, None, "fsdp")  # o kernel [N, H, D]: D
    assert fsdp_spec((64, 192), 8) == P(None, "fsdp")  # MLP [D, F]: F
    assert fsdp_spec((6, 12), 4) == P(None, "fsdp")  # 6 % 4 != 0: the smaller dim that divides
    assert fsdp_spec((16, 16), 4) == P("fsdp", None)  # a tie: the first
    assert fsdp_spec((64,), 4) == P()  # a norm scale: replicated
    assert fsdp_spec((), 4) == P()  # a counter
    assert fsdp_spec((6, 3), 4) == P()  # nothing divides
    assert fsdp_spec((512, 64), 1) == P()


def test_mesh_config_fills_in_the_missing_axis():
    assert MeshConfig().resolve(8) == (1, 8)  # pure FSDP by default
    assert MeshConfig(data=2).resolve(8) == (2, 4)
    assert MeshConfig(fsdp=2).resolve(8) == (4, 2)
    assert MeshConfig(data=2, fsdp=4).resolve(8) == (2, 4)
    with pytest.raises(ValueError, match="does not fit"):
        MeshConfig(data=3).resolve(8)
    with pytest.raises(ValueError, match="does not fit"):
        MeshConfig(data=2, fsdp=2).resolve(8)
    with pytest.raises(ValueError):
        MeshConfig(data=-1)


def test_distributed_init_is_a_no_op_on_one_process():
    assert not distributed_init(environ={})
    one = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1"}
    assert not distributed_init(environ=one)
    with pytest.raises(ValueError, match="process_id"):
        distributed_init(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})


def run_on_8_devices(script: str) -> dict:
    """Runs `script` (a test file whose __main__ is its worker) on 8 simulated CPU devices and
    returns the JSON report it prints last."""
    # LLVM at -O0 halves the compile time that dominates here; both runs share the flag.
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
             " --xla_backend_optimization_level=0")
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, os.path.abspath(script)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report():
    """`_worker`'s report from 8 simulated CPU devices."""
    return run_on_8_devices(__file__)


@pytest.mark.slow
def test_sharded_grpo_update_equals_the_single_device_update(report):
    r = report["update"]
    assert r["devices"] == 8
    # The sharded run really was sharded: the embedding [V, D] split over fsdp (4 pieces, each
    # held by the 2 data replicas), the batch's rollout rows over all 8 devices.
    assert r["embed_spec"] == "P('fsdp', None)"
    assert r["momentum_spec"] == r["embed_spec"]  # the optimizer state follows its parameter
    assert r["embed_shard_rows"] == 64 // 4
    assert r["completion_shard_rows"] == 16 // 8
    for step in r["steps"]:  # two updates, micro-batched, momentum carried between them
        # abs: a GRPO loss near 0 is a mean of terms A * ratio of order 1, rounded at that scale.
        assert step["loss_sharded"] == pytest.approx(step["loss_single"], rel=1e-5, abs=1e-6)
        assert step["grad_norm_sharded"] == pytest.approx(step["grad_norm_single"], rel=1e-5)
        assert step["params_rel_diff"] <= GRAD_RTOL
    assert r["ref_logp_rel_diff"] <= FORWARD_RTOL  # the frozen reference's forward, sharded


@pytest.mark.slow
def test_sharded_sampling_equals_unsharded_sampling(report):
    # Parameters split over fsdp=4, the 8 sampled rows over data x fsdp: each device decodes
    # one row with all-gathered weights.
    r = report["sample"]
    assert r["row_shards"] == 8  # the rows (cache, tokens, log-probs) were split 8 ways
    assert r["embed_spec"] == "P('fsdp', None)"
    assert r["tokens_equal"]
    assert r["lengths_equal"]
    assert r["logprobs_rel_diff"] <= FORWARD_RTOL
    assert r["distinct_rows"] > 1  # rollouts of one prompt differ: the draw is not trivial


# ---- the subprocess: 8 simulated devices --------------------------------------------------------


def _max_diff(a, b) -> float:
    import jax
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rel_diff(a, b) -> float:
    """The largest max |x - y| / max |y| over the leaves x of a and y of b: rounding relative to
    each array's own scale (tests/_tolerance.py). An all-zero y must be matched exactly."""
    import jax
    import numpy as np

    def one(x, y):
        diff = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        scale = float(np.max(np.abs(np.asarray(y, np.float64))))
        return diff / scale if scale else (0.0 if diff == 0 else float("inf"))

    return max(one(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _update_report() -> dict:
    import jax
    import optax
    from flax import nnx

    from leser_jax import grpo, sharding
    from leser_jax.config import ModelConfig
    from leser_jax.grpo import GRPOConfig
    from leser_jax.grpo_trainer import reference_logprobs
    from leser_jax.model import Llama
    from leser_jax.train import init_train_state, make_train_step
    from tests.test_grpo_run import _rollout_batch

    config = ModelConfig.tiny().replace(vocab_size=64, num_layers=1)  # 1 layer: compiles faster
    grpo_config = GRPOConfig(queries_per_step=8, num_rollouts=2, micro_batches=2)
    batches = [_rollout_batch(Q=8, N=2, P=6, T=5, V=64, seed=s) for s in (0, 1)]
    # SGD with momentum: updates proportional to the gradients (Adam's first step, about
    # lr * sign(g), would magnify rounding in near-zero entries) and a state that mirrors the
    # params; the clip adds an EmptyState and a global norm over sharded gradients.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5, momentum=0.9))
    schedule = optax.constant_schedule(0.5)

    def loss(model, batch, rng):
        return grpo.rollout_loss(model, batch, grpo_config)

    def fresh():  # each run its own arrays: both states are donated
        return init_train_state(Llama(config, rngs=nnx.Rngs(0)), tx, seed=0)

    graphdef, single_state = fresh()
    single = make_train_step(graphdef, tx, schedule, loss, micro_batches=2)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    _, state = fresh()
    state = sharding.shard_train_state(state, mesh)
    sharded = make_train_step(graphdef, tx, schedule, loss, micro_batches=2,
                              shardings=sharding.train_step_shardings(state, batches[0], mesh))
    steps = []
    for batch in batches:
        single_state, m1 = single(single_state, batch)
        state, m2 = sharded(state, batch)
        steps.append({"loss_single": float(m1["loss"]), "loss_sharded": float(m2["loss"]),
                      "grad_norm_single": float(m1["grad_norm"]),
                      "grad_norm_sharded": float(m2["grad_norm"]),
                      "params_rel_diff": _rel_diff(state.params, single_state.params)})
    embed = state.params["embed"][...]
    momentum = state.opt_state[1][0].trace["embed"][...]
    batch = batches[1]
    completion = jax.device_put(batch.completion_tokens,
                                sharding.row_sharding(mesh, len(batch.completion_tokens)))
    ref_single = reference_logprobs(graphdef, single_state.params, batch, 0.9)
    ref_sharded = reference_logprobs(graphdef, state.params,
                                     jax.device_put(batch, sharding.batch_shardings(batch, mesh)),
                                     0.9)
    return {"devices": jax.device_count(), "steps": steps,
            "embed_spec": str(embed.sharding.spec), "momentum_spec": str(momentum.sharding.spec),
            "embed_shard_rows": embed.addressable_shards[0].data.shape[0],
            "completion_shard_rows": completion.addressable_shards[0].data.shape[0],
            "ref_logp_rel_diff": _rel_diff(ref_sharded, ref_single)}


def _sample_report() -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from leser_jax import sampler, sharding
    from leser_jax.config import ModelConfig
    from leser_jax.model import Llama

    config = ModelConfig.tiny().replace(vocab_size=64, num_layers=1)  # 1 layer: compiles faster
    graphdef, params = nnx.split(Llama(config, rngs=nnx.Rngs(1)))
    rng = np.random.default_rng(0)
    prompts = rng.integers(4, 64, (4, 7)).astype(np.int32)  # [Q, P], 4 prompts
    mask = np.ones((4, 7), bool)
    mask[1, :3] = False  # a left-padded prompt
    rows = np.repeat(np.arange(4), 2)  # [B = 8]: 2 rollouts per prompt
    sampling = sampler.SamplingConfig(temperature=0.9, max_new_tokens=12)
    key = jax.random.key(7)
    kwargs = dict(stop_ids=[1], pad_id=0, num_rollouts=2)
    single = sampler.generate(graphdef, params, prompts, mask, key, sampling, **kwargs)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    placed = jax.device_put(params, sharding.param_shardings(params, mesh))
    samples = sampler.generate(graphdef, placed, prompts, mask, key, sampling,
                               row_sharding=sharding.row_sharding(mesh, len(rows)), **kwargs)
    tokens = np.asarray(samples.tokens)
    return {"row_shards": len(rows) // samples.tokens.addressable_shards[0].data.shape[0],
            "embed_spec": str(placed["embed"][...].sharding.spec),
            "tokens_equal": bool(np.array_equal(tokens, np.asarray(single.tokens))),
            "lengths_equal": bool(np.array_equal(samples.lengths, single.lengths)),
            "logprobs_rel_diff": _rel_diff(samples.logprobs, single.logprobs),
            "distinct_rows": len({tuple(t) for t in tokens.tolist()})}


def _worker():
    import jax

    assert jax.device_count() == 8, jax.devices()
    print(json.dumps({"update": _update_report(), "sample": _sample_report()}))


if __name__ == "__main__":
    _worker()
