"""Checkpoints: Hugging Face LLaMA weights in, and the model's parameters to and from Orbax.

LESER starts from a pretrained LLaMA 3.2 (the paper prefers 3B to 3.1 8B for latency).
`load_hf_llama` reads a Hugging Face checkpoint directory (config.json + model.safetensors, or
shards listed in model.safetensors.index.json) into `model.Llama` without torch; tools/
convert_hf_llama.py turns it into a params checkpoint that launchers load with `--init=DIR`.

A params checkpoint is a directory:

    DIR/config.json   the `ModelConfig` as JSON
    DIR/params/       the parameters as Orbax saves them (`nnx.to_pure_dict` of the model state)

`save_params` writes it under a temporary name with DIR/COMPLETE.json (every file's size and
SHA-256, as for train checkpoints below) and renames it into place, so an interrupted save never
leaves a half checkpoint at DIR; it refuses parameters that hold NaN or inf. `load_params`
verifies the checksums (a directory without COMPLETE.json, e.g. from before them, is loaded as
it is), restores against abstract targets built with `nnx.eval_shape`, so no random
initialisation is ever computed, and refuses non-finite parameters. A params checkpoint may also hold
the tokenizer's files (tokenizer.model or tokenizer.json, `save_params(..., tokenizer=)`), which
is what `--init=DIR` of the launchers reads: pretraining's export and tools/convert_hf_llama.py's
output have the same layout.

A params checkpoint always holds a plain model: `save_params` folds LoRA adapters into the
kernels (lora.merge_lora) and records lora_rank 0. Every reader (evaluation, sampling, export,
the next stage's `--init`) then sees an ordinary LLaMA and runs it at full speed, and a stage
started from it takes it whole as its reference: a GRPO run from a LoRA warm-up's params is
held near the warm-up model, not near the warm-up's own base. The adapters stay apart in the
train-state checkpoints below, which is what resuming needs.

## Train-state checkpoints (resume)
A training run (pretraining, warm-up, GRPO) checkpoints its whole state to

    RUN_DIR/checkpoints/step_00000400/
        state/          the train state pytree (params, optimizer state, step, RNG) by Orbax
        configs.json    the run's resolved configs, {"model": {...}, "optim": {...}, ...}
        tokenizer/      the tokenizer's files
        COMPLETE.json   written last: {"step": 400, "files": {relative path:
                        {"bytes": size, "sha256": digest}}}

`save_checkpoint` refuses a state that holds NaN or inf (leser_jax.finite), writes all of it into
a hidden temporary directory beside the others, fsyncs every file and directory, writes
COMPLETE.json (fsynced) with the size and SHA-256 of every file as read back from disk, then
renames the directory into place and fsyncs the parent: a save killed at any point leaves either
no new checkpoint or a complete one, and never touches the last good one. It then keeps the
`keep` newest checkpoints, and always the one it just wrote.

`restore_latest` tries checkpoints newest first. One whose COMPLETE.json is missing or invalid,
or whose files differ from their recorded sizes or checksums (bytes damaged in place, same size:
Orbax itself would restore them, as garbage), is reported with a warning naming its path and
what is wrong, moved aside to checkpoints/corrupt_step_N (kept for inspection, and so that it is
neither restored nor counted as one of the `keep` newest by a later prune), and the next older
one is tried. A checkpoint whose files verify but which Orbax cannot restore into this run's
state was written by another configuration: that is an error (`CheckpointMismatch`), not a
reason to start afresh over it. Checkpoints written before checksums (sizes only) are verified by
size, and skipped when Orbax cannot restore them. It restores against an abstract target
(`train.abstract_train_state`, built with `nnx.eval_shape`), so the optimizer state comes back as
optax's own structures, not dicts and lists. One writer per run directory: a save also deletes
the temporary directories that killed saves left behind.

`check_run_configs` compares the configs a run is started with against those its run directory's
checkpoints were saved with, before anything is restored, deleted or overwritten: a run
directory that holds another configuration is an error naming each differing setting.

Reading safetensors: `safetensors.numpy` (0.8) raises "data type 'bfloat16' not understood" on
BF16 tensors, which is how LLaMA 3.2 ships, so `read_safetensors` parses the format itself (an
8-byte little-endian header length, a JSON header of name -> dtype, shape, byte offsets, then the
raw bytes) and memory-maps each tensor, with `ml_dtypes.bfloat16` for BF16.

Weight layout: HF stores a Linear as [out, in]; ours are einsum kernels, so q_proj [N*H, D]
becomes q [D, N, H], o_proj [D, N*H] becomes o [N, H, D], gate/up [F, D] become [D, F], down
[D, F] becomes [F, D], lm_head [V, D] becomes [D, V]. q and k rows are already in the
half-split RoPE layout that `model.apply_rope` uses, so no permutation is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from leser_jax.config import ModelConfig
from leser_jax.finite import check_tree
from leser_jax.lora import merge_lora
from leser_jax.model import Llama

_CONFIG_FILE = "config.json"
_PARAMS_DIR = "params"

CHECKPOINTS_DIR = "checkpoints"
_STATE_DIR = "state"
_CONFIGS_FILE = "configs.json"
_TOKENIZER_DIR = "tokenizer"
_COMPLETE_FILE = "COMPLETE.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-step_"
_CORRUPT_PREFIX = "corrupt_"

log = logging.getLogger(__name__)

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_HF_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


# ----------------------------------------------------------------------------- Hugging Face in

def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as read-only, memory-mapped numpy arrays."""
    path = Path(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        count = (end - begin) // dtype.itemsize
        arr = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=(count,))
        tensors[name] = arr.reshape(info["shape"])
    return tensors


