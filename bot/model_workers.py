"""The model in worker processes, beside the bot's event loop instead of under its GIL.

In one process, python-telegram-bot's work (HTTP, JSON, handlers) and the model's Python-level
decoding loop take turns on one interpreter lock, so the bot cannot use a second core. A
:class:`ModelWorkerPool` loads the checkpoint in ``workers`` processes of its own (started with
``spawn``: the bot has threads and an event loop, which ``fork`` would copy half-way) and answers
batches there; it is a :class:`bot.model_holder.ReplyModel` (``version``, ``decode_options``,
``reply``, ``reply_many``, ``parallelism``, ``close``), so the dialogue service serves it as it
serves a ``ChatBot`` and dispatches up to :attr:`ModelWorkerPool.parallelism` batches at once.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_BOT: Any = None  # the ChatBot of this worker process
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


class ModelClosed(RuntimeError):
    """The pool was closed (replaced by a reload): answer with the current model instead."""


def _load(
    path: str, device: str, threads: int, quantize: bool | None = None, extras: dict | None = None
) -> tuple[str, dict[str, Any]]:
    """In the worker: load the checkpoint once; returns (version, decode options).
    ``extras``: more ``ChatBot.load`` arguments (the reply index, the blocklist)."""
    global _BOT
    from xianliao.model.chatbot import ChatBot

    _die_with_parent()
    _BOT = ChatBot.load(path, device=device, threads=threads, quantize=quantize, **(extras or {}))
    return _BOT.version, _BOT.decode_options


def _die_with_parent() -> None:
    """In the worker: ask Linux to send SIGKILL when the bot's process dies, however it dies
    (kill -9 included), so no worker is left behind holding a model's memory."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        logger.warning("model worker: cannot ask to die with the bot (prctl unavailable)")
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _reply_many(texts: list[str], options: dict[str, Any]) -> list[str]:
    return _BOT.reply_many(texts, **options)


class ModelWorkerPool:
    """``workers`` processes, each holding the checkpoint at ``path``; one batch per process at
    a time. Raises ``model.errors.CheckpointError`` (from the workers) for a bad file."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        workers: int = 1,
        device: str = "cpu",
        threads: int = 1,
        quantize: bool | None = None,
        index_path: str | None = None,
        blocklist: str | os.PathLike | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.path = str(Path(path))
        self.device = device
        self.threads = max(1, threads)
        self.quantize = quantize
        self._extras = {"index_path": index_path, "blocklist": blocklist}
        self.parallelism = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._active = 0
        self._closed = False
        self._shut = False
        self._free: queue.SimpleQueue[ProcessPoolExecutor] = queue.SimpleQueue()
        self._all: list[ProcessPoolExecutor] = []
        try:
            started = [self._start() for _ in range(workers)]
            infos = [future.result() for _, future in started]
        except BaseException:
            for executor in self._all:
                executor.shutdown(wait=False, cancel_futures=True)
            raise
        self.version, self._decode_options = infos[0]
        for executor, _ in started:
            self._free.put(executor)
        logger.info("model %s loaded in %d worker process(es)", self.version, workers)

    def _start(self):  # noqa: ANN202 - (executor, future of _load)
        executor = ProcessPoolExecutor(1, mp_context=self._ctx)
        self._all.append(executor)
        return executor, executor.submit(
            _load, self.path, self.device, self.threads, self.quantize, self._extras
        )

    @property
    def decode_options(self) -> dict[str, Any]:
        return dict(self._decode_options)

    def reply(self, text: str, **options: Any) -> str:
        return self.reply_many([text], **options)[0]

    def reply_many(self, texts: list[str], **options: Any) -> list[str]:
        with self._lock:
            if self._shut:
                raise ModelClosed("this model was replaced")
            self._active += 1
        executor = self._free.get()
        try:
            try:
                return executor.submit(_reply_many, list(texts), options).result()
            except BrokenProcessPool:
                # The worker died (killed, out of memory): start a new one and try once more.
                logger.warning("a model worker process died; starting a new one")
                executor.shutdown(wait=False, cancel_futures=True)
                with self._lock:
                    self._all.remove(executor)
                executor, loaded = self._start()
                loaded.result()
                return executor.submit(_reply_many, list(texts), options).result()
        finally:
            self._free.put(executor)
            with self._lock:
                self._active -= 1
            self._shutdown_if_idle()

    def close(self) -> None:
        """Stop the workers once the batches they are answering are done."""
        with self._lock:
            self._closed = True
        self._shutdown_if_idle()

    def _shutdown_if_idle(self) -> None:
        """Once closed and answering nothing, shut the workers down (exactly once)."""
        with self._lock:
            if not self._closed or self._active or self._shut:
                return
            self._shut = True
        for executor in list(self._all):
            executor.shutdown(wait=False, cancel_futures=True)

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (for tests and benchmarks)."""
        return [pid for ex in self._all for pid in (getattr(ex, "_processes", None) or {})]
