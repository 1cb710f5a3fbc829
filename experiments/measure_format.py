"""Measures format validity: the share of sampled answers that parse_answer accepts.

    python -m experiments.measure_format --init=runs/demo/warmup --dataset=synthetic --index=runs/demo/index --split=dev

Samples one answer per query of --split at --temperature (GRPO's 0.9) from any params checkpoint
with its tokenizer (a stage's RUN_DIR or RUN_DIR/params, or a converted LLaMA) or a GGUF file,
with the prompt GRPO uses (in the model's chat template if its tokenizer has one), and prints the
parse rate and the rejection reasons (prompts.REJECTION_REASONS). The warm-up's target on the
demo preset is >= 95% on dev queries. --out writes the report as JSON.

The paper's format check of the pretrained model before warm-up, zero-shot and with k worked
examples as earlier chat turns (teacher answers to train queries, sft.few_shot_turns: from
--teacher_file, else written by the teacher with --relevance):

    python -m tools.convert_gguf_llama --out=runs/smollm2
    python -m experiments.measure_format --init=runs/smollm2 --dataset=synthetic --index=runs/demo/index --split=dev --num_queries=30 --context_k=5 --context_max_tokens=128 --temperature=0 --examples=2 --teacher_file=runs/demo/teacher.jsonl
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from experiments import cli, common
from leser_jax import policy, run_log, sampler, sft
from leser_jax.prompts import prompt_for
from leser_jax.relevance import RelevanceModel
from leser_jax.teacher import Teacher, TeacherConfig

common.define_preset_flag()
common.define_dataset_flags()
common.define_context_flags()
flags.DEFINE_string("init", None, "Params checkpoint with tokenizer, a run dir with DIR/params, "
                    "or a GGUF file.", required=True)
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (else built in "
                    "memory).")
flags.DEFINE_enum("split", "dev", ["train", "dev", "test"], "Queries to sample for.")
flags.DEFINE_integer("num_queries", 0, "Sample for the first this many queries (0 = all).",
                     lower_bound=0)
flags.DEFINE_float("temperature", 0.9, "Sampling temperature (0 = greedy).", lower_bound=0)
flags.DEFINE_integer("max_new_tokens", 192, "Longest sampled answer.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Prompts per sampler call.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed.", lower_bound=0)
flags.DEFINE_integer("show", 5, "Completions printed (failures first).", lower_bound=0)
flags.DEFINE_string("out", None, "Write the report here as JSON.")
common.define_few_shot_flags("examples")
flags.DEFINE_string("relevance", None, "Without --teacher_file: the relevance model "
                    "(experiments.train_relevance) with which the teacher writes the examples.")
flags.DEFINE_integer("teacher_max_expansions", None, "Teacher: most expansions per example "
                     "answer (default: the preset's, the warm-up data's setting).", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    run_log.quiet_library_logs()
    start = time.perf_counter()
    model, config, tokenizer = policy.load_policy(FLAGS.init)
    common.log_config("model", config)
    context = common.context_config()
    common.log_config("context", context)
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    queries = [q.text for q in catalog.split(FLAGS.split)]
    queries = queries[:FLAGS.num_queries] if FLAGS.num_queries else queries
    prompts = [prompt_for(q, engine, context) for q in queries]
    teacher = None
    if FLAGS.examples and not FLAGS.teacher_file:
        if not FLAGS.relevance:
            raise app.UsageError("--examples needs --teacher_file or --relevance (for the teacher)")
        teacher = Teacher(engine, RelevanceModel.load(FLAGS.relevance, engine), context=context,
                          config=TeacherConfig(max_expansions=cli.preset_or(
                              FLAGS.teacher_max_expansions,
                              common.preset().teacher_max_expansions)))
    examples = common.worked_examples(FLAGS.examples, catalog=catalog, engine=engine,
                                      context=context, teacher_file=FLAGS.teacher_file,
                                      teacher=teacher, seed=FLAGS.examples_seed)
    texts, timing = sft.sample_answers(
        model, tokenizer, prompts, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        config=sampler.SamplingConfig(temperature=FLAGS.temperature,
                                      max_new_tokens=FLAGS.max_new_tokens), examples=examples)
    report = sft.format_report(texts)
    report.update(timing, init=FLAGS.init, split=FLAGS.split, temperature=FLAGS.temperature,
                  chat_template=tokenizer.turn_markers is not None,
                  examples=[{"prompt": t.prompt, "answer": t.answer} for t in examples],
                  seconds_total=round(time.perf_counter() - start, 1))
    failures = [(q, t) for q, t in zip(queries, texts) if not sft.format_report([t])["parsed"]]
    shown = (failures + [(q, t) for q, t in zip(queries, texts)])[:FLAGS.show]
    for q, t in shown:
        print(f"\n{q!r}\n  {t}")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({**report, "completions": [{"query": q, "completion": t}
                                                 for q, t in zip(queries, texts)]}, f, indent=1)
    print(f"\n{FLAGS.init}: {report['parsed']}/{report['samples']} = {report['parse_rate']:.1%} "
          f"of {FLAGS.split} answers at T={FLAGS.temperature} ({len(examples)}-shot) parse; "
          f"rejected: "
          f"{report['reasons'] or 'none'}; {report['mean_expansions']:.2f} expansions per valid "
          f"answer; {timing['new_tok_s']:,.0f} sampled tok/s; {report['seconds_total']} s")


if __name__ == "__main__":
    cli.run(main)
