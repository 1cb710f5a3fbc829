"""Convert a Hugging Face LLaMA checkpoint directory into a leser-jax params checkpoint.

    .venv/bin/python -m tools.convert_hf_llama --hf_dir=/path/to/Llama-3.2-1B-Instruct --out=runs/llama3.2-1b

Reads config.json and model.safetensors (or the shards of model.safetensors.index.json) without
torch, writes OUT/config.json + OUT/params/ (Orbax) with `checkpoint.save_params`, and copies
the tokenizer (tokenizer.json and its config) beside them, so that launchers load model and
tokenizer from the one directory with `--init=OUT`. Logs the resolved `ModelConfig`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from absl import flags, logging

from experiments import cli
from leser_jax import checkpoint
from leser_jax.config import param_count

flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory (config.json, *.safetensors).")
flags.DEFINE_string("out", None, "Output directory for the params checkpoint.")
flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16", "float16"],
                  "Store parameters in this dtype (default: the checkpoint's own).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                  "Compute dtype recorded in the config (default: param_dtype).")
flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.mark_flags_as_required(["hf_dir", "out"])
FLAGS = flags.FLAGS

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main(argv):
    del argv
    start = time.perf_counter()
    model, config = checkpoint.load_hf_llama(FLAGS.hf_dir, dtype=FLAGS.dtype,
                                             param_dtype=FLAGS.param_dtype)
    logging.info("loaded %s in %.1f s: %.3fB parameters, config %s", FLAGS.hf_dir,
                 time.perf_counter() - start, param_count(config) / 1e9,
                 json.dumps(config.to_dict()))
    out = checkpoint.save_params(FLAGS.out, model, overwrite=FLAGS.overwrite)
    copied = []
    for name in _TOKENIZER_FILES:
        if (Path(FLAGS.hf_dir) / name).exists():
            shutil.copy2(Path(FLAGS.hf_dir) / name, out / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        logging.warning("no tokenizer.json in %s: --init=%s will need a tokenizer from elsewhere",
                        FLAGS.hf_dir, out)
    logging.info("wrote %s (tokenizer files: %s) in %.1f s total", out, copied or "none",
                 time.perf_counter() - start)


if __name__ == "__main__":
    cli.run(main)
