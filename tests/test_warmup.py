"""Warm-up data and loss: answer-only loss, masks, padding, deterministic batches, format report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leser_jax import lm_data
from leser_jax.config import ModelConfig
from leser_jax.model import Llama
from leser_jax.prompts import render_answer
from leser_jax.sft import format_report
from leser_jax.train import masked_lm_loss

CONFIG = ModelConfig.tiny().replace(num_layers=1, vocab_size=128, ffn_dim=64)


class WordTokenizer:
    """Whitespace words -> ids from 4 up; pad 0, bos 2, eos 3 (SentencePiece's layout)."""

    pad_id, bos_id, eos_id = 0, 2, 3
    turn_markers = None  # no chat template: prompts.encode_prompt gives bos + the prompt

    def __init__(self):
        self.ids = {}

    def encode(self, text, *, bos=False, eos=False):
        ids = [self.ids.setdefault(w, 4 + len(self.ids)) for w in text.split()]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos


def test_encoded_example_trains_on_the_answer_and_eos_only():
    tok = WordTokenizer()
    e = lm_data.encode_example(tok, "p1 p2", "a1 a2")
    # tokens = bos p1 p2 a1 a2 eos; inputs bos p1 p2 a1 a2 predict p1 p2 a1 a2 eos.
    assert e.tokens.tolist() == [2, 4, 5, 6, 7, 3] and e.prompt_len == 3
    batch, n = lm_data.example_batch([e], 1, seed=0, step=0, bucket=8, pad_id=0)
    assert batch["inputs"].tolist() == [[2, 4, 5, 6, 7, 0, 0, 0]]  # right-padded to 8
    assert batch["targets"].tolist() == [[4, 5, 6, 7, 3, 0, 0, 0]]
    assert batch["weights"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]  # a1 a2 eos
    assert batch["pad_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert n == 5


def _model():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(CONFIG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.2, x.shape).astype(x.dtype)), nnx.to_pure_dict(state)))
    return graphdef, state


@jax.jit
def _loss(state, batch):
    return masked_lm_loss(nnx.merge(GRAPHDEF, state), batch, None)[0]


GRAPHDEF, STATE = _model()


@pytest.fixture(scope="module")
def sft_batch():
    rng = np.random.default_rng(1)
    examples = [lm_data.Encoded(rng.integers(4, CONFIG.vocab_size, n).astype(np.int32), p)
                for n, p in ((20, 12), (15, 9), (9, 4))]
    batch, _ = lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0)
    return batch


def test_prompt_targets_and_padding_do_not_change_the_loss(sft_batch):
    base = float(_loss(STATE, sft_batch))
    rng = np.random.default_rng(2)
    masked = sft_batch["weights"] == 0  # prompt targets and padding
    changed = dict(sft_batch)
    changed["targets"] = np.where(masked, rng.integers(4, CONFIG.vocab_size, masked.shape),
                                  sft_batch["targets"]).astype(np.int32)
    # Right padding: what stands in the padded input slots is never attended to by real tokens.
    changed["inputs"] = np.where(~sft_batch["pad_mask"],
                                 rng.integers(4, CONFIG.vocab_size, masked.shape),
                                 sft_batch["inputs"]).astype(np.int32)
    assert (changed["targets"] != sft_batch["targets"]).sum() > 10  # the test changes something
    assert float(_loss(STATE, changed)) == base  # bitwise
    # Changing one answer target does change it (the comparison above is not vacuous).
    answer = np.argwhere(sft_batch["weights"] == 1)[0]
    other = dict(sft_batch, targets=sft_batch["targets"].copy())
    other["targets"][tuple(answer)] = (other["targets"][tuple(answer)] + 1) % CONFIG.vocab_size
    assert float(_loss(STATE, other)) != base


