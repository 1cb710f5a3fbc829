"""The GRPO training run: LESER's search-engine-in-the-loop RL, one step at a time.

One step, for B training queries (sampled from (seed, step), so a resumed run replays the same
queries):

    rollout   render each query's prompt (its top-k products as context), sample N completions
              per prompt at temperature 0.9 with the current policy (rollout.generate_rollouts:
              group layout [q0 x N, q1 x N, ...], group ids alongside, log-probs recorded)
    reward    parse every completion and score it with the search engine (reward.RewardFunction:
              each distinct expansion searched once, relevance in one call per query)
    update    advantages = reward - group mean; reference log-probs from the frozen start
              model (with LoRA: the policy's own frozen base, adapters off); `mu` jitted
              updates of the clipped GRPO loss + KL (grpo.rollout_loss), gradients accumulated
              over micro-batches, train state donated. A group's N rollouts share one run of
              their prompt, in sampling and in the update (model.fork_cache: a shared prefix,
              grpo.completion_logprobs): the prompt (context + query) is several times longer
              than an answer.

Every `eval_every` steps the policy expands a fixed sample of dev queries greedily and at the
training temperature (with a fixed key), metrics.evaluate measures both with judged recall and
nDCG@10, and the reward of those answers is logged beside them: the dev curve of the training
reward, from step 0 (the start policy) on. The step with the best dev reward at the training
temperature is kept in RUN_DIR/best (selection on dev, never on test; step 0 if no update beat
the start), the last in params/. Each step logs one stdout line and, to JSONL and TensorBoard: reward mean/std and each
component, the share of groups whose rewards are all equal (no learning signal), format validity
and each rejection reason, KL, clip fraction, entropy, completion length, tokens/s and seconds by
phase. Checkpoints (checkpoint.save_checkpoint) hold the policy's train state; the reference is
the `--init` model, reloaded on resume.

Before the first step every train and dev prompt is rendered and measured against the model's
window (`check_prompts`): a prompt that cannot fit beside max_new_tokens would otherwise stop the
run at the step that first draws its query, and at that step again on every resume. A step whose
rewards, rollout log-probs, loss or gradient norm are NaN or inf stops the run before its
checkpoint (finite.NonFiniteError), and a run directory saved with other settings is an error
before anything is restored (checkpoint.check_run_configs).

With LoRA (an `init_model` made by lora.add_lora, adapters B = 0) only the adapters are trained
(train.trainable_split) and the base stays as `init_model` had it, so the reference is the policy
with its adapters set to 0: the same base arrays, no second copy of the weights (the point of
LoRA for 3B on one accelerator, tools/memory_plan.py). The checkpoints hold base and adapters
apart, so a resumed run continues from exactly the adapters it saved.

`examples` (prompts.ExampleTurn, sft.few_shot_turns) are worked examples shown before every
prompt, in sampling, the update and the dev evaluation alike: the paper's "GRPO without warm-up"
from an instruction-tuned model, which learns the answer format from the prompt instead.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from leser_jax import checkpoint, grpo
from leser_jax.catalog import Query
from leser_jax.context import ContextConfig
from leser_jax.finite import check_array, check_metrics
from leser_jax.grpo import GRPOConfig
from leser_jax.metrics import evaluate
from leser_jax.policy import PolicySystem
from leser_jax.profiling import StepProfiler, phase
from leser_jax.prompts import (REJECTION_REASONS, AnswerFormat, ExampleTurn, encode_prompt,
                               prompt_for)
from leser_jax.reward import RewardFunction
from leser_jax.rollout import generate_rollouts
from leser_jax.run_log import RunLog, read_metrics
from leser_jax.sharding import param_shardings, shard_train_state
from leser_jax.sampler import SamplingConfig
from leser_jax.tokenizer import Tokenizer
from leser_jax.train import (PATH_SETTINGS, RESUMABLE, TrainState, abstract_train_state,
                             init_train_state, make_train_step, stop_at_nonfinite)

log = logging.getLogger(__name__)

COMPLETION_BUCKET = 32  # the update's completion width is a multiple of this (or max_new_tokens)
# What a resumed GRPO run may change besides train.RESUMABLE: what it evaluates and prints.
# What selects RUN_DIR/best: the reward GRPO optimises, on dev, at its training temperature.
BEST_METRIC = "dev_sampled/reward"
GRPO_RESUMABLE = RESUMABLE + ("loop.eval_every", "loop.eval_queries", "loop.samples_every",
                              "loop.profile_start")
LINE = ("reward", "valid", "effective_groups", "kl", "clip_fraction", "entropy", "length",
        "rollout_s", "reward_s", "update_s", "tok_s")
DEV_LINE = ("dev/judged_recall", "dev/ndcg10", "dev/reward", "dev_sampled/reward",
            "dev_sampled/validity")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOLoopConfig:
    """How a GRPO run goes: its steps, checkpoints, dev evaluation, logged samples and profile
    (train.LoopConfig is the supervised stages' loop).

    Attributes:
      total_steps: GRPO steps of the run.
      checkpoint_every, keep_checkpoints: how often to save, how many to keep.
      eval_every, eval_queries: greedy evaluation on this many dev queries every E steps (0 = off).
      samples_every: print rollout texts every this many steps (0 = never).
      seed: picks each step's queries and sampling keys (with the step number).
      profile_dir, profile_start, profile_steps: a jax.profiler trace of a few steady-state steps.
    """

    total_steps: int
    checkpoint_every: int = 20
    keep_checkpoints: int = 3
    eval_every: int = 0
    eval_queries: int = 64
    samples_every: int = 10
    seed: int = 0
    profile_dir: str | None = None
    profile_start: int = 3
    profile_steps: int = 3

    def __post_init__(self):
        if min(self.total_steps, self.checkpoint_every, self.keep_checkpoints) < 1:
            raise ValueError("total_steps, checkpoint_every and keep_checkpoints must be >= 1")
        if min(self.eval_every, self.eval_queries, self.samples_every) < 0:
            raise ValueError("eval_every, eval_queries and samples_every must be >= 0")


def step_queries(queries: Sequence[Query], n: int, seed: int, step: int) -> list[Query]:
    """The n training queries of a step: a function of (seed, step) only, so resuming replays it."""
    rng = np.random.default_rng([seed, step])
    return [queries[i] for i in rng.choice(len(queries), size=min(n, len(queries)), replace=False)]


def drawn_queries(queries: Sequence[Query], n: int, seed: int, steps: int) -> list[Query]:
    """The distinct queries that steps 0 .. steps - 1 train on (`step_queries`), first draw first:
    what a finished run has seen, to tell learning those queries from generalising beyond them."""
    drawn = {}
    for step in range(steps):
        for query in step_queries(queries, n, seed, step):
            drawn.setdefault(query.query_id, query)
    return list(drawn.values())


def effective_groups(spread: np.ndarray) -> float:
    """(sum_g s_g)^2 / sum_g s_g^2 over a batch's groups, s_g >= 0 the std of group g's rewards
    [B]: B when every group's rewards spread alike, 1 when one group holds all the spread, 0 when
    none does. Without normalize_std a group's advantages, and so its pull on the update, scale
    with s_g, so this counts the groups an update actually learns from."""
    total = float(np.sum(spread))
    return total ** 2 / float(np.sum(np.square(spread))) if total > 0 else 0.0


def reward_metrics(breakdowns, num_rollouts: int) -> dict[str, float]:
    """Step-level reward statistics from the per-rollout breakdowns."""
    rewards = np.array([b.reward for b in breakdowns], np.float64)  # [R]
    groups = rewards.reshape(-1, num_rollouts)  # [B, N]
    valid = [b for b in breakdowns if b.valid]
    spread = groups.std(axis=1)  # [B]
    out = {"reward": rewards.mean(), "reward_std": rewards.std(),
           "equal_groups": float(np.mean(np.ptp(groups, axis=1) == 0)),
           "effective_groups": effective_groups(spread),
           "valid": len(valid) / len(breakdowns)}
    for name in ("r_rel", "r_size", "rel", "page_rel", "expected", "hits", "retrieved",
                 "n_expansions"):
        out[name] = float(np.mean([getattr(b, name) for b in valid])) if valid else 0.0
    reasons = collections.Counter(b.reject_reason for b in breakdowns if not b.valid)
    out.update({f"reject/{r}": reasons.get(r, 0) / len(breakdowns) for r in REJECTION_REASONS})
    return out


@functools.partial(jax.jit, static_argnums=(0, 3))
def reference_logprobs(graphdef, params, batch: grpo.RolloutBatch, temperature: float
                       ) -> jax.Array:
    """Log-probs [R, T] of the batch's completions under the frozen reference model, without
    gradient: what the batch's ref_logp holds once set (it is not read here).

    LoRA adapters in `params` are set to 0 (A and B both, so their path adds exact zeros): the
    reference of a LoRA policy is its base. Without adapters this changes nothing.
    """
    adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
    model = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, adapters), base)
    return grpo.completion_logprobs(model, batch.prompt_tokens, batch.prompt_mask,
                                    batch.completion_tokens, batch.completion_mask, temperature)


@functools.lru_cache(maxsize=8)
def grpo_update(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                config: GRPOConfig, mesh: Mesh | None = None):
    """The jitted, state-donating GRPO update (train.make_train_step with grpo.rollout_loss).

    Cached: trainers of one model structure, optimizer and config (a test's several seeds, a
    crash and resume in one process) share one jitted function, so it compiles once per shape.
    On a mesh: train.MeshTrainStep (shardings derived from each batch's row counts).
    """

    def loss(model, batch, rng):
        del rng  # the loss is deterministic given the rollouts
        return grpo.rollout_loss(model, batch, config)

    return make_train_step(graphdef, tx, schedule, loss, micro_batches=config.micro_batches,
                           mesh=mesh)


class GRPOTrainer:
    """Runs GRPO from a start model (`init_model`, also the frozen reference) in `run_dir`.

    With LoRA (init_model.config.lora_rank > 0) the train state takes init_model's arrays
    without a copy and its updates donate them: do not use init_model (or the model that
    add_lora made it from) afterwards.
    """

    def __init__(self, run_dir: str, *, init_model: nnx.Module, tokenizer: Tokenizer,
                 reward_fn: RewardFunction, train_queries: Sequence[Query],
                 dev_queries: Sequence[Query], catalog, grpo_config: GRPOConfig,
                 tx: optax.GradientTransformation, schedule: optax.Schedule,
                 context: ContextConfig, answer: AnswerFormat, loop: GRPOLoopConfig, configs: dict,
                 examples: Sequence[ExampleTurn] = (), mesh: Mesh | None = None):
        if not train_queries:
            raise ValueError("no training queries")
        self.run_dir, self.tokenizer, self.reward_fn = run_dir, tokenizer, reward_fn
        self.engine = reward_fn.feedback.engine
        self.train_queries, self.dev_queries, self.catalog = train_queries, dev_queries, catalog
        self.config, self.context, self.answer, self.loop = grpo_config, context, answer, loop
        self.tx, self.schedule, self.configs = tx, schedule, configs
        self.examples = tuple(examples)  # worked examples before every prompt (few-shot GRPO)
        self.sampling = SamplingConfig(temperature=grpo_config.temperature,
                                       max_new_tokens=grpo_config.max_new_tokens)
        model_config = init_model.config
        self.lora = model_config.lora_rank > 0
        # The reference: init_model's arrays; with LoRA, the train state's (train_step).
        self.ref_params = None if self.lora else nnx.split(init_model)[1]
        self.model_config = model_config
        checkpoint.check_run_configs(run_dir, configs, may_differ=GRPO_RESUMABLE,
                                     paths=PATH_SETTINGS)
        graphdef, abstract = abstract_train_state(
            lambda: type(init_model)(model_config, rngs=nnx.Rngs(0)), tx)
        state, path = checkpoint.restore_latest(run_dir, abstract)
        if state is None:
            if self.lora:  # the base is never updated and is the reference: no copy
                params = nnx.state(init_model)
            else:  # a copy: each update donates the train state, the reference must survive it
                params = jax.tree.map(lambda x: x.copy(), self.ref_params)
            graphdef, state = init_train_state(nnx.merge(graphdef, params), tx, seed=loop.seed)
            log.info("GRPO: fresh start in %s", run_dir)
        else:
            log.info("GRPO: resumed from %s at step %d", path, int(state.step))
        if mesh is not None:  # FSDP: params, optimizer state and the reference split over it
            state = shard_train_state(state, mesh)
            if self.ref_params is not None:
                self.ref_params = jax.device_put(self.ref_params,
                                                 param_shardings(self.ref_params, mesh))
        self.mesh = mesh
        self.graphdef, self.state = graphdef, state
        self.update = grpo_update(graphdef, tx, schedule, grpo_config, mesh)
        self._prompts: dict[str, str] = {}  # query text -> prompt (contexts repeat across steps)
        # The last step's batch (tools/bench_grpo); its ref_logp is None if it made no update.
        self.last_batch: grpo.RolloutBatch | None = None

    def prompt(self, query: str) -> str:
        if query not in self._prompts:
            self._prompts[query] = prompt_for(query, self.engine, self.context, self.answer)
        return self._prompts[query]

    def check_prompts(self) -> None:
        """Raises ValueError, before any step, if a train or dev query's prompt (rendered and
        cached here) leaves less than max_new_tokens of the model's max_seq_len."""
        limit = self.model_config.max_seq_len - self.config.max_new_tokens
        t = time.perf_counter()
        lengths = {q.text: len(encode_prompt(self.tokenizer, self.prompt(q.text), self.examples))
                   for q in [*self.train_queries, *self.dev_queries]}
        too_long = {q: n for q, n in lengths.items() if n > limit}
        log.info("GRPO: %d train and dev prompts measured in %.1f s: longest %d tokens, the "
                 "model's window leaves %d", len(lengths), time.perf_counter() - t,
                 max(lengths.values()), limit)
        if too_long:
            query, n = max(too_long.items(), key=lambda item: item[1])
            raise ValueError(
                f"{len(too_long)} of {len(lengths)} train and dev prompts are longer than the "
                f"{limit} tokens that max_seq_len {self.model_config.max_seq_len} leaves beside "
                f"max_new_tokens {self.config.max_new_tokens}; the longest, {n} tokens, is "
                f"query {query[:80]!r}. Lower the context's token budget or max_new_tokens.")

    def train_step(self, step: int) -> tuple[dict, list[str], list]:
        """One GRPO step (module docstring); returns its metrics, prompts' queries and breakdowns."""
        c = self.config
        queries = step_queries(self.train_queries, c.queries_per_step, self.loop.seed, step)
        timing = {}
        t = time.perf_counter()
        with phase("rollout"):
            rollouts = generate_rollouts(
                self.graphdef, self.state.params, self.tokenizer, [self.prompt(q.text) for q in queries],
                num_rollouts=c.num_rollouts, sampling=self.sampling,
                base_key=jax.random.key(self.loop.seed), step=step, examples=self.examples,
                mesh=self.mesh)
        timing["rollout_s"] = time.perf_counter() - t
        timing.update(prefill_s=rollouts.timing["prefill_s"], decode_s=rollouts.timing["decode_s"])
        t = time.perf_counter()
        with phase("reward"):
            originals = [queries[g].text for g in rollouts.group_ids]
            breakdowns = self.reward_fn(originals, rollouts.texts)
            rewards = np.array([b.reward for b in breakdowns], np.float32)  # [R]
        # A NaN policy samples garbage that earns reward 0 in every group, so no update would
        # ever fail: its log-probs are where it shows.
        check_array(step + 1, "the rollouts' log-probs",
                    rollouts.logprobs[rollouts.completion_mask])
        check_array(step + 1, "the rewards", rewards)
        timing["reward_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with phase("update"):
            # Each group's prompt once: the loss runs it once per group (grpo.completion_logprobs).
            # Completion columns past the longest completion are all padding: cut them, to a
            # multiple of COMPLETION_BUCKET so the update compiles for a few widths only.
            T = min(rollouts.completion_tokens.shape[1],
                    -(-int(rollouts.lengths.max()) // COMPLETION_BUCKET) * COMPLETION_BUCKET)
            advantages = np.asarray(grpo.group_advantages(rewards, c.num_rollouts,
                                                          normalize_std=c.normalize_std))
            batch = grpo.RolloutBatch(prompt_tokens=rollouts.group_prompt_tokens,
                                      prompt_mask=rollouts.group_prompt_mask,
                                      completion_tokens=rollouts.completion_tokens[:, :T],
                                      completion_mask=rollouts.completion_mask[:, :T],
                                      old_logp=rollouts.logprobs[:, :T], advantages=advantages)
            if advantages.any():
                # The reference scores the completions only when an update follows.
                ref = self.state.params if self.lora else self.ref_params
                batch = batch.replace(
                    ref_logp=reference_logprobs(self.graphdef, ref, batch, c.temperature))
                for _ in range(c.mu):
                    self.state, update_metrics = self.update(self.state, batch)
                update_metrics = dict(jax.device_get(update_metrics), skipped_update=0.0)
                check_metrics(step + 1, update_metrics, ("loss", "grad_norm"))
            else:
                # Every group's rewards are equal (e.g. no answer parses): the policy-gradient
                # term is exactly 0 and the KL term's gradient is float rounding while the policy
                # is at the reference, which Adam would scale up to lr-sized random steps: a
                # random walk away from the reference. No update; the step count (and so the
                # schedule) moves on as if the mu updates were made, so a resumed run stays aligned.
                self.state = self.state.replace(step=self.state.step + c.mu)
                update_metrics = {"skipped_update": 1.0}
        timing["update_s"] = time.perf_counter() - t
        self.last_batch = batch
        step_s = timing["rollout_s"] + timing["reward_s"] + timing["update_s"]
        tokens = int(rollouts.lengths.sum())
        metrics = {**reward_metrics(breakdowns, c.num_rollouts), **timing,
                   **{k: float(v) for k, v in update_metrics.items()},
                   "length": float(rollouts.lengths.mean()), "step_s": step_s,
                   "tok_s": tokens / timing["rollout_s"], "rollouts_s": len(rewards) / step_s}
        return metrics, [q.text for q in queries], list(zip(originals, rollouts.texts, breakdowns))

    def evaluate_dev(self) -> dict[str, float]:
        """The fixed dev sample (the first `eval_queries` dev queries) expanded greedily (dev/*)
        and at the training temperature with the run's fixed key (dev_sampled/*: the
        distribution GRPO optimises, the same draw at every evaluation), each measured as in
        evaluation (judged recall, nDCG@10, gains, validity) with the mean reward of its answers
        (…/reward)."""
        queries = self.dev_queries[:self.loop.eval_queries]
        out = {}
        for prefix, temperature in (("dev", 0.0), ("dev_sampled", self.config.temperature)):
            system = PolicySystem(
                self.graphdef, self.state.params, self.tokenizer, self.engine,
                context=self.context, answer=self.answer, seed=self.loop.seed,
                sampling=SamplingConfig(temperature=temperature,
                                        max_new_tokens=self.config.max_new_tokens),
                examples=self.examples)
            result = evaluate(system, queries, self.catalog, self.reward_fn.feedback,
                              bootstrap_samples=200)
            texts = [t for batch in system.texts.values() for t in batch]  # in query order
            rewards = [b.reward for b in self.reward_fn([q.text for q in queries], texts)]
            out.update({f"{prefix}/{name}": e.mean for name, e in result.metrics.items()},
                       **{f"{prefix}/reward": float(np.mean(rewards))})
        return out

    def keep_if_best(self, step: int, metrics: dict[str, float]) -> None:
        """Saves the policy to RUN_DIR/best (with best.json: step and value) when its dev reward
        at the training temperature is the best of the run so far: the checkpoint selected on
        dev, never on test, beside the last one in params/."""
        value = metrics[BEST_METRIC]
        path = os.path.join(self.run_dir, "best.json")
        try:
            with open(path) as f:
                if json.load(f)[BEST_METRIC] >= value:
                    return
        except (OSError, ValueError, KeyError):
            pass  # none yet, or a torn record: this one is the best so far
        checkpoint.save_params(os.path.join(self.run_dir, "best"), self.policy(), overwrite=True,
                               tokenizer=self.tokenizer)
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step, BEST_METRIC: value}, f)
        os.replace(path + ".tmp", path)
        log.info("GRPO: step %d has the best %s so far (%.4f): saved to best/", step,
                 BEST_METRIC, value)

    def run(self) -> TrainState:
        loop = self.loop
        start = int(self.state.step) // self.config.mu  # a GRPO step makes mu optimizer updates
        profiler = StepProfiler(loop.profile_dir, start_step=start + loop.profile_start,
                                num_steps=loop.profile_steps)
        if start < loop.total_steps:
            self.check_prompts()
        with RunLog(self.run_dir, total_steps=loop.total_steps, resume_step=start) as run_log:
            if start == 0 and loop.eval_every:
                # The dev curve's first point: the policy GRPO starts from (step 0, no update).
                metrics = self.evaluate_dev()
                run_log.log(0, metrics, line=DEV_LINE)
                self.keep_if_best(0, metrics)
            for step in range(start, loop.total_steps):
                with profiler.step(step), stop_at_nonfinite(self.run_dir):
                    metrics, _, samples = self.train_step(step)
                line = LINE
                if loop.eval_every and (step + 1) % loop.eval_every == 0:
                    metrics.update(self.evaluate_dev())
                    self.keep_if_best(step + 1, metrics)
                    line = LINE + DEV_LINE  # the dev curve's point, printed with the step
                run_log.log(step + 1, metrics, line=line)
                if loop.samples_every and (step + 1) % loop.samples_every == 0:
                    # One group: its N rollouts of one query, side by side.
                    shown = "\n\n".join(
                        f"q={query!r} reward={b.reward:.3f} ({b.reject_reason or 'valid'})\n{text}"
                        for query, text, b in samples[:self.config.num_rollouts])
                    log.info("rollouts of step %d:\n%s", step + 1, shown)
                    run_log.text(step + 1, "rollouts", shown)
                if (step + 1) % loop.checkpoint_every == 0 or step + 1 == loop.total_steps:
                    checkpoint.save_checkpoint(self.run_dir, self.state, step=step + 1,
                                               configs=self.configs, tokenizer=self.tokenizer,
                                               keep=loop.keep_checkpoints)
        profiler.close()
        return self.state

    def policy(self) -> nnx.Module:
        """The current policy as a model (shares the train state's arrays)."""
        return nnx.merge(self.graphdef, self.state.params)

    def summary(self, window: int = 10) -> dict[str, float]:
        """Mean reward and validity of the first and last `window` steps, from metrics.jsonl."""
        records = [r for r in read_metrics(self.run_dir) if "reward" in r]
        w = max(1, min(window, len(records) // 2))
        first, last = records[:w], records[-w:]

        def mean(rs, name):
            return float(np.mean([r[name] for r in rs])) if rs else float("nan")

        return {"window": w, "reward_first": mean(first, "reward"),
                "reward_last": mean(last, "reward"), "valid_first": mean(first, "valid"),
                "valid_last": mean(last, "valid")}