def config_from_hf(hf: dict, *, dtype: str | None = None,
                   param_dtype: str | None = None) -> ModelConfig:
    """`ModelConfig` from a Hugging Face LLaMA config.json dict.

    RoPE settings are read from transformers-5 `rope_parameters` or, in older files, from
    top-level `rope_theta` and `rope_scaling`. `param_dtype` defaults to the checkpoint's own
    (`dtype`, or `torch_dtype` in older files), `dtype` to `param_dtype`.
    """
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"not a LLaMA config: model_type={hf.get('model_type')!r}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("only LLaMA with silu MLP and no projection biases is supported")
    rope = dict(hf.get("rope_parameters") or {})
    if not rope:
        rope = dict(hf.get("rope_scaling") or {})
        rope.setdefault("rope_theta", hf.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"unsupported RoPE type {rope_type!r} (supported: default, llama3)")
    scaling = {}
    if rope_type == "llama3":
        scaling = dict(rope_scaling_factor=float(rope["factor"]),
                       rope_low_freq_factor=float(rope["low_freq_factor"]),
                       rope_high_freq_factor=float(rope["high_freq_factor"]),
                       rope_original_max_len=int(rope["original_max_position_embeddings"]))
    ckpt_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    param_dtype = param_dtype or _HF_DTYPES.get(ckpt_dtype, "float32")
    num_heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        ffn_dim=hf["intermediate_size"], rope_theta=float(rope["rope_theta"]), **scaling,
        max_seq_len=hf.get("max_position_embeddings", 2048), norm_eps=hf.get("rms_norm_eps", 1e-5),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=dtype or param_dtype, param_dtype=param_dtype)


def _hf_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(hf_dir / name))
    # LlamaForCausalLM prefixes the trunk with "model."; a bare LlamaModel does not.
    return {k.removeprefix("model."): v for k, v in tensors.items()}


def hf_to_pure_dict(t: dict[str, np.ndarray], c: ModelConfig) -> dict:
    """HF tensor names and [out, in] layouts -> the nested dict of `nnx.to_pure_dict(state)`."""
    D, N, K, H = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
    used = set()

    def get(name):
        if name not in t:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        used.add(name)
        return t[name]

    layers = {}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        layers[i] = {
            "attn_norm": {"scale": get(p + "input_layernorm.weight")},
            "attn": {
                "q": get(p + "self_attn.q_proj.weight").T.reshape(D, N, H),
                "k": get(p + "self_attn.k_proj.weight").T.reshape(D, K, H),
                "v": get(p + "self_attn.v_proj.weight").T.reshape(D, K, H),
                "o": get(p + "self_attn.o_proj.weight").T.reshape(N, H, D),
            },
            "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight")},
            "mlp": {"gate": get(p + "mlp.gate_proj.weight").T,
                    "up": get(p + "mlp.up_proj.weight").T,
                    "down": get(p + "mlp.down_proj.weight").T},
        }
    pure = {"embed": get("embed_tokens.weight"), "layers": layers,
            "final_norm": {"scale": get("norm.weight")}}
    if not c.tie_embeddings:
        pure["lm_head"] = get("lm_head.weight").T
    # A tied checkpoint may still carry lm_head.weight (== embed); old ones carry RoPE buffers.
    extra = [k for k in t if k not in used and k != "lm_head.weight" and "rotary_emb" not in k]
    if extra:
        raise ValueError(f"checkpoint has tensors this model does not use: {extra[:5]}")
    return pure


