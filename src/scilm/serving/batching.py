"""Dynamic micro-batching under a compute budget: inputs from concurrent requests run through the model together.

One queue of single inputs and one worker task. The worker takes the first input, waits at most
``max_wait_ms`` for more (up to ``max_batch_size`` inputs and ``max_batch_cost`` cost units), and
runs the batch in one thread, so the event loop keeps accepting requests while the model works
and only one forward runs at a time. Inputs that cannot share a forward (seq2seq with different
beam settings) carry different ``group`` keys and run as separate calls.
``max_batch_size=1, max_wait_ms=0`` is batching off.

Every input carries an estimated **cost** (token-steps, see :mod:`scilm.serving.budget`). The
queue is bounded in inputs (``max_queue``) and in cost (``max_pending_cost``, queued + running):
a request that would overflow either fails at once with :class:`QueueFull`, which the server
answers with 503 + Retry-After. Retry-After is the queued cost divided by the measured service
rate (cost units per second over recent batches), so it follows the model and the machine.

Each model call gets a :class:`Control`: a deadline (``max_batch_seconds`` from the call's
start; the model stops at its next step past it) and the inputs whose requests were abandoned.
A request cancelled while queued (its client went away) drops its inputs from the queue; when
every input of a running call is abandoned the call stops at its next step.

:meth:`MicroBatcher.close` (on SIGTERM) fails every queued input with :class:`ShuttingDown` at
once and lets only the batch being formed or run finish; :meth:`stop` then waits for it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds ``max_queue`` inputs or ``max_pending_cost`` cost units already."""


class ShuttingDown(Exception):
    """The server is stopping: queued work is refused, not run."""


class TimeLimit(Exception):
    """A model call ran past its deadline and was stopped (its partial output is not returned)."""


class Cancelled(Exception):
    """Every request of a model call went away; the call stopped early."""


class Control:
    """What a running model call checks between steps: its deadline and its abandoned inputs.

    ``deadline`` is ``time.monotonic()`` seconds; ``abandoned`` holds the indices (into the call's
    ``values``) whose requests were cancelled. Thread-safe: the event loop marks, the model thread reads.
    """

    def __init__(self, n: int, seconds: float):
        self.n = n
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._abandoned: set[int] = set()
        self._lock = threading.Lock()
        self.stop_reason: str | None = None  # "time" or "cancelled", set by whoever stopped the call

    def abandon(self, index: int) -> None:
        """Mark input ``index`` of the call as abandoned (its client went away)."""
        with self._lock:
            self._abandoned.add(index)

    def is_abandoned(self, index: int) -> bool:
        """Whether input ``index`` was abandoned (a call running inputs one by one skips it)."""
        with self._lock:
            return index in self._abandoned

    @property
    def all_abandoned(self) -> bool:
        """Whether every input of the call was abandoned (the call may stop)."""
        with self._lock:
            return len(self._abandoned) >= self.n

    def remaining(self) -> float:
        """Seconds left before the deadline (never below 0)."""
        return max(0.0, self.deadline - time.monotonic())

    def should_stop(self) -> bool:
        """True (and ``stop_reason`` set) when the deadline passed or every input was abandoned."""
        if time.monotonic() >= self.deadline:
            self.stop_reason = "time"
        elif self.all_abandoned:
            self.stop_reason = "cancelled"
        return self.stop_reason is not None

    def check(self) -> None:
        """Raise :class:`TimeLimit` or :class:`Cancelled` if the call must stop (between forwards)."""
        if self.should_stop():
            raise self.error()

    def error(self) -> Exception:
        """The exception for ``stop_reason``: :class:`Cancelled` if every input went, else :class:`TimeLimit`."""
        if self.stop_reason == "cancelled":
            return Cancelled("every request of this model call went away")
        return TimeLimit(f"the model call ran past the time limit of {self.seconds:g} s and was stopped")


@dataclass(eq=False)
class _Item:
    value: Any
    group: Hashable
    cost: int
    future: asyncio.Future
    control: Control | None = field(default=None, repr=False)  # set while its call runs
    index: int = -1  # its position in that call's values


# run_batch(group, values, control) -> one result per value, in order; it runs in the worker thread.
RunBatch = Callable[[Hashable, list[Any], Control], Sequence[Any]]


