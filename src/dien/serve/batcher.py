"""Batching concurrent requests: a queue on the event loop, one model thread.

Each request is put on an asyncio queue with a future. A collector task takes the first
waiting request, then keeps taking requests for up to ``window_s`` or until the batch holds
``max_weight`` candidates, hands the batch to the single worker thread and resolves every
future with its own result. While the worker runs, new requests wait in the queue and form
the next batch, so under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Collects items submitted within a short window and runs them as one batch."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], list[Result]],
        weight: Callable[[Item], int],
        window_s: float,
        max_weight: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.weight = weight
        self.window_s = window_s
        self.max_weight = max_weight
        self.on_batch = on_batch  # called with (items, total weight) of each batch
        self.task: asyncio.Task[None] | None = None  # the collector; the rest is made by start()
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]]
        self.executor: ThreadPoolExecutor
        self.carry: tuple[Item, asyncio.Future[Result]] | None

    def start(self) -> None:
        """Collect on the running event loop; after :meth:`stop` it starts afresh.

        An application's lifespan may run more than once (test clients start one per test),
        so the queue and the model thread are made anew each time.
        """
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dien-model")
        self.carry = None
        self.task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.executor.shutdown(wait=True)

    async def submit(self, item: Item) -> Result:
        """The result of ``item``, computed in some batch; raises what the batch raised."""
        if self.task is None or self.task.done():
            raise RuntimeError("the batcher is not running: call start() first")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(loop)
            items = [item for item, _ in batch]
            if self.on_batch is not None:
                self.on_batch(len(items), sum(self.weight(i) for i in items))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
            except Exception as error:  # every request of the batch gets the error
                logger.exception("scoring a batch of %d requests failed", len(items))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # the client may have gone away
                    future.set_result(result)

    async def _next_batch(
        self, loop: asyncio.AbstractEventLoop
    ) -> list[tuple[Item, asyncio.Future[Result]]]:
        first = self.carry if self.carry is not None else await self.queue.get()
        self.carry = None
        batch, weight = [first], self.weight(first[0])
        deadline = loop.time() + self.window_s
        while weight < self.max_weight:
            try:
                entry = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                entry = await self._get_within(remaining)
                if entry is None:
                    break
            w = self.weight(entry[0])
            if weight + w > self.max_weight:
                self.carry = entry  # starts the next batch
                break
            batch.append(entry)
            weight += w
        return batch

    async def _get_within(self, timeout: float) -> tuple[Item, asyncio.Future[Result]] | None:
        """The next queued entry if one arrives within ``timeout`` seconds, else None.

        A cancelled ``Queue.get`` never takes an item off the queue, and a get that finished
        just as the time ran out still hands its item over, so no request is ever lost.
        """
        getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({getter}, timeout=timeout)
        if not done:
            getter.cancel()
        try:
            return await getter
        except asyncio.CancelledError:
            if not getter.cancelled():
                raise
            return None
