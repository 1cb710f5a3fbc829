"""The training loop every stage shares: train state, jitted step, checkpoints, metrics.

Pretraining and the supervised warm-up run `train_loop` with their own batches and
`masked_lm_loss`; GRPO reuses `TrainState`, `make_train_step` (with its own loss), the
checkpoints (checkpoint.save_checkpoint / restore_latest) and the metrics (run_log.RunLog).

State and step. The model is split once, `graphdef, params = nnx.split(model)`; the jitted step
takes the plain pytree `TrainState` and merges the model inside (a small traced program that
compiles fast). The state is donated: the step replaces all of it, so XLA may update parameters
and Adam moments in place instead of holding two copies.

What is trained (`trainable_split`): every parameter, or, when the model has LoRA adapters
(lora.py), the adapters only. The rest is frozen: it stays in `TrainState.params` (so
the state is still one pytree that checkpoints, shards and resumes as before, and a sampler reads
the whole model from it), is passed to the loss without a gradient, and has no optimizer state
(`tx.init` sees the trainable part alone). Donation covers it too: an argument returned unchanged
reuses its buffer, so the frozen base costs no copy per step (tests/test_lora.py checks the
buffer's address).

Randomness. `TrainState.rng` is the run's base key (raw uint32 key data, so that it checkpoints
as an ordinary array); step s uses `fold_in(rng, s)`. The key of a step therefore depends on
(seed, step) only, as does the batch (lm_data): a run resumed from a checkpoint replays exactly
the updates that the crashed run would have made.

Failure. A run directory that holds a run with other settings is an error before anything is
restored or overwritten (checkpoint.check_run_configs: RESUMABLE lists what a resumed run may
change). A step whose loss or gradient norm is NaN or inf stops the run (finite.NonFiniteError,
naming the step and the quantity) before that step's state is saved, so the newest checkpoint is
the last finite state and rerunning with a lower learning rate resumes from it.

Timing. Each batch shape is compiled ahead of time (`jit(...).lower(...).compile()`), so the
compile time is logged apart and every logged step time is steady state; the clock is read after
the metrics are fetched (which waits for the step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from leser_jax import checkpoint
from leser_jax.finite import NonFiniteError, check_metrics
from leser_jax.run_log import RunLog
from leser_jax.sharding import shard_train_state, train_step_shardings

log = logging.getLogger(__name__)

# What a train step takes: a pytree of arrays whose first axis is rows (micro-batches and a mesh
# split it by rows). The supervised stages' batches are dicts of named arrays (lm_data); GRPO's
# is a grpo.RolloutBatch, whose prompts [Q, P] and completions [Q*N, T] differ in rows.
Batch = Any
# loss_fn(model, batch, rng) -> (scalar loss, {name: scalar} of extra metrics)
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    params: nnx.State  # the model's nnx.Param state, trained and frozen parts alike
    opt_state: optax.OptState  # the optimizer's state (optax structures over the trained part)
    step: jax.Array  # [] int32: updates applied so far
    rng: jax.Array  # [2] uint32: the run's base key (key data); step s uses fold_in(rng, s)


def trainable_split(params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(trained, frozen) parts of a model's parameters: the LoRA adapters (nnx.LoRAParam) and the
    base if the model has adapters, else all parameters and an empty state. Inverse:
    nnx.merge_state(trained, frozen)."""
    adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
    if jax.tree.leaves(adapters):
        return adapters, base
    return params, nnx.State({})


def _fresh_state(params: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(trainable_split(params)[0]),
                      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)))


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, *,
                     seed: int) -> tuple[nnx.GraphDef, TrainState]:
    """The state of a fresh run. It takes the model's arrays (no copy) and the first step
    donates them: do not use `model` afterwards."""
    graphdef, params = nnx.split(model)
    return graphdef, _fresh_state(params, tx, seed)


