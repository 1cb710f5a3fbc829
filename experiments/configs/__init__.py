"""Presets: every stage's settings for one kind of run, each value written once.

One file per preset (tiny.py, demo.py, cpu.py, smol.py), each a `PRESET = Preset(...)`. A
launcher's --preset=NAME takes its stage's section as defaults, and every field of that section
is also a flag of the same name (experiments.cli.define_flags), so `--steps=50` overrides one
value and leaves the rest; the pipeline passes each stage its preset's section, spelled out
(cli.as_flags), so a stage record names every value it ran with.

    tiny   seconds: the tests' runs on a small synthetic catalog
    demo   minutes: `make demo`, the synthetic catalog on a laptop's CPU
    cpu    about an hour on 2 cores: Home Depot with the demo-size model
    smol   about 2 hours on 2 cores: Home Depot with SmolLM2-135M-Instruct and LoRA
"""

from __future__ import annotations

import dataclasses
import importlib

from leser_jax.context import ContextConfig

NAMES = ("tiny", "demo", "cpu", "smol")
MODEL_SIZES = ("tiny", "demo", "cpu")  # leser_jax.config.ModelConfig's constructors


def _at_least(config, **minimum) -> None:
    for name, low in minimum.items():
        value = getattr(config, name)
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


def _fraction(config, *names) -> None:
    for name in names:
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}")


def _positive(config, *names) -> None:
    for name in names:
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pretrain:
    """Pretraining from scratch on the catalog's text (experiments.pretrain).

    Attributes:
      model: model size, a ModelConfig constructor: tiny, demo or cpu.
      steps: optimizer steps.
      batch_size: rows per step.
      seq_len: tokens per row.
      lr: peak learning rate.
      warmup_fraction: share of the steps spent in linear warmup.
      weight_decay: AdamW decoupled weight decay of the matrices.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: newest checkpoints kept.
    """

    model: str
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model must be one of {', '.join(MODEL_SIZES)}, got {self.model!r}")
        _at_least(self, steps=1, batch_size=1, seq_len=1, checkpoint_every=1, keep_checkpoints=1,
                  weight_decay=0)
        _positive(self, "lr")
        _fraction(self, "warmup_fraction")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Warmup:
    """The supervised warm-up on teacher answers (experiments.warmup).

    Attributes:
      steps: optimizer steps.
      batch_size: examples per step.
      lr: peak learning rate.
      lora_rank: train LoRA adapters of this rank on every attention and MLP projection, the
        --init model frozen (0: full fine-tuning).
      warmup_fraction: share of the steps spent in linear warmup.
      weight_decay: AdamW decoupled weight decay of the matrices.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: newest checkpoints kept.
      eval_queries: dev queries sampled for the format check at the end (0: all).
      prompt_weight: loss weight of the prompt's tokens, below the answer's 1 (0: the answer
        only, the paper's warm-up): the prompt's copying of its context, learned as well.
    """

    steps: int
    batch_size: int
    lr: float
    lora_rank: int = 0
    warmup_fraction: float = 0.1
    weight_decay: float = 0.1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_queries: int = 0
    prompt_weight: float = 0.0

    def __post_init__(self):
        _at_least(self, steps=1, batch_size=1, lora_rank=0, checkpoint_every=1,
                  keep_checkpoints=1, eval_queries=0, weight_decay=0)
        _positive(self, "lr")
        _fraction(self, "warmup_fraction")
        if not 0 <= self.prompt_weight < 1:
            raise ValueError(f"prompt_weight must be in [0, 1), got {self.prompt_weight}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPO:
    """A GRPO run (experiments.grpo); the algorithm's own settings are leser_jax.grpo.GRPOConfig.

    Attributes:
      steps: GRPO steps.
      queries_per_step: train queries per step [B]; each is sampled num_rollouts times.
      micro_batches: the update's gradient accumulation: B queries in this many parts, each of
        whole groups (the same update in less memory; B must be a multiple).
      lr: peak learning rate.
      lora_rank: train LoRA adapters of this rank, the --init model frozen (0: all weights).
      warmup_steps: linear learning-rate warmup, in optimizer updates.
      weight_decay: AdamW decoupled weight decay (0: the KL term already holds the policy near
        the reference).
      eval_every: dev evaluation (greedy and sampled) every this many steps (0: off).
      eval_queries: dev queries of that evaluation.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: newest checkpoints kept.
    """

    steps: int
    queries_per_step: int
    lr: float
    micro_batches: int = 1
    lora_rank: int = 0
    warmup_steps: int = 5
    weight_decay: float = 0.0
    eval_every: int = 20
    eval_queries: int = 64
    checkpoint_every: int = 20
    keep_checkpoints: int = 2

    def __post_init__(self):
        _at_least(self, steps=1, queries_per_step=1, micro_batches=1, lora_rank=0, warmup_steps=0,
                  weight_decay=0, eval_every=0, eval_queries=0, checkpoint_every=1,
                  keep_checkpoints=1)
        _positive(self, "lr")
        if self.queries_per_step % self.micro_batches:
            raise ValueError(f"{self.queries_per_step} queries (groups) do not split into "
                             f"{self.micro_batches} micro-batches")
        if self.eval_every and not self.eval_queries:
            raise ValueError("eval_queries=0 evaluates no query: turn the evaluation off with "
                             "eval_every=0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """One kind of run, from the data to the evaluation.

    Attributes:
      name: the preset's name (its file's).
      dataset: 'synthetic' or a dataset folder's name under the data folder (LESER_DATA_DIR).
      context: the prompt's context, the same for the teacher, warm-up, GRPO and evaluation.
      max_context_tokens: the largest context budget whose prompts still fit the model's window
        with max_new_tokens (the pipeline's --context_k scales the budget up to it).
      teacher_max_expansions: most expansions per teacher answer (None: the answer format's
        m_max), so also per warm-up example.
      max_new_tokens: longest answer GRPO samples and evaluation decodes.
      pretrain: pretraining's settings, or None where the policy starts from converted weights.
      init_gguf: start from SmolLM2-135M-Instruct's GGUF (tools.convert_gguf_llama) instead of
        pretraining.
      warmup, grpo: those stages' settings.
      few_shot: worked examples shown to the policies never fine-tuned on the LESER prompt
        (GRPO without warm-up, the zero-shot system of the evaluation).
      eval_queries: the evaluation's test queries, the first this many (0: all).
      drop_duplicates: the evaluation also reports each model with its repeated expansions
        dropped (NAME+dedup).
    """

    name: str
    dataset: str
    context: ContextConfig
    max_context_tokens: int
    teacher_max_expansions: int | None
    max_new_tokens: int
    pretrain: Pretrain | None
    warmup: Warmup
    grpo: GRPO
    init_gguf: bool = False
    few_shot: int = 0
    eval_queries: int = 0
    drop_duplicates: bool = False

    def __post_init__(self):
        if (self.pretrain is None) != self.init_gguf:
            raise ValueError("a preset either pretrains or starts from the GGUF (init_gguf)")


def get(name: str) -> Preset:
    """The preset of experiments/configs/NAME.py."""
    if name not in NAMES:
        raise ValueError(f"no preset {name!r}: one of {', '.join(NAMES)}")
    return importlib.import_module(f"experiments.configs.{name}").PRESET
