"""Beyond one device: a ("data", "fsdp") device mesh and where each array of a run lives on it.

The same jitted programs (train.make_train_step, the sampler's prefill and decode) run on one
device or on a mesh; only the shardings they are given differ (JAX's GSPMD partitions the
program and inserts the collectives). The layout is FSDP (ZeRO-3, Rajbhandari et al. 2020):

    parameters, gradients and optimizer state   each array cut in `fsdp` pieces along one dim
    batches (rollout rows, prompt rows)          rows cut over data x fsdp devices

- Parameters: each array is split over the "fsdp" axis along its largest dimension that the
  fsdp size divides (the embedding [V, D] along V, a q kernel [D, N, H] along D, an MLP kernel
  [D, F] along F); 0-D and 1-D arrays (RMSNorm scales, step counters, the RNG key data) and
  arrays no dimension of which divides are replicated: they are small, and splitting a [D]
  scale would only add a collective. The rule is a function of the shape alone (`fsdp_spec`),
  so optax's moments, which mirror the parameters leaf for leaf with the same shapes, get their
  parameter's sharding, and its scalars (Adam's count) are replicated. Each device holds 1/fsdp
  of the parameters, gradients and optimizer state; the program all-gathers a layer's weights
  where it uses them and reduce-scatters their gradients.
- Batches: the leading (row) axis is split over BOTH mesh axes, ("data", "fsdp"). FSDP is data
  parallelism whose weights are stored sharded: every device computes on its own rows, the
  fsdp axis only says how the weights are stored. Splitting rows over "data" alone would make
  the 4 devices of an fsdp group compute the same rows 4 times. An array whose row count the
  whole mesh does not divide (the Q prompts of a step, when Q < devices) is split over "data"
  if that divides it, else replicated (`row_sharding`).
- "data" without "fsdp" (fsdp=1) is plain data parallelism with replicated weights: the layout
  of choice when the model fits a device (fewer collectives); data=1 is pure FSDP.

Several hosts: `distributed_init` connects the processes (jax.distributed.initialize) before
any other JAX call (experiments/common.setup_mesh); the mesh then spans all hosts' devices.
Every process runs the same launcher and builds the same whole batch (batches and GRPO's
queries are functions of (seed, step)); train.global_batch_array gives each device its shard
from its own process's copy, and rollout._to_host gathers the sampled rows to every process
(process_allgather), which then all score the same rollouts. Untested on real hosts: the tests
run one process with 8 simulated CPU devices (the greedy evaluation's device_get would also
need the gather).

Departures: the paper trains on one production setup and says nothing about parallelism; this
module is ours. Tensor parallelism (splitting heads over a "model" axis) is not offered: at 1B
and 3B parameters FSDP over 8 devices leaves room (tools/memory_plan.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

AXES = ("data", "fsdp")  # the mesh's axis names, outer to inner
BATCH_AXES = ("data", "fsdp")  # rows of a batch are split over both (module docstring)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Sizes of the mesh axes; data * fsdp must equal the number of devices used.

    data: data-parallel replicas (weights replicated across them); 0 = derived.
    fsdp: devices each parameter is split over (also splits the batch); 0 = derived.
    Both 0: data=1, fsdp=all devices (pure FSDP, the least memory per device). One 0: the other
    is devices // the given size.
    """

    data: int = 0
    fsdp: int = 0

    def __post_init__(self):
        if self.data < 0 or self.fsdp < 0:
            raise ValueError(f"data and fsdp must be >= 0 (0 = derived), got {self.data}, "
                             f"{self.fsdp}")

    def resolve(self, device_count: int) -> tuple[int, int]:
        """(data, fsdp) for `device_count` devices, the zeros filled in."""
        data, fsdp = self.data, self.fsdp
        if data == 0 and fsdp == 0:
            data, fsdp = 1, device_count
        elif data == 0:
            data = device_count // fsdp
        elif fsdp == 0:
            fsdp = device_count // data
        if data * fsdp != device_count or data == 0 or fsdp == 0:
            raise ValueError(f"mesh data={self.data} x fsdp={self.fsdp} does not fit "
                             f"{device_count} devices")
        return data, fsdp


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: all of them, on every host).

    Auto axis types: shardings are given at the jit boundary and propagated by GSPMD inside,
    so the model code carries no sharding annotations (jax.make_mesh defaults to Explicit
    axes, which type every intermediate's sharding and would ask the model for them).
    """
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = config.resolve(len(devices))
    return jax.make_mesh((data, fsdp), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices)


def fsdp_spec(shape: Sequence[int], fsdp: int) -> PartitionSpec:
    """The PartitionSpec of an array of `shape` with `fsdp` shards: "fsdp" on its largest dim
    that fsdp divides (the first such dim on a tie), replicated for 0-D/1-D arrays or when no
    dim divides. E.g. fsdp=4: [512, 64] -> ("fsdp", None); [64, 4, 16] -> ("fsdp", None, None);
    [4, 16, 64] -> (None, None, "fsdp"); [64] -> (); [6, 3] -> ()."""
    if len(shape) < 2 or fsdp == 1:
        return PartitionSpec()
    dims = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not dims:
        return PartitionSpec()
    best = max(dims, key=lambda i: (shape[i], -i))  # largest; the first of equal ones
    return PartitionSpec(*("fsdp" if i == best else None for i in range(len(shape))))


def param_shardings(tree, mesh: Mesh):
    """A NamedSharding for every array leaf of `tree` (params, optimizer state, a whole
    TrainState; concrete or abstract, e.g. from jax.eval_shape) by `fsdp_spec`."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp)), tree)


def shard_train_state(state, mesh: Mesh):
    """The train state (train.TrainState) placed on the mesh by `param_shardings`: parameters
    and optimizer state split over fsdp, step and RNG key data replicated."""
    return jax.device_put(state, param_shardings(state, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (scalars, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (the leading axis) over ("data", "fsdp"), the other axes whole (module docstring)."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def row_sharding(mesh: Mesh, rows: int) -> NamedSharding:
    """The sharding of an array of `rows` rows: `batch_sharding` if the whole mesh divides the
    rows, else rows over "data" if that divides them, else replicated."""
    if rows % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0:
        return batch_sharding(mesh)
    if rows % mesh.shape["data"] == 0:
        return NamedSharding(mesh, PartitionSpec("data"))
    return replicated(mesh)


def batch_shardings(batch, mesh: Mesh):
    """`row_sharding` of each array of a batch (a pytree of arrays, rows first), by its row
    count (prompts [Q, P] and completions [Q*N, T] of a grpo.RolloutBatch differ), in the
    batch's structure."""
    return jax.tree.map(lambda x: row_sharding(mesh, np.shape(x)[0]), batch)


def train_step_shardings(state, batch, mesh: Mesh):
    """(in_shardings, out_shardings) of train.make_train_step's step(state, batch) ->
    (state, metrics): the state keeps its sharding across the step (so donation reuses its
    buffers in place), the batch is split by rows, the metrics are replicated scalars.

    `state` and `batch` may be abstract (only shapes are read); a step built with these
    shardings expects batches with the same row counts (widths may change).
    """
    state_shardings = param_shardings(state, mesh)
    return ((state_shardings, batch_shardings(batch, mesh)),
            (state_shardings, replicated(mesh)))


def distributed_init(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *,
                     environ: Mapping[str, str] = os.environ) -> bool:
    """Connects this process to the others of a multi-host run; a no-op on one process.

    Each argument left None is read from the environment: JAX_COORDINATOR_ADDRESS (host:port of
    process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID. jax.distributed.initialize is called only
    when an address is known and there is more than one process. Must run before any other
    JAX call. Returns whether it initialised.
    """
    address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(environ["JAX_NUM_PROCESSES"])
    if process_id is None and environ.get("JAX_PROCESS_ID"):
        process_id = int(environ["JAX_PROCESS_ID"])
    if not address or (num_processes or 1) <= 1:
        return False
    if process_id is None or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id)
    log.info("process %d of %d connected to %s: %d local of %d devices", process_id,
             num_processes, address, jax.local_device_count(), jax.device_count())
    return True