class MicroBatcher:
    """The queue and its worker. All methods but the model call run on the event loop."""

    def __init__(self, run_batch: RunBatch, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None,
                 max_batch_cost: float = math.inf, max_pending_cost: float = math.inf,
                 max_batch_seconds: float = 60.0):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        if not (max_batch_cost > 0 and max_pending_cost > 0 and max_batch_seconds > 0):
            raise ValueError("max_batch_cost, max_pending_cost and max_batch_seconds must be > 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_batch_cost = max_batch_cost
        self.max_pending_cost = max_pending_cost
        self.max_batch_seconds = max_batch_seconds
        self.on_batch = on_batch  # metrics hook: (batch size, seconds)
        self._queue: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._closing = asyncio.Event()
        self._pending = 0  # inputs queued or running
        self._pending_cost = 0  # their cost
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scilm-model")
        self._rate: float | None = None  # measured cost units per second (EWMA over batches)
        self.running_cost = 0  # cost of the call running now

    @property
    def depth(self) -> int:
        """Inputs waiting or running."""
        return self._pending

    @property
    def pending_cost(self) -> int:
        """Cost units waiting or running."""
        return self._pending_cost

    @property
    def rate(self) -> float | None:
        """Measured service rate in cost units per second (None before the first call)."""
        return self._rate

    def retry_after(self, extra_cost: int = 0) -> int:
        """Seconds until the pending work (plus ``extra_cost``) has likely run, at least 1.

        The measured rate (an exponential average over recent model calls) when there is one;
        before the first call, the bound: every pending batch taking its whole time limit.
        """
        work = self._pending_cost + extra_cost
        if self._rate:
            seconds = work / self._rate
        else:
            seconds = self.max_batch_seconds * max(1, math.ceil(work / self.max_batch_cost)) \
                if math.isfinite(self.max_batch_cost) else self.max_batch_seconds
        return max(1, math.ceil(seconds))

    def start(self) -> None:
        """Start the worker task on the running event loop (call once, from a coroutine)."""
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="scilm-batcher")

    def close(self) -> int:
        """Refuse new work and fail every queued input with :class:`ShuttingDown`; returns how many.

        The batch being formed stops waiting for more inputs and runs; the running call finishes.
        """
        self._closing.set()
        self._arrived.set()  # wake a worker waiting for its batch to fill
        failed = 0
        while self._queue:
            item = self._queue.popleft()
            self._release(item)
            if not item.future.done():
                item.future.set_exception(ShuttingDown("server is shutting down"))
                failed += 1
        return failed

    async def stop(self) -> None:
        """Close, wait for the running call (bounded by its time limit), then stop the worker."""
        self.close()
        while self._pending:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def _release(self, item: _Item) -> None:
        self._pending -= 1
        self._pending_cost -= item.cost

    async def submit(self, values: Sequence[Any], group: Hashable = None,
                     costs: Sequence[int] | None = None) -> list[Any]:
        """Queue ``values`` (all or none) and wait for their results, in order.

        Raises QueueFull (over ``max_queue`` inputs or ``max_pending_cost``), ShuttingDown, or what
        the model call raised (TimeLimit included). Cancelling the awaiting task abandons the inputs:
        queued ones are dropped, a running call stops once all of its inputs are abandoned.
        """
        costs = list(costs) if costs is not None else [1] * len(values)
        if self._closing.is_set():
            raise ShuttingDown("server is shutting down")
        total = sum(costs)
        if self._pending + len(values) > self.max_queue:
            raise QueueFull(f"queue full ({self._pending} inputs waiting, limit {self.max_queue})")
        if self._pending_cost and self._pending_cost + total > self.max_pending_cost:
            raise QueueFull(f"compute budget full ({self._pending_cost} cost units pending, this request "
                            f"{total}, server budget {self.max_pending_cost:g})")
        loop = asyncio.get_running_loop()
        items = [_Item(v, group, c, loop.create_future()) for v, c in zip(values, costs)]
        self._pending += len(items)
        self._pending_cost += total
        self._queue.extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except asyncio.CancelledError:
            self._abandon(items)
            raise

    def _abandon(self, items: list[_Item]) -> None:
        for item in items:
            if item.control is not None:  # running: the call stops when all of its inputs are abandoned
                item.control.abandon(item.index)
            elif item in self._queue:
                self._queue.remove(item)
                self._release(item)
            if not item.future.done():
                item.future.cancel()

    async def _next(self, timeout: float | None) -> _Item | None:
        """The next queued input, waiting up to ``timeout`` seconds (None: for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            if self._closing.is_set() and timeout is not None:
                return None
            self._arrived.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return self._queue.popleft()

    async def _collect(self) -> list[_Item]:
        """The first input, plus whatever arrives within max_wait, up to max_batch_size and max_batch_cost."""
        first = await self._next(None)
        batch, cost = [first], first.cost
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            if self._queue:
                if cost + self._queue[0].cost > self.max_batch_cost:
                    break  # it starts the next batch
                item = self._queue.popleft()
            else:
                item = await self._next(max(0.0, deadline - time.monotonic()))
                if item is None:
                    break
                if cost + item.cost > self.max_batch_cost:
                    self._queue.appendleft(item)
                    break
            batch.append(item)
            cost += item.cost
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[Hashable, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.group, []).append(item)
            for group, items in groups.items():
                live = [item for item in items if not item.future.done()]  # abandoned meanwhile: skip
                for item in items:
                    if item not in live:
                        self._release(item)
                if not live:
                    continue
                control = Control(len(live), self.max_batch_seconds)
                for index, item in enumerate(live):
                    item.control, item.index = control, index
                cost = sum(item.cost for item in live)
                self.running_cost = cost
                start = time.perf_counter()
                failed = False
                try:
                    results = await loop.run_in_executor(
                        self._executor, self.run_batch, group, [i.value for i in live], control)
                    if len(results) != len(live):
                        raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} inputs")
                except Exception as exc:  # the requests fail, the worker lives on
                    failed = True
                    for item in live:
                        if not item.future.done():
                            item.future.set_exception(exc)
                else:
                    for item, result in zip(live, results):
                        if not item.future.done():  # the client may have gone away
                            item.future.set_result(result)
                finally:
                    seconds = time.perf_counter() - start
                    self.running_cost = 0
                    for item in live:
                        self._release(item)
                    if not failed and seconds > 0:
                        rate = cost / seconds
                        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
                    if self.on_batch is not None:
                        self.on_batch(len(live), seconds)
