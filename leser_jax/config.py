"""The policy's configuration: architecture hyperparameters, presets, parameter and FLOP counts.

`ModelConfig` holds the shape and numerics of the LLaMA-3-style decoder in model.py (and of the
frozen reference model). Presets are classmethods: `llama3_2_1b()` and `llama3_2_3b()` are the
published configs of meta-llama/Llama-3.2-1B and -3B; `tiny()`, `demo()` and `cpu()` are ours
(the paper only uses LLaMA 3.2/3.1), sized for tests, the CPU pipeline and the CPU benchmarks.

Counting, pure arithmetic on a config:
- `param_count`: parameters, embeddings and LoRA adapters included (the number `jax.eval_shape`
  of the model gives); `lora_param_count`: the adapters alone.
- `flops_per_token`: matmul FLOPs per token of a length-`seq_len` sequence (the numerator of
  MFU): a forward is 2N (one multiply and one add per matmul weight) plus the attention scores
  Q K^T and weighted sum A V over all seq_len keys; training = 3 * forward (the 6N rule).

No JAX or flax here, so the data-only launchers need no JAX to read a config.
"""

from __future__ import annotations

import dataclasses

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and numerics of the policy (and of the frozen reference model: a copy, or with LoRA
    the policy's own base).

    Field names follow LLaMA 3; the Hugging Face config.json key is given where it differs.
    rope_scaling_factor: LLaMA 3's RoPE frequency scaling `factor` (None = plain RoPE); with it,
      rope_low_freq_factor, rope_high_freq_factor and rope_original_max_len
      (`original_max_position_embeddings`) define `llama3_inv_freq`.
    max_seq_len: longest sequence a cache may hold (`max_position_embeddings`); RoPE itself
      is computed from positions and has no table to outgrow.
    dtype: activations and matmul inputs ("float32" | "bfloat16" | "float16"); param_dtype:
      storage of the parameters. Softmax, norm statistics and logits are float32 regardless.
    init_std: std of the normal initialisation of a model trained from scratch (ours, GPT-2's
      0.02; converted checkpoints ignore it).
    remat: recompute each block's activations in the backward pass instead of storing them
      (jax.checkpoint around each Block): a backward pass keeps only each block's
      input [B, T, D], for about one more forward pass of compute. Changes no number; a
      training-time switch (tools/memory_plan.py sizes what it saves).
    lora_rank: rank r of the LoRA adapters on every attention and MLP projection (0 = none:
      full fine-tuning); lora_alpha: their scale numerator, the update is (alpha / r) A B, so
      alpha = r gives scale 1 (Hu et al. 2021 fix alpha at the first r they try and do not tune
      it; the scale keeps the learning rate meaningful across ranks). See lora.py.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 500_000.0
    rope_scaling_factor: float | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    remat: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "ffn_dim", "max_seq_len", "rope_original_max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("rope_theta, norm_eps and init_std must be positive")
        if self.rope_scaling_factor is not None:
            if self.rope_scaling_factor < 1:
                raise ValueError(
                    f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}")
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                raise ValueError("need 0 < rope_low_freq_factor < rope_high_freq_factor")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ValueError(f"need lora_rank >= 0 and lora_alpha > 0, got {self.lora_rank}, "
                             f"{self.lora_alpha}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")

    @property
    def kv_groups(self) -> int:
        """G: query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def without_lora(self) -> ModelConfig:
        """The config of the plain model (`merge_lora`): no adapters, alpha at its default."""
        return self.replace(lora_rank=0, lora_alpha=ModelConfig.lora_alpha)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)

    # Presets. The small ones are ours (the paper only uses LLaMA 3.2/3.1); the LLaMA ones are the
    # published configs of meta-llama/Llama-3.2-{1B,3B}.
    @classmethod
    def tiny(cls) -> ModelConfig:
        """Tests only: every test in seconds."""
        return cls(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, ffn_dim=192, rope_theta=10_000.0, max_seq_len=256)

    @classmethod
    def demo(cls) -> ModelConfig:
        """~5M parameters: the whole pipeline in minutes on 2 CPU cores."""
        return cls(vocab_size=8192, d_model=256, num_layers=4, num_heads=8, num_kv_heads=4,
                   head_dim=32, ffn_dim=768, rope_theta=10_000.0, max_seq_len=512)

    @classmethod
    def cpu(cls) -> ModelConfig:
        """~34M parameters: the CPU benchmarks' larger size. Pretraining it takes hours on 2 cores,
        so the pipeline's hour-long cpu preset trains the demo size."""
        return cls(vocab_size=16384, d_model=512, num_layers=8, num_heads=8, num_kv_heads=4,
                   head_dim=64, ffn_dim=1536, rope_theta=10_000.0, max_seq_len=1024)

    @classmethod
    def llama3_2_1b(cls) -> ModelConfig:
        return cls(vocab_size=128_256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                   head_dim=64, ffn_dim=8192, rope_theta=500_000.0, rope_scaling_factor=32.0,
                   rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                   rope_original_max_len=8192, max_seq_len=131_072, norm_eps=1e-5,
                   tie_embeddings=True, dtype="bfloat16", param_dtype="bfloat16")

    @classmethod
    def llama3_2_3b(cls) -> ModelConfig:
        return cls.llama3_2_1b().replace(d_model=3072, num_layers=28, num_heads=24, head_dim=128)


def param_count(config: ModelConfig) -> int:
    """Number of parameters, embeddings and LoRA adapters included (the number `jax.eval_shape`
    of the model gives)."""
    c = config
    attn = c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)  # q, o; k, v
    mlp = 3 * c.d_model * c.ffn_dim
    per_layer = attn + mlp + 2 * c.d_model  # two RMSNorm scales
    embed = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    return c.num_layers * per_layer + embed + c.d_model + lora_param_count(c)  # + final norm


def lora_param_count(config: ModelConfig) -> int:
    """Adapter parameters: A [in, r] and B [r, out] on q, k, v, o, gate, up, down (0 if r = 0)."""
    c = config
    q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    ins_outs = [(c.d_model, q_out), (c.d_model, kv_out), (c.d_model, kv_out), (q_out, c.d_model),
                (c.d_model, c.ffn_dim), (c.d_model, c.ffn_dim), (c.ffn_dim, c.d_model)]
    return c.num_layers * c.lora_rank * sum(i + o for i, o in ins_outs)


def flops_per_token(config: ModelConfig, seq_len: int, *, training: bool = True) -> float:
    """Matmul FLOPs per token of a length-`seq_len` sequence (the numerator of MFU).

    forward = 2 * N_mm + 4 * L * N * H * seq_len
      N_mm: parameters that take part in a matmul: every layer's projections plus the output
        projection D x V (counted once even when tied: it is used as a matmul once); the input
        embedding is a gather and the norms are elementwise, so neither counts.
      2 * N_mm: one multiply and one add per weight per token (Kaplan et al. 2020's 2N).
      4 * L * N * H * seq_len: scores Q K^T and the weighted sum A V, 2 * N * H * seq_len FLOPs
        each per token and layer. Counted over all seq_len keys, not halved for causality: the
        einsum computes the full square (the PaLM paper's appendix B convention).
    training = 3 * forward (the backward pass costs twice the forward: the 6N rule).
    """
    c = config
    n_mm = c.num_layers * (c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
                           + 3 * c.d_model * c.ffn_dim) + c.d_model * c.vocab_size
    forward = 2 * n_mm + 4 * c.num_layers * c.num_heads * c.head_dim * seq_len
    return float(3 * forward if training else forward)
