"""tools/memory_plan.py: the arithmetic of the memory plan, checked by hand."""

from __future__ import annotations

import dataclasses

import pytest

from leser_jax.config import ModelConfig, param_count
from tools.memory_plan import (RunShape, activation_bytes, layer_param_count, lora_param_count,
                               memory_plan, plan_table, sampling_bytes, state_bytes,
                               xla_update_bytes)

ONE_B = ModelConfig.llama3_2_1b()
RUN = RunShape(queries=16, rollouts=4, prompt_len=512, new_tokens=256, micro_batches=4)
SHARDED = ("parameters", "master copy", "gradients", "optimizer state", "reference model")


def test_full_fine_tuning_bytes_per_parameter():
    n = param_count(ONE_B)  # 1,235,814,400
    s = state_bytes(ONE_B, RUN, 1)
    assert s["parameters"] == n * 2  # bf16
    assert s["master copy"] == n * 4  # float32
    assert s["gradients"] == n * (2 + 4)  # bf16, plus the float32 accumulator (M = 4 > 1)
    assert s["optimizer state"] == n * 8  # Adam m and v, float32
    assert s["reference model"] == n * 2  # a second bf16 copy
    one_part = state_bytes(ONE_B, dataclasses.replace(RUN, micro_batches=1, master_fp32=False), 1)
    assert one_part["gradients"] == n * 2 and one_part["master copy"] == 0


def test_layer_counts_add_up_to_the_model():
    c = ONE_B  # tied: the embedding [V, D] once, and the final norm [D]
    assert c.num_layers * layer_param_count(c) + c.vocab_size * c.d_model + c.d_model == \
        param_count(c)


def test_lora_adapters_and_no_reference_copy():
    tiny = ModelConfig.tiny()  # D 64, N 4, K 2, H 16, F 192, L 2
    # Per layer, rank 2: q (64 + 64) + k, v 2 * (64 + 32) + o (64 + 64) + gate, up 2 * (64 + 192)
    # + down (192 + 64) = 128 + 192 + 128 + 512 + 256 = 1216; x 2 (rank) x 2 (layers) = 4864.
    assert lora_param_count(tiny, 2) == 4864
    lora = dataclasses.replace(RUN, lora_rank=16)
    adapters = lora_param_count(ONE_B, 16)
    s = state_bytes(ONE_B, lora, 1)
    assert s["parameters"] == param_count(ONE_B) * 2 + adapters * 4  # bf16 base, f32 adapters
    assert s["reference model"] == 0 and s["master copy"] == 0  # the base is the reference
    assert s["optimizer state"] == adapters * 8


def test_fsdp_divides_the_state_and_data_parallel_the_rows():
    one, eight = memory_plan(ONE_B, RUN, 1), memory_plan(ONE_B, RUN, 8)
    for name in SHARDED:
        assert eight[name] == pytest.approx(one[name] / 8)
    # 64 rollout rows over 8 devices: 8 each; the KV cache is per row.
    assert eight["KV cache"] == pytest.approx(one["KV cache"] / 8)
    assert one["FSDP gathers"] == 0 and eight["FSDP gathers"] > 0
    # M = 2: a micro-batch's 32 rollouts and 8 prompts split 8 ways, every term per row.
    two = dataclasses.replace(RUN, micro_batches=2)
    assert activation_bytes(ONE_B, two, 8, remat=False) * 8 == \
        activation_bytes(ONE_B, two, 1, remat=False)
    # M = 4: 4 prompts do not split over 8 devices and run whole on each (sharding.row_sharding).
    assert eight["activations (no remat)"] > one["activations (no remat)"] / 8


def test_kv_cache_golden_value():
    # 2 (k, v) x L 16 x K 8 x H 64 x 2 bytes = 32,768 bytes a slot: 512 slots for each of the 16
    # prompts (shared by its 4 rows) and 256 for each of the 64 rows.
    assert sampling_bytes(ONE_B, RUN, 1)["KV cache"] == 32_768 * (16 * 512 + 64 * 256)


def test_micro_batches_and_remat_cut_activations():
    no_remat = activation_bytes(ONE_B, RUN, 1, remat=False)
    half = activation_bytes(ONE_B, dataclasses.replace(RUN, micro_batches=8), 1, remat=False)
    assert half * 2 == no_remat  # every term is linear in the micro-batch's rows
    assert activation_bytes(ONE_B, RUN, 1, remat=True) < no_remat / 3


def test_plan_table_and_shape_checks():
    table = plan_table("llama3_2_3b", RUN, [1, 8], 16, 80.0)
    assert "| 1 GPU, full | 1 GPU, LoRA r=16 | 8 GPUs, full | 8 GPUs, LoRA r=16 |" in table
    assert "fits 80 GB" in table
    with pytest.raises(ValueError, match="micro-batches"):
        RunShape(queries=6, micro_batches=4)


@pytest.mark.slow
def test_xla_check_compiles_the_update():
    tiny = ModelConfig.tiny().replace(vocab_size=64, num_layers=1)
    xla = xla_update_bytes(tiny, RunShape(queries=2, rollouts=2, prompt_len=8, new_tokens=4,
                                          micro_batches=1))
    assert xla["temp"] > 0 and xla["arguments"] >= param_count(tiny) * 4  # float32 params
