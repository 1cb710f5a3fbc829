"""Serves LESER's merged ranking over HTTP: head queries expanded from the cache, tail queries
online with --policy.

    python -m experiments.serve --preset=demo --index=runs/demo/index --cache=runs/demo/expansions.sqlite --policy=runs/demo/grpo --port=8080
    curl 'http://127.0.0.1:8080/search?q=office+chair&k=10'

Answers GET /search?q=...&k=... with JSON: the first k of the reward's merged ranking M(Y) of
the original query's and each expansion's top --reward_k results (as evaluation ranks them), the
expansions and where they came from (cache, generated, none), and timings; GET /health with the
cache's size and the online batcher's counters (leser_jax/search_service.py). Without --policy,
a cache miss is answered with the original query's results. With it, the policy (shown its
trained prompt: the preset's context, checked against its run) expands misses online: requests
that wait together share one sampler call of up to --batch_size queries, gathered for at most
--max_wait_ms; a request whose expansions would come after --latency_budget_ms gets the original
query's results (status "budget"), and its expansions, once generated, serve the next request.
Bound to 127.0.0.1 unless --host says otherwise; --port=0 takes a free port (printed, and
written to --port_file if given). Stops on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from absl import flags

from experiments import cli, common
from leser_jax import checkpoint, evaluation, run_log
from leser_jax.expansion_cache import ExpansionCache
from leser_jax.online_expander import OnlineExpander
from leser_jax.prompts import AnswerFormat
from leser_jax.reward import RewardConfig
from leser_jax.sampler import SamplingConfig
from leser_jax.search_service import SearchService, ServiceConfig, make_server

common.define_preset_flag()
common.define_dataset_flags()
common.define_context_flags()
flags.DEFINE_string("index", None, "Index folder from experiments.build_index (else built in "
                    "memory).")
flags.DEFINE_string("cache", None, "Expansion cache from experiments.expand.", required=True)
flags.DEFINE_string("policy", None, "A trained policy (params dir or its run dir) that expands "
                    "cache misses online; none: misses get the original query's results.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8080, "Port (0: a free one, printed).", lower_bound=0,
                     upper_bound=65535)
flags.DEFINE_string("port_file", None, "Write the bound port to this file once serving.")
flags.DEFINE_integer("reward_k", RewardConfig().k, "Results per search [K], as evaluation's "
                     "--reward_k: the merged ranking then equals the one evaluation measured.",
                     lower_bound=1)
flags.DEFINE_integer("k", ServiceConfig.default_k, "Results a response holds when the request "
                     "names no k.", lower_bound=1)
flags.DEFINE_integer("max_k", ServiceConfig.max_k, "Largest k a request may ask for.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Online: most queries per sampler call.", lower_bound=1,
                     upper_bound=64)
flags.DEFINE_float("max_wait_ms", 5.0, "Online: longest a query waits for others to share its "
                   "sampler call.", lower_bound=0)
flags.DEFINE_float("latency_budget_ms", ServiceConfig.latency_budget_ms, "Online: longest a "
                   "request waits for its expansions before it is answered without them.",
                   lower_bound=0)
flags.DEFINE_integer("max_new_tokens", None, "Online: longest answer (default: the preset's).",
                     lower_bound=1)
flags.DEFINE_float("temperature", 0.0, "Online: 0 = greedy; else sampled.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Online: sampling seed.", lower_bound=0)
flags.DEFINE_bool("warmup", True, "Online: compile the sampler for every batch bucket before "
                  "serving (else the first requests pay for it).")
FLAGS = flags.FLAGS


def batch_buckets(batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to batch_size: a lone request is sampled as 1 row, not batch_size."""
    sizes, b = [], 1
    while b < batch_size:
        sizes.append(b)
        b *= 2
    return (*sizes, batch_size)


def online_expander(context, engine, catalog, cache_settings: dict) -> OnlineExpander:
    """--policy as an OnlineExpander, warmed up on the dataset's first queries."""
    sampling = SamplingConfig(temperature=FLAGS.temperature, max_new_tokens=cli.preset_or(
        FLAGS.max_new_tokens, common.preset().max_new_tokens))
    if cache_settings.get("policy_sha256") != checkpoint.params_digest(FLAGS.policy):
        logging.warning("--policy=%s is not the policy that wrote the cache (%s): head and "
                        "tail queries are expanded by different policies", FLAGS.policy,
                        cache_settings.get("policy_path"))
    buckets = batch_buckets(FLAGS.batch_size)
    # Parsed as the cache's answers were (its --drop_duplicates), so head and tail agree.
    answer = AnswerFormat(**cache_settings.get("answer", {}))
    system = evaluation.policy_system(FLAGS.policy, engine, context=context, sampling=sampling,
                                      answer=answer, seed=FLAGS.seed, batch_buckets=buckets)
    expander = OnlineExpander(system.complete, batch_size=FLAGS.batch_size,
                              max_wait_s=FLAGS.max_wait_ms / 1000, answer=system.answer)
    if FLAGS.warmup:
        start = time.perf_counter()
        expander.warm_up([q.text for q in catalog.queries[:FLAGS.batch_size]], buckets)
        print(f"sampler compiled for batches of {buckets} in {time.perf_counter() - start:.0f} s;"
              f" a call of {FLAGS.batch_size} takes {expander.stats()['call_ms']} ms", flush=True)
    return expander.start()


def main(argv):
    del argv
    run_log.quiet_library_logs()
    context = common.context_config()
    config = ServiceConfig(search_k=FLAGS.reward_k, default_k=FLAGS.k, max_k=FLAGS.max_k,
                           latency_budget_ms=FLAGS.latency_budget_ms)
    try:
        cache = ExpansionCache.open(FLAGS.cache)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"experiments.serve: --cache={FLAGS.cache}: {e}")  # no traceback
    settings = cache.settings()
    if settings.get("context") != dataclasses.asdict(context):
        logging.warning("the cache's expansions were made with context %s, this service's is %s",
                        settings.get("context"), dataclasses.asdict(context))
    catalog = common.load_catalog()
    engine = common.open_engine(catalog, FLAGS.index)
    expander = online_expander(context, engine, catalog, settings) if FLAGS.policy else None
    server = make_server(SearchService(engine, cache, expander, config), FLAGS.host, FLAGS.port)
    port = server.server_address[1]
    if FLAGS.port_file:
        with open(FLAGS.port_file, "w") as f:
            f.write(f"{port}\n")
    print(f"serving http://{FLAGS.host}:{port}/search?q=...&k=... ({len(cache):,} cached "
          f"queries; misses {'expanded online' if expander else 'not expanded'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if expander is not None:
            expander.close()
        cache.close()


if __name__ == "__main__":
    cli.run(main)
