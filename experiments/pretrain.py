"""Pretrains the policy from scratch on the catalog's language (next-token prediction).

    python -m experiments.pretrain --preset=demo --dataset=synthetic --run_dir=runs/demo/pretrain

The paper starts from a pretrained LLaMA 3.2; on a CPU without one, the model first learns the
catalog's own text: product titles, attributes and descriptions, and the TRAIN split's queries
(dev and test queries stay unseen; written as JSON lists, so the model learns the answer's list
syntax), packed into fixed-length rows with eos between documents (leser_jax.lm_data). Users
with real LLaMA weights skip this stage and pass the converted checkpoint to
experiments.warmup --init.

Writes into --run_dir: tokenizer/ (SentencePiece BPE trained on the same text plus the prompt's
instruction, if the run dir has none), checkpoints/ (resumed from automatically: rerun the same
command after a crash), metrics.jsonl and tb/, and params/, the final parameters with the
tokenizer, which is what `experiments.warmup --init` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging
from flax import nnx

from experiments import cli, common, configs
from leser_jax import checkpoint, lm_data, run_log
from leser_jax.config import ModelConfig, flops_per_token, param_count
from leser_jax.model import Llama
from leser_jax.optim import make_optimizer
from leser_jax.prompts import INSTRUCTION, AnswerFormat
from leser_jax.tokenizer import SENTENCEPIECE_FILE, load_tokenizer, train_sentencepiece
from leser_jax.train import masked_lm_loss, train_loop

common.define_preset_flag()
common.define_dataset_flags()
common.define_optim_flags()
common.define_mesh_flags()
# --model, --steps, --batch_size, --seq_len, --lr, ...: the preset's pretraining, one by one.
STAGE_FLAGS = cli.define_flags(configs.Pretrain, lambda: common.preset().pretrain)
flags.DEFINE_string("run_dir", None, "Output folder of this stage.", required=True)
flags.DEFINE_integer("vocab_size", None, "SentencePiece vocabulary (default: the model's).",
                     lower_bound=1)
flags.DEFINE_bool("fit_vocab", True, "Shrink the model's vocab_size to the tokenizer's when "
                  "SentencePiece finds fewer pieces than asked.")
flags.DEFINE_integer("seed", 0, "Seeds the init, the tokenizer, the document order and batches.",
                     lower_bound=0)
flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of 3 steps here.")
FLAGS = flags.FLAGS


def tokenizer_texts(documents: list[str]) -> list[str]:
    # The instruction is repeated so that its words become tokens: it opens every prompt, and
    # spelled out in bytes it would cost the warm-up and GRPO hundreds of tokens per example.
    return documents + [INSTRUCTION.format(m_max=AnswerFormat().m_max)] * 200


def main(argv):
    del argv
    run_log.quiet_library_logs()
    if common.preset().pretrain is None:
        raise app.UsageError(f"the {FLAGS.preset} preset starts from converted weights "
                             "(tools.convert_gguf_llama), not from pretraining")
    mesh = common.setup_mesh()  # None on one device
    start = time.perf_counter()
    stage = cli.override(common.preset().pretrain, STAGE_FLAGS)
    model_config: ModelConfig = getattr(ModelConfig, stage.model)()
    steps, batch_size, seq_len = stage.steps, stage.batch_size, stage.seq_len
    optim, loop = common.optim_and_loop(stage)
    common.log_config("model", model_config)
    common.log_config("optim", optim)
    common.log_config("loop", loop)
    data = {"dataset": FLAGS.dataset, "batch_size": batch_size, "seq_len": seq_len,
            "seed": FLAGS.seed}
    logging.info("data: %s", json.dumps(data))

    catalog = common.load_catalog()
    documents = lm_data.catalog_documents(catalog, seed=FLAGS.seed)
    tok_dir = os.path.join(FLAGS.run_dir, "tokenizer")
    if not os.path.exists(os.path.join(tok_dir, SENTENCEPIECE_FILE)):
        t = time.perf_counter()
        vocab = cli.preset_or(FLAGS.vocab_size, model_config.vocab_size)
        train_sentencepiece(tokenizer_texts(documents), vocab_size=vocab,
                            seed=FLAGS.seed).save(tok_dir)
        logging.info("trained the tokenizer (vocab <= %d) in %.1f s", vocab, time.perf_counter() - t)
    tokenizer = load_tokenizer(tok_dir)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, model vocab_size is "
                         f"{model_config.vocab_size}")
    fitted = tokenizer.vocab_size
    if FLAGS.fit_vocab and fitted < model_config.vocab_size:
        # A small catalog gives fewer pieces than asked (hard_vocab_limit=False); the rows past
        # them would never be trained, their logits would still cost a matmul on every token,
        # and a sampler could draw an id that the tokenizer cannot decode. Not rounded up to a
        # multiple of 128 for the same last reason.
        logging.info("tokenizer has %d pieces: model vocab_size %d -> %d", tokenizer.vocab_size,
                     model_config.vocab_size, fitted)
        model_config = model_config.replace(vocab_size=fitted)
        common.log_config("model", model_config)

    t = time.perf_counter()
    rows = lm_data.pack([tokenizer.encode(d) for d in documents], seq_len, tokenizer.eos_id,
                        seed=FLAGS.seed)  # [R, T + 1]
    epochs = steps * batch_size / len(rows)
    print(f"corpus: {len(documents):,} documents, {rows.size:,} tokens in {len(rows):,} rows of "
          f"{seq_len}; {steps} steps x {batch_size} rows = {epochs:.2f} epochs "
          f"(tokenized in {time.perf_counter() - t:.1f} s)")
    print(f"model: {param_count(model_config) / 1e6:.1f}M parameters, "
          f"{flops_per_token(model_config, seq_len) / 1e6:.1f} MFLOP per trained token")

    def batch_fn(step):
        return lm_data.packed_batch(rows, batch_size, FLAGS.seed, step), {
            "tokens": batch_size * seq_len}

    tx, schedule = make_optimizer(optim)
    model, _ = train_loop(
        FLAGS.run_dir, model_fn=lambda: Llama(model_config, rngs=nnx.Rngs(FLAGS.seed)),
        abstract_fn=lambda: Llama(model_config, rngs=nnx.Rngs(0)), tx=tx,
        schedule=schedule, loss_fn=masked_lm_loss, batch_fn=batch_fn, loop=loop,
        configs={"model": model_config.to_dict(), "optim": dataclasses.asdict(optim),
                 "loop": dataclasses.asdict(loop), "data": data},
        tokenizer=tokenizer, mesh=mesh)
    out = checkpoint.save_params(os.path.join(FLAGS.run_dir, "params"), model, overwrite=True,
                                 tokenizer=tokenizer)
    print(f"wrote {out} (use it as experiments.warmup --init) in "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli.run(main)