def abstract_train_state(abstract_fn: Callable[[], nnx.Module],
                         tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    """The graphdef and a TrainState of ShapeDtypeStructs, without computing any array: the
    target that checkpoint.restore_latest restores into (Orbax restores optax states as plain
    dicts unless given an nnx.eval_shape-built target)."""
    graphdef, params = nnx.split(nnx.eval_shape(abstract_fn))
    return graphdef, jax.eval_shape(lambda p: _fresh_state(p, tx, 0), params)


def masked_lm_loss(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array
                   ) -> tuple[jax.Array, dict]:
    """Next-token cross-entropy, the weighted mean over the target tokens.

    batch: inputs [B, T] int32, targets [B, A] int32 (inputs shifted by one), weights [B, A]
    float32 (1 where the target is trained on: every token in pretraining, the answer and its
    eos in the warm-up; a prompt may weigh less, 0 for none), pad_mask [B, T] bool (True at
    real input tokens). A = T, or A < T for the targets of the last A inputs alone
    (lm_data.example_batch's window): the head then runs over those A positions. Masked pads
    change nothing at the real tokens. aux: target_tokens (of weight 1) and target_loss, their
    mean loss: the answer's loss in the warm-up whatever the prompt weighs.
    """
    del rng  # deterministic: no dropout
    T, A = batch["inputs"].shape[1], batch["targets"].shape[1]
    if A == T:
        logits = model(batch["inputs"], batch["pad_mask"])  # [B, T, V] float32
    else:
        logits = model(batch["inputs"], batch["pad_mask"], last_n=A)  # [B, A, V] float32
    # -log p(target) = logsumexp(logits) - logits[target]: the same number as log_softmax then a
    # gather, without writing (and reading back) a [B, T, V] log-prob array.
    target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit  # [B, A]
    weights = batch["weights"].astype(jnp.float32)  # [B, A]
    full = (weights == 1.0).astype(jnp.float32)  # [B, A]
    loss = (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return loss, {"target_tokens": full.sum(),
                  "target_loss": (nll * full).sum() / jnp.maximum(full.sum(), 1.0)}


def _split_micro_batches(batch: Batch, micro_batches: int) -> Batch:
    """[B, ...] -> [M, B / M, ...] for every array of the batch (rows stay in order)."""

    def split(x):
        if x.shape[0] % micro_batches:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {micro_batches} "
                             "micro-batches")
        return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, loss_fn: LossFn, *, micro_batches: int = 1,
                    shardings: tuple | None = None, mesh: Mesh | None = None):
    """step(state, batch) -> (state, metrics): one optimizer update, jitted, state donated.

    micro_batches: gradient accumulation. The batch's rows are split into M equal consecutive
      parts; a `lax.scan` sums each part's gradient (peak activation memory of one part) and
      the update uses their mean. For a loss that is a mean over rows (the warm-up's loss over
      equal-length rows, GRPO's "sequence_mean") this is the full batch's gradient up to float
      rounding; a token mean becomes a mean of per-part token means. Micro-batch i draws its
      key as fold_in(step key, i).
    metrics: loss, grad_norm (of the trained part, before clipping), lr (of this update), and
      loss_fn's extras; with M > 1 each is the mean over the micro-batches.
    shardings: None for one device; on a mesh, jax.jit's (in_shardings, out_shardings) for
      (state, batch) -> (state, metrics), from sharding.train_step_shardings. The step's code
      is the same either way: GSPMD partitions it and adds the collectives.
    mesh: instead of `shardings`, a device mesh: returns a `MeshTrainStep`, which derives the
      shardings from each batch (what the launchers use).
    """
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    if mesh is not None:
        if shardings is not None:
            raise ValueError("pass shardings or mesh, not both")
        return MeshTrainStep(lambda shardings: make_train_step(
            graphdef, tx, schedule, loss_fn, micro_batches=micro_batches, shardings=shardings),
            mesh)

    def loss_and_grad(trained, frozen, batch, rng):
        def objective(trained):  # the gradient is over the trained part only
            return loss_fn(nnx.merge(graphdef, trained, frozen), batch, rng)

        return jax.value_and_grad(objective, has_aux=True)(trained)

    def accumulated(trained, frozen, batch, rng):
        parts = _split_micro_batches(batch, micro_batches)  # every array [M, B / M, ...]
        first = jax.tree.map(lambda x: x[0], parts)
        # The carry holds float32 sums of (loss, aux) and of the gradients.
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                             jax.eval_shape(loss_and_grad, trained, frozen, first, rng))

        def body(total, xs):
            i, part = xs
            out = loss_and_grad(trained, frozen, part, jax.random.fold_in(rng, i))
            return jax.tree.map(lambda t, o: t + o.astype(jnp.float32), total, out), None

        total, _ = jax.lax.scan(body, zeros, (jnp.arange(micro_batches), parts))
        (loss, aux), grads = jax.tree.map(lambda t: t / micro_batches, total)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trained)
        return (loss, aux), grads

    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        trained, frozen = trainable_split(state.params)
        if micro_batches == 1:
            (loss, aux), grads = loss_and_grad(trained, frozen, batch, rng)
        else:
            (loss, aux), grads = accumulated(trained, frozen, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        params = nnx.merge_state(optax.apply_updates(trained, updates), frozen)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state.step), **aux}
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    # donate_argnums=0: the old train state is never read again; its buffers take the new one.
    if shardings is None:
        return jax.jit(step, donate_argnums=0)
    in_shardings, out_shardings = shardings
    return jax.jit(step, donate_argnums=0, in_shardings=in_shardings, out_shardings=out_shardings)


