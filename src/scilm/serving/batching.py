"""Dynamic micro-batching: inputs from concurrent requests run through the model together.

One asyncio queue of single inputs and one worker task. The worker takes the first input, waits
at most ``max_wait_ms`` for more (up to ``max_batch_size``), and runs the batch in one thread, so
the event loop keeps accepting requests while the model works and only one forward runs at a
time. Inputs that cannot share a forward (seq2seq with different beam settings) carry different
``group`` keys and run as separate calls. ``max_batch_size=1, max_wait_ms=0`` is batching off.

The queue is bounded (in inputs): a request that would overflow it fails at once with
:class:`QueueFull`, which the server answers with 503 + Retry-After, so latency cannot grow
without bound under overload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The queue holds ``max_queue`` inputs already."""


@dataclass
class _Item:
    value: Any
    group: Hashable
    future: asyncio.Future


# run_batch(group, values) -> one result per value, in order; it runs in the worker thread.
RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


class MicroBatcher:
    def __init__(self, run_batch: RunBatch, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # metrics hook: (batch size, seconds)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending = 0  # inputs queued or running
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scilm-model")
        self._seconds_per_input = 0.05  # running estimate, for Retry-After

    @property
    def depth(self) -> int:
        """Inputs waiting or running."""
        return self._pending

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        return max(1, round(self._pending * self._seconds_per_input))

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="scilm-batcher")

    async def stop(self) -> None:
        """Finish every queued input, then stop the worker (graceful shutdown)."""
        while self._pending:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, values: Sequence[Any], group: Hashable = None) -> list[Any]:
        """Queue ``values`` (all or none) and wait for their results, in order."""
        if self._pending + len(values) > self.max_queue:
            raise QueueFull(f"queue full ({self._pending} inputs waiting, limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(v, group, loop.create_future()) for v in values]
        self._pending += len(items)
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _collect(self) -> list[_Item]:
        """The first input, then whatever arrives within max_wait, up to max_batch_size."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[Hashable, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.group, []).append(item)
            for group, items in groups.items():
                start = time.perf_counter()
                try:
                    results = await loop.run_in_executor(
                        self._executor, self.run_batch, group, [i.value for i in items])
                    if len(results) != len(items):
                        raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} inputs")
                except Exception as exc:  # the requests fail (500), the worker lives on
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                else:
                    for item, result in zip(items, results):
                        if not item.future.done():  # the client may have gone away
                            item.future.set_result(result)
                finally:
                    seconds = time.perf_counter() - start
                    self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * seconds / len(items)
                    self._pending -= len(items)
                    if self.on_batch is not None:
                        self.on_batch(len(items), seconds)
