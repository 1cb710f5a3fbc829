"""cpu: real data (Home Depot) on 2 CPU cores, in about an hour's budget: the demo's prompt and
answer lengths, longer training.

The model is the demo size: the 34M `cpu` model pretrains too slowly on 2 cores for this budget
(pretrain.model="cpu" trains it where there is time). The context budget may grow to 256 tokens
(the pipeline's --context_k scales it): the demo-size model's 512 positions hold that prompt and
its answer.
"""

import dataclasses

from experiments.configs import GRPO, Pretrain, Warmup, demo

PRESET = dataclasses.replace(
    demo.PRESET,
    name="cpu",
    dataset="homedepot-search-relevance",
    max_context_tokens=256,
    pretrain=Pretrain(model="demo", steps=700, batch_size=16, seq_len=256, lr=2e-3),
    warmup=Warmup(steps=600, batch_size=8, lr=2e-3, eval_queries=256),
    grpo=GRPO(steps=40, queries_per_step=8, lr=2e-4, eval_every=10, checkpoint_every=5),
)
