"""Flags that several launchers share: which dataset, and how to load and split it; the
preset; the prompt's context; the reward; the optimizer, mesh and LoRA.

Launchers call `define_dataset_flags()` at import time and `load_catalog()` in main(); the library
itself never reads flags.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from absl import flags

from experiments import cli
from leser_jax.catalog import Catalog, SplitConfig
from leser_jax.config import ModelConfig
from leser_jax.context import ContextConfig
from leser_jax.data import load_dataset, synthetic_vocab
from leser_jax.data.synthetic import MAX_PRODUCTS, MAX_QUERIES, SyntheticConfig
from leser_jax.reward import SIZE_MODES, RewardConfig
from leser_jax.search import SearchEngine

FLAGS = flags.FLAGS


def define_dataset_flags() -> None:
    flags.DEFINE_string("dataset", "synthetic",
                        "'synthetic' (the built-in generator) or a dataset folder in the "
                        "canonical, ESCI or WANDS layout, e.g. ../shared/data/homedepot-search-relevance")
    flags.DEFINE_bool("strict", False, "Fail on the first malformed row instead of skipping it.")
    flags.DEFINE_string("esci_locale", "us", "ESCI only: product_locale to keep (us, es or jp).")
    flags.DEFINE_integer("synthetic_seed", 0, "Synthetic catalog: generator seed.",
                         lower_bound=0)
    # SyntheticConfig's range: a product per category at least; ids hold 6 and 5 digits.
    flags.DEFINE_integer("synthetic_products", 20_000, "Synthetic catalog: number of products.",
                         lower_bound=len(synthetic_vocab.CATEGORIES), upper_bound=MAX_PRODUCTS)
    flags.DEFINE_integer("synthetic_queries", 2_000, "Synthetic catalog: number of queries.",
                         lower_bound=1, upper_bound=MAX_QUERIES)
    flags.DEFINE_float("dev_fraction", 0.1, "Share of queries in the dev split (by hashed id).",
                       lower_bound=0, upper_bound=1)
    flags.DEFINE_float("test_fraction", 0.1, "Share of queries in the test split (by hashed id).",
                       lower_bound=0, upper_bound=1)
    flags.register_multi_flags_validator(
        ["dev_fraction", "test_fraction"], lambda f: f["dev_fraction"] + f["test_fraction"] <= 1,
        "--dev_fraction + --test_fraction must be <= 1 (the rest is the train split)")


def load_split_config() -> SplitConfig:
    # max(0, ...): 1 - 0.9 - 0.1 is -2.8e-17 in floats, which SplitConfig would call negative.
    return SplitConfig(train=max(0.0, 1.0 - FLAGS.dev_fraction - FLAGS.test_fraction),
                       dev=FLAGS.dev_fraction, test=FLAGS.test_fraction)


def load_catalog() -> Catalog:
    """The catalog that the dataset flags name, with its load summary logged."""
    split = load_split_config()
    synthetic = SyntheticConfig(seed=FLAGS.synthetic_seed, num_products=FLAGS.synthetic_products,
                                num_queries=FLAGS.synthetic_queries)
    catalog = load_dataset(FLAGS.dataset, strict=FLAGS.strict, split_config=split,
                           synthetic_config=synthetic, esci_locale=FLAGS.esci_locale)
    logging.info("%s", catalog.report.summary())
    return catalog


def log_config(name: str, config) -> None:
    """Logs a resolved config dataclass as JSON, so every run's log says what it ran."""
    logging.info("%s: %s", name, json.dumps(dataclasses.asdict(config), sort_keys=True))


def open_engine(catalog: Catalog, folder: str | None) -> SearchEngine:
    """The index in `folder` (experiments.build_index's DIR/index) if it was built from this
    catalog, else a fresh in-memory index (with the reason logged): a stale index must not
    silently serve another catalog's rows."""
    if folder and os.path.isdir(folder):
        try:
            engine = SearchEngine.open(folder, catalog)
            logging.info("reusing the index at %s", folder)
            return engine
        except (FileNotFoundError, ValueError) as e:
            logging.warning("not reusing the index at %s (%s): building one in memory", folder, e)
    return SearchEngine.build(catalog)


def define_preset_flag() -> None:
    """--preset: the run's settings (experiments/configs/), read by `preset()`."""
    from experiments import configs

    flags.DEFINE_enum("preset", "demo", list(configs.NAMES), "Run settings: "
                      "experiments/configs/NAME.py (tiny: the tests; demo: `make demo`; cpu, "
                      "smol: Home Depot on 2 cores).")


