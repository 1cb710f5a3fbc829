"""Token batches of the two supervised stages: packed pretraining text and warm-up examples.

The paper starts from a pretrained LLaMA and fine-tunes it on teacher expansions. Trained from
scratch, our model first learns the catalog's language (pretraining, `catalog_documents` +
`pack`), then the answer format (warm-up, `encode_example` + `example_batch`). Users with real
LLaMA weights skip the first part.

Batch layout, both stages (what train.masked_lm_loss reads):

    inputs   [B, T] int32    tokens the model reads
    targets  [B, T] int32    the next token of each input (inputs shifted left by one)
    weights  [B, T] float32  the target's loss weight: 1 where it is trained on, 0 where not
                             (a warm-up may give its prompt a weight between)
    pad_mask [B, T] bool     True at real input tokens (padding is on the right)

Determinism. The batch of step s is a function of (seed, s) only, never of an iterator's state:
row i of the run's stream of examples is `permutation_e[i mod n]` for epoch e = i // n, where
permutation_e comes from `numpy.random.default_rng([seed, e])`, and step s takes stream rows
s*B .. s*B + B - 1 (pretraining). Warm-up batches group examples of similar length
(`grouped_batch_indices`: the same epoch permutation, sorted within windows of a few batches,
batch order shuffled by (seed, epoch)), which cuts padding. A run resumed at step s therefore
sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence

import numpy as np

from leser_jax.catalog import Catalog
from leser_jax.context import ContextItem
from leser_jax.prompts import encode_prompt
from leser_jax.tokenizer import Tokenizer


# ----------------------------------------------------------------------------- pretraining

def product_document(product) -> str:
    """A product as pretraining text: the title and attributes as the prompt's context shows an
    item (`<item>title (name: value; ...)</item>`, context.ContextItem), then the description.
    So the model meets the context's syntax while it learns the catalog's words; the answer
    format is left to the warm-up."""
    item = ContextItem(product.title, tuple(product.attributes.items())).render()
    return f"{item}\n{product.description}" if product.description else item


def catalog_documents(catalog: Catalog, *, query_split: str = "train", queries_per_list: int = 4,
                      seed: int = 0) -> list[str]:
    """Pretraining documents: every product, and the queries of `query_split` only (dev and test
    queries must stay unseen), written as JSON lists of `queries_per_list` queries in a seeded
    order: `["navy office chair", "oak desk", ...]`. The lists are there for the answer's
    syntax: a model trained from scratch has never seen JSON, and the warm-up would otherwise
    spend its few hundred steps learning to open, quote and close a list (a pretrained LLaMA
    knows it). What the lists hold is catalog text, not teacher output."""
    queries = [q.text for q in catalog.split(query_split)]
    order = np.random.default_rng([seed, 2]).permutation(len(queries))
    lists = [json.dumps([queries[i] for i in order[k:k + queries_per_list]], ensure_ascii=False)
             for k in range(0, len(queries), queries_per_list)]
    return [product_document(p) for p in catalog.products] + lists


def pack(docs: Sequence[Sequence[int]], seq_len: int, eos_id: int, *, seed: int = 0) -> np.ndarray:
    """Documents -> rows [R, seq_len + 1] int32 of one stream: docs in a seeded order, each
    followed by eos, cut every seq_len tokens. Consecutive rows overlap by one token, so every
    token of the stream but the first is a target exactly once. The tail that does not fill a
    row is dropped."""
    order = np.random.default_rng([seed, 1 << 20]).permutation(len(docs))
    stream = np.fromiter((t for i in order for t in (*docs[i], eos_id)), np.int32)
    rows = (len(stream) - 1) // seq_len
    if rows < 1:
        raise ValueError(f"{len(stream)} tokens do not fill one row of {seq_len + 1}")
    index = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # [R, T + 1]
    return stream[index]


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices [B] into n examples of step `step` (module docstring: a function of seed, step)."""
    stream = np.arange(step * batch_size, (step + 1) * batch_size)  # [B]
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(stream // n):
        at = stream // n == epoch
        out[at] = _permutation(n, seed, int(epoch))[stream[at] % n]
    return out


def packed_batch(rows: np.ndarray, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
    """The pretraining batch of `step` from packed rows [R, T + 1]."""
    r = rows[batch_indices(len(rows), batch_size, seed, step)]  # [B, T + 1]
    return {"inputs": r[:, :-1], "targets": r[:, 1:],
            "weights": np.ones(r[:, 1:].shape, np.float32),
            "pad_mask": np.ones(r[:, 1:].shape, bool)}


# ----------------------------------------------------------------------------- warm-up

@dataclasses.dataclass(frozen=True)
class Encoded:
    """One warm-up example as tokens: the prompt as the model reads it, then the answer and eos.

    tokens [n] int32; prompt_len: tokens before the answer. Target t (the token that input t
    predicts, tokens[t + 1]) is trained iff it belongs to the answer, t + 1 >= prompt_len.
    Example, prompt [bos p1 p2], answer [a1 a2 eos]:
        inputs  = bos p1 p2 a1 a2
        targets = p1  p2 a1 a2 eos
        weights = 0   0  1  1  1
    With a chat template (prompts.encode_prompt) the prompt is the whole conversation up to the
    opened assistant turn, [<|im_start|> system .. <|im_start|> assistant \n], and eos is
    <|im_end|>, which closes the assistant's turn: the loss is on the answer and <|im_end|>.
    """

    tokens: np.ndarray
    prompt_len: int

    def __len__(self) -> int:
        return len(self.tokens)


def encode_example(tokenizer: Tokenizer, prompt: str, answer: str) -> Encoded:
    """prompts.encode_prompt(prompt) + answer + eos. Prompt and answer are encoded apart, as the
    sampler sees them (it is given the prompt's tokens, the same encode_prompt's, and writes the
    answer's)."""
    p = encode_prompt(tokenizer, prompt)
    a = tokenizer.encode(answer, eos=True)
    return Encoded(np.asarray(p + a, np.int32), len(p))


def bucket_length(n: int, bucket: int) -> int:
    """n rounded up to a multiple of `bucket`: batches take a few shapes, each compiled once."""
    return -(-n // bucket) * bucket


@functools.lru_cache(maxsize=8)
def _grouped_epoch(lengths: tuple[int, ...], batch_size: int, seed: int, epoch: int,
                   group: int) -> np.ndarray:
    """Batches [num_batches, B] of one epoch, each of examples of similar length."""
    n = len(lengths)
    order = _permutation(n, seed, epoch)
    size = batch_size * group  # a window of `group` batches is sorted by length, then cut
    batches = []
    for start in range(0, n - batch_size + 1, size):
        window = order[start:start + size]
        window = window[np.argsort(np.asarray(lengths)[window], kind="stable")]
        batches += [window[i:i + batch_size] for i in range(0, len(window) - batch_size + 1,
                                                            batch_size)]
    batches = np.stack(batches)  # [num_batches, B]
    return batches[np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]


def grouped_batch_indices(lengths: Sequence[int], batch_size: int, seed: int, step: int, *,
                          group: int = 16) -> np.ndarray:
    """Indices [B] of step `step`, batching examples of similar length together.

    Each epoch's seeded permutation (as in `batch_indices`) is cut into windows of `group`
    batches; a window is sorted by length and cut into batches, and the epoch's batches are
    shuffled. Still a function of (seed, step) only. A batch then pads to its own longest
    example, not to the longest of a random draw: less padding, and more batches in the shorter
    buckets. Each epoch drops fewer than B examples (those that do not fill a batch).
    """
    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} examples do not fill one batch of {batch_size}")
    lengths = tuple(int(n) for n in lengths)
    per_epoch = len(lengths) // batch_size
    epoch, i = divmod(step, per_epoch)
    return _grouped_epoch(lengths, batch_size, seed, epoch, group)[i]


def answer_window(examples: Sequence[Encoded], multiple: int = 16) -> int:
    """The `window` of `example_batch` that holds every example's answer targets (its answer and
    eos), rounded up to a multiple of `multiple`. One value for the whole run, so it adds no
    compiled shape; it need not be a multiple of the sequence bucket."""
    return bucket_length(max(len(e) - e.prompt_len for e in examples), multiple)


def example_batch(examples: Sequence[Encoded], batch_size: int, seed: int, step: int, *,
                  bucket: int, pad_id: int, group: int = 16, prompt_weight: float = 0.0,
                  window: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The warm-up batch of `step` (`grouped_batch_indices`; group=1 draws batches at random),
    padded to the bucket of its longest example: on the right, or on the left with `window`.

    The answer's targets weigh 1, the prompt's `prompt_weight` (0: the answer only). A prompt
    repeats words of its context (the query is mostly words of the products above it), so its
    targets teach the copying that the answer needs, at no extra compute.

    window: with prompt_weight 0, the rows are left-padded instead, so that every answer ends
    at the last column, and targets and weights [B, A] keep only the last A = min(window, T)
    columns (`answer_window`): `train.masked_lm_loss` then runs the vocabulary head over those
    columns alone, not over the prompt's targets that weigh 0. The loss is the same.

    Returns the batch and its number of real input tokens.
    """
    lengths = [len(e) for e in examples]
    chosen = [examples[i] for i in grouped_batch_indices(lengths, batch_size, seed, step,
                                                         group=group)]
    length = bucket_length(max(len(e) - 1 for e in chosen), bucket)  # T: inputs per row
    inputs = np.full((batch_size, length), pad_id, np.int32)  # [B, T]
    targets = np.full((batch_size, length), pad_id, np.int32)  # [B, T]
    weights = np.zeros((batch_size, length), np.float32)  # [B, T]
    pad_mask = np.zeros((batch_size, length), bool)  # [B, T]
    if window is not None and prompt_weight:
        raise ValueError("window needs prompt_weight 0: it drops the prompt's targets")
    for b, e in enumerate(chosen):
        n = len(e) - 1
        o = 0 if window is None else length - n  # where the row starts (left pads before it)
        inputs[b, o:o + n] = e.tokens[:-1]
        targets[b, o:o + n] = e.tokens[1:]
        weights[b, o:o + e.prompt_len - 1] = prompt_weight  # the prompt's tokens after bos
        weights[b, o + e.prompt_len - 1:o + n] = 1.0  # targets from the answer's first token to eos
        pad_mask[b, o:o + n] = True
    if window is not None:
        a = min(window, length)
        if weights[:, :length - a].any():
            raise ValueError(f"an answer is longer than the window ({window})")
        targets, weights = targets[:, length - a:], weights[:, length - a:]  # [B, A]
    batch = {"inputs": inputs, "targets": targets, "weights": weights, "pad_mask": pad_mask}
    return batch, int(pad_mask.sum())