def fill_model(abstract: Llama, pure: dict) -> Llama:
    """Merge host arrays into an `nnx.eval_shape` model (`abstract_model`), checking every shape.
    `pure` is the nested dict of `nnx.to_pure_dict(state)`, e.g. from `hf_to_pure_dict`."""
    graphdef, state = nnx.split(abstract)
    target = nnx.to_pure_dict(state)
    flat_target = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    flat_pure = dict(jax.tree_util.tree_flatten_with_path(pure)[0])
    if flat_target.keys() != flat_pure.keys():
        raise ValueError("parameter names differ from the model's: "
                         f"{sorted(map(str, flat_target.keys() ^ flat_pure.keys()))[:5]}")
    for key, leaf in flat_target.items():
        if tuple(flat_pure[key].shape) != tuple(leaf.shape):
            raise ValueError(f"{jax.tree_util.keystr(key)}: checkpoint shape "
                             f"{flat_pure[key].shape} != model shape {leaf.shape}")
    arrays = jax.tree.map(lambda x, a: jnp.asarray(np.asarray(x).astype(a.dtype)), pure, target)
    nnx.replace_by_pure_dict(state, arrays)
    return nnx.merge(graphdef, state)


def load_hf_llama(hf_dir: str | os.PathLike, *, dtype: str | None = None,
                  param_dtype: str | None = None) -> tuple[Llama, ModelConfig]:
    """A Hugging Face LLaMA checkpoint directory -> (model, config); see `config_from_hf`."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint dir)")
    config = config_from_hf(json.loads((hf_dir / "config.json").read_text()),
                            dtype=dtype, param_dtype=param_dtype)
    pure = hf_to_pure_dict(_hf_tensors(hf_dir), config)
    return fill_model(abstract_model(config), pure), config


# ----------------------------------------------------------------------------- params checkpoints

def abstract_model(config: ModelConfig) -> Llama:
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def save_params(path: str | os.PathLike, model: Llama, config: ModelConfig | None = None, *,
                overwrite: bool = False, tokenizer=None) -> Path:
    """Writes DIR/config.json and DIR/params/ atomically (temporary directory, then rename).

    `config` defaults to `model.config` (and must equal it when given). `tokenizer`, if given
    (a tokenizer.Tokenizer), saves its files into DIR too, so that DIR alone is an `--init`.
    LoRA adapters are merged into the kernels first (module docstring), and config.json says
    remat=False: remat is how a run trained the model, not part of it (a later run chooses).
    """
    from orbax.checkpoint import v1

    if config is not None and config != model.config:
        raise ValueError("config differs from model.config")
    model = merge_lora(model)
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    check_tree(params, f"parameters to save at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        v1.save(tmp / _PARAMS_DIR, params)
        saved = model.config.replace(remat=False).to_dict()
        (tmp / _CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        _fsync_tree(tmp)
        _write_marker(tmp, {"files": _manifest(tmp)})
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a params checkpoint, without reading the parameters."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    config_file = path / _CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"{path} is not a leser-jax params checkpoint: no {_CONFIG_FILE}")
    try:
        return ModelConfig.from_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{config_file}: not a valid ModelConfig: {e}") from e


def load_params(path: str | os.PathLike) -> tuple[Llama, ModelConfig]:
    """A params checkpoint -> (model, config), restored against `nnx.eval_shape` targets."""
    from orbax.checkpoint import v1

    path = Path(path).absolute()  # Orbax refuses relative paths
    config = load_config(path)
    if not (path / _PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path} is not a leser-jax params checkpoint: no {_PARAMS_DIR}/")
    if (path / _COMPLETE_FILE).exists():  # params saved before checksums have none
        try:
            verify_files(path)
        except CheckpointError as e:
            raise CheckpointError(f"corrupt params checkpoint: {e}") from e
    graphdef, state = nnx.split(abstract_model(config))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nnx.to_pure_dict(state))
    try:
        restored = v1.load(path / _PARAMS_DIR, target)
    except Exception as e:  # orbax raises many types; the caller needs to know which dir failed
        raise ValueError(f"could not restore parameters from {path / _PARAMS_DIR}: {e}") from e
    check_tree(restored, f"parameters loaded from {path}")
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state), config


def init_dir(path: str | os.PathLike) -> Path:
    """The params checkpoint that `--init=DIR` names: DIR, or DIR/params for a run directory."""
    path = Path(path)
    if not (path / _CONFIG_FILE).exists() and (path / _PARAMS_DIR / _CONFIG_FILE).exists():
        return path / _PARAMS_DIR
    return path


def params_digest(path: str | os.PathLike) -> str:
    """A SHA-256 that names what `load_init(path)` loads (weights, config, tokenizer): over the
    SHA-256 of every file that its COMPLETE.json records (no weight is read again), or, for a
    checkpoint saved before checksums, over every file's bytes. Two copies of a checkpoint share
    it; another checkpoint, or a changed file, has another (the expansion cache's policy
    identity)."""
    path = init_dir(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    files = verify_files(path, checksums=False)["files"] if (path / _COMPLETE_FILE).exists() else {}
    if files and all(isinstance(e, dict) and "sha256" in e for e in files.values()):
        digests = {rel: e["sha256"] for rel, e in files.items()}
    else:
        digests = {str(f.relative_to(path)): _sha256(f) for f in sorted(path.rglob("*"))
                   if f.is_file() and f.name != _COMPLETE_FILE}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def load_init(path: str | os.PathLike):
    """What `--init=DIR` names -> (model, config, tokenizer).

    DIR is a params checkpoint with the tokenizer's files beside it (pretraining's export,
    tools/convert_hf_llama.py's output), or a run directory holding one at DIR/params
    (`init_dir`).
    """
    from leser_jax.tokenizer import load_tokenizer

    path = init_dir(path)
    model, config = load_params(path)
    try:
        tokenizer = load_tokenizer(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} holds parameters but no tokenizer: {e}") from e
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model's "
                         f"vocab_size is {config.vocab_size}")
    return model, config, tokenizer


# ----------------------------------------------------------------------------- train checkpoints

class CheckpointError(ValueError):
    """A checkpoint is partial or corrupt."""


class CheckpointMismatch(ValueError):
    """A checkpoint's files are intact but it does not restore into this run's state, or the run
    directory's checkpoints were saved with other settings than this run's."""


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (files first, then their directories)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest(root: Path) -> dict[str, dict]:
    """{relative path: {"bytes": size, "sha256": digest}} of every file under root, read back
    from disk (what a later restore will read)."""
    return {str(Path(d, f).relative_to(root)): {"bytes": os.path.getsize(os.path.join(d, f)),
                                                "sha256": _sha256(Path(d, f))}
            for d, _, fs in os.walk(root) for f in fs}


def _write_marker(root: Path, meta: dict) -> None:
    """COMPLETE.json, fsynced with its directory: written last, it makes the directory valid."""
    with open(root / _COMPLETE_FILE, "w") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(root)


def verify_files(path: str | os.PathLike, *, checksums: bool = True) -> dict:
    """COMPLETE.json of a directory whose files are all there with their recorded sizes and,
    if `checksums`, SHA-256 digests (reads every byte). Raises CheckpointError saying what is
    wrong. Entries that are a bare size (checkpoints from before checksums) check the size."""
    path = Path(path)
    marker = path / _COMPLETE_FILE
    if not marker.exists():
        raise CheckpointError(f"{path}: no {_COMPLETE_FILE} (a partial checkpoint)")
    try:
        meta = json.loads(marker.read_text())
        files = {rel: entry if isinstance(entry, dict) else {"bytes": int(entry)}
                 for rel, entry in dict(meta["files"]).items()}
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{marker}: invalid completion marker: {e!r}") from e
    for rel, entry in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: file {rel} is missing")
        if f.stat().st_size != entry.get("bytes"):
            raise CheckpointError(f"{path}: file {rel} has {f.stat().st_size} bytes, "
                                  f"{entry.get('bytes')} were written")
        if checksums and "sha256" in entry and _sha256(f) != entry["sha256"]:
            raise CheckpointError(f"{path}: file {rel} fails its checksum: its bytes changed "
                                  "after it was written")
    meta["checksummed"] = all("sha256" in e for e in files.values())
    return meta


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory of a run, oldest first, valid or not."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), root / name) for name in os.listdir(root)
             if (m := _STEP_DIR.match(name)) and (root / name).is_dir()]
    return sorted(found)


def validate_checkpoint(path: str | os.PathLike, *, checksums: bool = True) -> dict:
    """COMPLETE.json of a train checkpoint whose files verify (`verify_files`) and whose marker
    records the step its directory is named for. Raises CheckpointError saying what is wrong;
    `checksums=False` checks sizes only (cheap: no byte is read)."""
    path = Path(path)
    meta = verify_files(path, checksums=checksums)
    try:
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / _COMPLETE_FILE}: invalid completion marker: {e!r}") from e
    m = _STEP_DIR.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{path / _COMPLETE_FILE}: records step {step}, directory says "
                              f"{int(m.group(1))}")
    return meta


def save_checkpoint(run_dir: str | os.PathLike, state, *, step: int,
                    configs: Mapping[str, object] | None = None, tokenizer=None,
                    keep: int = 3) -> Path:
    """Saves a train state (any pytree of arrays) as RUN_DIR/checkpoints/step_STEP, atomically.

    `configs`: JSON-able dicts (e.g. {"model": config.to_dict(), ...}); `tokenizer`: a
    tokenizer.Tokenizer whose files go along. Keeps the `keep` newest valid checkpoints and the
    one written now. Raises finite.NonFiniteError, writing nothing, if the state holds NaN or
    inf. See the module docstring for the write protocol.
    """
    from orbax.checkpoint import v1

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    check_tree(state, f"train state of step {step}")
    root = (Path(run_dir) / CHECKPOINTS_DIR).absolute()
    root.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(root):  # left by saves that were killed (one writer per run dir)
        if name.startswith(_TMP_PREFIX):
            shutil.rmtree(root / name, ignore_errors=True)
    final = checkpoint_dir(root.parent, step)
    tmp = root / f"{_TMP_PREFIX}{step:08d}-{uuid.uuid4().hex[:8]}"
    try:
        v1.save(tmp / _STATE_DIR, state)
        (tmp / _CONFIGS_FILE).write_text(json.dumps(dict(configs or {}), indent=2, sort_keys=True)
                                         + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp / _TOKENIZER_DIR)
        _fsync_tree(tmp)
        _write_marker(tmp, {"step": int(step), "time": time.time(), "files": _manifest(tmp)})
        if final.exists():  # the same step saved again (a resumed run): swap it out
            old = root / f"{_TMP_PREFIX}old-{step:08d}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root.parent, keep, protect=step)
    return final


def _prune(run_dir: Path, keep: int, protect: int) -> None:
    """Deletes every checkpoint older than the `keep` newest valid ones, except step `protect`
    (the one just written and verified). Validity here is the cheap size check: a damaged
    checkpoint is found, and moved aside, by the restore that meets it."""
    valid = []
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            validate_checkpoint(path, checksums=False)
            valid.append(step)
        except CheckpointError:
            continue
        if len(valid) == keep:
            break
    if len(valid) < keep:
        return
    for step, path in list_checkpoints(run_dir):
        if step < valid[-1] and step != protect:
            shutil.rmtree(path, ignore_errors=True)


def _set_aside(path: Path) -> Path:
    """Renames a damaged checkpoint to corrupt_step_N (never restored, counted or pruned)."""
    target = path.with_name(_CORRUPT_PREFIX + path.name)
    if target.exists():
        target = path.with_name(f"{_CORRUPT_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    path.rename(target)
    return target


def _with_device(abstract):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract)


def restore_checkpoint(path: str | os.PathLike, abstract_state):
    """The train state of one checkpoint, restored against `abstract_state` (same pytree
    structure, leaves with .shape and .dtype). Raises CheckpointError if it is partial or
    corrupt, CheckpointMismatch if its files verify but do not fit `abstract_state`."""
    from orbax.checkpoint import v1

    path = Path(path).absolute()  # Orbax refuses relative paths
    meta = validate_checkpoint(path)
    try:
        return v1.load(path / _STATE_DIR, _with_device(abstract_state))
    except Exception as e:  # orbax raises many types; the caller needs the path and the error
        if meta["checksummed"]:  # the bytes are those written: the target is what differs
            raise CheckpointMismatch(
                f"{path}: its files verify, but Orbax cannot restore it into this run's state "
                f"(was it saved by another configuration?): {type(e).__name__}: {e}") from e
        raise CheckpointError(f"{path}: Orbax could not restore the state: "
                              f"{type(e).__name__}: {e}") from e


def restore_latest(run_dir: str | os.PathLike, abstract_state):
    """(state, path) of the newest checkpoint that restores, or (None, None) if none does.

    Each damaged one is logged as a warning naming its path and why, moved aside to
    corrupt_step_N (module docstring), and the next older one is tried.
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = restore_checkpoint(path, abstract_state)
        except CheckpointError as e:
            aside = _set_aside(path)
            log.warning("skipping checkpoint %s: %s; moved it to %s; trying an older one",
                        path, e, aside.name)
            continue
        log.info("restored step %d from %s", step, path)
        return state, path
    return None, None


