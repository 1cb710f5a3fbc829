"""Memory plan: bytes per device of a GRPO run of LLaMA 3.2 1B/3B, on 1 GPU and on 8.

    .venv/bin/python -m tools.memory_plan --presets=llama3_2_1b,llama3_2_3b --devices=1,8

Computed from the ModelConfig preset (leser_jax.config.param_count) and the run's shape, not
measured: a plan to choose micro-batches, remat and LoRA before a GPU is rented. For each preset
it prints one table, a column per (devices, full fine-tuning | LoRA), a row per component.

## Assumptions (each a flag where it is a choice)
Numerics (issue 10): bf16 parameters and activations, float32 optimizer state.
- Full fine-tuning: parameters bf16 (2 B); a float32 master copy (4 B, --master_fp32; bf16
  alone loses updates smaller than its 8-bit mantissa resolves); gradients in the parameter
  dtype (2 B), plus a float32 accumulator (4 B) when micro-batches > 1 (train.make_train_step
  sums micro-batch gradients in float32); AdamW m and v float32 (8 B): 16 B a parameter, 20
  with accumulation. The reference model is a second bf16 copy (2 B), frozen.
- LoRA (rank r on q, k, v, o, gate, up, down; policy = frozen base + adapters; lora.LoRA,
  train.trainable_split): the base is bf16 and frozen (no gradient, no optimizer state, no
  master copy) and is also the reference (adapters off, grpo_trainer.reference_logprobs), so
  there is no second copy. Adapters are float32 (4 B), their gradients 4 B, AdamW 8 B.
- Sharding (leser_jax/sharding.py, pure FSDP: data=1, fsdp=devices): parameters, master copy,
  gradients, optimizer state and the reference are divided by the device count; rollout rows
  and prompts are split over all devices when the device count divides them, and are whole on
  every device otherwise (sharding.row_sharding), so the KV cache and the activations are those
  of rows / devices rows, or of all rows. E.g. 16 queries in 4 micro-batches on 8 devices: each
  micro-batch's 4 prompts run on every device. FSDP adds gather buffers: one layer's weights and
  their gradient plus the embedding, whole, on every device.
- Phases: sampling (KV cache) and the update (activations, gradients) do not overlap; the peak
  is the persistent state (weights, master, optimizer state, reference) plus the larger phase.

## The activation model (per device, one micro-batch: Q/M prompts, R/M = B*N/M rollouts)
Tokens: prompts Q/M x P (prefilled once per group, grpo.completion_logprobs) and completions
R/M x T; a prompt token attends over the P prompt slots, a completion token over its group's P
prompt slots (shared, model.fork_cache) and its own T. Per token and layer, stored for the
backward, a = 2 bytes (bf16):
    a * (4D + (2N + 2K) H + 4F)    norms' inputs and outputs (4D); q, k, v ((N + 2K) H) and the
                                   attention output (N H); gate, up, silu(gate), product (4F)
    N * slots * (4 + 4 + a)        attention: float32 scores and softmax, bf16 probabilities
                                   (a plain einsum attention: no fused kernel, model.py), over
                                   slots = P for a prompt token, P + T for a completion token
plus the cache of the update's prefill, 2 L K H a per slot: P per prompt, T per rollout, and the
completion logits: 2 float32 [R/M, T, V] arrays (the head's output and the softmax of the
backward; XLA fuses the temperature scaling), 8 V bytes a completion token: with V = 128,256
that is 1 MB a token, why micro-batches matter. Without remat all L layers are stored, plus
one for the backward's working set; with remat (ModelConfig.remat: jax.checkpoint around each
Block) only each block's input (a D per token and layer) plus two layers' worth (one
recomputed, its gradients).
Elementwise intermediates (RoPE, masks) are taken as fused. Sampling: the KV cache
2 L K H a per slot, P per prompt (the prefix its N rows share) and T per rollout row, plus the
prefill's transients (one layer's attention scores of Q prompts over their P slots, and the
last logits [R, V] float32 x 2).

## Checked against XLA (`--xla_check`)
`--xla_check` compiles the full-fine-tuning update (plain SGD, without and with remat) for
abstract inputs of the run's shape on the default backend, nothing allocated, and prints XLA's
temp buffer bytes next to the plan's gradients + activations (WORKSPACE.md logs each check with
its shape). What the checks showed, and why:
- float32 model on the CPU: the plan matches XLA; the attention term above was fitted to this
  backend (with one float32 [.., S] array fewer the plan fell short).
- bf16 model on the CPU: XLA keeps far more than planned, because the CPU backend computes bf16
  matmuls in float32 and keeps float32 copies. GPUs compute bf16 natively (below).
- remat: no saving on the CPU. XLA:CPU removes jax.checkpoint's optimization barriers before it
  schedules, so the recomputation of our unrolled layers is scheduled early, in the forward pass,
  and keeps as much as no remat (a toy with the checkpointed layer inside lax.scan does save on
  CPU). XLA:GPU removes the barriers only after scheduling.
- On a GPU the plan errs on the safe side, for XLA's temp buffers and for the peak that
  tools/bench_grpo_step measures (jax memory_stats, the whole step): XLA fuses the attention's
  softmax and keeps fewer float32 arrays than the plan counts. So the plan is safe for choosing
  micro-batches, not a prediction.

Departures: none from the paper (it says nothing about memory); the model is an estimate of
what XLA keeps, which fuses and frees more or less than this; a GPU run's measured peak
(jax.Device.memory_stats) is the number to log next to it.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from experiments import cli
from leser_jax import config as config_lib
from leser_jax.config import ModelConfig, param_count

GB = 1e9
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunShape:
    """A GRPO step's shape (paper symbols in brackets).

    queries: queries per step [B]; rollouts: completions per query [N]; prompt_len: P tokens
    (context + instruction + query); new_tokens: T, the longest completion; micro_batches: M,
    the update's gradient accumulation; lora_rank: 0 = full fine-tuning; master_fp32: full
    fine-tuning keeps a float32 master copy of the bf16 parameters.
    """

    queries: int = 16
    rollouts: int = 4
    prompt_len: int = 512
    new_tokens: int = 256
    micro_batches: int = 4
    lora_rank: int = 0
    master_fp32: bool = True

    def __post_init__(self):
        if min(self.queries, self.rollouts, self.prompt_len, self.new_tokens,
               self.micro_batches) < 1 or self.lora_rank < 0:
            raise ValueError("queries, rollouts, prompt_len, new_tokens, micro_batches must be "
                             ">= 1 and lora_rank >= 0")
        if self.queries % self.micro_batches:
            raise ValueError(f"{self.queries} queries do not split into {self.micro_batches} "
                             "micro-batches (a micro-batch holds whole groups)")


def lora_param_count(config: ModelConfig, rank: int) -> int:
    """Adapter parameters: A [in, r] and B [r, out] on q, k, v, o, gate, up and down (the
    adapters lora.LoRA adds)."""
    return config_lib.lora_param_count(config.replace(lora_rank=rank))


def layer_param_count(config: ModelConfig) -> int:
    """Parameters of one Block (attention, MLP, two norm scales)."""
    c = config
    return (c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
            + 3 * c.d_model * c.ffn_dim + 2 * c.d_model)


def state_bytes(config: ModelConfig, run: RunShape, devices: int) -> dict[str, float]:
    """Parameters, master copy, gradients, optimizer state and reference, per device."""
    n = param_count(config)
    a = _BYTES[config.param_dtype]
    if run.lora_rank:
        adapters = lora_param_count(config, run.lora_rank)
        parts = {"parameters": n * a + adapters * 4, "master copy": 0.0,
                 "gradients": adapters * (4 + (4 if run.micro_batches > 1 else 0)),
                 "optimizer state": adapters * 8, "reference model": 0.0}
    else:
        parts = {"parameters": n * a, "master copy": n * 4.0 if run.master_fp32 else 0.0,
                 "gradients": n * (a + (4 if run.micro_batches > 1 else 0)),
                 "optimizer state": n * 8.0, "reference model": n * a}
    return {k: v / devices for k, v in parts.items()}


def gather_bytes(config: ModelConfig, devices: int) -> float:
    """FSDP's whole-array buffers: one layer's weights and gradient, and the embedding."""
    if devices == 1:
        return 0.0
    a = _BYTES[config.dtype]
    return (2 * layer_param_count(config) + config.vocab_size * config.d_model) * a


def per_device(rows: int, devices: int) -> int:
    """Rows each device holds: split when the devices divide them, else all of them (pure FSDP,
    sharding.row_sharding with data=1)."""
    return rows // devices if rows % devices == 0 else rows


def sampling_bytes(config: ModelConfig, run: RunShape, devices: int) -> dict[str, float]:
    """The sampler's KV cache for B x N rollout rows and its prefill transients, per device."""
    c = config
    a = _BYTES[c.dtype]
    P, T = run.prompt_len, run.new_tokens
    rows = per_device(run.queries * run.rollouts, devices)
    prompts = per_device(run.queries, devices)
    per_slot = 2 * c.num_layers * c.num_kv_heads * c.head_dim * a
    prefill = (prompts * c.num_heads * P * P * (4 + a)  # one layer's scores
               + 2 * rows * c.vocab_size * 4)  # last logits and their softmax
    # The prompts' P slots are the prefix their N rows share; each row has its own T.
    return {"KV cache": (prompts * P + rows * T) * per_slot, "sampler transients": prefill}


