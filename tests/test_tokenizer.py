"""Tokenizers: tags are single tokens, lossless round trips, deterministic training, the HF adapter."""

import random

import pytest

from leser_jax.tokenizer import (SPECIAL_TAGS, HFTokenizer, SentencePieceTokenizer,
                                 load_tokenizer, train_sentencepiece)


def _catalog_texts(n=400, seed=0):
    """Catalog-like lines: titles, attributes, queries; ASCII only, so that the unicode below is
    unseen in training and must go through byte fallback."""
    rng = random.Random(seed)
    nouns = "sofa chair table lamp bulb rug drill screw bolt faucet shelf mirror curtain".split()
    adjs = "oak white black brass outdoor cordless led wool steel modern 3-light".split()
    brands = "Acme Hampton Glacier Delta Husky Behr".split()
    texts = []
    for _ in range(n):
        title = " ".join([rng.choice(brands)] + rng.sample(adjs, 2) + [rng.choice(nouns)])
        texts.append(f"{title} {rng.randint(1, 60)} in.")
        texts.append(f"brand {rng.choice(brands)} color {rng.choice(adjs)}")
        texts.append(f"{rng.choice(adjs)} {rng.choice(nouns)}")
    return texts


@pytest.fixture(scope="module")
def sp():
    return train_sentencepiece(_catalog_texts(), vocab_size=400)


def test_tags_are_single_tokens(sp):
    ids = [sp.token_id(tag) for tag in SPECIAL_TAGS]
    assert len(set(ids)) == len(SPECIAL_TAGS)
    assert not {sp.pad_id, sp.bos_id, sp.eos_id} & set(ids)
    for tag, i in zip(SPECIAL_TAGS, ids):
        assert sp.encode(tag) == [i]
    # Inside running text, with no spaces around it, a tag is still exactly its one token.
    ids = sp.encode('oak sofa<answer>["oak couch"]</answer>')
    assert ids.count(sp.token_id("<answer>")) == 1 and ids.count(sp.token_id("</answer>")) == 1
    with pytest.raises(KeyError):
        sp.token_id("oak sofa chair")


@pytest.mark.parametrize("text", [
    "Café crème 🛋️ sofa — 12\" × 3½ ft, 日本製 ✨",
    "  two leading spaces,  double  gaps\nand a newline\tand a tab ",
    "<think>user wants a brass lamp</think><answer>[\"brass desk lamp\", \"gold lamp\"]</answer>",
    "",
])
def test_round_trip(sp, text):
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert all(0 <= i < sp.vocab_size for i in ids)
    assert sp._sp.unk_id() not in ids  # byte fallback: nothing becomes <unk>


def test_bos_eos_and_decode_drops_control_tokens(sp):
    ids = sp.encode("oak table", bos=True, eos=True)
    assert ids[0] == sp.bos_id and ids[-1] == sp.eos_id
    assert sp.decode(ids + [sp.pad_id] * 3) == "oak table"
    assert (sp.pad_id, sp.bos_id, sp.eos_id) == (0, 2, 3)


def test_training_is_deterministic(sp):
    again = train_sentencepiece(_catalog_texts(), vocab_size=400)
    assert again.model_proto == sp.model_proto
    other = train_sentencepiece(_catalog_texts(seed=1), vocab_size=400)
    assert other.model_proto != sp.model_proto  # the comparison above can fail


def test_vocab_limit_is_soft():
    # 30 distinct short lines cannot fill 2000 pieces; hard_vocab_limit=False shrinks the vocab.
    tok = train_sentencepiece(_catalog_texts(n=10), vocab_size=2000)
    assert 256 + len(SPECIAL_TAGS) < tok.vocab_size < 2000


def test_save_load(sp, tmp_path):
    sp.save(tmp_path)
    text = "Hampton brass lamp 🛋️ <item>oak rug</item>"
    for loaded in (SentencePieceTokenizer.load(tmp_path), load_tokenizer(tmp_path)):
        assert isinstance(loaded, SentencePieceTokenizer)
        assert loaded.encode(text) == sp.encode(text)
        assert loaded.vocab_size == sp.vocab_size


# ----------------------------------------------------------------------------- HF adapter

_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
                    "<|eot_id|>"]


def _tiny_tokenizer_json(directory, specials=_LLAMA3_SPECIALS):
    """A byte-level BPE tokenizer.json like LLaMA 3's, trained here on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_catalog_texts(n=100), trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def test_hf_adapter(tmp_path):
    pytest.importorskip("tokenizers")
    directory = _tiny_tokenizer_json(tmp_path / "hf")
    tok = load_tokenizer(directory)
    assert isinstance(tok, HFTokenizer)
    # Special tokens come first in training order: ids 0..3.
    assert tok.bos_id == 0 and tok.pad_id == 2
    assert tok.eos_id == 3 and tok.stop_ids == (3, 1)  # <|eot_id|> first, then <|end_of_text|>
    text = "Café 🛋️ oak <answer>[\"x\"]</answer>"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == 0 and ids[-1] == 3
    assert tok.decode(ids + [tok.pad_id, 1]) == text
    # Tags are plain text of several tokens here, as in LLaMA 3.
    assert len(tok.encode("<answer>")) > 1
    with pytest.raises(KeyError):
        tok.token_id("<answer>")
    assert tok.token_id("<|eot_id|>") == 3

    tok.save(tmp_path / "copy")
    assert HFTokenizer.load(tmp_path / "copy").encode(text) == tok.encode(text)


def test_hf_adapter_pad_falls_back_to_eos(tmp_path):
    pytest.importorskip("tokenizers")
    directory = _tiny_tokenizer_json(tmp_path, specials=["<|begin_of_text|>", "<|end_of_text|>"])
    tok = HFTokenizer.load(directory)
    assert tok.eos_id == tok.pad_id == 1 and tok.stop_ids == (1,)


def test_load_tokenizer_without_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)
