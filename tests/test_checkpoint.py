"""Train-state checkpoints: round trip, resume == uninterrupted, keep-last-N, corrupt fallback,
checksums, no NaN written."""

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
from leser_jax.finite import NonFiniteError
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
    # Optax's own structures, not the dicts and lists an untargeted restore gives.
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


def _as_legacy(path):
    """Rewrites a checkpoint's COMPLETE.json as saves before checksums wrote it (sizes only)."""
    meta = json.loads((path / "COMPLETE.json").read_text())
    meta["files"] = {rel: entry["bytes"] for rel, entry in meta["files"].items()}
    (path / "COMPLETE.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", ["no_marker", "bad_marker", "truncated", "zeroed",
                                    "random_4k", "legacy_zeroed"])
def test_corrupt_checkpoint_is_reported_set_aside_and_the_previous_one_used(tmp_path, caplog,
                                                                           damage):
    old, new = _state(seed=1, step=2), _state(seed=2, step=4)
    save_checkpoint(tmp_path, old, step=2)
    bad = save_checkpoint(tmp_path, new, step=4)
    data = _data_file(bad)
    size = os.path.getsize(data)
    if damage == "no_marker":  # what a save killed before its rename would look like in place
        os.remove(bad / "COMPLETE.json")
        why = "no COMPLETE.json"
    elif damage == "bad_marker":
        (bad / "COMPLETE.json").write_text('{"step": 4, "fil')
        why = "invalid completion marker"
    elif damage == "truncated":  # a file cut short: caught by the recorded sizes
        with open(data, "r+b") as f:
            f.truncate(size // 2)
        why = "bytes"
    elif damage in ("zeroed", "random_4k"):  # same size, other bytes: caught by the checksums
        with open(data, "r+b") as f:
            if damage == "zeroed":
                f.write(b"\x00" * size)
            else:  # issue 18's case: 4 KB of random bytes inside the array data
                f.seek(size // 4)
                f.write(np.random.default_rng(0).bytes(min(4096, size - size // 4)))
        assert os.path.getsize(data) == size
        why = "fails its checksum"
    else:  # a checkpoint from before checksums: only Orbax can tell
        _as_legacy(bad)
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
    # Moved aside: kept for inspection, no longer a checkpoint that a restore or prune sees.
    aside = tmp_path / "checkpoints" / "corrupt_step_00000004"
    assert not bad.exists() and aside.is_dir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    with pytest.raises(CheckpointError, match=why):
        checkpoint.restore_checkpoint(aside, abstract)


def test_an_intact_checkpoint_of_another_shape_is_an_error_not_skipped(tmp_path):
    """Files that verify but do not fit the run's state: another configuration's checkpoint.
    Skipping it would start afresh over it (issue 18, item 4)."""
    save_checkpoint(tmp_path, _state(step=2), step=2)
    other = CONFIG.replace(d_model=CONFIG.d_model * 2)
    _, abstract = abstract_train_state(lambda: Llama(other, rngs=nnx.Rngs(0)), TX)
    with pytest.raises(checkpoint.CheckpointMismatch, match="files verify"):
        restore_latest(tmp_path, abstract)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]  # untouched


def test_prune_keeps_the_checkpoint_it_just_wrote(tmp_path):
    """keep=1 with a newer checkpoint damaged in place (sizes intact, so the cheap check passes
    it): the save that follows a restore from an older one must not delete its own output."""
    state = _state()
    save_checkpoint(tmp_path, state, step=2, keep=1)
    newer = save_checkpoint(tmp_path, state, step=6, keep=1)
    with open(_data_file(newer), "r+b") as f:
        f.write(b"\x00" * 64)
    save_checkpoint(tmp_path, state, step=4, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    _, abstract = abstract_train_state(abstract_fn, TX)
    restored, path = restore_latest(tmp_path, abstract)  # 6 fails its checksum: set aside
    assert path.name == "step_00000004"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]


def test_nonfinite_state_is_never_saved(tmp_path):
    state = _state(step=2)
    save_checkpoint(tmp_path, state, step=2)
    poisoned = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    with pytest.raises(NonFiniteError, match="train state of step 4: .*NaN or inf"):
        save_checkpoint(tmp_path, poisoned, step=4)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_params_checkpoint_verifies_checksums_and_finiteness(tmp_path, monkeypatch):
    model = tiny_model(seed=4)
    out = checkpoint.save_params(tmp_path / "params", model)
    assert "sha256" in json.loads((out / "COMPLETE.json").read_text())["files"]["config.json"]
    data = max((os.path.join(d, f) for d, _, fs in os.walk(out / "params") for f in fs),
               key=os.path.getsize)
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        f.write(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="corrupt params checkpoint: .*fails its checksum"):
        checkpoint.load_params(out)
    graphdef, state = nnx.split(model)
    nan_model = nnx.merge(graphdef, jax.tree.map(lambda x: x * jnp.nan, state))
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        checkpoint.save_params(tmp_path / "nan", nan_model)
    assert not (tmp_path / "nan").exists()
    # NaN weights from elsewhere (issue 18: GRPO from them "succeeded" with reward 0).
    monkeypatch.setattr(checkpoint, "check_tree", lambda tree, what: None)
    checkpoint.save_params(tmp_path / "nan", nan_model)
    monkeypatch.undo()
    with pytest.raises(NonFiniteError, match="parameters loaded from .*nan: .* hold NaN or inf"):
        checkpoint.load_params(tmp_path / "nan")


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


def _run(run_dir, rows, *, crash_at=None, nan_at=None, total=6, compiled=None, configs=None,
         checkpoint_every=2):
    def batch_fn(step):
        if step == crash_at:
            raise Crash(f"killed before step {step}")
        batch = lm_data.packed_batch(rows, 4, seed=5, step=step)
        if step == nan_at:  # a diverging step: same shapes, so the same compiled step
            batch = dict(batch, weights=batch["weights"] * np.float32("nan"))
        return batch, {"tokens": rows[:4, 1:].size}

    loop = LoopConfig(total_steps=total, checkpoint_every=checkpoint_every, keep_checkpoints=2,
                      seed=9)
    return train_loop(str(run_dir), model_fn=tiny_model, abstract_fn=abstract_fn, tx=TX,
                      schedule=SCHEDULE, loss_fn=masked_lm_loss, batch_fn=batch_fn, loop=loop,
                      configs=configs or {"model": CONFIG.to_dict()}, compiled=compiled)


def _rows():
    return np.random.default_rng(0).integers(4, CONFIG.vocab_size, (10, 17)).astype(np.int32)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    rows = _rows()
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


def test_nonfinite_loss_stops_the_run_before_its_checkpoint(tmp_path):
    """Issue 18: a diverged run exited 0 and saved NaN weights over its good checkpoints."""
    with pytest.raises(NonFiniteError, match=r"step 5: loss = nan, grad_norm = nan: the run "
                                             r"stops .* newest checkpoint: step 4"):
        _run(tmp_path, _rows(), nan_at=4)  # the 5th update
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    _, abstract = abstract_train_state(abstract_fn, TX)
    restored, _ = restore_latest(tmp_path, abstract)
    assert int(restored.step) == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5] and logged[-1]["loss"] is None


def test_a_run_dir_with_other_settings_is_an_error_that_changes_nothing(tmp_path):
    """Issue 18: another model size in a finished run dir restored nothing, started afresh and
    then pruned the old checkpoints."""
    rows = _rows()
    _run(tmp_path, rows, total=4)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    metrics = (tmp_path / "metrics.jsonl").read_text()
    other = CONFIG.replace(d_model=2 * CONFIG.d_model)
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        _run(tmp_path, rows, total=4, configs={"model": other.to_dict(), "data": {"seed": 1}})
    message = str(e.value)
    assert f"model.d_model: {CONFIG.d_model} there, {other.d_model} now" in message
    assert "data.seed: '(not set)' there, 1 now" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    # What a resumed run may change (how often it checkpoints, remat) is no error.
    _run(tmp_path, rows, total=4, checkpoint_every=3,
         configs={"model": CONFIG.replace(remat=True).to_dict()})


def test_paths_in_configs_compare_as_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    save_checkpoint(tmp_path / "run", _state(), step=1, configs={"data": {"init": "data"}})
    checkpoint.check_run_configs(tmp_path / "run", {"data": {"init": str(tmp_path / "data")}},
                                 paths=["data.init"])
    with pytest.raises(checkpoint.CheckpointMismatch, match="data.init"):
        checkpoint.check_run_configs(tmp_path / "run", {"data": {"init": "elsewhere"}},
                                     paths=["data.init"])


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
