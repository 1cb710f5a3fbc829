"""GRPO end to end on a tiny synthetic catalog: it learns, it resumes, it accumulates exactly.

The start policy. A tiny model is fine-tuned (one shared fixture, ~30 s) on two answers per train
query, equally often: the category of the query's top product (the context shows it), and a
random other category. Sampled at T = 0.9 it therefore writes either, plus some malformed
answers, so the rollouts of a group differ in reward. The search engine prefers the right
category (it adds relevant products; a wrong one fills the first page with irrelevant ones:
reward 1.04 against 0.79 on average over the train queries under reward version 2, and higher
for 86% of them), so
GRPO should move the policy towards copying the context's category and writing valid answers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leser_jax import checkpoint, evaluation, grpo, lm_data
from leser_jax.catalog import Query
from leser_jax.config import ModelConfig
from leser_jax.context import ContextConfig
from leser_jax.finite import NonFiniteError
from leser_jax.data.synthetic import SyntheticConfig, generate
from leser_jax.grpo import GRPOConfig
from leser_jax.grpo_trainer import (BEST_METRIC, GRPOLoopConfig, GRPOTrainer, effective_groups,
                                    drawn_queries, reward_metrics, step_queries)
from leser_jax.model import Llama
from leser_jax.optim import OptimConfig, make_optimizer
from leser_jax.prompts import (INSTRUCTION, AnswerFormat, ExampleTurn, encode_prompt,
                               parse_answer, prompt_for, render_answer)
from leser_jax.relevance import RelevanceConfig, RelevanceModel
from leser_jax.reward import RewardBreakdown, RewardConfig, RewardFunction, SearchFeedback
from leser_jax.rollout import generate_rollouts
from leser_jax.sampler import SamplingConfig
from leser_jax.search import SearchEngine
from leser_jax.tokenizer import train_sentencepiece
from leser_jax.train import init_train_state, make_train_step, masked_lm_loss
from tests._tolerance import GRAD_RTOL, assert_close

SYNTHETIC = SyntheticConfig(num_products=600, num_queries=150, seed=0)
CONTEXT = ContextConfig(k=1, max_tokens=24, max_attributes=1)
GRPO = GRPOConfig(queries_per_step=8, max_new_tokens=32)
SFT_STEPS = 120


class Setup:
    """Catalog, engine, relevance model, tokenizer and the mixed-habit start policy."""

    def __init__(self):
        self.catalog = generate(SYNTHETIC)
        self.engine = SearchEngine.build(self.catalog)
        self.relevance = RelevanceModel.train(self.engine, RelevanceConfig())
        self.tokenizer = train_sentencepiece(
            lm_data.catalog_documents(self.catalog) + [INSTRUCTION.format(m_max=5)] * 50,
            vocab_size=512, seed=0)
        self.train = self.catalog.split("train")
        self.model = self._fine_tune()

    def reward_fn(self) -> RewardFunction:
        return RewardFunction(SearchFeedback(self.engine, self.relevance, RewardConfig()))

    def _fine_tune(self) -> Llama:
        categories = sorted({p.attributes["category"] for p in self.catalog.products})
        rng = np.random.default_rng(0)
        examples = []
        for q in self.train:
            top = self.catalog.products[int(self.engine.search(q.text, 1).rows[0])]
            right = top.attributes["category"]
            wrong = rng.choice([c for c in categories if c != right])
            prompt = prompt_for(q.text, self.engine, CONTEXT)
            for category in (right, wrong):
                examples.append(lm_data.encode_example(self.tokenizer, prompt,
                                                       render_answer("", [str(category)])))
        config = ModelConfig.tiny().replace(vocab_size=self.tokenizer.vocab_size, max_seq_len=512)
        tx, schedule = make_optimizer(OptimConfig(lr=3e-3, total_steps=SFT_STEPS, warmup_steps=10,
                                                  weight_decay=0.0))
        graphdef, state = init_train_state(Llama(config, rngs=nnx.Rngs(0)), tx, seed=0)
        step = make_train_step(graphdef, tx, schedule, masked_lm_loss)
        for s in range(SFT_STEPS):
            batch, _ = lm_data.example_batch(examples, 16, 0, s, bucket=64,
                                             pad_id=self.tokenizer.pad_id)
            state, _ = step(state, batch)
        return nnx.merge(graphdef, state.params)

    @functools.cache
    def optimizer(self, lr: float, updates: int):
        # One optimizer object per setting: trainers that share it share one compiled update
        # (grpo_trainer.grpo_update).
        return make_optimizer(OptimConfig(lr=lr, total_steps=updates, warmup_steps=0,
                                          weight_decay=0.0))

    def trainer(self, run_dir, *, seed: int, steps: int, lr: float = 1e-3,
                checkpoint_every: int = 1000, grpo_config: GRPOConfig = GRPO,
                model: Llama | None = None, train_queries=None, context=CONTEXT,
                configs=None) -> GRPOTrainer:
        tx, schedule = self.optimizer(lr, steps * grpo_config.mu)
        return GRPOTrainer(
            str(run_dir), init_model=model or self.model, tokenizer=self.tokenizer,
            reward_fn=self.reward_fn(), train_queries=train_queries or self.train,
            dev_queries=self.catalog.split("dev"), catalog=self.catalog, grpo_config=grpo_config,
            tx=tx, schedule=schedule, context=context, answer=AnswerFormat(),
            loop=GRPOLoopConfig(total_steps=steps, checkpoint_every=checkpoint_every,
                                samples_every=0, seed=seed), configs=configs or {})

    def mean_reward(self, graphdef, params) -> float:
        """Mean reward of 2 completions per train query, sampled with one fixed key."""
        queries = [q.text for q in self.train]
        rollouts = generate_rollouts(
            graphdef, params, self.tokenizer,
            [prompt_for(q, self.engine, CONTEXT) for q in queries], num_rollouts=2,
            sampling=SamplingConfig(temperature=GRPO.temperature,
                                    max_new_tokens=GRPO.max_new_tokens),
            base_key=jax.random.key(123), step=0)
        rewards = self.reward_fn()([queries[g] for g in rollouts.group_ids], rollouts.texts)
        return float(np.mean([b.reward for b in rewards]))


# Setup() fits the relevance model and fine-tunes a tiny policy, the costliest fixture: every test
# that uses it is marked slow, the quick ones too, so that `make test-fast` never builds it.
@pytest.fixture(scope="module")
def setup():
    return Setup()


def test_drawn_queries_are_every_steps_queries_once_first_draw_first():
    queries = [Query(query_id=str(i), text=f"query {i}") for i in range(12)]
    steps = [step_queries(queries, 3, 5, step) for step in range(6)]
    want = list(dict.fromkeys(q for step in steps for q in step))
    assert drawn_queries(queries, 3, 5, 6) == want
    assert 3 < len(want) < 18  # some drawn twice, some never: the test tells both apart
    assert drawn_queries(queries, 3, 5, 0) == []


@pytest.mark.slow
def test_grpo_raises_mean_reward_by_more_than_the_spread_across_seeds(setup, tmp_path):
    before = setup.mean_reward(*nnx.split(setup.model))
    after = []
    for seed in (0, 1, 2):
        trainer = setup.trainer(tmp_path / f"seed{seed}", seed=seed, steps=20)
        trainer.run()
        after.append(setup.mean_reward(trainer.graphdef, trainer.state.params))
        # The log has every step, with the reward's parts and the update's statistics.
        records = [json.loads(line) for line in
                   (tmp_path / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(1, 21))
        assert {"reward", "reward_std", "equal_groups", "valid", "kl", "clip_fraction",
                "entropy", "length", "rollout_s", "reward_s", "update_s"} <= set(records[-1])
    gains = np.array(after) - before
    spread = max(after) - min(after)
    # Seen (reward version 2): before 0.61, after 0.85 / 0.87 / 0.87 (gains 0.24-0.26, spread
    # 0.015).
    assert gains.min() > 0, (before, after)
    assert gains.mean() > spread, (before, after)


@pytest.mark.slow
def test_killed_and_resumed_grpo_run_equals_the_uninterrupted_run(setup, tmp_path):
    straight = setup.trainer(tmp_path / "straight", seed=5, steps=2, checkpoint_every=1)
    straight.run()
    # "Killed" after step 1: the process stops after the step's checkpoint.
    killed = setup.trainer(tmp_path / "resumed", seed=5, steps=2, checkpoint_every=1)
    killed.train_step(0)
    checkpoint.save_checkpoint(tmp_path / "resumed", killed.state, step=1, configs={})
    del killed
    resumed = setup.trainer(tmp_path / "resumed", seed=5, steps=2, checkpoint_every=1)
    assert int(resumed.state.step) == 1
    resumed.run()  # step 2 only: its queries and keys are those of (seed 5, step 1)
    assert int(resumed.state.step) == int(straight.state.step) == 2
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), resumed.state.params,
                        straight.state.params)
    assert all(jax.tree.leaves(same))
    moved = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), straight.state.params,
                         nnx.split(setup.model)[1])
    assert not all(jax.tree.leaves(moved))  # the comparison is not between two untouched copies


class ConstantReward:
    """Every rollout gets the same reward: no group has a learning signal."""

    def __init__(self, reward_fn):
        self.feedback, self.config = reward_fn.feedback, reward_fn.config

    def __call__(self, queries, completions):
        return [_breakdown(0.0, "bad_json") for _ in completions]


@pytest.mark.slow
def test_a_step_without_signal_makes_no_update(setup, tmp_path):
    trainer = setup.trainer(tmp_path / "flat", seed=1, steps=2)
    trainer.reward_fn = ConstantReward(trainer.reward_fn)
    before = jax.tree.map(np.asarray, trainer.state.params)
    metrics, _, _ = trainer.train_step(0)
    assert metrics["skipped_update"] == 1.0 and metrics["equal_groups"] == 1.0
    assert int(trainer.state.step) == GRPO.mu  # the schedule moves on
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))), before,
                        trainer.state.params)
    assert all(jax.tree.leaves(same))


# ----------------------------------------------------------------------------- faults (issue 18)

LONG_QUERY = Query(query_id="long", text="ergonomic office chair with lumbar support " * 120)


@pytest.mark.slow
def test_a_long_query_is_cut_in_its_prompt_instead_of_stopping_the_run(setup, tmp_path):
    """A 5,160-character train query used to stop GRPO at the step that drew it (its prompt
    does not fit the window), at that step again on every resume."""
    queries = [LONG_QUERY, *setup.train[:GRPO.queries_per_step - 1]]  # every step draws it
    trainer = setup.trainer(tmp_path, seed=0, steps=1, train_queries=queries)
    trainer.run()
    assert int(trainer.state.step) == GRPO.mu
    shown = LONG_QUERY.text[:CONTEXT.max_query_chars]
    assert f"<query>{shown}</query>" in trainer.prompt(LONG_QUERY.text)


@pytest.mark.slow
def test_a_prompt_that_cannot_fit_stops_the_run_before_its_first_step(setup, tmp_path):
    uncut = dataclasses.replace(CONTEXT, max_query_chars=len(LONG_QUERY.text))
    trainer = setup.trainer(tmp_path, seed=0, steps=2, context=uncut,
                            train_queries=[LONG_QUERY, *setup.train])
    limit = setup.model.config.max_seq_len - GRPO.max_new_tokens
    with pytest.raises(ValueError, match=rf"1 of \d+ train and dev prompts are longer than the "
                                         rf"{limit} tokens .* query 'ergonomic office chair"):
        trainer.run()
    assert not os.path.exists(tmp_path / "metrics.jsonl")
    assert checkpoint.list_checkpoints(tmp_path) == []


@pytest.mark.slow
def test_worked_examples_come_before_every_rollout_prompt(setup, tmp_path):
    """Few-shot GRPO: the examples are in what the policy samples from and what the update
    scores (the batch's prompt rows), and in the length check of every prompt."""
    example = ExampleTurn(prompt_for(setup.train[0].text, setup.engine, CONTEXT),
                          render_answer("", ["office chair"]))
    trainer = setup.trainer(tmp_path, seed=0, steps=1)
    trainer.examples = (example,)
    trainer.run()
    queries = step_queries(setup.train, GRPO.queries_per_step, 0, 0)
    rows = trainer.last_batch.prompt_tokens
    masks = trainer.last_batch.prompt_mask
    for q, row, mask in zip(queries, rows, masks):
        want = encode_prompt(setup.tokenizer, trainer.prompt(q.text), [example])
        assert row[mask].tolist() == want
        assert len(want) > len(encode_prompt(setup.tokenizer, trainer.prompt(q.text)))
    trainer.examples = (example,) * 20  # 20 examples leave no room in the 512-token window
    with pytest.raises(ValueError, match="train and dev prompts are longer than"):
        trainer.check_prompts()


@pytest.mark.slow
def test_best_dev_checkpoint_moves_only_when_the_dev_reward_improves(setup, tmp_path):
    trainer = setup.trainer(tmp_path, seed=0, steps=1)
    for step, value in ((4, 0.5), (8, 0.4), (12, 0.6), (16, 0.6)):
        trainer.keep_if_best(step, {BEST_METRIC: value})
        best = json.loads((tmp_path / "best.json").read_text())
        assert best == {"step": {4: 4, 8: 4, 12: 12, 16: 12}[step],
                        BEST_METRIC: {4: 0.5, 8: 0.5, 12: 0.6, 16: 0.6}[step]}
    assert checkpoint.load_init(str(tmp_path / "best"))[1] == setup.model.config


class NaNReward:
    """The reward function with one rollout's reward NaN (a bug in a reward, say)."""

    def __init__(self, reward_fn):
        self.inner, self.feedback = reward_fn, reward_fn.feedback

    def __call__(self, queries, completions):
        out = self.inner(queries, completions)
        return [dataclasses.replace(out[0], reward=float("nan")), *out[1:]]


@pytest.mark.slow
def test_nonfinite_rewards_or_policy_stop_grpo_before_its_checkpoint(setup, tmp_path):
    trainer = setup.trainer(tmp_path / "reward", seed=0, steps=2, checkpoint_every=1)
    trainer.reward_fn = NaNReward(trainer.reward_fn)
    with pytest.raises(NonFiniteError, match=r"step 1: 1 of 32 values of the rewards are NaN "
                                             r".*newest checkpoint: none yet"):
        trainer.run()
    assert checkpoint.list_checkpoints(tmp_path / "reward") == []
    # A NaN policy samples tokens that earn reward 0 in every group: no update would ever fail.
    graphdef, params = nnx.split(setup.model)
    nan_model = nnx.merge(graphdef, jax.tree.map(lambda x: x * jnp.nan, params))
    trainer = setup.trainer(tmp_path / "policy", seed=0, steps=2, model=nan_model)
    with pytest.raises(NonFiniteError, match="step 1: .* of the rollouts' log-probs are NaN"):
        trainer.run()


@pytest.mark.slow
def test_a_run_dir_saved_with_other_settings_is_refused(setup, tmp_path):
    trainer = setup.trainer(tmp_path, seed=0, steps=1, configs={"reward": {"lam": 0.1}})
    checkpoint.save_checkpoint(tmp_path, trainer.state, step=1, configs=trainer.configs)
    with pytest.raises(checkpoint.CheckpointMismatch, match="reward.lam: 0.1 there, 0.5 now"):
        setup.trainer(tmp_path, seed=0, steps=1, configs={"reward": {"lam": 0.5}})


def _rollout_batch(Q=4, N=2, P=6, T=5, V=64, seed=0):
    rng = np.random.default_rng(seed)
    R = Q * N
    prompt_mask = np.ones((Q, P), bool)
    prompt_mask[::3, :2] = False  # left padding on some prompts
    completion_mask = np.arange(T)[None] < rng.integers(1, T + 1, R)[:, None]
    return grpo.RolloutBatch(prompt_tokens=rng.integers(4, V, (Q, P)).astype(np.int32),
                             prompt_mask=prompt_mask,
                             completion_tokens=rng.integers(4, V, (R, T)).astype(np.int32),
                             completion_mask=completion_mask,
                             old_logp=rng.normal(-3, 0.3, (R, T)).astype(np.float32),
                             ref_logp=rng.normal(-3, 0.3, (R, T)).astype(np.float32),
                             advantages=rng.normal(0, 1, R).astype(np.float32))


@pytest.mark.slow
def test_micro_batched_update_equals_the_full_batch_update():
    config = ModelConfig.tiny().replace(vocab_size=64, num_layers=1)
    batch = _rollout_batch()
    # Plain SGD with lr 1: new params = params - gradient, so equal params mean equal gradients
    # (Adam's first step, about lr * sign(g), would magnify rounding in near-zero entries).
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    results = {}
    for m in (1, 2, 4):
        grpo_config = GRPOConfig(queries_per_step=4, num_rollouts=2, micro_batches=m)
        graphdef, state = init_train_state(Llama(config, rngs=nnx.Rngs(0)), tx, seed=0)
        step = make_train_step(graphdef, tx, schedule,
                               lambda model, b, rng: grpo.rollout_loss(model, b, grpo_config),
                               micro_batches=m)
        state, metrics = step(state, batch)
        results[m] = (state.params, metrics)
    for m in (2, 4):
        # abs: a GRPO loss near 0 is a mean of terms A * ratio of order 1, rounded at that scale.
        assert float(results[m][1]["loss"]) == pytest.approx(float(results[1][1]["loss"]),
                                                             rel=1e-5, abs=1e-6)
        assert float(results[m][1]["grad_norm"]) == pytest.approx(
            float(results[1][1]["grad_norm"]), rel=1e-4)
        for a, b in zip(jax.tree.leaves(results[m][0]), jax.tree.leaves(results[1][0])):
            assert_close(a, b, rtol=GRAD_RTOL)
    with pytest.raises(ValueError, match="does not split"):
        make_train_step(graphdef, tx, schedule, masked_lm_loss, micro_batches=3)(
            state, batch)


def _breakdown(reward, reason=None):
    valid = reason is None
    return RewardBreakdown(reward=reward, r_rel=reward, r_size=0.0, rel=0.5, hits=1, rel0=0.5,
                           hits0=1, retrieved=40, n_expansions=int(valid), valid=valid,
                           reject_reason=reason)


def test_reward_metrics_count_equal_groups_and_rejections():
    # Two groups of N = 3: [1, 1, 1] (all equal: no signal) and [0 (bad_json), 2, 0 (empty)].
    b = [_breakdown(1.0), _breakdown(1.0), _breakdown(1.0),
         _breakdown(0.0, "bad_json"), _breakdown(2.0), _breakdown(0.0, "empty")]
    m = reward_metrics(b, num_rollouts=3)
    assert m["reward"] == pytest.approx(5 / 6)
    assert m["equal_groups"] == 0.5
    assert m["effective_groups"] == pytest.approx(1.0)  # only the second group spreads
    assert m["valid"] == pytest.approx(4 / 6)
    assert m["reject/bad_json"] == pytest.approx(1 / 6) and m["reject/empty"] == pytest.approx(1 / 6)
    assert m["reject/too_many"] == 0
    assert m["r_rel"] == pytest.approx(5 / 4)  # the mean over valid rollouts only


def test_effective_groups_counts_the_groups_that_carry_the_spread():
    assert effective_groups(np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(4.0)
    assert effective_groups(np.array([3.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_groups(np.zeros(4)) == 0.0
    # One group 10x wider than three others: the update learns from little more than one query.
    assert effective_groups(np.array([10.0, 1.0, 1.0, 1.0])) == pytest.approx(169 / 103)


def _launch_grpo(setup, tmp_path, run_dir, *extra, xla_flags=""):
    """Runs experiments.grpo (tiny preset, 2 steps) from setup's model; returns its stderr."""
    init, relevance = tmp_path / "init", tmp_path / "relevance"
    if not init.exists():
        checkpoint.save_params(init, setup.model, tokenizer=setup.tokenizer)
        setup.relevance.save(str(relevance))
    command = [sys.executable, "-m", "experiments.grpo", "--preset=tiny",
               f"--synthetic_products={SYNTHETIC.num_products}",
               f"--synthetic_queries={SYNTHETIC.num_queries}", f"--init={init}",
               f"--relevance={relevance}", f"--run_dir={run_dir}", "--steps=2",
               f"--context_k={CONTEXT.k}", f"--context_max_tokens={CONTEXT.max_tokens}",
               "--max_new_tokens=32", *extra]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    out = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def _step_records(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "text" not in r]


@pytest.mark.slow
def test_launcher_on_an_8_device_mesh_matches_one_device(setup, tmp_path):
    """The same launcher on 8 simulated CPU devices (--mesh_data=2 --mesh_fsdp=4: FSDP params,
    rollout rows split) samples the same rollouts and makes the same updates as on one."""
    _launch_grpo(setup, tmp_path, tmp_path / "one", "--eval_every=0")
    log = _launch_grpo(setup, tmp_path, tmp_path / "mesh", "--eval_every=0", "--mesh_data=2",
                       "--mesh_fsdp=4", xla_flags="--xla_force_host_platform_device_count=8")
    assert "device mesh {'data': 2, 'fsdp': 4} over 8 devices" in log
    one, mesh = _step_records(tmp_path / "one"), _step_records(tmp_path / "mesh")
    assert [r["step"] for r in mesh] == [1, 2]
    for a, b in zip(one, mesh):
        # Step 1 samples from the same params with the same key; step 2 from params that equal
        # up to float rounding (tests/test_sharding.py), so the same tokens and rewards.
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-6)  # a mean of rewards of order 1
        assert b["length"] == a["length"]
        assert b["skipped_update"] == a["skipped_update"]
        if not a["skipped_update"]:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    final_one = checkpoint.load_init(str(tmp_path / "one" / "params"))[0]
    final_mesh = checkpoint.load_init(str(tmp_path / "mesh" / "params"))[0]
    # Adam's first steps are about lr * sign(g): where g is ~0, float rounding of the sharded
    # reductions can move a weight by a fraction of lr (1e-3 here; measured <= 1.4e-5), while a
    # wrong update would be off by ~lr at every weight.
    for x, y in zip(jax.tree.leaves(nnx.state(final_one)), jax.tree.leaves(nnx.state(final_mesh))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)


@pytest.mark.slow
def test_launcher_trains_and_writes_params(setup, tmp_path):
    """experiments.grpo end to end in a subprocess (resuming is tested in-process above), with
    one worked example before every prompt (--few_shot: the teacher answers a train query)."""
    run_dir = tmp_path / "grpo"
    _launch_grpo(setup, tmp_path, run_dir, "--eval_every=2", "--eval_queries=8",
                 "--samples_every=1", "--few_shot=1")
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["steps"] == 2 and done["configs"]["context"]["k"] == CONTEXT.k
    # The example is recorded with the run, and evaluation shows it to the policy again.
    [example] = evaluation.trained_examples(run_dir / "params")
    assert example == ExampleTurn(**done["configs"]["few_shot"][0])
    assert example.prompt.splitlines()[-1].removeprefix("<query>").removesuffix("</query>") in {
        q.text for q in setup.train}
    assert parse_answer(example.answer).valid
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = _step_records(run_dir)
    assert [r["step"] for r in steps] == [0, 1, 2]  # step 0: the start policy on dev, no update
    assert "reward" not in steps[0] and "dev/relevance_gain" not in steps[1]
    # The dev curve: greedy and at the training temperature, judged recall and the reward; the
    # step of the best dev reward at the training temperature is kept apart from the last.
    for prefix in ("dev", "dev_sampled"):
        assert {f"{prefix}/judged_recall", f"{prefix}/ndcg10", f"{prefix}/reward",
                f"{prefix}/validity"} <= set(steps[0]) & set(steps[2])
    dev = {r["step"]: r["dev_sampled/reward"] for r in (steps[0], steps[2])}
    best_step = 2 if dev[2] > dev[0] else 0  # a tie keeps the earlier
    best = json.loads((run_dir / "best.json").read_text())
    assert best == {"step": best_step, "dev_sampled/reward": dev[best_step]}
    assert checkpoint.load_init(str(run_dir / "best"))[1] == setup.model.config
    assert any("rollouts" in r.get("text", {}) for r in records)
    model, config, tokenizer = checkpoint.load_init(str(run_dir / "params"))
    assert config == setup.model.config and tokenizer.vocab_size == setup.tokenizer.vocab_size


@pytest.mark.slow
def test_launcher_trains_lora_adapters_with_remat(setup, tmp_path):
    """--lora_rank with --remat: the rematerialised blocks sample (the sampler runs them plain)
    and differentiate the adapters past the frozen base (both once failed: tests/test_remat.py);
    the exported params are the merged model, saved without the remat switch."""
    run_dir = tmp_path / "lora_remat"
    _launch_grpo(setup, tmp_path, run_dir, "--eval_every=0", "--lora_rank=2", "--remat")
    steps = _step_records(run_dir)
    assert [r["step"] for r in steps] == [1, 2]
    assert all(np.isfinite(r["reward"]) for r in steps)
    updated = [r for r in steps if not r["skipped_update"]]
    assert updated and all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in updated)
    _, config, _ = checkpoint.load_init(str(run_dir / "params"))
    assert config == setup.model.config  # merged (no adapters) and remat off again
