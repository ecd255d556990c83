"""Batching and ordering: which messages the model answers together, and in what order.

Messages that arrive while the model is busy are answered together in one model call, up to the
model's ``parallelism`` batches at once: that lets the bot serve many users at once without
adding latency when it is idle. A chat's messages are answered and delivered in the order they
arrived because each chat takes turns (:class:`ChatTurns`): the one ordering mechanism, held from
the moment a message is queued until its reply has been delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from xianliao.bot.messages import Incoming, Reply
from xianliao.bot.model_holder import ModelHolder
from xianliao.bot.model_workers import ModelClosed
from xianliao.bot.reply_log import Answered, ReplyLog

logger = logging.getLogger(__name__)


class ChatTurns:
    """One asyncio lock per chat, taken in arrival order (asyncio locks are first come,
    first served); a chat nobody waits on costs nothing (weak references)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def turn(self, chat_id: int) -> AsyncIterator[None]:
        lock = self._locks.get(chat_id)
        if lock is None:
            lock = self._locks[chat_id] = asyncio.Lock()
        async with lock:
            yield


@dataclass
class _Pending:
    incoming: Incoming
    text: str
    future: asyncio.Future[Reply]


class BatchScheduler:
    """Queues messages and answers them in batches (see module doc)."""

    def __init__(self, holder: ModelHolder, log: ReplyLog, max_batch: int) -> None:
        self.holder = holder
        self.log = log
        self.max_batch = max_batch
        # Threads that wait on the model, one per batch in flight (at most the model's
        # parallelism; MODEL_WORKERS is at most 64). Threads start only when needed.
        self._model_pool = ThreadPoolExecutor(64, thread_name_prefix="xianliao-model")
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def answer(self, incoming: Incoming, text: str) -> Reply:
        """The reply to ``text`` (checked already), stored when the log stores."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._queue.append(_Pending(incoming, text, future))
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="xianliao-dialogue")
        assert self._wake is not None
        self._wake.set()
        return await future

    def _take_batch(self) -> list[_Pending]:
        """Up to ``max_batch`` queued messages, oldest first."""
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch:
            p = self._queue.popleft()
            if not p.future.done():
                batch.append(p)
        return batch

    async def _run(self) -> None:
        """Answer whatever is queued, a batch per model call, up to the model's parallelism
        batches at once, until cancelled."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and len(self._in_flight) < max(1, self.holder.model.parallelism):
                batch = self._take_batch()
                if not batch:
                    break
                task = loop.create_task(self._answer(batch), name="xianliao-batch")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _generate(self, batch: list[_Pending]) -> tuple[list, object]:
        """The model's outcomes for ``batch`` and the model that gave them."""
        loop = asyncio.get_running_loop()
        while True:
            model = self.holder.model
            try:
                outcomes = await loop.run_in_executor(
                    self._model_pool, self.holder.generate_each, model, [p.text for p in batch]
                )
                return outcomes, model
            except ModelClosed:
                if model is self.holder.model:
                    raise
                # replaced by a reload while this batch waited: use the new one

    async def _answer(self, batch: list[_Pending]) -> None:
        """One model call for ``batch``; its answers go to the log, in dispatch order."""
        try:
            outcomes, model = await self._generate(batch)
            now = time.monotonic()
            items: list[Answered] = []
            answered: list[_Pending] = []
            for p, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not p.future.done():
                        p.future.set_exception(outcome)
                    continue
                latency = (now - p.incoming.received_at) * 1000
                items.append((p.incoming, p.text, outcome, latency, model))  # type: ignore[arg-type]
                answered.append(p)
            if items:
                # Stored on the database thread while the model answers the next batch.
                self.log.submit(items).add_done_callback(
                    lambda done: _resolve(answered, done.result())
                )
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            # Leave the in-flight set now (not in a done callback, which runs after the
            # dispatcher has already woken up and found no free slot).
            self._in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]
            if self._wake is not None:
                self._wake.set()

    async def aclose(self) -> None:
        """Stop; answers still in flight are finished and stored first."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self.log.aclose()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for p in self._queue:
            if not p.future.done():
                p.future.cancel()
        self._queue.clear()

    def close(self) -> None:
        self._model_pool.shutdown(wait=True)


def _resolve(answered: list[_Pending], replies: list[Reply]) -> None:
    for p, reply in zip(answered, replies, strict=True):
        if not p.future.done():
            p.future.set_result(reply)
