"""The write path of the dialogue log: answered messages into the database, in batches.

Everything answered while the previous transaction ran is written in the next one, on one
database thread, so logging never holds up the model. A message already logged (an update
delivered again) gets the reply stored the first time. When the database cannot be written the
replies still go out: the failures are counted and said once per outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from xianliao.bot.messages import Incoming, Reply
from xianliao.bot.model_holder import ReplyModel
from xianliao.storage.db import database_error_line
from xianliao.storage.repositories import ChatRepository, ExchangeRepository, UserRepository

logger = logging.getLogger(__name__)

# A user or chat row written less than this long ago with the same names is not written again
# (users.last_seen_at has a resolution of a minute anyway); saves two queries per transaction.
SEEN_TTL_S = 50.0
SEEN_MAX = 50_000  # remembered rows before the memory is cleared
DB_CHECK_S = 10.0  # how often the SQLite file is checked to be still in place
FORGET_MEMORY_S = 600.0  # how long a /forget is remembered for messages still in flight

# (message, text given to the model, reply, latency in ms, the model that answered)
Answered = tuple[Incoming, str, str, float, ReplyModel]


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


class ReplyLog:
    """Stores exchanges (see module doc). ``sessions`` None: nothing is stored.

    ``options_of(model)`` gives the decoding options a model answers with, stored per row.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | None,
        options_of: Callable[[ReplyModel], dict[str, Any]],
    ) -> None:
        self.sessions = sessions
        self._options_of = options_of
        # The one database thread: every transaction of the service runs on it, in order.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="xianliao-db")
        self._queue: deque[tuple[list[Answered], asyncio.Future[list[Reply]]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # Users and chats this process wrote recently: ("u"|"c", id) -> (attributes, when).
        # Only the database thread uses it.
        self._seen: dict[tuple[str, int], tuple[tuple, float]] = {}
        self._forgotten: dict[int, float] = {}  # user id -> when they asked /forget
        self.failures = 0  # exchanges answered but not stored (the database failed)
        self._failing = False
        # The SQLite file being written, to notice it deleted or replaced under the bot (the
        # writes would go on into an unlinked file, and the next start would find it empty).
        self.db_file = _sqlite_file(sessions)
        self._db_identity = _file_identity(self.db_file)
        self._db_checked = time.monotonic()

    # ----- asynchronous path ---------------------------------------------------------------------

    def submit(self, items: list[Answered]) -> asyncio.Future[list[Reply]]:
        """Queue ``items`` for the next transaction; the future gets one Reply per item."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Reply]] = loop.create_future()
        self._queue.append((items, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="xianliao-log")
        return future

    async def _run(self) -> None:
        """Store what was answered; everything queued meanwhile goes in one transaction."""
        loop = asyncio.get_running_loop()
        while self._queue:
            groups = list(self._queue)
            self._queue.clear()
            items = [item for batch, _ in groups for item in batch]
            try:
                results = await loop.run_in_executor(self.pool, self.store, items)
            except Exception as exc:  # the database cannot be written: reply all the same
                self.failed(exc, len(items))
                results = [Reply(reply) for _, _, reply, _, _ in items]
            else:
                if self._failing:
                    logger.warning("logging exchanges works again")
                self._failing = False
            start = 0
            for batch, future in groups:
                if not future.done():
                    future.set_result(results[start : start + len(batch)])
                start += len(batch)

    async def aclose(self) -> None:
        """Wait until everything queued is stored."""
        while self._worker is not None and not self._worker.done():
            await asyncio.gather(self._worker, return_exceptions=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # ----- failures ------------------------------------------------------------------------------

    def failed(self, exc: Exception, n: int) -> None:
        """Count exchanges that could not be stored (for /stats and monitoring); say so in
        the log once per outage, not once per message."""
        self.failures += n
        if not self._failing:
            logger.error(
                "cannot store exchanges (replying anyway, not logging them): %s",
                database_error_line(exc),
            )
        self._failing = True

    def _check_db_file(self) -> None:
        """At most every ``DB_CHECK_S``: is the SQLite file still the one opened at start?"""
        now = time.monotonic()
        if self._db_identity is None or now - self._db_checked < DB_CHECK_S:
            return
        self._db_checked = now
        if _file_identity(self.db_file) != self._db_identity:
            logger.error(
                "the database file %s was deleted or replaced while the bot runs: what is "
                "logged now is lost when the bot stops; restart the bot",
                self.db_file,
            )
            self._db_identity = None  # said once

    # ----- /forget -------------------------------------------------------------------------------

    def forget(self, user_id: int) -> None:
        """Remember that ``user_id`` asked /forget now: their messages still in flight are
        answered but not stored."""
        now = time.monotonic()
        # A few minutes outlast any queue.
        self._forgotten = {u: t for u, t in self._forgotten.items() if now - t < FORGET_MEMORY_S}
        self._forgotten[user_id] = now

    def unsee(self, user_id: int) -> None:
        """Forget that this user's rows were written (they are being deleted); database thread."""
        self._seen.pop(("u", user_id), None)
        self._seen.pop(("c", user_id), None)  # the private chat has the user's id

    def _was_forgotten(self, incoming: Incoming) -> bool:
        """Whether the sender asked /forget after this message arrived (it was still queued)."""
        when = self._forgotten.get(incoming.user_id)
        return when is not None and incoming.received_at <= when

    # ----- the transaction (database thread) -----------------------------------------------------

    def store(self, items: list[Answered]) -> list[Reply]:
        """Log answered messages in one transaction; redelivered ones get the stored reply."""
        if self.sessions is None:
            return [Reply(reply) for _, _, reply, _, _ in items]
        self._check_db_file()
        forgotten = [self._was_forgotten(inc) for inc, *_ in items]
        if any(forgotten):  # answered, but never stored: the user asked to be forgotten
            rest = [it for it, f in zip(items, forgotten, strict=True) if not f]
            kept = iter(self.store(rest) if rest else [])
            return [
                Reply(it[2]) if f else next(kept) for it, f in zip(items, forgotten, strict=True)
            ]
        options: dict[int, str] = {}
        for *_, model in items:
            if id(model) not in options:
                options[id(model)] = json.dumps(
                    self._options_of(model), ensure_ascii=False, sort_keys=True
                )
        try:
            return self._rows(items, options, fast=True)
        except IntegrityError:
            # A message logged before (an update delivered again after a restart), or a user
            # or chat this process remembered that another process deleted: the careful way.
            self._seen.clear()
            return self._rows(items, options, fast=False)

    def _fresh(self, key: tuple[str, int], attrs: tuple, now: float) -> bool:
        """Whether this user/chat row was written with these attributes less than
        ``SEEN_TTL_S`` ago by this process (then the transaction need not touch it)."""
        seen = self._seen.get(key)
        return seen is not None and seen[0] == attrs and now - seen[1] < SEEN_TTL_S

    def _rows(self, items: list[Answered], options: dict[int, str], *, fast: bool) -> list[Reply]:
        """One transaction. ``fast``: skip users/chats written recently and insert the
        exchanges without looking for earlier copies (raises ``IntegrityError`` if there
        are any); else touch every user and chat and answer redelivered messages with the
        stored reply."""
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
            out = [self._reply(item, *row) for item, row in zip(items, logged, strict=True)]
        if len(self._seen) > SEEN_MAX:
            self._seen.clear()
        for uid, attrs in user_rows.items():
            self._seen[("u", uid)] = (attrs, now)
        for cid, attrs in chat_rows.items():
            self._seen[("c", cid)] = (attrs, now)
        return out

    @staticmethod
    def _reply(item: Answered, exchange: Any, created: bool) -> Reply:
        inc, _, reply, _, _ = item
        if created:
            return Reply(reply, exchange.id)
        logger.info(
            "message %s in chat %s was already answered (exchange %s)",
            inc.message_id,
            inc.chat_id,
            exchange.id,
        )
        return Reply(exchange.reply_text, exchange.id, duplicate=True)