def activation_bytes(config: ModelConfig, run: RunShape, devices: int, *,
                     remat: bool) -> float:
    """Activations kept for the backward of one micro-batch, per device (module docstring)."""
    c = config
    a = _BYTES[c.dtype]
    P, T = run.prompt_len, run.new_tokens
    rows = per_device(run.queries * run.rollouts // run.micro_batches, devices)
    prompts = per_device(run.queries // run.micro_batches, devices)
    tokens = rows * T + prompts * P
    dense = a * (4 * c.d_model + (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                 + 4 * c.ffn_dim)  # per token
    scores = prompts * P * P + rows * T * (P + T)  # (query, slot) pairs of the attention
    layer = tokens * dense + c.num_heads * (4 + 4 + a) * scores
    cache = (prompts * P + rows * T) * 2 * c.num_layers * c.num_kv_heads * c.head_dim * a
    logits = rows * run.new_tokens * c.vocab_size * 4 * 2
    if remat:
        layers = c.num_layers * tokens * c.d_model * a + 2 * layer
    else:
        layers = (c.num_layers + 1) * layer
    return layers + cache + logits


def memory_plan(config: ModelConfig, run: RunShape, devices: int) -> dict[str, float]:
    """Every component in bytes per device, and the peaks with and without remat."""
    plan = dict(state_bytes(config, run, devices))
    plan["FSDP gathers"] = gather_bytes(config, devices)
    plan.update(sampling_bytes(config, run, devices))
    plan["activations (no remat)"] = activation_bytes(config, run, devices, remat=False)
    plan["activations (remat)"] = activation_bytes(config, run, devices, remat=True)
    persistent = (plan["parameters"] + plan["master copy"] + plan["optimizer state"]
                  + plan["reference model"] + plan["FSDP gathers"])
    sampling = plan["KV cache"] + plan["sampler transients"]
    for remat in (False, True):
        update = plan["gradients"] + plan[f"activations ({'remat' if remat else 'no remat'})"]
        plan[f"peak ({'remat' if remat else 'no remat'})"] = persistent + max(sampling, update)
    return plan


ROWS = ("parameters", "master copy", "gradients", "optimizer state", "reference model",
        "FSDP gathers", "KV cache", "sampler transients", "activations (no remat)",
        "activations (remat)", "peak (no remat)", "peak (remat)")


def plan_table(preset: str, run: RunShape, devices: list[int], lora_rank: int,
               device_gb: float) -> str:
    """A markdown table: a column per (devices, full | LoRA), a row per component, in GB."""
    config = getattr(ModelConfig, preset)()
    columns = []
    for d in devices:
        for rank in (0, lora_rank):
            r = dataclasses.replace(run, lora_rank=rank)
            name = f"{d} GPU{'s' if d > 1 else ''}, {'LoRA r=' + str(rank) if rank else 'full'}"
            columns.append((name, memory_plan(config, r, d)))
    trained = [lora_param_count(config, lora_rank) if "LoRA" in name else param_count(config)
               for name, _ in columns]
    lines = [f"| {preset} ({param_count(config) / 1e9:.3f}B) | "
             + " | ".join(name for name, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|",
             "| trained parameters | " + " | ".join(f"{t / 1e6:,.1f}M" for t in trained) + " |"]
    for row in ROWS:
        cells = [f"{plan[row] / GB:.2f}" for _, plan in columns]
        bold = row.startswith("peak")
        lines.append(f"| {'**' + row + '**' if bold else row} | "
                     + " | ".join(f"**{c}**" if bold else c for c in cells) + " |")
    fits = [" / ".join("yes" if plan[f"peak ({m})"] <= device_gb * GB else "no"
                       for m in ("no remat", "remat")) for _, plan in columns]
    lines.append(f"| fits {device_gb:g} GB (no remat / remat) | " + " | ".join(fits) + " |")
    return "\n".join(lines)


def xla_update_bytes(config: ModelConfig, run: RunShape) -> dict[str, float]:
    """XLA's buffer sizes for the full-fine-tuning GRPO update of `run`'s shape on the default
    backend (one device, plain SGD so the state is the parameters alone; remat as `config`
    says), compiled for abstract inputs: nothing is allocated or run. temp = activations,
    gradients and workspace."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from leser_jax import grpo
    from leser_jax.grpo import GRPOConfig
    from leser_jax.model import Llama
    from leser_jax.train import abstract_train_state, make_train_step

    grpo_config = GRPOConfig(queries_per_step=run.queries, num_rollouts=run.rollouts,
                             micro_batches=run.micro_batches)
    tx = optax.sgd(1e-3)
    graphdef, state = abstract_train_state(lambda: Llama(config, rngs=nnx.Rngs(0)), tx)
    Q, R, P, T = run.queries, run.queries * run.rollouts, run.prompt_len, run.new_tokens
    sds = jax.ShapeDtypeStruct
    batch = grpo.RolloutBatch(
        prompt_tokens=sds((Q, P), jnp.int32), prompt_mask=sds((Q, P), jnp.bool_),
        completion_tokens=sds((R, T), jnp.int32), completion_mask=sds((R, T), jnp.bool_),
        old_logp=sds((R, T), jnp.float32), advantages=sds((R,), jnp.float32),
        ref_logp=sds((R, T), jnp.float32))
    step = make_train_step(graphdef, tx, optax.constant_schedule(1e-3),
                           lambda model, b, rng: grpo.rollout_loss(model, b, grpo_config),
                           micro_batches=run.micro_batches)
    analysis = step.lower(state, batch).compile().memory_analysis()
    return {"temp": float(analysis.temp_size_in_bytes),
            "arguments": float(analysis.argument_size_in_bytes),
            "backend": jax.default_backend()}


flags.DEFINE_list("presets", ["llama3_2_1b", "llama3_2_3b"], "ModelConfig presets.")
flags.DEFINE_list("devices", ["1", "8"], "Device counts (pure FSDP over all of them).")
flags.DEFINE_integer("queries", 16, "B: queries per GRPO step.", lower_bound=1)
flags.DEFINE_integer("rollouts", 4, "N: rollouts per query.", lower_bound=1)
flags.DEFINE_integer("prompt_len", 512, "P: prompt tokens (context, instruction, query).",
                     lower_bound=1)
flags.DEFINE_integer("new_tokens", 256, "T: the longest completion (reasoning and answer).",
                     lower_bound=1)
flags.DEFINE_integer("micro_batches", 4, "M: gradient accumulation parts of the update.",
                     lower_bound=1)
flags.DEFINE_integer("lora_rank", 16, "Rank of the LoRA columns.", lower_bound=0)
flags.DEFINE_bool("master_fp32", True, "Full fine-tuning keeps a float32 master copy.")
flags.DEFINE_float("device_gb", 80.0, "Memory of one device, GB (1e9 bytes).")
cli.exclusive_bounds("device_gb", lower=0)
flags.DEFINE_bool("xla_check", False, "Also compile each preset's update (full fine-tuning, one "
                  "device, without and with remat) and print XLA's temp bytes next to the "
                  "plan's.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    run = RunShape(queries=FLAGS.queries, rollouts=FLAGS.rollouts, prompt_len=FLAGS.prompt_len,
                   new_tokens=FLAGS.new_tokens, micro_batches=FLAGS.micro_batches,
                   master_fp32=FLAGS.master_fp32)
    print(f"GRPO step: B={run.queries} queries x N={run.rollouts} rollouts, P={run.prompt_len}, "
          f"T={run.new_tokens}, M={run.micro_batches} micro-batches; GB = 1e9 bytes per device")
    for preset in FLAGS.presets:
        print()
        print(plan_table(preset, run, [int(d) for d in FLAGS.devices], FLAGS.lora_rank,
                         FLAGS.device_gb))
        if FLAGS.xla_check:
            config = getattr(ModelConfig, preset)()
            plan = memory_plan(config, run, 1)
            print()
            for remat in ("no remat", "remat"):
                xla = xla_update_bytes(config.replace(remat=remat == "remat"), run)
                print(f"XLA ({xla['backend']}) temp buffers of the update, {remat}: "
                      f"{xla['temp'] / GB:.2f} GB; plan (gradients + activations): "
                      f"{(plan['gradients'] + plan[f'activations ({remat})']) / GB:.2f} GB")


if __name__ == "__main__":
    cli.run(main)
