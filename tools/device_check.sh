#!/usr/bin/env bash
# The GPU measurements still open for issue 5, as one device run of about 7 minutes: the sampler
# with shared prompt prefixes and chunked prefill (against one prefill pass, and transformers'
# generate on the same GPU), the 1B GRPO step, and the memory plan against XLA's buffers.
# WORKSPACE.md's fourth-session log has the numbers these are compared with (they predate both
# changes).
#
# The device machine has its own jax, flax, optax, torch and transformers but no tantivy (which
# the GRPO step imports through the reward), and it cannot download. So first, on this machine:
#
#   .venv/bin/python -m pip download tantivy==0.27.0 --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_17_x86_64 --no-deps -d .device_wheels
#
# then the device tool's `run` with command "bash tools/device_check.sh", carry [".device_wheels"]
# and timeout_s 560. Each step has its own limit, so one that hangs leaves time to the others;
# the outputs come back as $OUT/*.txt.
set -u
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
PY=${PY:-python3}

if ! "$PY" -c "import tantivy" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-index --find-links .device_wheels tantivy
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  "$PY" -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', \
flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/versions.txt"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its output to $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee "$OUT/$name.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "^[IW][0-9]\{4\} " | tee -a "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

# Issue 5: 32 distinct prompts and 8 prompts x 4 rollouts, chunks of 32 against one pass.
step sampler 200 "$PY" -m tools.bench_sampler --presets=llama3_2_1b --batch=32 \
  --num_rollouts=1,4 --prompt_len=256 --new_tokens=96 --prefill_chunk=32,0 \
  --hf_device=cuda --hf_threads=1 --repeats=3
# Issue 10's step, now with the shared prefix in the rollout and in the loss.
step grpo_step 180 "$PY" -m tools.bench_grpo_step --preset=llama3_2_1b --queries=32 \
  --num_rollouts=4 --prompt_len=256 --new_tokens=128 --steps=3
# The plan counts the prompt once per group since the shared prefix; XLA's numbers on a GPU.
step memory_plan 150 "$PY" -m tools.memory_plan --presets=llama3_2_1b --devices=1 \
  --queries=32 --rollouts=4 --prompt_len=256 --new_tokens=128 --micro_batches=1 --xla_check