def preset():
    """The --preset's experiments.configs.Preset."""
    from experiments import configs

    return configs.get(FLAGS.preset)


def define_context_flags() -> None:
    """The prompt's context (read by `context_config`; defaults: the --preset's): the teacher,
    warm-up, GRPO and evaluation must be given the same, or the policy is shown a prompt it
    never learnt."""
    flags.DEFINE_integer("context_k", None, "Products of the query shown as context (default: "
                         "the preset's).", lower_bound=0)
    flags.DEFINE_integer("context_max_tokens", None, "Context token budget (default: the "
                         "preset's).", lower_bound=0)


def context_config() -> ContextConfig:
    context = preset().context
    return dataclasses.replace(context, k=cli.preset_or(FLAGS.context_k, context.k),
                               max_tokens=cli.preset_or(FLAGS.context_max_tokens,
                                                        context.max_tokens))


def define_reward_flags() -> None:
    """The reward's constants (read by `reward_config`; leser_jax/reward.py for the formulas):
    GRPO, the teacher that optimises the same reward, and evaluation's gains."""
    r = RewardConfig()
    flags.DEFINE_enum("reward_version", str(r.version), ["1", "2"], "Reward formulas: 2 (first "
                      "page relevance, expected relevant products) or 1 (to reproduce it).")
    flags.DEFINE_enum("reward_size", r.size, list(SIZE_MODES), "What r_size counts (version 2): "
                      "expected relevant products, all products, or hits (rel >= tau).")
    flags.DEFINE_integer("reward_k", r.k, "Results per search [K].", lower_bound=1)
    flags.DEFINE_integer("reward_page", r.page, "First-page length of r_rel [k] (version 2).",
                         lower_bound=1)
    flags.DEFINE_float("reward_tau", r.tau, "Relevance from which a product is a hit [tau].",
                       upper_bound=1)
    cli.exclusive_bounds("reward_tau", lower=0)
    flags.DEFINE_float("reward_lambda", r.lam, "Weight of the coverage term r_size [lambda].",
                       lower_bound=0)
    flags.DEFINE_float("reward_eps", r.eps, "Floor of r_rel's denominator.")
    cli.exclusive_bounds("reward_eps", lower=0)
    flags.DEFINE_float("reward_size_floor", r.size_floor, "Floor of r_size's denominator "
                       "(version 2).")
    cli.exclusive_bounds("reward_size_floor", lower=0)


def reward_config() -> RewardConfig:
    return RewardConfig(version=int(FLAGS.reward_version), size=FLAGS.reward_size,
                        k=FLAGS.reward_k, page=FLAGS.reward_page, tau=FLAGS.reward_tau,
                        lam=FLAGS.reward_lambda, eps=FLAGS.reward_eps,
                        size_floor=FLAGS.reward_size_floor)


def define_optim_flags() -> None:
    """Optimizer flags that every training launcher shares (read by `optim_and_loop`)."""
    flags.DEFINE_bool("master_fp32", True,
                      "Keep a float32 master copy of bf16/fp16 parameters and float32 AdamW "
                      "moments (optim.with_float32_master); no effect on float32 models.")


def define_mesh_flags() -> None:
    """Device mesh and multi-host flags (read by `setup_mesh`)."""
    flags.DEFINE_integer("mesh_data", 0, "Data-parallel replicas of the device mesh "
                         "(0: devices / mesh_fsdp).", lower_bound=0)
    flags.DEFINE_integer("mesh_fsdp", 0, "Devices each parameter is split over (0: all devices "
                         "/ mesh_data; both 0: pure FSDP over every device).", lower_bound=0)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a multi-host "
                        "run (default: $JAX_COORDINATOR_ADDRESS; unset: one process).")
    flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run "
                         "(default: $JAX_NUM_PROCESSES).", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "This process's index (default: $JAX_PROCESS_ID).",
                         lower_bound=0)


