"""Stops a run at the first NaN or infinity, before anything is saved from it.

A diverged run that goes on writes NaN weights over good ones: checkpoints that restore without
complaint, a params/ that the next stage loads, and a GRPO run from it whose rewards are all 0
(every group equal, so no update, so nothing ever fails). Three checks close that path:

    check_metrics, check_array   each training step: the loss and gradient norm it fetches
                                 anyway (train.train_loop; grpo_trainer also checks the rewards
                                 and the rollouts' log-probs)
    check_tree                   what is written or read: checkpoint.save_checkpoint,
                                 save_params and load_params refuse parameters or optimizer
                                 states that hold NaN or inf

A failed check raises `NonFiniteError`, which names the step and the quantity; the training loop
stops before the step's checkpoint (train.stop_at_nonfinite), so the newest checkpoint stays the
last finite one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(FloatingPointError):
    """A training quantity or a saved array is NaN or infinite."""


def check_metrics(step: int, metrics: Mapping[str, object], names: Iterable[str]) -> None:
    """Raises NonFiniteError if any of `names` in `metrics` (host scalars) is NaN or inf."""
    bad = [f"{name} = {float(metrics[name])}" for name in names
           if name in metrics and not math.isfinite(float(metrics[name]))]
    if bad:
        raise NonFiniteError(f"step {step}: {', '.join(bad)}")


def check_array(step: int, name: str, values: np.ndarray) -> None:
    """Raises NonFiniteError if the host array `values` holds NaN or inf (says how many)."""
    bad = int(np.size(values) - np.isfinite(values).sum())
    if bad:
        raise NonFiniteError(f"step {step}: {bad} of {np.size(values)} values of {name} are "
                             "NaN or infinite")


@jax.jit
def _leaf_is_finite(leaves: list) -> list:
    return [jnp.isfinite(x).all() for x in leaves]


def nonfinite_leaves(tree) -> list[str]:
    """Key paths of the floating-point leaves of `tree` that hold a NaN or an infinity.

    One jitted reduction over all leaves and one transfer of their flags; integer leaves (the
    step, RNG key data) cannot be non-finite and are skipped.
    """
    paths, leaves = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            paths.append(jax.tree_util.keystr(path))
            leaves.append(leaf)
    if not leaves:
        return []
    finite = jax.device_get(_leaf_is_finite(leaves))
    return [p for p, ok in zip(paths, finite) if not ok]


def check_tree(tree, what: str) -> None:
    """Raises NonFiniteError naming (the first few of) the leaves of `tree` that are not finite."""
    bad = nonfinite_leaves(tree)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"{what}: {len(bad)} arrays hold NaN or inf ({shown})")
