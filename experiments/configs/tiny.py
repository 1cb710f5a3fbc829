"""tiny: the tests' runs, a tiny model on a small synthetic catalog, seconds per stage."""

from experiments.configs import GRPO, Preset, Pretrain, Warmup
from leser_jax.context import ContextConfig

PRESET = Preset(
    name="tiny",
    dataset="synthetic",
    context=ContextConfig(),
    max_context_tokens=ContextConfig().max_tokens,
    teacher_max_expansions=None,
    max_new_tokens=48,
    pretrain=Pretrain(model="tiny", steps=50, batch_size=8, seq_len=64, lr=3e-3),
    warmup=Warmup(steps=20, batch_size=4, lr=1e-3),
    grpo=GRPO(steps=10, queries_per_step=4, lr=1e-3),
)
