"""Durable receipt: every message for the bot is stored before Telegram is told it arrived.

python-telegram-bot confirms the updates of one ``getUpdates`` answer by asking for the next
offset, which it does as soon as it has queued them, long before they are answered: a bot killed
then would lose them, since Telegram never sends a confirmed update again. So the bot's
``get_updates`` (:class:`bot.updates.TolerantBot`) stores the text messages it is about to hand
out in the ``inbox`` table first, and an update is marked done only once its reply was sent (or
it needed none). A restarted bot hands the stored, unfinished updates out again before new ones;
so does a running bot, every ``retry_s``, for updates whose reply could not be sent. Updates
older than ``max_age_s`` are given up (logged). The reply itself is stored (as the exchange)
before it is sent, so answering an update again sends the stored reply instead of a new one.

Replicas (webhook mode, several bot processes on one database): the row an update is stored in
is also its claim. A replica stores the update with one atomic insert before the webhook request
is answered (:class:`bot.updates.ClaimingQueue`); a replica given an update stored already (a
retried delivery, one that the proxy sent twice) drops it. The claimant holds the row for
``3 * retry_s`` and renews that every ``retry_s`` while it answers; what it could not send, and
what a crashed replica held once its hold ran out, any replica takes over (:meth:`take_over`).

What a crash can still do: a reply sent just before the crash, but not yet marked done, is sent
once more after the restart (at least once, never lost). Commands and button presses are not
stored (a user repeats them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker
from telegram import Bot, Update

from xianliao.storage.db import database_error_line
from xianliao.storage.repositories import InboxRepository, StoredUpdate

logger = logging.getLogger(__name__)

KEEP_DONE = timedelta(days=1)  # Telegram keeps an unconfirmed update for a day
LEASE_RETRIES = 3  # a replica holds an update for this many retry periods between renewals


class Inbox:
    """The bot side of the ``inbox`` table (see module doc). ``wanted(update)``: whether an
    update is a message the bot answers (only those are stored)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        wanted: Callable[[Update], bool],
        max_age_s: float,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.wanted = wanted
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self.clock = clock
        self._active: set[int] = set()  # handed out, not finished
        # Handed out again (replay, take-over): counted by the rate limit when they first
        # arrived, so they must not be counted, or dropped as over the limit, a second time.
        self._again: set[int] = set()
        self._requeued: set[int] = set()  # taken over, on their way through claim() once
        self._released: set[int] = set()  # their reply failed: taken again at the next turn
        self._pruned = False
        self.polling = False  # getUpdates replays (bot.updates.TolerantBot), not take_over()
        self._deferred: list[Update] = []
        self._started = False
        self._next_retry = 0.0
        self._done: list[int] = []
        self._flush_lock = asyncio.Lock()
        self._failing = False

    # ----- receiving -----------------------------------------------------------------------------

    async def received(self, updates: Sequence[Update]) -> set[int]:
        """Store the wanted ``updates``; returns the ids stored before (delivered again)."""
        rows = [self._row(u) for u in updates if u.message is not None and self.wanted(u)]
        if not rows:
            return set()
        try:
            known = await asyncio.to_thread(self._store, rows)
        except Exception as exc:  # answer anyway; only a crash now would lose them
            self._failed("cannot store received messages", exc)
            return set()
        self._active.update(r["update_id"] for r in rows if r["update_id"] not in known)
        return known

    def _store(self, rows: list[dict]) -> set[int]:
        with self.sessions.begin() as session:
            known = InboxRepository(session).add_new(rows)
        self._ok()
        return known

    # ----- answering again -----------------------------------------------------------------------

    async def replay(self, bot: Bot) -> list[Update]:
        """Stored updates to hand out again: at the first call every unfinished one (from
        before a restart), later those not finished ``retry_s`` after they were handed out."""
        self.polling = True
        if self._deferred:
            out, self._deferred = self._deferred, []
            return out
        now = self.clock()
        if self._started and now < self._next_retry:
            return []
        first, self._started, self._next_retry = not self._started, True, now + self.retry_s
        try:
            rows = await asyncio.to_thread(self._pending, first, set(self._active))
        except Exception as exc:
            self._failed("cannot read or tidy the stored messages", exc)
            return []
        updates = self._parse(rows, bot)
        if first and updates:
            logger.info("answering %d message(s) received before the restart", len(updates))
        elif updates:
            logger.info(
                "answering %d stored message(s) again (their reply was not sent)", len(updates)
            )
        self._active.update(u.update_id for u in updates)
        self._again.update(u.update_id for u in updates)
        return updates

    def handed_out_again(self, update_id: int) -> bool:
        """Whether ``update_id`` is a stored message handed out again, not a new arrival."""
        return update_id in self._again

    def defer(self, updates: Sequence[Update]) -> None:
        """Hand these out at the next call (they are still active)."""
        self._deferred.extend(updates)

    def _pending(self, first: bool, active: set[int]) -> list[StoredUpdate]:
        with self.sessions.begin() as session:
            inbox = InboxRepository(session)
            if first:
                inbox.prune(datetime.now(UTC) - KEEP_DONE)
            return self._give_up_old(inbox, inbox.pending(exclude=active))

    def _give_up_old(self, inbox: InboxRepository, rows: list[StoredUpdate]) -> list[StoredUpdate]:
        too_old = datetime.now(UTC) - timedelta(seconds=self.max_age_s)
        old = [r.update_id for r in rows if r.received_at < too_old]
        if old:
            logger.warning(
                "gave up %d stored message(s) older than PENDING_MAX_AGE_S=%gs: %s",
                len(old),
                self.max_age_s,
                ", ".join(map(str, old[:20])),
            )
            inbox.mark_done(old)
        return [r for r in rows if r.received_at >= too_old]

    # ----- replicas (webhook mode) ---------------------------------------------------------------

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=LEASE_RETRIES * self.retry_s)

    def _row(self, update: Update) -> dict:
        message = update.message
        assert message is not None
        return {
            "update_id": update.update_id,
            "chat_id": message.chat.id,
            "user_id": message.from_user.id if message.from_user else None,
            "payload": update.to_json(),
        }

    async def claim(self, update: Update) -> bool:
        """Store ``update`` as this replica's before it is answered; False when it is stored
        already (answered, or being answered, here or by another replica): drop it then.
        Updates that are not stored (commands, buttons) are always True."""
        if update.message is None or self.polling or not self.wanted(update):
            return True  # polled updates were stored by TolerantBot before they got here
        if update.update_id in self._active:
            if update.update_id in self._requeued:  # take_over() handing out its own
                self._requeued.discard(update.update_id)
                return True
            logger.info("update %s came again while answered here: answered once", update.update_id)
            return False
        row = self._row(update)
        try:
            won = await asyncio.to_thread(self._claim, row)
        except Exception as exc:  # answer anyway; only a crash now would lose it
            self._failed("cannot store a received message", exc)
            return True
        if won:
            self._active.add(update.update_id)
        else:
            logger.info("update %s was delivered again: it is answered once", update.update_id)
        return won

    def _claim(self, row: dict) -> bool:
        with self.sessions.begin() as session:
            won = InboxRepository(session).claim(row, datetime.now(UTC) + self.lease)
        self._ok()
        return won

    async def take_over(self, bot: Bot) -> list[Update]:
        """Renew the hold on what this replica is answering; take the stored updates nobody
        holds (a crashed replica's, after its hold ran out) and those whose reply failed here."""
        if self.polling:
            return []  # one polling bot per token: replay() does this
        released = set(self._released)
        try:
            rows = await asyncio.to_thread(self._take, set(self._active), released)
        except Exception as exc:
            self._failed("cannot read or renew the stored messages", exc)
            return []
        updates = self._parse(rows, bot)
        if updates:
            logger.info("answering %d stored message(s) nobody is answering", len(updates))
        taken = {u.update_id for u in updates}
        self._released -= released  # taken again, or done or taken by another replica
        self._active |= taken
        self._again |= taken
        self._requeued |= taken
        return updates

    def _take(self, active: set[int], released: set[int]) -> list[StoredUpdate]:
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            inbox = InboxRepository(session)
            if not self._pruned:
                self._pruned = True
                inbox.prune(now - KEEP_DONE)
            inbox.renew(active, now + self.lease)
            rows = inbox.take(now, now + self.lease, mine=released, exclude=active)
            rows = self._give_up_old(inbox, rows)
        self._ok()
        return rows

    def _parse(self, rows: list[StoredUpdate], bot: Bot) -> list[Update]:
        out = []
        for row in rows:
            try:
                out.append(Update.de_json(json.loads(row.payload), bot))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                logger.warning("cannot read stored update %s (%s)", row.update_id, exc)
        return out

    # ----- finishing -----------------------------------------------------------------------------

    def release(self, update_id: int) -> None:
        """Its reply could not be sent: keep it stored, to be answered again."""
        if update_id in self._active and not self.polling:
            self._released.add(update_id)
        self._active.discard(update_id)

    async def finish(self, update_id: int) -> None:
        """Its reply was sent (or it needed none): mark it done. Marks that arrive while one
        is written go together in the next transaction."""
        self._again.discard(update_id)
        if update_id not in self._active:
            return
        self._active.discard(update_id)
        self._done.append(update_id)
        async with self._flush_lock:
            if not self._done:
                return  # written by the call before
            ids, self._done = self._done, []
            try:
                await asyncio.to_thread(self._mark_done, ids)
            except Exception as exc:  # answered again after a restart: at least once
                self._failed("cannot mark messages answered", exc)

    def _mark_done(self, ids: list[int]) -> None:
        with self.sessions.begin() as session:
            InboxRepository(session).mark_done(ids)
        self._ok()

    # ----- failures ------------------------------------------------------------------------------

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._failing:
            logger.error("inbox: %s: %s", what, database_error_line(exc))
        self._failing = True

    def _ok(self) -> None:
        if self._failing:
            logger.warning("inbox: the database works again")
        self._failing = False
