"""demo: what `make demo` runs, the synthetic catalog on a laptop's CPU.

Its budget is `make demo` within 20 minutes on a 2-core machine, install included, so the step
counts are cut to fit it; warmup.steps and grpo.steps are the knobs to turn first.
"""

from experiments.configs import GRPO, Preset, Pretrain, Warmup
from leser_jax.context import ContextConfig

PRESET = Preset(
    name="demo",
    dataset="synthetic",
    # k=5 in 128 tokens: prompts of <= 236 tokens, which with max_new_tokens fit the demo
    # model's 512-token window; so a larger budget (max_context_tokens) shows nothing more.
    context=ContextConfig(k=5, max_tokens=128),
    max_context_tokens=128,
    teacher_max_expansions=2,
    max_new_tokens=96,
    pretrain=Pretrain(model="demo", steps=150, batch_size=16, seq_len=128, lr=2e-3),
    # The warm-up's steps are where the budget goes first: the small policy underfits the
    # teacher, and GRPO can only refine what it has learned. The prompt's loss trains its
    # copying from the context at no extra compute.
    warmup=Warmup(steps=300, batch_size=8, lr=2e-3, eval_queries=64, prompt_weight=0.5),
    # RL's learning rate is well below the warm-up's: each update follows noisy advantages, and
    # the KL penalty only slows a drift that a large step has already made.
    grpo=GRPO(steps=12, queries_per_step=8, lr=2e-4, eval_every=0, checkpoint_every=4),
)