def setup_mesh():
    """Connects a multi-host run (sharding.distributed_init), then returns the ("data", "fsdp")
    mesh over every device, or None on a single device (the unsharded programs, unchanged).
    Call it first in main(): jax.distributed must start before any other JAX call."""
    from leser_jax import sharding

    sharding.distributed_init(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import jax

    if jax.device_count() == 1 and FLAGS.mesh_data <= 1 and FLAGS.mesh_fsdp <= 1:
        return None
    mesh = sharding.make_mesh(sharding.MeshConfig(data=FLAGS.mesh_data, fsdp=FLAGS.mesh_fsdp))
    logging.info("device mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size,
                 jax.devices()[0].platform)
    return mesh


def define_lora_flags() -> None:
    """LoRA's scale and the remat switch (read by `training_model`; the rank is a stage's
    preset field, --lora_rank)."""
    flags.DEFINE_float("lora_alpha", ModelConfig.lora_alpha, "LoRA scale numerator: the "
                       "adapters add (alpha / rank) A B to each kernel.")
    cli.exclusive_bounds("lora_alpha", lower=0)
    flags.DEFINE_bool("remat", False, "Recompute each block's activations in the backward pass "
                      "(ModelConfig.remat): less memory for ~25% more update time.")


def training_model(model, lora_rank: int):
    """The --init model as this run trains it: with fresh LoRA adapters (B = 0, A seeded by
    --seed) if lora_rank > 0, and rematerialised blocks if --remat. A resumed run restores its
    adapters over these."""
    from flax import nnx

    from leser_jax.lora import add_lora
    from leser_jax.model import Llama

    if lora_rank:
        model = add_lora(model, rank=lora_rank, alpha=FLAGS.lora_alpha, seed=FLAGS.seed)
    if FLAGS.remat and not model.config.remat:
        # remat is static config, held by the graphdef: the same arrays under a new graphdef.
        config = model.config.replace(remat=True)
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
        model = nnx.merge(graphdef, nnx.state(model))
    return model


def optim_and_loop(stage):
    """The OptimConfig and train.LoopConfig of a supervised launcher (pretrain, warm-up) from
    its stage config (experiments.configs.Pretrain or Warmup, flags applied), --seed,
    --profile_dir and --master_fp32 (`define_optim_flags`)."""
    # Imported here: the data-only launchers (build_index, train_relevance) need no JAX.
    from leser_jax.optim import OptimConfig
    from leser_jax.train import LoopConfig

    optim = OptimConfig(lr=stage.lr, total_steps=stage.steps,
                        warmup_steps=int(stage.warmup_fraction * stage.steps),
                        weight_decay=stage.weight_decay, master_fp32=FLAGS.master_fp32)
    loop = LoopConfig(total_steps=stage.steps, checkpoint_every=stage.checkpoint_every,
                      keep_checkpoints=stage.keep_checkpoints, seed=FLAGS.seed,
                      profile_dir=FLAGS.profile_dir)
    return optim, loop


def define_few_shot_flags(name: str = "few_shot") -> None:
    """--{name} K worked examples before each query, --{name}_seed, --teacher_file (the pool)."""
    flags.DEFINE_integer(name, 0, "Worked examples (teacher answers to train queries) shown "
                         "before each query, as earlier chat turns (sft.few_shot_turns).",
                         lower_bound=0)
    flags.DEFINE_integer(f"{name}_seed", 0, "Seed of the draw of the worked examples' train "
                         "queries.", lower_bound=0)
    flags.DEFINE_string("teacher_file", None, "Teacher JSONL (experiments.teacher) to take the "
                        "worked examples from; else the teacher answers the drawn queries.")


def worked_examples(k: int, *, catalog: Catalog, engine: SearchEngine, context: ContextConfig,
                    teacher_file: str | None, teacher=None, seed: int = 0) -> tuple:
    """k worked examples for few-shot prompts (sft.few_shot_turns: teacher answers to train
    queries in a seeded order), from `teacher_file` (its dev and test queries left out) or
    written by `teacher`; each printed. () for k = 0."""
    from leser_jax import sft
    from leser_jax.teacher import read_examples

    if not k:
        return ()
    pool = []
    if teacher_file:
        held_out = [q.text for q in (*catalog.split("dev"), *catalog.split("test"))]
        pool, report = read_examples(teacher_file, exclude_queries=held_out)
        print(report.summary())
    elif teacher is None:
        raise ValueError("worked examples need a teacher file or a teacher to write them")
    turns = sft.few_shot_turns(k, [q.text for q in catalog.split("train")], engine, context,
                               examples=pool, teacher=teacher, seed=seed)
    for t in turns:
        print(f"worked example: {t.prompt.splitlines()[-1]} -> {t.answer}")
    return turns
