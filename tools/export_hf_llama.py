"""Export a leser-jax params checkpoint as a Hugging Face LLaMA directory (the inverse of convert).

    .venv/bin/python -m tools.export_hf_llama --init=runs/demo/policy --out=/tmp/policy_hf

Writes OUT/config.json (a transformers `LlamaConfig`) and OUT/model.safetensors in float32
(safetensors.numpy cannot write bfloat16), which `transformers.LlamaForCausalLM.from_pretrained(OUT)` and
`checkpoint.load_hf_llama(OUT)` both read. The layouts are `checkpoint.hf_to_pure_dict`'s,
inverted: our einsum kernels [in, ...] become HF Linear weights [out, in]. Used by
tools/bench_sampler.py to run transformers' `generate` on the very weights our sampler runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags
from flax import nnx

from experiments import cli
from leser_jax.config import ModelConfig
from leser_jax.lora import merge_lora
from leser_jax.model import Llama


def hf_config_dict(config: ModelConfig) -> dict:
    """The config.json of a transformers LlamaConfig with our shapes and RoPE settings."""
    c = config
    rope = {"rope_theta": c.rope_theta, "rope_type": "default"}
    if c.rope_scaling_factor is not None:
        rope.update(rope_type="llama3", factor=c.rope_scaling_factor,
                    low_freq_factor=c.rope_low_freq_factor,
                    high_freq_factor=c.rope_high_freq_factor,
                    original_max_position_embeddings=c.rope_original_max_len)
    return dict(model_type="llama", architectures=["LlamaForCausalLM"],
                vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_dim,
                num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
                max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
                rope_parameters=rope, tie_word_embeddings=c.tie_embeddings, hidden_act="silu",
                attention_bias=False, mlp_bias=False, dtype=c.param_dtype)


def hf_state_dict(model: Llama) -> dict[str, np.ndarray]:
    """Our parameters under LlamaForCausalLM's names and [out, in] layouts (host numpy); LoRA
    adapters are merged into their kernels first (lora.merge_lora)."""
    model = merge_lora(model)
    c = model.config
    D = c.d_model
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    t = {"model.embed_tokens.weight": pure["embed"],
         "model.norm.weight": pure["final_norm"]["scale"]}
    for i, layer in pure["layers"].items():
        p = f"model.layers.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        t[p + "input_layernorm.weight"] = layer["attn_norm"]["scale"]
        t[p + "post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
        t[p + "self_attn.q_proj.weight"] = attn["q"].reshape(D, -1).T  # [D, N, H] -> [N*H, D]
        t[p + "self_attn.k_proj.weight"] = attn["k"].reshape(D, -1).T  # [D, K, H] -> [K*H, D]
        t[p + "self_attn.v_proj.weight"] = attn["v"].reshape(D, -1).T
        t[p + "self_attn.o_proj.weight"] = attn["o"].reshape(-1, D).T  # [N, H, D] -> [D, N*H]
        t[p + "mlp.gate_proj.weight"] = mlp["gate"].T  # [D, F] -> [F, D]
        t[p + "mlp.up_proj.weight"] = mlp["up"].T
        t[p + "mlp.down_proj.weight"] = mlp["down"].T  # [F, D] -> [D, F]
    if not c.tie_embeddings:
        t["lm_head.weight"] = pure["lm_head"].T  # [D, V] -> [V, D]
    return {k: np.ascontiguousarray(np.asarray(v)) for k, v in t.items()}


def export(model: Llama, out: str | Path) -> Path:
    """Writes OUT/config.json and OUT/model.safetensors (float32)."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf = dict(hf_config_dict(model.config), dtype="float32")
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    tensors = {k: v.astype(np.float32) for k, v in hf_state_dict(model).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv):
    del argv
    from leser_jax.checkpoint import load_params

    model, _ = load_params(FLAGS.init)
    print(f"wrote {export(model, FLAGS.out)}")


if __name__ == "__main__":
    flags.DEFINE_string("init", None, "A leser-jax params checkpoint directory.")
    flags.DEFINE_string("out", None, "Output Hugging Face directory.")
    flags.mark_flags_as_required(["init", "out"])
    FLAGS = flags.FLAGS
    cli.run(main)
