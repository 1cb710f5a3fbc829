"""Tail queries expanded online: concurrent requests gathered into one sampler call.

The paper's cache covers head queries and leaves the tail without expansions. With a policy at
hand, the search service (search_service.py) expands a cache miss while the shopper waits: each
request thread `submit`s its query, and one batcher thread takes the waiting queries, up to
`batch_size` of them or whatever arrived within `max_wait_s` of the oldest, into one call of the
jitted sampler (PolicySystem.complete, whose batch buckets should include every size up to
`batch_size`, so that a lone request does not pay for a full batch). Its answers are parsed with
the reward's parser and kept (`generated`, least recently used dropped), so a tail query is
generated once.

The batcher is the only thread that runs JAX: a sampler call is not shared-state-safe across
threads, and one call over B rows costs far less than B calls. Requests for a key already
waiting share its future. `expected_wait_s` predicts when a query submitted now would be
answered (the call in progress, the full batches ahead of it, then its own call, each at the
running mean call time), so that a request that would pass its latency budget is answered
without its expansions at once, rather than after the budget; it is still queued while there is
room (`max_pending`), so that the next request for it finds it generated.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from leser_jax.prompts import AnswerFormat, ParsedAnswer, parse_answer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Pending:
    key: str
    text: str
    arrived: float  # perf_counter() at submit
    future: concurrent.futures.Future


class OnlineExpander:
    """complete(texts, step=s) -> one raw completion per text (PolicySystem.complete)."""

    def __init__(self, complete: Callable[..., list[str]], *, batch_size: int,
                 max_wait_s: float, answer: AnswerFormat = AnswerFormat(),
                 max_pending: int | None = None, memo_size: int = 100_000):
        if batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"batch_size must be >= 1 and max_wait_s >= 0, got {batch_size}, "
                             f"{max_wait_s}")
        self.complete, self.answer = complete, answer
        self.batch_size, self.max_wait_s = batch_size, max_wait_s
        self.max_pending = max_pending or 4 * batch_size
        self.memo_size = memo_size
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._pending: dict[str, _Pending] = {}  # key -> queued or in the running call
        self._memo: collections.OrderedDict[str, ParsedAnswer] = collections.OrderedDict()
        self._call_s: float | None = None  # running mean of a sampler call's seconds
        self._busy_until: float | None = None  # when the call in progress should end
        self._closed = False
        self._step = 0  # sampling key of each call: fold_in(seed, step)
        self.calls = 0
        self.rows = 0
        self._thread = threading.Thread(target=self._run, name="online-expander", daemon=True)

    def warm_up(self, texts: Sequence[str], sizes: Sequence[int]) -> None:
        """Compiles the sampler for each batch size of `sizes` (rows cycled from `texts`) before
        serving, then times a full batch for the first `expected_wait_s`. Call before `start`."""
        for size in sorted(set(sizes)):
            self.complete([texts[i % len(texts)] for i in range(size)], step=0)
        start = time.perf_counter()
        self.complete([texts[i % len(texts)] for i in range(self.batch_size)], step=0)
        self._call_s = time.perf_counter() - start

    def start(self) -> OnlineExpander:
        self._thread.start()
        return self

    def generated(self, key: str) -> ParsedAnswer | None:
        """The answer generated earlier for a key, or None."""
        with self._cond:
            answer = self._memo.get(key)
            if answer is not None:
                self._memo.move_to_end(key)
            return answer

    def expected_wait_s(self) -> float:
        """Seconds until a query submitted now would be answered (0 before any call is timed)."""
        with self._cond:
            if self._call_s is None:
                return 0.0
            now = time.perf_counter()
            running = 0.0 if self._busy_until is None else max(0.0, self._busy_until - now)
            gather = self.max_wait_s if self._busy_until is None else 0.0
            return running + gather + (len(self._queue) // self.batch_size + 1) * self._call_s

    def submit(self, key: str, text: str) -> concurrent.futures.Future | None:
        """A future of the key's ParsedAnswer; None when the queue is full or closed."""
        with self._cond:
            if key in self._pending:
                return self._pending[key].future
            if self._closed or len(self._queue) >= self.max_pending:
                return None
            item = _Pending(key, text, time.perf_counter(), concurrent.futures.Future())
            self._queue.append(item)
            self._pending[key] = item
            self._cond.notify()
            return item.future

    def stats(self) -> dict:
        with self._cond:
            return {"calls": self.calls, "rows": self.rows, "queued": len(self._queue),
                    "generated": len(self._memo),
                    "call_ms": None if self._call_s is None else round(1000 * self._call_s, 1)}

    def close(self) -> None:
        """Stops the batcher after its call in progress; queued requests get an error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _take_batch(self) -> list[_Pending] | None:
        """Waits for a batch: `batch_size` queries, or the oldest has waited max_wait_s."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            deadline = self._queue[0].arrived + self.max_wait_s if self._queue else 0.0
            while len(self._queue) < self.batch_size and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                for item in self._queue:
                    item.future.set_exception(RuntimeError("the online expander was closed"))
                return None
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._busy_until = time.perf_counter() + (self._call_s or 0.0)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            start = time.perf_counter()
            try:
                texts = self.complete([item.text for item in batch], step=self._step)
                answers = [parse_answer(t, self.answer) for t in texts]
            except Exception as e:  # a failed call fails its requests, not the service
                log.exception("online expansion of %d queries failed", len(batch))
                answers = [e] * len(batch)
            seconds = time.perf_counter() - start
            with self._cond:
                self._step += 1
                self.calls += 1
                self.rows += len(batch)
                # A mean over the last ~8 calls: load and batch sizes drift.
                self._call_s = seconds if self._call_s is None else (
                    0.875 * self._call_s + 0.125 * seconds)
                self._busy_until = None
                for item, answer in zip(batch, answers):
                    del self._pending[item.key]
                    if isinstance(answer, ParsedAnswer):
                        self._memo[item.key] = answer
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
            for item, answer in zip(batch, answers):
                if isinstance(answer, ParsedAnswer):
                    item.future.set_result(answer)
                else:
                    item.future.set_exception(answer)
