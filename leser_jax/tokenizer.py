"""Tokenizers: a SentencePiece BPE trained on the catalog, or a converted model's own tokenizer.

The prompt (leser_jax.prompts) shows the policy its context inside tags and asks for
`<think>..</think><answer>[..]</answer>`; `SPECIAL_TAGS` lists them. Two implementations share one
interface, `Tokenizer`:

- `SentencePieceTokenizer`, for the small presets trained from scratch: BPE with byte fallback
  (any unicode, emoji included, encodes: unknown characters become their UTF-8 bytes, so nothing
  maps to <unk>), trained in-process on catalog titles, descriptions, attributes and queries by
  `train_sentencepiece`. The tags are `user_defined_symbols`, so each is exactly one token, even
  inside running text. Normalisation is off ("identity", extra whitespace kept) so that
  decode(encode(text)) == text, which the answer parser relies on. Ids: pad 0, unk 1, bos 2, eos 3.
- `HFTokenizer`, an adapter for a Hugging Face tokenizer.json (the `tokenizers` package), so that
  converted LLaMA 3.2 checkpoints keep their own vocabulary. LLaMA 3 ids: bos <|begin_of_text|>;
  eos <|eot_id|> (what the instruct models end a turn with, and what the warm-up teaches), and
  both <|eot_id|> and <|end_of_text|> stop sampling (`stop_ids`). LLaMA 3 has no pad token; we
  pad with <|finetune_right_pad_id|>, the reserved token Meta's LLaMA 3.1+ tokenizer provides for
  exactly this (falling back to eos when absent); padded positions are masked, so only its being
  a valid id matters. The tags are not in LLaMA 3's vocabulary: they are plain text of several
  tokens there, and `token_id(tag)` raises KeyError (we do not add tokens, which would need new
  embedding rows).
- The same adapter for a GGUF file's vocabulary (`tokenizer_from_gguf`, issue 20's SmolLM2):
  byte-level BPE built with the `tokenizers` library from the file's tokens and merges, the
  control tokens (token_type 3: <|im_start|>, <|im_end|>, <|endoftext|>, ...) matched whole as
  special tokens, bos/eos/pad from the file's ids, and the chat template kept with its turn
  markers (`turn_markers`, e.g. ("<|im_start|>", "<|im_end|>")). Text is split before BPE as
  llama.cpp's `tokenizer.ggml.pre` says: for "smollm", every numeric character alone, then GPT-2's
  regex (what SmolLM2's own tokenizer.json does). transformers' GGUF loading ignores "smollm" and
  uses GPT-2's regex alone. On ASCII digits the two agree (no merge of SmolLM2's joins a digit
  to anything); on other numerals after a space (" ①", " ⅓") they differ, and ours is
  llama.cpp's. `save` writes tokenizer.json and tokenizer_specials.json (bos, eos, pad, the
  chat template), which `load` reads back; a directory without the latter is LLaMA 3's.

The paper does not say how its prompt is tokenised; the tag-as-one-token choice is ours: it makes
parsing robust for small models and costs nothing.
"""

from __future__ import annotations

import abc
import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

SPECIAL_TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<query>", "</query>",
                "<context>", "</context>", "<item>", "</item>")

SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
HF_SPECIALS_FILE = "tokenizer_specials.json"  # ours: which tokens are bos/eos/pad, chat template