def test_answer_window_gives_the_same_loss_and_gradient_from_fewer_head_positions():
    rng = np.random.default_rng(5)
    examples = [lm_data.Encoded(rng.integers(4, CONFIG.vocab_size, n).astype(np.int32), p)
                for n, p in ((30, 26), (23, 12), (17, 14))]
    window = lm_data.answer_window(examples, 8)
    assert window == 16  # the longest answer: 23 - 12 = 11 targets, to a multiple of 8
    assert lm_data.answer_window(examples) == 16 and lm_data.answer_window(examples, 4) == 12
    plain, n = lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0)
    cut, m = lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0,
                                   window=window)
    assert cut["inputs"].shape == (3, 32) and cut["targets"].shape == (3, 16) and n == m
    # Left-padded: every row ends at the last column; its answer targets are the last ones.
    assert cut["pad_mask"][:, -1].all() and not cut["pad_mask"][:, 0].all()
    assert sorted(cut["weights"].sum(1).tolist()) == sorted(plain["weights"].sum(1).tolist())

    def loss(state, batch):
        return masked_lm_loss(nnx.merge(GRAPHDEF, state), batch, None)[0]

    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss))(STATE, x) for x in (plain, cut))
    assert float(b) == pytest.approx(float(a), rel=1e-5)
    diff = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.abs(x - y).max(), ga, gb))
    scale = jax.tree.leaves(jax.tree.map(lambda x: jnp.abs(x).max(), ga))
    assert max(float(d) / (float(s) + 1e-12) for d, s in zip(diff, scale)) < 1e-4
    with pytest.raises(ValueError, match="longer than the window"):
        lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0, window=8)
    with pytest.raises(ValueError, match="prompt_weight 0"):
        lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0, window=16,
                              prompt_weight=0.5)


def test_loss_is_the_mean_over_answer_tokens_and_prompt_logits_get_no_gradient(sft_batch):
    B, T = sft_batch["inputs"].shape
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, 11)), jnp.float32)
    targets = np.asarray(sft_batch["targets"]) % 11
    batch = dict(sft_batch, targets=jnp.asarray(targets))

    def loss_of(logits):
        return masked_lm_loss(lambda inputs, pad_mask: logits, batch, None)[0]

    # Reference: log-softmax by hand in float64, averaged over the 8 + 6 + 5 = 19 answer targets.
    x = np.asarray(logits, np.float64)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    w = np.asarray(sft_batch["weights"])
    assert w.sum() == (20 - 12) + (15 - 9) + (9 - 4)
    assert float(loss_of(logits)) == pytest.approx((nll * w).sum() / w.sum(), rel=1e-6)
    grad = np.asarray(jax.grad(loss_of)(logits))  # [B, T, V]
    assert np.all(grad[w == 0] == 0)  # prompt and pad positions: exactly zero
    assert np.all(np.abs(grad[w == 1]).sum(-1) > 0)


def test_batches_are_a_function_of_seed_and_step():
    n, B = 10, 4
    steps = [lm_data.batch_indices(n, B, seed=7, step=s) for s in range(5)]  # 20 = 2 epochs
    again = [lm_data.batch_indices(n, B, seed=7, step=s) for s in (3, 0, 4, 2, 1)]
    assert all(np.array_equal(steps[s], a) for s, a in zip((3, 0, 4, 2, 1), again))
    stream = np.concatenate(steps)
    # Each epoch is a permutation: every example once per 10 stream rows.
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # reshuffled per epoch
    assert not np.array_equal(lm_data.batch_indices(n, B, seed=8, step=0), steps[0])


def test_packing_keeps_every_token_once_with_eos_between_documents():
    docs = [[10, 11, 12], [20], [30, 31]]
    rows = lm_data.pack(docs, 3, eos_id=3, seed=0)  # stream of 9 tokens -> (9 - 1) // 3 = 2 rows
    assert rows.shape == (2, 4)
    order = [docs[i] for i in np.random.default_rng([0, 1 << 20]).permutation(3)]
    expected = [t for d in order for t in (*d, 3)]  # each document followed by eos: 9 tokens
    # Rows overlap by one token, so each of stream tokens 1..6 is a target exactly once;
    # the last 2 tokens do not fill a row and are dropped.
    assert rows[0].tolist() == expected[0:4] and rows[1].tolist() == expected[3:7]
    assert lm_data.pack(docs, 3, eos_id=3, seed=0).tolist() == rows.tolist()  # deterministic


