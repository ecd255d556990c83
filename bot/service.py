"""The dialogue service: text in -> reply out + log. No Telegram here.

The Telegram handlers and the terminal chat both go through :class:`DialogueService`, so they
tokenise, answer and log the same way. Model inference runs off the event loop (on a thread that
calls the model, which is either in this process or in worker processes, see
:mod:`bot.model_workers`) and database work on another thread. Messages that arrive while
the model is busy are answered together in one batched model call (``reply_many`` when the model has
it), up to the model's ``parallelism`` batches at once, which is what lets the bot serve many
users at once without adding latency when it is idle. A chat's messages are never answered out
of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from xianliao.bot.approved import ApprovedReplies
from xianliao.bot.model_workers import ModelClosed
from xianliao.storage.db import database_error_line
from xianliao.storage.models import REVIEW_PENDING, REVIEW_STATUSES
from xianliao.storage.repositories import (
    AuditRepository,
    ChatRepository,
    ExchangeFilter,
    ExchangeRepository,
    FeedbackRepository,
    UserRepository,
    flush_deleted,
)

logger = logging.getLogger(__name__)

TELEGRAM_MAX_CHARS = 4096  # Telegram's limit, counted here in UTF-16 code units (the strict way)
EMPTY_INPUT_REPLY = "说点什么吧～"
FALLBACK_REPLY = "嗯嗯。"
TOO_LONG_REPLY = "消息太长啦，请控制在 {limit} 个字以内再发给我～"
# A user or chat row written less than this long ago with the same names is not written again
# (users.last_seen_at has a resolution of a minute anyway); saves two queries per transaction.
SEEN_TTL_S = 50.0
SEEN_MAX = 50_000  # remembered rows before the memory is cleared
DB_CHECK_S = 10.0  # how often the SQLite file is checked to be still in place
FORGET_MEMORY_S = 600.0  # how long a /forget is remembered for messages still in flight


class ReplyModel(Protocol):
    """What the service needs from a loaded checkpoint (``model.chatbot.ChatBot``)."""

    version: str

    @property
    def decode_options(self) -> dict[str, Any]: ...

    def reply(self, text: str, **options: Any) -> str: ...

    # Optional: ``reply_many(texts, extra=None, **options)``, the batch form (``extra``: an
    # admin's approved answers per text), ``parallelism`` and ``close()``.


ModelLoader = Callable[[Path], ReplyModel]


@dataclass(frozen=True)
class Incoming:
    """One message to answer, with who sent it and where."""

    text: str
    user_id: int
    chat_id: int
    message_id: int | None = None
    chat_type: str = "private"
    chat_title: str | None = None
    username: str | None = None
    first_name: str | None = None
    language_code: str | None = None
    source: str = "telegram"
    received_at: float = field(default_factory=time.monotonic)  # time.monotonic()


@dataclass(frozen=True)
class Reply:
    """The answer to send; ``exchange_id`` is None when nothing was logged."""

    text: str
    exchange_id: int | None = None
    duplicate: bool = False  # the message was already answered (a redelivered update)
    from_model: bool = True


@dataclass(frozen=True)
class Stats:
    users: int
    messages_today: int
    messages_total: int
    p50_ms: float | None
    p95_ms: float | None
    latency_window_count: int
    model_version: str
    feedback_up: int
    feedback_down: int
    pending_review: int


@dataclass(frozen=True)
class ReviewItem:
    id: int
    user_text: str
    reply_text: str
    edited_reply: str | None
    review_status: str
    created_at: datetime
    model_version: str


class RateDecision(Enum):
    ALLOW = "allow"
    NOTIFY = "notify"  # over the limit: tell the user once
    DROP = "drop"  # over the limit and already told


class RateLimiter:
    """At most ``limit`` messages per user in any ``window_s`` seconds (sliding window)."""

    MAX_TRACKED = 10_000  # users remembered before idle ones are pruned

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[int, deque[float]] = {}
        self._told: set[int] = set()
        self._lock = threading.Lock()

    def check(self, user_id: int) -> RateDecision:
        if self.limit <= 0:
            return RateDecision.ALLOW
        now = self.clock()
        with self._lock:
            if len(self._hits) > self.MAX_TRACKED and user_id not in self._hits:
                self._prune(now)
            hits = self._hits.setdefault(user_id, deque())
            while hits and now - hits[0] >= self.window_s:
                hits.popleft()
            if len(hits) < self.limit:
                hits.append(now)
                self._told.discard(user_id)
                return RateDecision.ALLOW
            if user_id in self._told:
                return RateDecision.DROP
            self._told.add(user_id)
            return RateDecision.NOTIFY

    def _prune(self, now: float) -> None:
        """Drop users with no message inside the window (keeps memory bounded)."""
        for uid in [u for u, h in self._hits.items() if not h or now - h[-1] >= self.window_s]:
            del self._hits[uid]
            self._told.discard(uid)

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._hits.pop(user_id, None)
            self._told.discard(user_id)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def fit_message(text: str, limit: int = TELEGRAM_MAX_CHARS) -> str:
    """Strip ``text`` and cut it to ``limit`` UTF-16 units; never returns an empty string."""
    text = text.strip()
    if utf16_len(text) > limit:
        out, used = [], 0
        for ch in text:
            n = 2 if ord(ch) > 0xFFFF else 1
            if used + n > limit - 1:
                break
            out.append(ch)
            used += n
        text = "".join(out).rstrip() + "…"
    return text or FALLBACK_REPLY


# (message, text given to the model, reply, latency in ms, the model that answered)
_Answered = tuple[Incoming, str, str, float, ReplyModel]


@dataclass
class _Pending:
    incoming: Incoming
    text: str
    future: asyncio.Future[Reply]


def _sqlite_file(sessions: sessionmaker[Session] | None) -> str | None:
    """The path of the SQLite database file behind ``sessions``, if that is what it is."""
    bind = sessions.kw.get("bind") if sessions is not None else None
    url = getattr(bind, "url", None)
    if url is None or url.get_backend_name() != "sqlite" or not url.database:
        return None
    name = url.database
    if name.startswith("file:"):  # a URI filename: file:PATH?mode=...
        name = name[5:].split("?", 1)[0]
    return None if name == ":memory:" else name


def _file_identity(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


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
        self._model = model
        self.sessions = sessions
        # An admin's approved and edited answers, served at once (bot.approved).
        self.approved = (
            ApprovedReplies(sessions) if sessions is not None and serve_approved else None
        )
        self.model_path = model_path
        self.load_model = load_model
        self.decode_options = dict(decode_options or {})
        self.max_input_chars = max_input_chars
        self.max_batch = max_batch
        self.rate_limiter = RateLimiter(rate_limit, rate_window_s)
        # Threads that wait on the model, one per batch in flight (at most the model's
        # parallelism; MODEL_WORKERS is at most 64). Threads start only when needed.
        self._model_pool = ThreadPoolExecutor(64, thread_name_prefix="xianliao-model")
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="xianliao-db")
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._log_queue: deque[tuple[list[_Pending], list[_Answered]]] = deque()
        self._log_worker: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy_chats: set[int] = set()  # chats with a message in a batch being answered
        # Users and chats this process wrote recently: ("u"|"c", id) -> (attributes, when).
        # Only the database thread uses it.
        self._seen: dict[tuple[str, int], tuple[tuple, float]] = {}
        self._reload_lock = threading.Lock()
        self._forgotten: dict[int, float] = {}  # user id -> when they asked /forget
        self.log_failures = 0  # exchanges answered but not stored (the database failed)
        self._log_failing = False
        # The SQLite file being written, to notice it deleted or replaced under the bot (the
        # writes would go on into an unlinked file, and the next start would find it empty).
        self._db_file = _sqlite_file(sessions)
        self._db_identity = _file_identity(self._db_file)
        self._db_checked = time.monotonic()

    # ----- the model ---------------------------------------------------------------------------

    @property
    def model(self) -> ReplyModel:
        return self._model

    @property
    def model_version(self) -> str:
        return self._model.version

    def effective_decode_options(self, model: ReplyModel | None = None) -> dict[str, Any]:
        """The decoding options a reply is made with (model defaults + configured overrides)."""
        model = model or self._model
        return {**dict(model.decode_options), **self.decode_options}

    def check_model(self) -> str:
        """Answer one test message, so bad decode options fail at start-up; returns the reply."""
        return self._generate(self._model, ["你好"])[0]

    def _generate(self, model: ReplyModel, texts: Sequence[str]) -> list[str]:
        options = dict(self.decode_options)
        extra = self.approved.hits(texts) if self.approved is not None else None
        if extra and any(extra):
            options["extra"] = extra  # answers an admin approved, for the model to consider
        many = getattr(model, "reply_many", None)
        if many is not None and (len(texts) > 1 or "extra" in options):
            raw = many(list(texts), **options)
        else:
            raw = [model.reply(t, **options) for t in texts]
        return [fit_message(r if isinstance(r, str) else str(r)) for r in raw]

    def _generate_each(self, model: ReplyModel, texts: Sequence[str]) -> list[str | Exception]:
        """Like :meth:`_generate`, but a failing batch is retried one message at a time, so
        one message the model chokes on fails alone (its exception is returned in its place)."""
        try:
            return list(self._generate(model, texts))
        except ModelClosed:
            raise
        except Exception as exc:
            if len(texts) == 1:
                return [exc]
        logger.warning("the model failed on a batch of %d; answering one at a time", len(texts))
        out: list[str | Exception] = []
        for text in texts:
            try:
                out.append(self._generate(model, [text])[0])
            except ModelClosed:
                raise
            except Exception as exc:  # reported to the caller of respond()
                out.append(exc)
        return out

    def reload_sync(self, path: Path | None = None) -> str:
        """Load the checkpoint again and swap it in atomically; returns the new version.

        Raises whatever the loader raises (``CheckpointError``); the old model keeps serving.
        """
        if self.load_model is None:
            raise RuntimeError("this service was built without a model loader")
        path = Path(path or self.model_path or "")
        with self._reload_lock:
            model = self.load_model(path)
            self._generate(model, ["你好"])  # fail here, not on the next user message
            old, self._model = self._model, model
            self.model_path = path
        close = getattr(old, "close", None)
        if close is not None:
            close()  # worker processes stop after the batches they are answering
        logger.info("model reloaded from %s: %s -> %s", path, old.version, model.version)
        return model.version

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
        model = self._model
        reply = self._generate(model, [text])[0]
        latency = (time.monotonic() - incoming.received_at) * 1000.0
        try:
            return self._log_batch([(incoming, text, reply, latency, model)])[0]
        except Exception as exc:  # the database cannot be written: the reply still counts
            self._log_failed(exc, 1)
            return Reply(reply)

    async def respond(self, incoming: Incoming) -> Reply:
        """Answer and log one message without blocking the event loop."""
        text, canned = self._precheck(incoming)
        if canned is not None:
            return canned
        assert text is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._queue.append(_Pending(incoming, text, future))
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="xianliao-dialogue")
        assert self._wake is not None
        self._wake.set()
        return await future

    def _parallelism(self) -> int:
        """Batches the current model answers at once (worker processes; 1 in-process)."""
        return max(1, int(getattr(self._model, "parallelism", 1)))

    def _take_batch(self) -> list[_Pending]:
        """Up to ``max_batch`` queued messages, oldest first, skipping chats that have a
        message in a batch still being answered (so each chat's replies keep their order)."""
        batch: list[_Pending] = []
        kept: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():
                continue
            if len(batch) < self.max_batch and p.incoming.chat_id not in self._busy_chats:
                batch.append(p)
            else:
                kept.append(p)  # a skipped chat's later messages are skipped too
        self._queue = kept
        return batch

    async def _run(self) -> None:
        """Answer whatever is queued, a batch per model call, up to the model's parallelism
        batches at once, until cancelled."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and len(self._in_flight) < self._parallelism():
                batch = self._take_batch()
                if not batch:
                    break
                chats = {p.incoming.chat_id for p in batch}
                self._busy_chats.update(chats)
                task = loop.create_task(self._answer(batch, chats), name="xianliao-batch")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _answer(self, batch: list[_Pending], chats: set[int]) -> None:
        """One model call for ``batch``; its answers go to the log queue, in dispatch order."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                model = self._model
                try:
                    outcomes = await loop.run_in_executor(
                        self._model_pool, self._generate_each, model, [p.text for p in batch]
                    )
                    break
                except ModelClosed:
                    if model is self._model:
                        raise
                    # replaced by a reload while this batch waited: use the new one
            now = time.monotonic()
            items, answered = [], []
            for p, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not p.future.done():
                        p.future.set_exception(outcome)
                    continue
                items.append(
                    (p.incoming, p.text, outcome, (now - p.incoming.received_at) * 1000, model)
                )
                answered.append(p)
            if items:
                # Log on the database thread while the model answers the next batch.
                self._log_queue.append((answered, items))
                if self._log_worker is None or self._log_worker.done():
                    self._log_worker = loop.create_task(self._log_run(), name="xianliao-log")
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self._busy_chats.difference_update(chats)
            # Leave the in-flight set now (not in a done callback, which runs after the
            # dispatcher has already woken up and found no free slot).
            self._in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]
            if self._wake is not None:
                self._wake.set()

    async def _log_run(self) -> None:
        """Log what the model answered; everything queued meanwhile goes in one transaction."""
        loop = asyncio.get_running_loop()
        while self._log_queue:
            groups = list(self._log_queue)
            self._log_queue.clear()
            pending = [p for batch, _ in groups for p in batch]
            items = [item for _, batch_items in groups for item in batch_items]
            try:
                results = await loop.run_in_executor(self._db_pool, self._log_batch, items)
            except Exception as exc:  # the database cannot be written: reply all the same
                self._log_failed(exc, len(items))
                results = [Reply(reply) for _, _, reply, _, _ in items]
            else:
                if self._log_failing:
                    logger.warning("logging exchanges works again")
                self._log_failing = False
            for p, result in zip(pending, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    def _check_db_file(self) -> None:
        """At most every ``DB_CHECK_S``: is the SQLite file still the one opened at start?"""
        now = time.monotonic()
        if self._db_identity is None or now - self._db_checked < DB_CHECK_S:
            return
        self._db_checked = now
        if _file_identity(self._db_file) != self._db_identity:
            logger.error(
                "the database file %s was deleted or replaced while the bot runs: what is "
                "logged now is lost when the bot stops; restart the bot",
                self._db_file,
            )
            self._db_identity = None  # said once

    def _log_failed(self, exc: Exception, n: int) -> None:
        """Count exchanges that could not be stored (``log_failures``, for /stats and
        monitoring); say so in the log once per outage, not once per message."""
        self.log_failures += n
        if not self._log_failing:
            logger.error(
                "cannot store exchanges (replying anyway, not logging them): %s",
                database_error_line(exc),
            )
        self._log_failing = True

    def _log_batch(self, items: list[_Answered]) -> list[Reply]:
        """Log answered messages in one transaction; redelivered ones get the stored reply."""
        if self.sessions is None:
            return [Reply(reply) for _, _, reply, _, _ in items]
        self._check_db_file()
        forgotten = [self._was_forgotten(inc) for inc, *_ in items]
        if any(forgotten):  # answered, but never stored: the user asked to be forgotten
            rest = [it for it, f in zip(items, forgotten, strict=True) if not f]
            kept = iter(self._log_batch(rest) if rest else [])
            return [
                Reply(it[2]) if f else next(kept) for it, f in zip(items, forgotten, strict=True)
            ]
        options: dict[int, str] = {}
        for *_, model in items:
            if id(model) not in options:
                options[id(model)] = json.dumps(
                    self.effective_decode_options(model), ensure_ascii=False, sort_keys=True
                )
        try:
            return self._log_rows(items, options, fast=True)
        except IntegrityError:
            # A message logged before (an update delivered again after a restart), or a user
            # or chat this process remembered that another process deleted: the careful way.
            self._seen.clear()
            return self._log_rows(items, options, fast=False)

    def _was_forgotten(self, incoming: Incoming) -> bool:
        """Whether the sender asked /forget after this message arrived (it was still queued)."""
        when = self._forgotten.get(incoming.user_id)
        return when is not None and incoming.received_at <= when

    def _fresh(self, key: tuple[str, int], attrs: tuple, now: float) -> bool:
        """Whether this user/chat row was written with these attributes less than
        ``SEEN_TTL_S`` ago by this process (then the transaction need not touch it)."""
        seen = self._seen.get(key)
        return seen is not None and seen[0] == attrs and now - seen[1] < SEEN_TTL_S

    def _log_rows(
        self, items: list[_Answered], options: dict[int, str], *, fast: bool
    ) -> list[Reply]:
        """One transaction. ``fast``: skip users/chats written recently and insert the
        exchanges without looking for earlier copies (raises ``IntegrityError`` if there
        are any); else touch every user and chat and answer redelivered messages with the
        stored reply."""
        out: list[Reply] = []
        now = time.monotonic()
        user_rows = {
            inc.user_id: (inc.username, inc.first_name, inc.language_code) for inc, *_ in items
        }
        chat_rows = {inc.chat_id: (inc.chat_type, inc.chat_title) for inc, *_ in items}
        if fast:
            user_rows = {k: v for k, v in user_rows.items() if not self._fresh(("u", k), v, now)}
            chat_rows = {k: v for k, v in chat_rows.items() if not self._fresh(("c", k), v, now)}
        with self.sessions.begin() as session:  # type: ignore[union-attr]
            users, chats = UserRepository(session), ChatRepository(session)
            # One query each; holding the rows keeps them in the session for touch() below.
            known = (users.load(user_rows), chats.load(chat_rows))
            for uid, (username, first_name, language_code) in user_rows.items():
                users.touch(
                    uid, username=username, first_name=first_name, language_code=language_code
                )
            for cid, (chat_type, title) in chat_rows.items():
                chats.touch(cid, type=chat_type, title=title)
            rows = [
                {
                    "user_id": inc.user_id,
                    "chat_id": inc.chat_id,
                    "message_id": inc.message_id,
                    "user_text": text,
                    "reply_text": reply,
                    "latency_ms": latency,
                    "model_version": model.version,
                    "decode_options": options[id(model)],
                    "source": inc.source,
                }
                for inc, text, reply, latency, model in items
            ]
            exchanges = ExchangeRepository(session)
            if fast:
                logged = [(e, True) for e in exchanges.insert_new(rows)]
            else:
                logged = exchanges.add_many(rows)
            session.flush()
            del known
            for (inc, _, reply, _, _), (exchange, created) in zip(items, logged, strict=True):
                if created:
                    out.append(Reply(reply, exchange.id))
                else:
                    logger.info(
                        "message %s in chat %s was already answered (exchange %s)",
                        inc.message_id,
                        inc.chat_id,
                        exchange.id,
                    )
                    out.append(Reply(exchange.reply_text, exchange.id, duplicate=True))
        if len(self._seen) > SEEN_MAX:
            self._seen.clear()
        for uid, attrs in user_rows.items():
            self._seen[("u", uid)] = (attrs, now)
        for cid, attrs in chat_rows.items():
            self._seen[("c", cid)] = (attrs, now)
        return out

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
        now = time.monotonic()
        # Remember when, for the messages still in flight; a few minutes outlast any queue.
        self._forgotten = {u: t for u, t in self._forgotten.items() if now - t < FORGET_MEMORY_S}
        self._forgotten[user_id] = now

        def work(s: Session) -> dict[str, int]:
            self._seen.pop(("u", user_id), None)
            self._seen.pop(("c", user_id), None)  # the private chat has the user's id
            return UserRepository(s).delete_user_data(user_id)

        removed = await self._db(work)
        # After the commit: no copy left in SQLite's WAL file.
        await self._db(lambda s: flush_deleted(s.get_bind()))
        logger.info("deleted the data of a user on request: %s", removed)
        return removed

    async def audit(self, user_id: int, action: str, *, allowed: bool, detail: str = "") -> None:
        def work(s: Session) -> None:
            AuditRepository(s).record(user_id, action, allowed=allowed, detail=detail or None)

        await self._db(work)

    async def stats(self, now: datetime | None = None) -> Stats:
        """Counts for /stats; latency percentiles over the last 24 hours."""
        now = now or datetime.now(UTC)
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        version = self.model_version

        def work(s: Session) -> Stats:
            exchanges = ExchangeRepository(s)
            latency = exchanges.latency(ExchangeFilter(since=now - timedelta(days=1)))
            fb = FeedbackRepository(s).counts()
            return Stats(
                users=UserRepository(s).count(),
                messages_today=exchanges.count(ExchangeFilter(since=midnight)),
                messages_total=exchanges.count(),
                p50_ms=latency.p50_ms,
                p95_ms=latency.p95_ms,
                latency_window_count=latency.count,
                model_version=version,
                feedback_up=fb["up"],
                feedback_down=fb["down"],
                pending_review=exchanges.count(ExchangeFilter(review_status=REVIEW_PENDING)),
            )

        return await self._db(work)

    async def pending_review(self, limit: int) -> list[ReviewItem]:
        """The newest exchanges still waiting for review."""

        def work(s: Session) -> list[ReviewItem]:
            rows = ExchangeRepository(s).search(
                ExchangeFilter(review_status=REVIEW_PENDING), limit=limit
            )
            return [
                ReviewItem(
                    e.id,
                    e.user_text,
                    e.reply_text,
                    e.edited_reply,
                    e.review_status,
                    e.created_at,
                    e.model_version,
                )
                for e in rows
            ]

        return await self._db(work)

    async def set_review(self, exchange_id: int, status: str, reviewer: int) -> bool:
        if status not in REVIEW_STATUSES:
            raise ValueError(f"unknown review status {status!r}")
        changed = await self._db(
            lambda s: ExchangeRepository(s).set_review_status(
                exchange_id, status, reviewer=reviewer
            )
        )
        self._review_changed()
        return changed > 0

    async def edit_reply(self, exchange_id: int, answer: str, reviewer: int) -> bool:
        """Store the answer the bot should have given and approve the exchange: served from
        the next message on, and learnt at the next retraining."""

        def work(session: Session) -> bool:
            repo = ExchangeRepository(session)
            if not repo.set_edited_reply(exchange_id, answer, reviewer=reviewer):
                return False
            repo.set_review_status(exchange_id, "approved", reviewer=reviewer)
            return True

        ok = await self._db(work)
        self._review_changed()
        return ok

    def _review_changed(self) -> None:
        if self.approved is not None:
            self.approved.invalidate()

    # ----- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the worker; answers still in flight are finished first (bounded by the pools)."""
        while self._in_flight or (self._log_worker is not None and not self._log_worker.done()):
            await asyncio.gather(
                *self._in_flight,
                *([self._log_worker] if self._log_worker else []),
                return_exceptions=True,
            )
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
        """Shut the worker threads down (after :meth:`aclose` in async code)."""
        self._model_pool.shutdown(wait=True)
        self._db_pool.shutdown(wait=True)
        close = getattr(self._model, "close", None)
        if close is not None:
            close()
        if self.approved is not None:
            self.approved.close()
