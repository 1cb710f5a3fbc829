"""Supervised warm-up: fine-tunes a pretrained policy on teacher examples, then checks its format.

    python -m experiments.warmup --preset=demo --dataset=synthetic --init=runs/demo/pretrain --teacher_file=runs/demo/teacher.jsonl --index=runs/demo/index --run_dir=runs/demo/warmup

LESER's warm-up before GRPO, so that the answer format is stable when RL starts. Each example is
render_prompt(query, context) + render_answer(think, expansions) + eos, with the loss on the
answer and its eos only (leser_jax.sft, lm_data). Lengths are padded to multiples of --bucket,
so the step compiles once per bucket. --init is a params checkpoint with its tokenizer:
experiments.pretrain's RUN_DIR (or RUN_DIR/params), or tools/convert_hf_llama.py's output for
real LLaMA weights (with --lora_rank=R: adapters trained on the frozen --init model, merged into
RUN_DIR/params at the end). --teacher_file is JSONL {"query", "think", "expansions"} from
experiments.teacher or from elsewhere (e.g. a stronger LLM); bad lines are reported with their
line numbers and skipped, as are queries of the dev and test splits.

Resumes from RUN_DIR/checkpoints like pretraining. At the end: writes RUN_DIR/params (the
policy for GRPO's --init) and samples one answer per DEV query at --temperature (GRPO's 0.9),
reporting the share that parse_answer accepts in RUN_DIR/format.json
(experiments.measure_format does the same for any checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags, logging
from flax import nnx

from experiments import cli, common, configs
from leser_jax import checkpoint, lm_data, run_log, sampler, sft
from leser_jax.model import Llama
from leser_jax.optim import make_optimizer
from leser_jax.prompts import prompt_for
from leser_jax.teacher import read_examples
from leser_jax.train import masked_lm_loss, train_loop

common.define_preset_flag()
common.define_dataset_flags()
common.define_optim_flags()
common.define_mesh_flags()
common.define_lora_flags()
common.define_context_flags()
# --steps, --batch_size, --lr, --lora_rank, ...: the preset's warm-up, one by one.
STAGE_FLAGS = cli.define_flags(configs.Warmup, lambda: common.preset().warmup)
flags.DEFINE_string("run_dir", None, "Output folder of this stage.", required=True)
flags.DEFINE_string("init", None, "Pretrained params checkpoint (with tokenizer), or a run dir "
                    "holding one at DIR/params.", required=True)
flags.DEFINE_string("teacher_file", None, "Teacher examples, JSONL.", required=True)
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (else built in "
                    "memory).")
flags.DEFINE_integer("bucket", 64, "Sequence lengths are padded to a multiple of this.",
                     lower_bound=1)
flags.DEFINE_integer("max_len", None, "Longest example in tokens (default: the model's "
                     "max_seq_len); longer ones are dropped and counted.", lower_bound=1)
flags.DEFINE_integer("max_examples", 0, "Use at most this many teacher examples (0 = all).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seeds the batch order.", lower_bound=0)
flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of 3 steps here.")
flags.DEFINE_float("temperature", 0.9, "Sampling temperature of the format check (0 = greedy).",
                   lower_bound=0)
flags.DEFINE_integer("max_new_tokens", 192, "Longest sampled answer.", lower_bound=1)
flags.DEFINE_integer("sample_batch", 32, "Prompts per sampler call.", lower_bound=1)
FLAGS = flags.FLAGS



def check_format(model, tokenizer, engine, queries, context, *, temperature, max_new_tokens,
                 batch_size, seed) -> tuple[dict, list[str]]:
    """Samples one answer per query and reports the parse rate (shared with measure_format)."""
    prompts = [prompt_for(q, engine, context) for q in queries]
    texts, timing = sft.sample_answers(
        model, tokenizer, prompts, batch_size=batch_size, seed=seed,
        config=sampler.SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens))
    report = sft.format_report(texts)
    report.update(timing, temperature=temperature, max_new_tokens=max_new_tokens)
    return report, texts


def main(argv):
    del argv
    run_log.quiet_library_logs()
    mesh = common.setup_mesh()  # None on one device
    start = time.perf_counter()
    stage = cli.override(common.preset().warmup, STAGE_FLAGS)
    steps, batch_size = stage.steps, stage.batch_size
    optim, loop = common.optim_and_loop(stage)
    context = common.context_config()
    for name, c in (("optim", optim), ("loop", loop), ("context", context)):
        common.log_config(name, c)

    init_model, _, tokenizer = checkpoint.load_init(FLAGS.init)
    init_model = common.training_model(init_model, stage.lora_rank)
    model_config = init_model.config
    common.log_config("model", model_config)
    max_len = cli.preset_or(FLAGS.max_len, model_config.max_seq_len)
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    held_out = {q.text for q in catalog.split("dev") + catalog.split("test")}
    examples, report = read_examples(FLAGS.teacher_file, exclude_queries=held_out)
    print(report.summary())
    if FLAGS.max_examples:
        examples = examples[:FLAGS.max_examples]
    t = time.perf_counter()
    encoded, dropped = sft.encode_examples(examples, tokenizer, engine, context, max_len=max_len)
    if not encoded:
        raise ValueError(f"no usable example in {FLAGS.teacher_file}")
    lengths = [len(e) for e in encoded]
    answer = [len(e) - e.prompt_len for e in encoded]
    print(f"{len(encoded):,} examples ({dropped} longer than {max_len} dropped): "
          f"{sum(lengths) / len(lengths):.0f} tokens on average, of which answer "
          f"{sum(answer) / len(answer):.0f}, longest {max(lengths)}; {steps} steps x {batch_size} "
          f"= {steps * batch_size / len(encoded):.2f} epochs (encoded in "
          f"{time.perf_counter() - t:.1f} s)")
    # With the prompt's targets at weight 0, the head runs over the answers' columns alone.
    window = None if stage.prompt_weight else lm_data.answer_window(encoded)
    data = {"teacher_file": FLAGS.teacher_file, "examples": len(encoded), "bad_lines":
            len(report.bad), "dropped_long": dropped, "batch_size": batch_size,
            "bucket": FLAGS.bucket, "max_len": max_len, "seed": FLAGS.seed, "init": FLAGS.init,
            "prompt_weight": stage.prompt_weight, "window": window}
    logging.info("data: %s", json.dumps(data))

    def batch_fn(step):
        batch, tokens = lm_data.example_batch(encoded, batch_size, FLAGS.seed, step,
                                              bucket=FLAGS.bucket, pad_id=tokenizer.pad_id,
                                              prompt_weight=stage.prompt_weight,
                                              window=window)
        return batch, {"tokens": tokens, "seq_len": batch["inputs"].shape[1]}

    tx, schedule = make_optimizer(optim)
    model, _ = train_loop(
        FLAGS.run_dir, model_fn=lambda: init_model,
        abstract_fn=lambda: Llama(model_config, rngs=nnx.Rngs(0)), tx=tx,
        schedule=schedule, loss_fn=masked_lm_loss, batch_fn=batch_fn, loop=loop,
        configs={"model": model_config.to_dict(), "optim": dataclasses.asdict(optim),
                 "loop": dataclasses.asdict(loop), "context": dataclasses.asdict(context),
                 "data": data},
        tokenizer=tokenizer, mesh=mesh,
        line=("loss",) + ("target_loss",) * bool(stage.prompt_weight) + (
            "lr", "grad_norm", "seq_len", "tok_s", "step_s"))
    checkpoint.save_params(os.path.join(FLAGS.run_dir, "params"), model, overwrite=True,
                           tokenizer=tokenizer)
    train_s = time.perf_counter() - start

    dev = [q.text for q in catalog.split("dev")]
    dev = dev[:stage.eval_queries] if stage.eval_queries else dev
    result, texts = check_format(model, tokenizer, engine, dev, context,
                                 temperature=FLAGS.temperature,
                                 max_new_tokens=FLAGS.max_new_tokens,
                                 batch_size=FLAGS.sample_batch, seed=FLAGS.seed)
    result.update(split="dev", train_seconds=round(train_s, 1),
                  samples_shown=[{"query": q, "completion": c} for q, c in zip(dev, texts)][:5])
    with open(os.path.join(FLAGS.run_dir, "format.json"), "w") as f:
        json.dump(result, f, indent=1)
    for s in result["samples_shown"][:3]:
        print(f"\n{s['query']!r}\n  {s['completion']}")
    print(f"\nformat on {result['samples']} dev queries at T={FLAGS.temperature}: "
          f"{result['parse_rate']:.1%} parse ({result['reasons']}); "
          f"{result['mean_expansions']:.2f} expansions per valid answer; sampled "
          f"{result['new_tok_s']:,.0f} tok/s; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli.run(main)