def checkpoint_configs(path: str | os.PathLike) -> dict:
    """The configs a checkpoint was saved with (configs.json)."""
    return json.loads((Path(path) / _CONFIGS_FILE).read_text())


def checkpoint_tokenizer(path: str | os.PathLike):
    from leser_jax.tokenizer import load_tokenizer

    return load_tokenizer(Path(path) / _TOKENIZER_DIR)


# ----------------------------------------------------------------------------- resuming a run

_UNSET = "(not set)"
# What a params/ directory's config.json cannot tell apart: it holds merged adapters, no remat.
_PARAMS_IGNORED = ("model.lora_rank", "model.lora_alpha", "model.remat")


def flatten_settings(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are values (so that a refusal names the
    one field that differs: check_run_configs, expansion_cache)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _saved_configs(run_dir: Path) -> tuple[dict | None, str]:
    """(configs, where from): the newest checkpoint's configs.json that reads, else the model
    config of RUN_DIR/params, else (None, "")."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return checkpoint_configs(path), str(path / _CONFIGS_FILE)
        except (OSError, ValueError):
            continue
    params_config = run_dir / _PARAMS_DIR / _CONFIG_FILE
    try:
        return {"model": json.loads(params_config.read_text())}, str(params_config)
    except (OSError, ValueError):
        return None, ""


def check_run_configs(run_dir: str | os.PathLike, configs: Mapping[str, object], *,
                      may_differ: Iterable[str] = (), paths: Iterable[str] = ()) -> None:
    """Raises CheckpointMismatch if RUN_DIR holds a run saved with other settings than
    `configs` (the dicts this run will save with its checkpoints), naming every difference.

    Called before a run restores, deletes or overwrites anything in RUN_DIR. A fresh RUN_DIR
    passes. may_differ: dotted names a resumed run may change without changing what it computes
    ("loop.checkpoint_every"). paths: dotted names of file paths, compared as resolved paths
    ("runs/x" and its absolute form are the same). Without a checkpoint, RUN_DIR/params (a
    finished run whose checkpoints were deleted) is compared on the model alone.
    """
    run_dir = Path(run_dir)
    saved, source = _saved_configs(run_dir)
    if saved is None:
        return
    old = flatten_settings(saved)
    new = flatten_settings(json.loads(json.dumps(dict(configs))))  # tuples -> lists, as saved
    skip = set(may_differ)
    if not source.endswith(_CONFIGS_FILE):  # params/config.json: the model, merged
        new = {k: v for k, v in new.items() if k.startswith("model.")}
        skip.update(_PARAMS_IGNORED)
    path_keys = set(paths)

    def same(key, a, b):
        if key in path_keys and isinstance(a, str) and isinstance(b, str):
            return os.path.realpath(a) == os.path.realpath(b)
        return a == b

    differ = [f"{key}: {old.get(key, _UNSET)!r} there, {new.get(key, _UNSET)!r} now"
              for key in sorted(old.keys() | new.keys())
              if key not in skip and not same(key, old.get(key, _UNSET), new.get(key, _UNSET))]
    if differ:
        raise CheckpointMismatch(
            f"{run_dir} holds a run with other settings (from {source}):\n  "
            + "\n  ".join(differ) + "\nNothing was changed there. Rerun with those settings to "
            "resume it, or use another run directory.")
