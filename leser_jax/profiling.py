"""Profiling: a `jax.profiler` trace of a few steady-state steps, for the launchers' --profile_dir.

The device code names its blocks with `jax.named_scope` (the sampler's "prefill", "decode",
"decode_step", "sample"; the model's "layer_i/attention", "layer_i/mlp"; the GRPO update's
"update"), so a trace in TensorBoard's profile plugin or Perfetto reads like the code. This
module adds the host side: each step of a launcher's loop is a `StepTraceAnnotation`, host
phases (reward, search) are `TraceAnnotation`s, and only steps [start_step, start_step +
num_steps) are recorded, after compilation and warm-up, so the trace shows the steady state.

    profiler = StepProfiler(FLAGS.profile_dir, start_step=3, num_steps=3)
    for step in range(num_steps):
        with profiler.step(step):
            rollouts = generate_rollouts(...)          # device work, blocked on inside
            with phase("reward"):
                rewards = score(rollouts.texts)
            state = update(state, batch); jax.block_until_ready(state)
    profiler.close()

Block on device results inside the step (the launchers do, to read their clocks), or the trace
attributes device time to whichever later step happens to wait for it.
"""

from __future__ import annotations

import contextlib
import os

import jax


def phase(name: str):
    """A named host-side span in the trace (a no-op when no trace is being recorded)."""
    return jax.profiler.TraceAnnotation(name)


class StepProfiler:
    """Traces steps [start_step, start_step + num_steps) of a loop into `profile_dir`.

    With profile_dir None or "" it only annotates steps (free when nothing records them).
    """

    def __init__(self, profile_dir: str | os.PathLike | None, *, start_step: int = 3,
                 num_steps: int = 3, name: str = "step"):
        if start_step < 0 or num_steps < 1:
            raise ValueError(f"need start_step >= 0 and num_steps >= 1, got {start_step}, "
                             f"{num_steps}")
        self.profile_dir = str(profile_dir) if profile_dir else None
        self.start_step, self.num_steps, self.name = start_step, num_steps, name
        self.active = False
        self.traced_steps: list[int] = []

    @contextlib.contextmanager
    def step(self, step: int):
        if self.profile_dir and step == self.start_step and not self.active:
            jax.profiler.start_trace(self.profile_dir)
            self.active = True
        try:
            with jax.profiler.StepTraceAnnotation(self.name, step_num=step):
                yield
        finally:
            if self.active:
                self.traced_steps.append(step)
                if step >= self.start_step + self.num_steps - 1:
                    self.close()

    def close(self):
        """Stops a trace still recording (a loop shorter than the window); safe to call twice."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
