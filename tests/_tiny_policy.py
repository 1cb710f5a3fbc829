"""A random tiny policy on the teacher tests' 10-product catalog, saved as a run directory that
records the context it was "trained" with: what evaluation, the expansion cache and the search
service load (evaluation.policy_system checks that context)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from flax import nnx

from leser_jax import checkpoint
from leser_jax.config import ModelConfig
from leser_jax.context import ContextConfig
from leser_jax.model import Llama
from leser_jax.prompts import INSTRUCTION
from leser_jax.search import SearchEngine
from leser_jax.tokenizer import train_sentencepiece
from tests.test_teacher import PRODUCTS, make_catalog


def tiny_policy_run(run: Path, context: ContextConfig):
    """(catalog, engine, run): the catalog and its engine, and a policy saved at run/params with
    its tokenizer, run/checkpoints/step_00000002/configs.json recording `context`."""
    catalog = make_catalog()
    engine = SearchEngine.build(catalog)
    texts = [title for _, title, _ in PRODUCTS] + [INSTRUCTION.format(m_max=5)] * 20
    tokenizer = train_sentencepiece(texts, vocab_size=600)
    config = ModelConfig.tiny().replace(vocab_size=tokenizer.vocab_size, max_seq_len=1024)
    checkpoint.save_params(run / "params", Llama(config, rngs=nnx.Rngs(0)), tokenizer=tokenizer)
    record = run / "checkpoints" / "step_00000002"
    record.mkdir(parents=True)
    (record / "configs.json").write_text(json.dumps({"context": dataclasses.asdict(context)}))
    return catalog, engine, run
