"""The dialogue service: text in -> reply out + log. No Telegram here.

The Telegram handlers and the terminal chat both go through :class:`DialogueService`, so they
tokenise, answer and log the same way. It is a facade over three parts: the model and its
reload (:mod:`bot.model_holder`), batching and per-chat ordering (:mod:`bot.scheduler`) and the
log's write path (:mod:`bot.reply_log`). Model inference runs off the event loop (on a thread
that calls the model, in this process or in worker processes, see :mod:`bot.model_workers`) and
database work on another thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from xianliao.bot.approved import ApprovedReplies
from xianliao.bot.messages import (
    EMPTY_INPUT_REPLY,
    FALLBACK_REPLY,
    TELEGRAM_MAX_CHARS,
    TOO_LONG_REPLY,
    Incoming,
    RateDecision,
    RateLimiter,
    Reply,
    fit_message,
    utf16_len,
)
from xianliao.bot.model_holder import ModelHolder, ModelLoader, ReplyModel
from xianliao.bot.reply_log import ReplyLog
from xianliao.bot.scheduler import BatchScheduler, ChatTurns
from xianliao.storage.repositories import (
    AuditRepository,
    ExchangeRepository,
    FeedbackRepository,
    InboxRepository,
    RateLimitRepository,
    UserRepository,
    flush_deleted,
)

__all__ = [
    "EMPTY_INPUT_REPLY",
    "FALLBACK_REPLY",
    "TELEGRAM_MAX_CHARS",
    "TOO_LONG_REPLY",
    "DialogueService",
    "Incoming",
    "ModelLoader",
    "RateDecision",
    "RateLimiter",
    "Reply",
    "ReplyModel",
    "fit_message",
    "utf16_len",
]

logger = logging.getLogger(__name__)

Deliver = Callable[[Reply], Awaitable[Any]]


class DialogueService:
    """Answers messages with the model and logs every exchange.

    ``sessions`` is None to answer without logging (``xianliao chat --no-log``).
    ``load_model`` is used by :meth:`reload` to load the checkpoint at ``model_path`` again.
    """

    def __init__(
        self,
        model: ReplyModel,
        *,
        sessions: sessionmaker[Session] | None,
        model_path: Path | None = None,
        load_model: ModelLoader | None = None,
        decode_options: dict[str, Any] | None = None,
        max_input_chars: int = 1000,
        rate_limit: int = 0,
        rate_window_s: float = 60.0,
        max_batch: int = 16,
        serve_approved: bool = True,
    ) -> None:
        self.sessions = sessions
        # An admin's approved and edited answers, served at once (bot.approved).
        self.approved = (
            ApprovedReplies(sessions) if sessions is not None and serve_approved else None
        )
        self.holder = ModelHolder(
            model,
            approved=self.approved,
            model_path=model_path,
            load_model=load_model,
            decode_options=decode_options,
        )
        self.log = ReplyLog(sessions, self.holder.effective_decode_options)
        self.scheduler = BatchScheduler(self.holder, self.log, max_batch)
        self.turns = ChatTurns()
        self.max_input_chars = max_input_chars
        self.rate_limiter = RateLimiter(rate_limit, rate_window_s)
        # On PostgreSQL (what replicas share) the limit is counted in the database, so it holds
        # whichever replica a message reaches; SQLite serves one process: memory is enough.
        self.shared_rate_limit = (
            sessions is not None and sessions.kw["bind"].dialect.name != "sqlite"
        )
        self._db_pool = self.log.pool
        self.on_reply: Callable[[float], Any] | None = None  # seconds to each delivery (metrics)

    # ----- the model ---------------------------------------------------------------------------

    @property
    def model(self) -> ReplyModel:
        return self.holder.model

    @property
    def model_version(self) -> str:
        return self.holder.model.version

    @property
    def model_path(self) -> Path | None:
        return self.holder.model_path

    @property
    def log_failures(self) -> int:
        """Exchanges answered but not stored (the database failed)."""
        return self.log.failures

    def effective_decode_options(self, model: ReplyModel | None = None) -> dict[str, Any]:
        """The decoding options a reply is made with (model defaults + configured overrides)."""
        return self.holder.effective_decode_options(model)

    def check_model(self) -> str:
        """Answer one test message, so bad decode options fail at start-up; returns the reply."""
        return self.holder.generate(self.holder.model, ["你好"])[0]

    def reload_sync(self, path: Path | None = None) -> str:
        """Load the checkpoint again and swap it in atomically; returns the new version.

        Raises whatever the loader raises (``CheckpointError``); the old model keeps serving.
        """
        return self.holder.reload(path)

    async def reload(self, path: Path | None = None) -> str:
        return await asyncio.to_thread(self.reload_sync, path)

    # ----- answering ---------------------------------------------------------------------------

    def _precheck(self, incoming: Incoming) -> tuple[str | None, Reply | None]:
        """The text to give the model, or a canned reply for input the model should not see."""
        text = incoming.text.strip()
        if not text:
            return None, Reply(EMPTY_INPUT_REPLY, from_model=False)
        if len(text) > self.max_input_chars:
            return None, Reply(TOO_LONG_REPLY.format(limit=self.max_input_chars), from_model=False)
        return text, None

    def respond_sync(self, incoming: Incoming) -> Reply:
        """Answer and log one message on the calling thread (the terminal chat)."""
        text, canned = self._precheck(incoming)
        if canned is not None:
            return canned
        assert text is not None
        model = self.holder.model
        reply = self.holder.generate(model, [text])[0]
        latency = (time.monotonic() - incoming.received_at) * 1000.0
        try:
            return self.log.store([(incoming, text, reply, latency, model)])[0]
        except Exception as exc:  # the database cannot be written: the reply still counts
            self.log.failed(exc, 1)
            return Reply(reply)

    async def respond(self, incoming: Incoming, deliver: Deliver | None = None) -> Reply:
        """Answer and log one message without blocking the event loop, then ``deliver`` the
        reply. The chat's turn is held until the delivery is done, so a chat's replies are
        answered and delivered in the order of its messages."""
        async with self.turns.turn(incoming.chat_id):
            text, reply = self._precheck(incoming)
            if reply is None:
                assert text is not None
                reply = await self.scheduler.answer(incoming, text)
            if deliver is not None:
                await deliver(reply)
                if self.on_reply is not None:
                    self.on_reply(time.monotonic() - incoming.received_at)
        return reply

    async def check_rate(self, user_id: int) -> RateDecision:
        """The per-user rate limit (:attr:`shared_rate_limit`: counted in the database)."""
        limiter = self.rate_limiter
        if not self.shared_rate_limit or limiter.limit <= 0:
            return limiter.check(user_id)
        try:
            decision = await self._db(
                lambda s: RateLimitRepository(s).hit(
                    user_id, time.time(), limiter.limit, limiter.window_s
                )
            )
        except Exception as exc:  # the database failed: this process's count still limits
            logger.warning("rate limit: %s", type(exc).__name__)
            return limiter.check(user_id)
        return RateDecision(decision)

    # ----- everything else that touches the database ---------------------------------------------

    async def _db(self, fn: Callable[[Session], Any]) -> Any:
        if self.sessions is None:
            raise RuntimeError("this service does not log (no database)")
        sessions = self.sessions

        def work() -> Any:
            with sessions.begin() as session:
                return fn(session)

        return await asyncio.get_running_loop().run_in_executor(self._db_pool, work)

    async def feedback(
        self, exchange_id: int, user_id: int, value: int, *, chat_id: int | None = None
    ) -> bool:
        """Store 👍 (+1) / 👎 (-1); False when the exchange no longer exists or (``chat_id``)
        belongs to another chat than the button's."""

        def work(s: Session) -> bool:
            if chat_id is not None:
                exchange = ExchangeRepository(s).get(exchange_id)
                if exchange is None or exchange.chat_id != chat_id:
                    return False
            return FeedbackRepository(s).set(exchange_id, user_id, value) is not None

        return await self._db(work)

    async def forget(self, user_id: int) -> dict[str, int]:
        """Delete everything stored about ``user_id``, including messages of theirs that are
        still being answered (they are answered but not stored)."""
        self.rate_limiter.forget(user_id)
        self.log.forget(user_id)

        def work(s: Session) -> dict[str, int]:
            self.log.unsee(user_id)
            removed = UserRepository(s).delete_user_data(user_id)
            InboxRepository(s).delete_user(user_id)  # messages of theirs not answered yet
            RateLimitRepository(s).forget(user_id)  # the shared count starts again too
            return removed

        removed = await self._db(work)
        # After the commit: no copy left in SQLite's WAL file.
        await self._db(lambda s: flush_deleted(s.get_bind()))
        logger.info("deleted the data of a user on request: %s", removed)
        return removed

    async def audit(self, user_id: int, action: str, *, allowed: bool, detail: str = "") -> None:
        def work(s: Session) -> None:
            AuditRepository(s).record(user_id, action, allowed=allowed, detail=detail or None)

        await self._db(work)

    # ----- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the worker; answers still in flight are finished first (bounded by the pools)."""
        await self.scheduler.aclose()

    def close(self) -> None:
        """Shut the worker threads down (after :meth:`aclose` in async code)."""
        self.scheduler.close()
        self.log.close()
        self.holder.close()
        if self.approved is not None:
            self.approved.close()