class Tokenizer(abc.ABC):
    """Text <-> token ids. `decode` drops pad, bos and stop tokens and keeps everything else."""

    vocab_size: int
    bos_id: int
    eos_id: int  # appended after a completion in supervised warm-up
    pad_id: int
    stop_ids: tuple[int, ...]  # any of these ends a sampled completion (eos_id among them)
    # (start, end) of a ChatML chat template's turns, None without a template: then
    # prompts.encode_prompt wraps the prompt in the template (prompts.render_chat).
    turn_markers: tuple[str, str] | None = None

    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def token_id(self, tag: str) -> int:
        """The id of a string that is exactly one token (e.g. a tag); KeyError otherwise."""

    @abc.abstractmethod
    def save(self, directory: str | os.PathLike) -> None: ...

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self._encode(text) + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        drop = {self.pad_id, self.bos_id, *self.stop_ids}
        return self._decode([int(i) for i in ids if int(i) not in drop])


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()
        self.stop_ids = (self.eos_id,)

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def token_id(self, tag: str) -> int:
        i = self._sp.piece_to_id(tag)
        if i == self._sp.unk_id() and tag != self._sp.id_to_piece(i):
            raise KeyError(f"{tag!r} is not a single token of this SentencePiece model")
        return i

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / SENTENCEPIECE_FILE).write_bytes(self._proto)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SentencePieceTokenizer:
        return cls((Path(directory) / SENTENCEPIECE_FILE).read_bytes())


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, seed: int = 0,
                        num_threads: int = 1) -> SentencePieceTokenizer:
    """Trains a BPE SentencePiece model in memory from an iterable of texts (one per sentence).

    `vocab_size` is an upper bound (hard_vocab_limit=False): a small or repetitive corpus gives
    fewer pieces instead of failing. It must leave room for the 256 byte pieces, the tags and the
    4 control pieces. Same texts, seed and num_threads -> the same model, byte for byte.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t for t in texts if t),
        model_writer=writer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        user_defined_symbols=list(SPECIAL_TAGS),
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,  # else every text starts with a lone "▁" piece, even before a tag
        split_digits=True,  # sizes and model numbers ("36 in", "2x4") tokenise digit by digit
        max_sentence_length=1 << 16,
        num_threads=num_threads,
        minloglevel=2,
    )
    return SentencePieceTokenizer(writer.getvalue())


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (tokenizer.json) behind the `Tokenizer` interface.

    bos, pad: token strings; eos: the stop tokens in order of preference, those present become
    `stop_ids` and the first `eos_id`. The defaults are LLaMA 3's (module docstring).
    chat_template: the model's Jinja chat template, if known (kept and saved, never executed);
    `turn_markers` are the tokens it opens and closes a turn with, or None; with them,
    prompts.encode_prompt wraps every prompt in ChatML turns (prompts.render_chat).
    """

    def __init__(self, tokenizer, *, bos: str = "<|begin_of_text|>",
                 eos: tuple[str, ...] = ("<|eot_id|>", "<|end_of_text|>"),
                 pad: str = "<|finetune_right_pad_id|>", chat_template: str | None = None):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._special(bos)
        stops = [tokenizer.token_to_id(t) for t in eos if tokenizer.token_to_id(t) is not None]
        if not stops:
            raise ValueError(f"tokenizer has none of the eos tokens {eos}")
        self.stop_ids = tuple(stops)
        self.eos_id = stops[0]
        pad_id = tokenizer.token_to_id(pad)
        self.pad_id = self.eos_id if pad_id is None else pad_id
        self.chat_template = chat_template
        self.turn_markers = _turn_markers(chat_template, tokenizer)

    def _special(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"tokenizer has no {token!r} token")
        return i

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_id(self, tag: str) -> int:
        i = self._tok.token_to_id(tag)
        if i is None:
            ids = self._encode(tag)
            if len(ids) != 1:
                raise KeyError(f"{tag!r} is {len(ids)} tokens in this vocabulary, not one")
            i = ids[0]
        return i

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / HF_FILE))
        name = self._tok.id_to_token
        specials = {"bos": name(self.bos_id), "eos": [name(i) for i in self.stop_ids],
                    "pad": name(self.pad_id), "chat_template": self.chat_template}
        (directory / HF_SPECIALS_FILE).write_text(json.dumps(specials, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, **kwargs) -> HFTokenizer:
        """tokenizer.json, with the special tokens of tokenizer_specials.json when there is one
        (`save` writes it), else `kwargs` or LLaMA 3's."""
        from tokenizers import Tokenizer as _HFTokenizer

        directory = Path(directory)
        if (directory / HF_SPECIALS_FILE).exists():
            specials = json.loads((directory / HF_SPECIALS_FILE).read_text())
            kwargs = {"bos": specials["bos"], "eos": tuple(specials["eos"]),
                      "pad": specials["pad"], "chat_template": specials.get("chat_template"),
                      **kwargs}
        return cls(_HFTokenizer.from_file(str(directory / HF_FILE)), **kwargs)


def _turn_markers(chat_template: str | None, tokenizer) -> tuple[str, str] | None:
    """(start, end): the single tokens a ChatML template writes right before a message's role and
    right after its content. SmolLM2's template writes
    `'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'`,
    which gives ("<|im_start|>", "<|im_end|>"), and prompts.render_chat writes the same turns.
    None if the template is written otherwise (then the prompt is not wrapped)."""
    if not chat_template:
        return None
    newline = r"'(?:\n|\\n)'"  # a newline in the template's text, or Jinja's escape of one
    turn = re.search(r"'([^']+)'\s*\+\s*message\['role'\]\s*\+\s*" + newline
                     + r"\s*\+\s*message\['content'\]\s*\+\s*'([^']+)'\s*\+\s*" + newline,
                     chat_template)
    if not turn:
        return None
    markers = (turn.group(1), turn.group(2))
    if any(tokenizer.token_to_id(m) is None for m in markers):
        return None
    return markers


# llama.cpp's `tokenizer.ggml.pre` names whose splitting we reproduce. "smollm" (llama.cpp's
# llama-vocab.cpp, shared with starcoder and refact) applies two regexes in turn: \p{N} (each
# numeric character alone), then GPT-2's; "gpt2" the latter only. `tokenizers`' Digits splits on
# the same characters (Unicode numeric), and ByteLevel(use_regex=True) is GPT-2's regex.
_GGUF_DIGITS_FIRST = {"smollm": True, "starcoder": True, "refact": True, "gpt2": False}
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def tokenizer_from_gguf(metadata: Mapping[str, object]) -> HFTokenizer:
    """The byte-level BPE vocabulary of a GGUF file's metadata (`tokenizer.ggml.*` and
    `tokenizer.chat_template` keys, as gguf_llama.read_gguf gives them) as an HFTokenizer.

    Tokens are already spelled in GPT-2's byte alphabet ("Ġthe"); merges are "a b" strings.
    bos, eos and pad come from the file's ids; the stop tokens are eos, the file's end-of-turn
    token if it names one, and <|endoftext|> (the end of a document) when it is a control token.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer {model!r} (supported: gpt2, byte-level BPE)")
    pre = metadata.get("tokenizer.ggml.pre", "gpt2")
    if pre not in _GGUF_DIGITS_FIRST:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r} (supported: "
                         f"{', '.join(sorted(_GGUF_DIGITS_FIRST))})")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level])
                         if _GGUF_DIGITS_FIRST[pre] else byte_level)
    tok.decoder = decoders.ByteLevel()
    # Matched whole in any text, before splitting; they keep their ids (all are in the vocab).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _GGUF_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == _GGUF_USER_DEFINED])

    def token(key):
        i = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[int(i)]

    eos = [t for t in (token("eos"), token("eot")) if t is not None]
    if "<|endoftext|>" in tokens and types[tokens.index("<|endoftext|>")] == _GGUF_CONTROL:
        eos.append("<|endoftext|>")
    if not eos:
        raise ValueError("GGUF metadata names no eos token (tokenizer.ggml.eos_token_id)")
    bos = token("bos") or eos[0]
    return HFTokenizer(tok, bos=bos, eos=tuple(dict.fromkeys(eos)), pad=token("padding") or eos[0],
                       chat_template=metadata.get("tokenizer.chat_template"))


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Whichever tokenizer a directory holds: tokenizer.model (ours) or tokenizer.json (HF)."""
    directory = Path(directory)
    if (directory / SENTENCEPIECE_FILE).exists():
        return SentencePieceTokenizer.load(directory)
    if (directory / HF_FILE).exists():
        return HFTokenizer.load(directory)
    raise FileNotFoundError(f"{directory}: no {SENTENCEPIECE_FILE} or {HF_FILE}")
