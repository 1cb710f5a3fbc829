"""cpu: real data (Home Depot) on 2 CPU cores, in about an hour's budget.

The model is the demo size: the 34M `cpu` model pretrains too slowly on 2 cores for this budget
(pretrain.model="cpu" trains it where there is time).
"""

from experiments.configs import GRPO, Preset, Pretrain, Warmup
from leser_jax.context import ContextConfig

PRESET = Preset(
    name="cpu",
    dataset="homedepot-search-relevance",
    context=ContextConfig(k=5, max_tokens=128),
    max_context_tokens=256,
    teacher_max_expansions=2,
    max_new_tokens=96,
    pretrain=Pretrain(model="demo", steps=700, batch_size=16, seq_len=256, lr=2e-3),
    warmup=Warmup(steps=600, batch_size=8, lr=2e-3, eval_queries=256),
    grpo=GRPO(steps=40, queries_per_step=8, lr=2e-4, eval_every=10, checkpoint_every=5),
)
