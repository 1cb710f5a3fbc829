"""LoRA: low-rank adapters (Hu et al. 2021, arXiv 2106.09685) over a frozen base model.

The paper fine-tunes LLaMA 3.2 with GRPO and says nothing of adapters; LoRA here is ours, to fit
the 3B preset on one accelerator. Its frozen base is also GRPO's reference model, so no second
copy of the weights is held (grpo_trainer.reference_logprobs).

The parts:
- `LoRA`: the adapter of one projection kernel, y = x W + (alpha / r) (x A) B. model.py's
  `Llama` gives each of its seven projections one when `ModelConfig.lora_rank` > 0.
- `add_lora`: a plain model with fresh adapters (B = 0: it computes what the plain model does).
- `merge_lora`: the adapters folded into the kernels, a plain model to save and export.

What is trained is picked by variable type (train.trainable_split: the nnx.LoRAParam adapters).
model.py imports this module for `LoRA`; this module names `Llama` only in annotations and
builds one by the class of the model it is given, so that the two do not import each other.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from leser_jax.config import ModelConfig

if TYPE_CHECKING:  # for annotations only: model.py imports this module
    from leser_jax.model import Llama


class LoRA(nnx.Module):
    """The low-rank update of one kernel W [in..., out...]: x -> (alpha / r) (x A) B.

    Low-rank adaptation (Hu et al. 2021, arXiv 2106.09685). With `lora_rank` r > 0, each
    projection kernel (q [D, N, H], k/v [D, K, H], o [N, H, D], gate/up [D, F], down [F, D]) gets
    one, and the projection becomes

        y = x W + (alpha / r) * (x A) B

    computed on the activations (never W + AB: that is a full kernel-sized array per step).
    A [in..., r] starts normal with std 1 / sqrt(fan_in) (x A has about x's scale), B [r, out...]
    at 0, so the update starts at exactly 0 (Hu et al. 2021, section 4.1): a model with fresh
    adapters computes exactly what its base does (`add_lora`). Both are float32
    `nnx.LoRAParam`s whatever the base's dtype: they are what is trained, and the optimizer's
    small steps would be lost in bf16. The matmuls run in the compute dtype, like the base's.

    Training updates only the adapters (train.trainable_split picks the nnx.LoRAParam variables;
    LoRAParam subclasses Param, so a filter on Param alone would take the base too). The base is
    frozen, which makes it the GRPO reference for free: the reference is the policy with its
    adapters set to 0 (grpo_trainer.reference_logprobs), so no second copy of the weights is held
    (tools/memory_plan.py counts what this saves for LLaMA 3.2 3B on one accelerator).
    `merge_lora` folds the adapters into the kernels for a plain model to save and export.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 config: ModelConfig, *, rngs: nnx.Rngs):
        r = config.lora_rank
        self.scale = config.lora_alpha / r
        self.dtype = config.dtype
        self.in_dims = len(in_shape)
        std = 1.0 / math.sqrt(math.prod(in_shape))
        self.a = nnx.LoRAParam(std * jax.random.normal(rngs.params(), (*in_shape, r),
                                                       jnp.float32))  # [in..., r]
        self.b = nnx.LoRAParam(jnp.zeros((r, *out_shape), jnp.float32))  # [r, out...]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, in...] -> [B, T, out...]: through the rank-r bottleneck, never W + A B."""
        dt = self.dtype
        h = jnp.tensordot(x, self.a[...].astype(dt), axes=self.in_dims)  # [B, T, r]
        return jnp.tensordot(h * self.scale, self.b[...].astype(dt), axes=1)  # [B, T, out...]

    def delta(self) -> jax.Array:
        """(alpha / r) A B [in..., out...], float32: what `merge_lora` adds to W."""
        return self.scale * jnp.tensordot(self.a[...], self.b[...], axes=1)


def add_lora(model: Llama, *, rank: int, alpha: float, seed: int = 0) -> Llama:
    """`model` with fresh LoRA adapters (B = 0: it computes exactly what `model` does).

    The base's arrays are shared, not copied: a train state built from the result takes them
    (and donates them at its first update), so `model` must not be used afterwards.
    """
    if model.config.lora_rank:
        raise ValueError("the model already has LoRA adapters (merge_lora them first)")
    config = model.config.replace(lora_rank=rank, lora_alpha=alpha)
    llama = type(model)  # model.Llama, by the model's class: this module does not import model.py
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: llama(config, rngs=nnx.Rngs(seed))))
    return nnx.merge(graphdef, nnx.state(model, nnx.Param), _fresh_adapters(llama, config, seed))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _fresh_adapters(llama: type[Llama], config: ModelConfig, seed: int) -> nnx.State:
    """The adapters of `llama(config, rngs=nnx.Rngs(seed))`; the random base that this builds
    alongside is dead code under jit, never computed."""
    return nnx.state(llama(config, rngs=nnx.Rngs(seed)), nnx.LoRAParam)


def merge_lora(model: Llama) -> Llama:
    """A plain model (lora_rank 0) whose kernels are W + (alpha / r) A B, in float32 then cast to
    param_dtype; `model` itself if it has no adapters. With bf16 parameters the sum is rounded to
    bf16, the precision the base had (an adapter update smaller than half a bf16 step of W is lost
    in that entry; the adapted model itself never rounds it)."""
    c = model.config
    if not c.lora_rank:
        return model
    llama = type(model)  # model.Llama (see add_lora)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: llama(c.without_lora(), rngs=nnx.Rngs(0))))
    _, _, base = nnx.split(model, nnx.LoRAParam, ...)
    merged = nnx.merge(graphdef, base, copy=True)  # new Variables: setting them leaves `model` be
    for block, new in zip(model.layers, merged.layers):
        for part, new_part in ((block.attn, new.attn), (block.mlp, new.mlp)):
            for name in part.KERNELS:
                w = getattr(part, name)[...]
                getattr(new_part, name)[...] = (w.astype(jnp.float32)
                                                 + getattr(part, f"{name}_lora").delta()
                                                 ).astype(w.dtype)
    return merged
