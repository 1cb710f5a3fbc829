"""Random model weights for the benchmarks (speed does not depend on the values)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leser_jax.config import ModelConfig
from leser_jax.model import Llama


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.02) -> Llama:
    """A model of `config` with normal(0, std) matrices and norm scales of 1, drawn leaf by leaf
    on the default device (no compiled whole-model init: a 1B model's init program would take
    longer to compile than to run, and host-drawn float64 normals are slow at 1B parameters)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree.flatten(pure)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    drawn = [jnp.ones(x.shape, x.dtype) if x.ndim == 1
             else (std * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
             for k, x in zip(keys, leaves)]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, drawn))
    return nnx.merge(graphdef, state)
