"""Checkpoints: our LLaMA == transformers' LlamaForCausalLM on converted weights; Orbax round trips.

The parity tests need torch and transformers (test-only dependencies). They are skipped when
torch is missing, unless LESER_REQUIRE_PARITY is set, in which case they fail: CI sets it.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leser_jax import checkpoint
from leser_jax.checkpoint import load_hf_llama, load_params, save_params
from leser_jax.config import ModelConfig
from leser_jax.model import Llama
from tests._tolerance import FORWARD_RTOL, assert_close


def _require_torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        if os.environ.get("LESER_REQUIRE_PARITY"):
            pytest.fail(f"LESER_REQUIRE_PARITY is set but torch/transformers cannot be imported "
                        f"({e}); install them: pip install torch==2.13.0 transformers")
        pytest.skip("torch/transformers not installed (LESER_REQUIRE_PARITY=1 makes this fail)")
    return torch, transformers


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


def forward(model, tokens):
    return np.asarray(_forward_jit(*nnx.split(model), jnp.asarray(tokens)))


# A small LLaMA 3 with llama3 RoPE scaling. original_max_position_embeddings=64 puts the 8
# frequencies of head_dim 16 in all three regimes: wavelength 2*pi*10000^(i/8) for i = 0..7 is
# 6.3 (< 64/4: kept), 20, 63 (between: interpolated), 199, ... (> 64: divided by the factor).
_HF_CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10_000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def _hf_model(*, tie: bool, seed: int = 0):
    torch, transformers = _require_torch()
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(tie_word_embeddings=tie, **_HF_CONFIG)).eval()
    with torch.no_grad():  # HF's init (std 0.02, unit norms) would make every logit ~0
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


def _hf_logits(hf_model, tokens):
    import torch

    with torch.no_grad():
        return hf_model(torch.as_tensor(tokens)).logits.float().numpy()  # [B, T, V]


def _tokens(B=2, T=48, seed=0):
    return np.random.default_rng(seed).integers(0, _HF_CONFIG["vocab_size"], (B, T))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.slow
def test_parity_with_transformers(tmp_path, tie):
    hf = _hf_model(tie=tie)
    hf.save_pretrained(tmp_path)
    hf_json = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in hf_json  # transformers 5 style config
    assert ("lm_head.weight" in checkpoint._hf_tensors(tmp_path)) == (not tie)

    model, config = load_hf_llama(tmp_path)
    assert config.tie_embeddings == tie and config.rope_scaling_factor == 8.0
    assert (model.lm_head is None) == tie
    tokens = _tokens()
    want = _hf_logits(hf, tokens)
    got = forward(model, tokens)
    assert got.dtype == np.float32 and float(np.abs(want).max()) > 1.0
    assert_close(got, want, rtol=FORWARD_RTOL)  # torch's kernels against XLA's

    # The RoPE scaling was read and matters: without it the logits are far off.
    unscaled = checkpoint.fill_model(
        checkpoint.abstract_model(config.replace(rope_scaling_factor=None)),
        nnx.to_pure_dict(nnx.state(model)))
    assert np.abs(forward(unscaled, tokens) - want).max() > 0.1 * np.abs(want).max()


@pytest.mark.slow
def test_parity_sharded_checkpoint_and_legacy_config(tmp_path):
    hf = _hf_model(tie=False, seed=1)
    hf.save_pretrained(tmp_path, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    # Rewrite config.json the way transformers 4 wrote it: top-level rope_theta and rope_scaling.
    hf_json = json.loads((tmp_path / "config.json").read_text())
    rope = hf_json.pop("rope_parameters")
    hf_json["rope_theta"] = rope.pop("rope_theta")
    hf_json["rope_scaling"] = rope
    hf_json["torch_dtype"] = hf_json.pop("dtype", "float32")
    (tmp_path / "config.json").write_text(json.dumps(hf_json))

    model, config = load_hf_llama(tmp_path)
    assert config.rope_scaling_factor == 8.0 and config.rope_original_max_len == 64
    tokens = _tokens(seed=1)
    assert_close(forward(model, tokens), _hf_logits(hf, tokens), rtol=FORWARD_RTOL)


@pytest.mark.slow
def test_bf16_checkpoint_loads_exactly(tmp_path):
    """safetensors.numpy cannot read BF16; our reader must, bit for bit."""
    torch, _ = _require_torch()
    hf = _hf_model(tie=True, seed=2).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model, config = load_hf_llama(tmp_path)
    assert config.param_dtype == "bfloat16" and config.dtype == "bfloat16"
    embed = hf.model.embed_tokens.weight.detach().float().numpy()  # [V, D]
    assert model.embed[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model.embed[...], np.float32), embed)
    q = hf.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [N*H, D]
    np.testing.assert_array_equal(np.asarray(model.layers[1].attn.q[...], np.float32),
                                  q.T.reshape(64, 4, 16))
    assert forward(model, _tokens(T=8)).dtype == np.float32
    # Widening on load (bf16 checkpoint, float32 params for a CPU run) keeps the values.
    model32, config32 = load_hf_llama(tmp_path, param_dtype="float32")
    assert config32.dtype == "float32" and model32.embed[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(model32.embed[...]), embed)


def test_hf_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_llama(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        dict(_HF_CONFIG, rope_scaling={"rope_type": "yarn", "factor": 4.0})))
    with pytest.raises(ValueError, match="yarn"):
        load_hf_llama(tmp_path)


# ----------------------------------------------------------------------------- Orbax params

def _random_model(config, seed=0):
    """A model with random host-made weights, without compiling a JAX random init."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    pure = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype),
                        nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def test_save_load_params_round_trip(tmp_path):
    config = ModelConfig.tiny().replace(tie_embeddings=False, param_dtype="bfloat16")
    model = _random_model(config)
    path = save_params(tmp_path / "ckpt", model)
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE.json", "config.json", "params"]
    restored, restored_config = load_params(path)
    assert restored_config == config
    want = jax.tree.leaves(nnx.state(model))
    got = jax.tree.leaves(nnx.state(restored))
    assert len(got) == len(want) == 2 * 9 + 3  # 9 tensors a layer, embed + lm_head + final norm
    for a, b in zip(want, got):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))

    with pytest.raises(FileExistsError):
        save_params(path, model)
    other = _random_model(config, seed=1)
    save_params(path, other, overwrite=True)
    np.testing.assert_array_equal(np.asarray(load_params(path)[0].embed[...], np.float32),
                                  np.asarray(other.embed[...], np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_interrupted_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    from orbax.checkpoint import v1

    config = ModelConfig.tiny()
    model = _random_model(config)
    path = save_params(tmp_path / "ckpt", model)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("interrupted mid-save")

    monkeypatch.setattr(v1, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_params(path, _random_model(config, seed=1), overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        save_params(tmp_path / "new", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.undo()
    np.testing.assert_array_equal(load_params(path)[0].embed[...], model.embed[...])


def test_missing_or_corrupt_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_params(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_params(tmp_path / "empty")

    path = save_params(tmp_path / "ckpt", _random_model(ModelConfig.tiny()))
    config_text = (path / "config.json").read_text()
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid ModelConfig"):
        load_params(path)
    (path / "config.json").write_text(config_text.replace('"num_kv_heads": 2', '"num_kv_heads": 3'))
    with pytest.raises(ValueError, match="not a valid ModelConfig"):
        load_params(path)
    (path / "config.json").write_text(config_text)
    # Corrupt the array data: every file under params/ truncated to nothing. The recorded sizes
    # tell; without them (a checkpoint from before COMPLETE.json), Orbax does.
    for f in (path / "params").rglob("*"):
        if f.is_file() and not f.name.startswith("_"):
            f.write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt params checkpoint: .* has 0 bytes"):
        load_params(path)
    (path / "COMPLETE.json").unlink()
    with pytest.raises(ValueError, match="could not restore parameters"):
        load_params(path)
