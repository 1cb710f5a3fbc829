"""Train-state checkpoints: round trip, resume == uninterrupted, keep-last-N, corrupt fallback."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leser_jax import checkpoint, lm_data
from leser_jax.checkpoint import (CheckpointError, checkpoint_configs, checkpoint_tokenizer,
                                  list_checkpoints, restore_latest, save_checkpoint)
from leser_jax.config import ModelConfig
from leser_jax.model import Llama
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.tokenizer import train_sentencepiece
from leser_jax.train import (LoopConfig, TrainState, abstract_train_state, init_train_state,
                             masked_lm_loss, train_loop)

CONFIG = ModelConfig.tiny().replace(num_layers=1, vocab_size=128, ffn_dim=64)  # compiles fast


def tiny_model(seed=0, config=CONFIG):
    """The tiny model with weights from numpy (an eager random init compiles every op)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.02, x.shape).astype(x.dtype)),
        nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def abstract_fn():
    return Llama(CONFIG, rngs=nnx.Rngs(0))


TX, SCHEDULE = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=2, total_steps=8))


def _state(seed=0, step=0):
    _, state = init_train_state(tiny_model(seed), TX, seed=seed)
    return state.replace(step=jnp.asarray(step, jnp.int32))


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_round_trip_restores_optax_structures_configs_and_tokenizer(tmp_path):
    tokenizer = train_sentencepiece(["oak desk", "red office chair", "brass lamp"] * 20,
                                    vocab_size=300)
    state = _state(seed=3, step=7)
    path = save_checkpoint(tmp_path, state, step=7, configs={"model": CONFIG.to_dict()},
                           tokenizer=tokenizer)
    assert path == tmp_path / "checkpoints" / "step_00000007"
    _, abstract = abstract_train_state(abstract_fn, TX)
    restored, found = restore_latest(tmp_path, abstract)
    assert found == path
    assert isinstance(restored, TrainState) and isinstance(restored.params, nnx.State)
    # Optax's own structures, not the dicts and lists an untargeted restore gives (STACK.md).
    assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert _leaves_equal(restored, state) and int(restored.step) == 7
    assert checkpoint_configs(path)["model"] == CONFIG.to_dict()
    assert checkpoint_tokenizer(path).encode("oak desk") == tokenizer.encode("oak desk")
    meta = json.loads((path / "COMPLETE.json").read_text())
    assert meta["step"] == 7 and "configs.json" in meta["files"]


def test_keeps_the_last_n(tmp_path):
    state = _state()
    for step in range(1, 6):
        save_checkpoint(tmp_path, state, step=step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    save_checkpoint(tmp_path, state, step=6, keep=3)  # a larger N keeps what is still there
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5, 6]


def _data_file(path):
    """The largest file of a checkpoint's Orbax state: the array data."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(path / "state") for f in fs]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["no_marker", "bad_marker", "truncated", "garbled"])
def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog, damage):
    old, new = _state(seed=1, step=2), _state(seed=2, step=4)
    save_checkpoint(tmp_path, old, step=2)
    bad = save_checkpoint(tmp_path, new, step=4)
    data = _data_file(bad)
    if damage == "no_marker":  # what a save killed before its rename would look like in place
        os.remove(bad / "COMPLETE.json")
        why = "no COMPLETE.json"
    elif damage == "bad_marker":
        (bad / "COMPLETE.json").write_text('{"step": 4, "fil')
        why = "invalid completion marker"
    elif damage == "truncated":  # a file cut short: caught by the recorded sizes
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        why = "bytes"
    else:  # same size, wrong bytes: only Orbax can tell
        size = os.path.getsize(data)
        with open(data, "r+b") as f:
            f.write(b"\x00" * size)
        why = "Orbax could not restore"
    _, abstract = abstract_train_state(abstract_fn, TX)
    with caplog.at_level(logging.WARNING):
        restored, path = restore_latest(tmp_path, abstract)
    assert path.name == "step_00000002" and int(restored.step) == 2
    assert _leaves_equal(restored.params, old.params)
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(bad) in warning and why in warning
    with pytest.raises(CheckpointError):
        checkpoint.restore_checkpoint(bad, abstract)


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = _state(seed=1, step=2)
    save_checkpoint(tmp_path, good, step=2)

    class Killed(Exception):
        pass

    def dies(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(checkpoint, "_fsync_tree", dies)  # dies after the arrays are written
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, _state(seed=2, step=4), step=4)
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000002"]  # no temporary left over
    _, abstract = abstract_train_state(abstract_fn, TX)
    restored, _ = restore_latest(tmp_path, abstract)
    assert _leaves_equal(restored, good)


def test_restore_latest_of_an_empty_run_dir(tmp_path):
    _, abstract = abstract_train_state(abstract_fn, TX)
    assert restore_latest(tmp_path, abstract) == (None, None)


class Crash(Exception):
    pass


def _run(run_dir, rows, *, crash_at=None, total=6, compiled=None):
    def batch_fn(step):
        if step == crash_at:
            raise Crash(f"killed before step {step}")
        return lm_data.packed_batch(rows, 4, seed=5, step=step), {"tokens": rows[:4, 1:].size}

    loop = LoopConfig(total_steps=total, checkpoint_every=2, keep_checkpoints=2, seed=9)
    return train_loop(str(run_dir), model_fn=tiny_model, abstract_fn=abstract_fn, tx=TX,
                      schedule=SCHEDULE, loss_fn=masked_lm_loss, batch_fn=batch_fn, loop=loop,
                      configs={"model": CONFIG.to_dict()}, compiled=compiled)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    rows = np.random.default_rng(0).integers(4, CONFIG.vocab_size, (10, 17)).astype(np.int32)
    compiled = {}  # the three runs share one compiled step: same model, optimizer, loss, shapes
    _, straight = _run(tmp_path / "straight", rows, compiled=compiled)
    with pytest.raises(Crash):  # dies during step 5, after the checkpoint of step 4
        _run(tmp_path / "resumed", rows, crash_at=5, compiled=compiled)
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [2, 4]
    _, resumed = _run(tmp_path / "resumed", rows, compiled=compiled)
    assert len(compiled) == 1
    assert int(resumed.step) == int(straight.step) == 6
    # Bitwise: the same batches (a function of seed and step), keys, and restored moments.
    assert _leaves_equal(resumed.params, straight.params)
    assert _leaves_equal(resumed.opt_state, straight.opt_state)
    # The redone steps 5 and 6 are in the metrics once each, after the kept steps 1-4.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # And training did something: the parameters moved from their init.
    assert not _leaves_equal(straight.params, nnx.split(tiny_model())[1])


def test_init_dir_holds_params_and_tokenizer(tmp_path):
    """What pretraining exports and `--init` reads: DIR/params with the tokenizer beside it."""
    config = CONFIG.replace(vocab_size=320)  # room for SentencePiece's 256 byte pieces
    tokenizer = train_sentencepiece(["oak desk", "red office chair", "brass lamp"] * 20,
                                    vocab_size=config.vocab_size)
    model = tiny_model(seed=4, config=config)
    checkpoint.save_params(tmp_path / "run" / "params", model, tokenizer=tokenizer)
    for init in (tmp_path / "run", tmp_path / "run" / "params"):  # the run dir or the export
        loaded, loaded_config, tok = checkpoint.load_init(init)
        assert loaded_config == config and tok.encode("oak desk") == tokenizer.encode("oak desk")
        assert _leaves_equal(nnx.split(loaded)[1], nnx.split(model)[1])
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        checkpoint.save_params(tmp_path / "bare", model)
        checkpoint.load_init(tmp_path / "bare")