def global_batch_array(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """A batch array laid out by `sharding`. Every process of a run builds the same whole batch
    (batches are a function of (seed, step)), so on several hosts each process fills in the
    shards its own devices hold from its copy (make_array_from_callback); one process is the
    same call. A jax.Array (already on devices, e.g. GRPO's reference log-probs) is moved."""
    if isinstance(x, jax.Array):
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


class MeshTrainStep:
    """A train step on a device mesh: `make_train_step` jitted with the shardings of
    sharding.train_step_shardings, one jitted step per set of batch row counts (the shardings
    of a batch depend on them). Called, or lowered, like a jitted step. The state must already
    be on the mesh (sharding.shard_train_state); batches are split over the mesh here.
    """

    def __init__(self, build: Callable[[tuple], Callable], mesh: Mesh):
        self._build, self.mesh = build, mesh
        self._steps: dict[tuple, Callable] = {}

    def _step_for(self, state: TrainState, batch: Batch):
        """(jitted step, batch placed on the mesh). Placing it here, not by jit: an array that
        is already on the mesh with another layout (a replicated jax output, e.g. GRPO's
        reference log-probs) is an error for jit's in_shardings, a device_put moves it."""
        arrays, structure = jax.tree.flatten(batch)
        key = (structure, tuple(np.shape(x)[0] for x in arrays))
        if key not in self._steps:
            in_shardings, out_shardings = train_step_shardings(state, batch, self.mesh)
            self._steps[key] = (self._build((in_shardings, out_shardings)), in_shardings[1])
        step, batch_shardings = self._steps[key]
        return step, jax.tree.map(global_batch_array, batch, batch_shardings)

    def __call__(self, state: TrainState, batch: Batch):
        step, batch = self._step_for(state, batch)
        return step(state, batch)

    def lower(self, state: TrainState, batch: Batch):
        step, batch = self._step_for(state, batch)
        return step.lower(state, batch)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How a supervised run goes (pretraining, the warm-up: `train_loop`); a GRPO run's is
    grpo_trainer.GRPOLoopConfig.

    Attributes:
      total_steps: optimizer updates of the whole run (a resumed run stops here too).
      checkpoint_every: save every this many steps, and at the end.
      keep_checkpoints: newest checkpoints kept.
      seed: the base key of TrainState.rng (a fresh run only; a resumed one keeps its own).
      profile_dir: if set, a jax.profiler trace of `profile_steps` steady-state steps.
      profile_steps: traced steps, after the first two steps of the process.
    """

    total_steps: int
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    profile_dir: str | None = None
    profile_steps: int = 3

    def __post_init__(self):
        if self.total_steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("total_steps, checkpoint_every and keep_checkpoints must be >= 1")
        if self.profile_steps < 1:
            raise ValueError("profile_steps must be >= 1")


# Settings a resumed run may change without changing what it computes (check_run_configs), and
# the ones that are paths (compared resolved).
RESUMABLE = ("loop.checkpoint_every", "loop.keep_checkpoints", "loop.profile_dir",
             "loop.profile_steps", "model.remat", "data.window")
PATH_SETTINGS = ("data.dataset", "data.init", "data.teacher_file", "data.relevance")


@contextlib.contextmanager
def stop_at_nonfinite(run_dir: str):
    """Adds to a finite.NonFiniteError raised inside which checkpoint a rerun resumes from."""
    try:
        yield
    except NonFiniteError as e:
        newest = checkpoint.list_checkpoints(run_dir)
        where = f"step {newest[-1][0]} ({newest[-1][1]})" if newest else "none yet"
        raise NonFiniteError(f"{e}: the run stops without saving this step; newest checkpoint: "
                             f"{where}. Lower the learning rate or check the data, then rerun."
                             ) from None


def _shape_key(batch: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((k, np.shape(v), np.asarray(v).dtype.str) for k, v in batch.items()))


def train_loop(run_dir: str, *, model_fn: Callable[[], nnx.Module],
               abstract_fn: Callable[[], nnx.Module], tx: optax.GradientTransformation,
               schedule: optax.Schedule, loss_fn: LossFn,
               batch_fn: Callable[[int], tuple[Mapping[str, np.ndarray], dict]],
               loop: LoopConfig,
               configs: Mapping[str, object], tokenizer=None,
               line: tuple[str, ...] = ("loss", "lr", "grad_norm", "tok_s", "step_s"),
               compiled: dict | None = None, mesh: Mesh | None = None
               ) -> tuple[nnx.Module, TrainState]:
    """Trains until `loop.total_steps`, resuming from RUN_DIR's newest good checkpoint.

    model_fn: the model of a fresh run (a random init, or the `--init` checkpoint's model); not
      called when a checkpoint is restored.
    abstract_fn: builds a model of the same structure, cheaply traceable by nnx.eval_shape
      (e.g. `lambda: Llama(config, rngs=nnx.Rngs(0))`): the restore target's structure.
    batch_fn: step -> (batch, info); the batch must depend on the step only (module docstring);
      info["tokens"] counts the real tokens in it (for tokens/s), other info entries are logged.
    configs: saved with every checkpoint (JSON-able dicts), and compared first with those
      RUN_DIR's checkpoints hold (checkpoint.check_run_configs; RESUMABLE may differ).
    line: the metrics printed on each step's stdout line (all go to JSONL and TensorBoard).
    compiled: compiled steps by batch shape, filled in here; pass the same dict to calls with the
      same model structure, optimizer and loss to compile once (a test's crash and resume).
    mesh: a device mesh (sharding.make_mesh) to train on: the state is placed on it (FSDP) and
      each batch split over it; None = one device.
    Returns the trained model and the final state. Raises finite.NonFiniteError at a step
    whose loss or gradient norm is not finite, before that step is saved.
    """
    checkpoint.check_run_configs(run_dir, configs, may_differ=RESUMABLE, paths=PATH_SETTINGS)
    graphdef, abstract = abstract_train_state(abstract_fn, tx)
    state, path = checkpoint.restore_latest(run_dir, abstract)
    if state is None:
        graphdef, state = init_train_state(model_fn(), tx, seed=loop.seed)
        log.info("fresh start in %s", run_dir)
    else:
        log.info("resumed from %s at step %d", path, int(state.step))
    if mesh is not None:
        state = shard_train_state(state, mesh)
    start = int(state.step)
    step_fn = make_train_step(graphdef, tx, schedule, loss_fn, mesh=mesh)
    compiled = {} if compiled is None else compiled
    profiling = None
    with RunLog(run_dir, total_steps=loop.total_steps, resume_step=start) as run_log:
        for step in range(start, loop.total_steps):
            batch, info = batch_fn(step)
            key = _shape_key(batch)
            if key not in compiled:
                t = time.perf_counter()
                compiled[key] = step_fn.lower(state, batch).compile()
                log.info("compiled the train step for %s in %.1f s",
                         {k: np.shape(v) for k, v in batch.items()}, time.perf_counter() - t)
            if loop.profile_dir and step == start + 2:
                jax.profiler.start_trace(loop.profile_dir)
                profiling = step + loop.profile_steps
            t = time.perf_counter()
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = compiled[key](state, batch)
                metrics = jax.device_get(metrics)  # waits for the step
            seconds = time.perf_counter() - t
            if profiling is not None and step + 1 == profiling:
                jax.profiler.stop_trace()
                log.info("wrote a profile of %d steps to %s", loop.profile_steps, loop.profile_dir)
                profiling = None
            tokens = info.get("tokens", 0)
            record = {k: float(v) for k, v in metrics.items()}
            record.update({k: v for k, v in info.items()},
                          tok_s=tokens / seconds, step_s=seconds)
            run_log.log(step + 1, record, line=line)
            with stop_at_nonfinite(run_dir):
                check_metrics(step + 1, record, ("loss", "grad_norm"))
            if (step + 1) % loop.checkpoint_every == 0 or step + 1 == loop.total_steps:
                t = time.perf_counter()
                saved = checkpoint.save_checkpoint(run_dir, state, step=step + 1, configs=configs,
                                                   tokenizer=tokenizer,
                                                   keep=loop.keep_checkpoints)
                log.info("saved %s in %.1f s", saved, time.perf_counter() - t)
        if profiling is not None:
            jax.profiler.stop_trace()
    return nnx.merge(graphdef, state.params), state
