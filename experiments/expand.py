"""Expands a query log with a trained policy into the expansion cache (the paper's head queries).

    python -m experiments.expand --preset=demo --policy=runs/demo/grpo --index=runs/demo/index --queries=LOG.csv --out=runs/demo/expansions.sqlite

--queries: a CSV file with a header naming `query` and `count` columns, or a text file of one
query per line (leser_jax/expand.py: spellings that normalise alike are one query, their counts
summed; the most frequent first). --split=test instead expands the dataset's own split (count 1
each, the catalog's order): what `experiments.evaluate` measured, for comparing with the search
service (experiments/serve.py).

The policy is shown the prompt it was trained with (the dataset and --index give each query its
context; the preset's context, checked against the policy's run), decodes greedily unless
--temperature, and each answer is parsed with the reward's parser (an invalid answer stores no
expansion and its rejection reason). Batches of --batch_size queries go through the jitted
sampler, padded to its length and batch buckets. A batch is one transaction: a killed run
resumes where it stopped, with the same rows as an uninterrupted one; a cache made with other
settings (policy, context, sampling, batch size, seed, catalog) is refused. Prints the queries/s
of the sampler calls and the statuses (leser_jax/expansion_cache.py for the file format).
"""

from __future__ import annotations

import time

from absl import app, flags
from tqdm import tqdm

from experiments import cli, common
from leser_jax import evaluation, run_log
from leser_jax.expand import cache_settings, expand_log, order_queries, read_query_log
from leser_jax.expansion_cache import ExpansionCache, SettingsMismatch
from leser_jax.prompts import AnswerFormat
from leser_jax.sampler import SamplingConfig

common.define_preset_flag()
common.define_dataset_flags()
common.define_context_flags()
flags.DEFINE_string("policy", None, "A trained policy: a params checkpoint with its tokenizer, "
                    "or a run dir holding one at DIR/params.", required=True)
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (else built in "
                    "memory).")
flags.DEFINE_string("queries", None, "Query log: CSV with query and count columns, or one query "
                    "per line.")
flags.DEFINE_enum("split", None, ["train", "dev", "test"], "Instead of --queries: the dataset's "
                  "queries of this split.")
flags.DEFINE_string("out", None, "The cache file (SQLite); a rerun resumes it.", required=True)
flags.DEFINE_integer("batch_size", 32, "Queries per sampler call.", lower_bound=1, upper_bound=64)
flags.DEFINE_integer("max_new_tokens", None, "Longest answer (default: the preset's).",
                     lower_bound=1)
flags.DEFINE_float("temperature", 0.0, "0 = greedy; else sampled at this temperature.",
                   lower_bound=0)
flags.DEFINE_integer("seed", 0, "Sampling seed (batch b samples with fold_in(seed, b)).",
                     lower_bound=0)
flags.DEFINE_bool("drop_duplicates", False, "Drop repeated expansions instead of rejecting the "
                  "answer (evaluation's +dedup twin; default: the reward's strict parse).")
flags.DEFINE_integer("num_queries", 0, "Expand the first this many queries (0 = all).",
                     lower_bound=0)
flags.register_multi_flags_validator(
    ["queries", "split"], lambda f: (f["queries"] is None) != (f["split"] is None),
    "give exactly one of --queries=FILE and --split=NAME")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    run_log.quiet_library_logs()
    start = time.perf_counter()
    context = common.context_config()
    common.log_config("context", context)
    sampling = SamplingConfig(temperature=FLAGS.temperature, max_new_tokens=cli.preset_or(
        FLAGS.max_new_tokens, common.preset().max_new_tokens))
    catalog = common.load_catalog()
    if FLAGS.split:
        queries = order_queries([(q.text, 1) for q in catalog.split(FLAGS.split)])
    else:
        try:
            queries = read_query_log(FLAGS.queries)
        except (OSError, ValueError) as e:
            raise app.UsageError(f"--queries={FLAGS.queries}: {e}")
    queries = queries[:FLAGS.num_queries] if FLAGS.num_queries else queries
    engine = common.open_engine(catalog, FLAGS.index)
    answer = AnswerFormat(drop_duplicates=FLAGS.drop_duplicates)
    system = evaluation.policy_system(FLAGS.policy, engine, context=context, sampling=sampling,
                                      answer=answer, seed=FLAGS.seed)
    settings = cache_settings(FLAGS.policy, system, catalog=catalog.name,
                              products=len(catalog.products), batch_size=FLAGS.batch_size,
                              seed=FLAGS.seed)
    try:
        cache = ExpansionCache.open_for_writing(FLAGS.out, settings)
    except SettingsMismatch as e:
        raise SystemExit(f"experiments.expand: {e}")  # the message alone, no traceback
    with tqdm(total=len(queries), desc="expand", unit="query") as bar:
        stats = expand_log(cache, system.complete, queries, batch_size=FLAGS.batch_size,
                           answer=answer, progress=bar.update)
    total = len(cache)
    cache.close()
    print(f"{stats.expanded:,} queries expanded in {stats.seconds:.1f} s: "
          f"{stats.queries_per_s:.1f} queries/s, {stats.steady_queries_per_s:.1f} without the "
          f"first call of each batch size (it compiles); {stats.batches} sampler calls of up to "
          f"{FLAGS.batch_size}; {stats.skipped:,} already in the cache; statuses "
          f"{dict(stats.statuses.most_common())}")
    print(f"{FLAGS.out}: {total:,} queries; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    cli.run(main)