def test_buckets_bound_the_number_of_compiled_shapes():
    rng = np.random.default_rng(0)
    examples = [lm_data.Encoded(np.ones(n, np.int32), n // 2) for n in rng.integers(20, 300, 200)]
    shapes = {lm_data.example_batch(examples, 8, seed=0, step=s, bucket=64, pad_id=0)[0]
              ["inputs"].shape for s in range(100)}
    assert all(t % 64 == 0 for _, t in shapes) and len(shapes) <= 300 // 64 + 1


def test_format_report_counts_reasons():
    texts = [render_answer("ok", ["red chair"]), render_answer("ok", ["a", "b"]),
             "<think>x</think><answer>[\"a\", \"A\"]</answer>", "no tags at all"]
    report = format_report(texts)
    assert report["parsed"] == 2 and report["parse_rate"] == 0.5
    assert report["reasons"] == {"duplicate": 1, "no_think_tag": 1}
    assert report["mean_expansions"] == 1.5


def test_length_grouped_batches_cover_the_epoch_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 300, 100).tolist()
    B, per_epoch = 8, 100 // 8  # 12 batches an epoch; 4 examples left out of each
    epoch = [lm_data.grouped_batch_indices(lengths, B, seed=3, step=s, group=4)
             for s in range(per_epoch)]
    seen = np.concatenate(epoch)
    assert len(set(seen.tolist())) == len(seen) == per_epoch * B  # no example twice in an epoch
    again = lm_data.grouped_batch_indices(lengths, B, seed=3, step=5, group=4)
    assert np.array_equal(again, epoch[5])  # a function of (seed, step)
    assert not np.array_equal(lm_data.grouped_batch_indices(lengths, B, seed=3, step=per_epoch,
                                                            group=4), epoch[0])  # next epoch

    def padded(group):
        return sum(B * max(lengths[i] for i in
                           lm_data.grouped_batch_indices(lengths, B, seed=3, step=s, group=group))
                   for s in range(per_epoch))

    assert padded(4) < 0.8 * padded(1)  # grouping cuts padding


def test_prompt_weight_trains_the_prompt_and_target_loss_stays_the_answers():
    rng = np.random.default_rng(4)
    examples = [lm_data.Encoded(rng.integers(4, 11, n).astype(np.int32), p)
                for n, p in ((20, 12), (15, 9), (9, 4))]
    plain, _ = lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0)
    weighted, _ = lm_data.example_batch(examples, 3, seed=0, step=0, bucket=8, pad_id=0,
                                        prompt_weight=0.25)
    prompt = (plain["weights"] == 0) & plain["pad_mask"]  # real targets outside the answer
    assert prompt.sum() == 11 + 8 + 3  # each prompt's tokens after bos
    assert np.all(weighted["weights"][prompt] == 0.25)
    assert np.array_equal(weighted["weights"][~prompt], plain["weights"][~prompt])

    logits = jnp.asarray(rng.normal(size=(*plain["inputs"].shape, 11)), jnp.float32)
    x = np.asarray(logits, np.float64)
    nll = np.log(np.exp(x).sum(-1)) - np.take_along_axis(x, plain["targets"][..., None], -1)[..., 0]
    loss, aux = masked_lm_loss(lambda inputs, pad_mask: logits, weighted, None)
    w = weighted["weights"]
    assert float(loss) == pytest.approx((nll * w).sum() / w.sum(), rel=1e-6)
    answer = plain["weights"] == 1
    assert float(aux["target_loss"]) == pytest.approx(nll[answer].mean(), rel=1e-6)
    assert float(aux["target_tokens"]) == answer.sum()
    assert float(masked_lm_loss(lambda inputs, pad_mask: logits, plain, None)[1]["target_loss"]
                 ) == pytest.approx(float(aux["target_loss"]), rel=1e-6)


@pytest.mark.parametrize("weight", [-0.1, 1.0])
def test_prompt_weight_below_the_answers(weight):
    from experiments.configs import Warmup
    with pytest.raises(ValueError, match="prompt_weight"):
        Warmup(steps=1, batch_size=1, lr=1e-3, prompt_weight=weight)
