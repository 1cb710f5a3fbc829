"""The prompt LESER shows the policy, and the parser of its answers.

The paper's policy sees the user's query together with the products that the query already
retrieves (pseudo-relevance feedback), writes a short reasoning, and answers with a JSON list of
expansions inside fixed tags:

    <think>the results are all office chairs; the user wants support for the back, which
    products call "lumbar support"</think><answer>["lumbar support office chair",
    "ergonomic office chair"]</answer>

`render_prompt` writes the instruction, the context items (context.py: the products the query
retrieves, `ContextItem`s) and the query; `prompt_for` is that prompt for a query and a search
engine, the one that the warm-up, GRPO and evaluation give the policy. The completion the model
writes after it is parsed by `parse_answer`, which never raises: whatever the model writes, it
returns either the expansions or a named rejection reason, and a rejected answer earns reward 0
(leser_jax/reward.py). The rejection reasons, in the order they are checked:

    no_think_tag    no <think>...</think> block before the answer
    no_answer_tag   no <answer>...</answer> block after the think block
    extra_tags      a second think or answer block, or text before <think> / after </answer>
    bad_json        the answer block is not valid JSON
    not_a_list      valid JSON, but not a list
    empty           an empty list
    too_many        more than m_max expansions
    not_a_string    an element that is not a string (a number, a list, null, ...)
    empty_string    an element that is empty once whitespace is stripped
    too_long        an element longer than max_chars characters
    duplicate       two elements equal up to case and whitespace (with
                    AnswerFormat.drop_duplicates: the repeats are dropped instead, the first
                    kept, as a deployed system would; evaluation's lenient parse)

The tags are single tokens of our SentencePiece vocabulary (tokenizer.SPECIAL_TAGS), which keeps
the format easy to learn for a small model; the paper does not say how it tokenises its prompt.

What the model reads (`model_prompt`, `encode_prompt`: the one path of warm-up, GRPO, evaluation
and the format check, for every tokenizer). A tokenizer without a chat template (our
SentencePiece models) reads the prompt exactly as `render_prompt` writes it, after bos. An
instruction-tuned model whose tokenizer has a ChatML template (SmolLM2: `tokenizer.turn_markers`
== ("<|im_start|>", "<|im_end|>")) reads it as a conversation: the prompt's first line, the
instruction, as the system turn; the rest, context and query, as the user turn; the assistant turn
opened, so that the model writes the answer and closes it with <|im_end|>, its eos:

    <|im_start|>system\nRewrite the shopper's ... the shopper wants.<|im_end|>\n
    <|im_start|>user\n<context>..</context>\n<query>oak desk</query><|im_end|>\n
    <|im_start|>assistant\n<think>..</think><answer>[..]</answer><|im_end|>

Optional worked examples (`ExampleTurn`: an example query's prompt and its answer) come before the
query as earlier user and assistant turns (few-shot prompting: how an untuned model learns the
format from the prompt alone); without a template, as prompt + answer lines before the prompt.
ChatML is rendered here from the turn markers rather than by executing the model's Jinja template:
`tokenizers` has no Jinja, jinja2 is only a test dependency (transformers pulls it in), and
ChatML is three lines (tests/test_chat_prompt.py checks our rendering against jinja2's rendering
of SmolLM2's own template). The template's text already opens with <|im_start|>, SmolLM2's bos, so
a templated prompt is encoded as rendered, with no bos of ours in front (no double bos).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

from leser_jax.context import ContextConfig, ContextItem, build_context
from leser_jax.search import SearchEngine
from leser_jax.tokenizer import Tokenizer

INSTRUCTION = (
    "Rewrite the shopper's search query into better product searches. The products the query "
    "finds now are listed. Reason briefly inside <think></think>, then answer inside "
    "<answer></answer> with a JSON list of 1 to {m_max} new search queries that find more "
    "products the shopper wants.")

REJECTION_REASONS = ("no_think_tag", "no_answer_tag", "extra_tags", "bad_json", "not_a_list",
                     "empty", "too_many", "not_a_string", "empty_string", "too_long", "duplicate")

_TAGS = re.compile(r"</?(?:think|answer)>")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerFormat:
    """What a valid answer may hold.

    Attributes:
      m_max: the most expansions an answer may list [m_max].
      max_chars: the longest expansion, in characters; longer ones reject the answer.
      drop_duplicates: a repeated expansion is dropped (the first kept) rather than rejecting
        the answer. Off for training (the reward's parse is strict); evaluation reports both.
    """

    m_max: int = 5
    max_chars: int = 120
    drop_duplicates: bool = False

    def __post_init__(self):
        if self.m_max < 1 or self.max_chars < 1:
            raise ValueError(f"m_max and max_chars must be >= 1, got {self.m_max}, {self.max_chars}")


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    """The expansions of a valid answer, or `reason`, why it was rejected (then no expansions)."""

    expansions: tuple[str, ...] = ()
    think: str = ""
    reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.reason is None


def render_prompt(query: str, context: Sequence[ContextItem], fmt: AnswerFormat = AnswerFormat()) -> str:
    """The prompt text; the model's completion follows it directly."""
    items = "".join(item.render() for item in context)
    return (f"{INSTRUCTION.format(m_max=fmt.m_max)}\n<context>{items}</context>\n"
            f"<query>{query}</query>\n")


def prompt_for(query: str, engine: SearchEngine, context: ContextConfig,
               fmt: AnswerFormat = AnswerFormat()) -> str:
    """The policy's prompt for a query: what the warm-up trains on, GRPO's rollouts are given
    and evaluation shows. The context is the whole query's top-k products
    (context.build_context, the paper's pseudo-relevance feedback); the query shown is cut to
    `context.max_query_chars`."""
    return render_prompt(query[:context.max_query_chars], build_context(query, engine, context),
                         fmt)


@dataclasses.dataclass(frozen=True)
class ExampleTurn:
    """A worked example shown before the query: a prompt (`render_prompt`'s text for the example's
    query) and the answer to it (`render_answer`'s text)."""

    prompt: str
    answer: str


def render_chat(messages: Sequence[tuple[str, str]], markers: tuple[str, str]) -> str:
    """ChatML: each (role, content) as `{start}{role}\n{content}{end}\n`, then `{start}assistant\n`,
    the assistant's turn opened (what a Hugging Face template writes with
    add_generation_prompt=True). markers: (start, end), e.g. ("<|im_start|>", "<|im_end|>")."""
    start, end = markers
    return "".join(f"{start}{role}\n{content}{end}\n" for role, content in messages) + (
        f"{start}assistant\n")


def _instruction_and_rest(prompt: str) -> tuple[str, str]:
    """`render_prompt`'s text -> (its first line: the instruction, the rest: context and query,
    without the last newline, which the end marker replaces)."""
    instruction, _, rest = prompt.partition("\n")
    return instruction, rest.removesuffix("\n")


def model_prompt(prompt: str, markers: tuple[str, str] | None = None,
                 examples: Sequence[ExampleTurn] = ()) -> str:
    """The text a model reads for `prompt` (module docstring): the prompt itself when there is no
    chat template (`markers` None), after each example's prompt + answer + newline; else the
    ChatML conversation system (instruction), [user (example), assistant (its answer)] per
    example, user (context and query), and the assistant's turn opened."""
    if markers is None:
        return "".join(f"{e.prompt}{e.answer}\n" for e in examples) + prompt
    instruction, rest = _instruction_and_rest(prompt)
    messages = [("system", instruction)]
    for e in examples:
        example_instruction, example_rest = _instruction_and_rest(e.prompt)
        if example_instruction != instruction:  # the system turn states it once for all
            raise ValueError(f"an example's instruction differs from the prompt's: "
                             f"{example_instruction!r} != {instruction!r}")
        messages += [("user", example_rest), ("assistant", e.answer)]
    return render_chat(messages + [("user", rest)], markers)


def encode_prompt(tokenizer: Tokenizer, prompt: str,
                  examples: Sequence[ExampleTurn] = ()) -> list[int]:
    """The prompt's token ids as the model reads them, for warm-up (lm_data.encode_example) and
    sampling (rollout.encode_prompts) alike: `model_prompt` with the tokenizer's turn markers
    (None for a tokenizer without a chat template), with bos in front only when there is no
    template (a ChatML text opens with its start marker, which is SmolLM2's bos)."""
    markers = tokenizer.turn_markers
    return tokenizer.encode(model_prompt(prompt, markers, examples), bos=markers is None)


def render_answer(think: str, expansions: Sequence[str]) -> str:
    """A completion in the exact format `parse_answer` accepts (the warm-up's target)."""
    return f"<think>{think}</think><answer>{json.dumps(list(expansions), ensure_ascii=False)}</answer>"


def parse_answer(text: str, fmt: AnswerFormat = AnswerFormat()) -> ParsedAnswer:
    """Parses `<think>..</think><answer>[..]</answer>`; never raises (see the module docstring)."""
    if not isinstance(text, str):
        return ParsedAnswer(reason="no_think_tag")
    # The tags in order of appearance, e.g. ['<think>', '</think>', '<answer>', '</answer>'].
    tags = [(m.group(), m.start(), m.end()) for m in _TAGS.finditer(text)]
    names = [t[0] for t in tags]
    if names[:2] != ["<think>", "</think>"]:
        return ParsedAnswer(reason="no_think_tag")
    if "<answer>" not in names or "</answer>" not in names:
        return ParsedAnswer(reason="no_answer_tag")
    if names != ["<think>", "</think>", "<answer>", "</answer>"]:
        return ParsedAnswer(reason="extra_tags")
    outside = (text[:tags[0][1]], text[tags[1][2]:tags[2][1]], text[tags[3][2]:])
    if any(part.strip() for part in outside):  # only whitespace may surround the two blocks
        return ParsedAnswer(reason="extra_tags")
    think = text[tags[0][2]:tags[1][1]].strip()
    body = text[tags[2][2]:tags[3][1]]
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested beyond the stack
        return ParsedAnswer(think=think, reason="bad_json")
    if not isinstance(value, list):
        return ParsedAnswer(think=think, reason="not_a_list")
    if not value:
        return ParsedAnswer(think=think, reason="empty")
    if len(value) > fmt.m_max:
        return ParsedAnswer(think=think, reason="too_many")
    if not all(isinstance(v, str) for v in value):
        return ParsedAnswer(think=think, reason="not_a_string")
    expansions = tuple(" ".join(v.split()) for v in value)  # collapse whitespace runs
    if not all(expansions):
        return ParsedAnswer(think=think, reason="empty_string")
    if max(map(len, expansions)) > fmt.max_chars:
        return ParsedAnswer(think=think, reason="too_long")
    if len({e.casefold() for e in expansions}) < len(expansions):
        if not fmt.drop_duplicates:
            return ParsedAnswer(think=think, reason="duplicate")
        first = {}  # casefolded -> the first spelling, in the order of first appearance
        for e in expansions:
            first.setdefault(e.casefold(), e)
        expansions = tuple(first.values())
    return ParsedAnswer(expansions=expansions, think=think)
