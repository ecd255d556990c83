"""Exchanges (logging, search, review, streaming for training) and the feedback on them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xianliao.storage.models import (
    REVIEW_APPROVED,
    REVIEW_STATUSES,
    Exchange,
    Feedback,
    User,
    utcnow,
)
from xianliao.storage.repositories._json import to_json as _json

MAX_EXCHANGE_ID = 2**63 - 1  # the largest id a database stores (BIGINT)


@dataclass(frozen=True)
class ExchangeFilter:
    """What to select exchanges by; every field is optional and they combine with AND."""

    user_id: int | None = None
    chat_id: int | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    text: str | None = None  # substring of the user text, reply or edited reply
    feedback: str | None = None  # "up", "down", "any" or "none"
    review_status: str | Sequence[str] | None = None
    source: str | None = None  # "telegram" or "terminal"

    def apply(self, stmt: Select) -> Select:
        if self.user_id is not None:
            stmt = stmt.where(Exchange.user_id == self.user_id)
        if self.chat_id is not None:
            stmt = stmt.where(Exchange.chat_id == self.chat_id)
        if self.since is not None:
            stmt = stmt.where(Exchange.created_at >= self.since)
        if self.until is not None:
            stmt = stmt.where(Exchange.created_at < self.until)
        if self.text:
            pattern = "%" + _escape_like(self.text) + "%"
            stmt = stmt.where(
                or_(
                    Exchange.user_text.like(pattern, escape="\\"),
                    Exchange.reply_text.like(pattern, escape="\\"),
                    Exchange.edited_reply.like(pattern, escape="\\"),
                )
            )
        if self.feedback is not None:
            fb = select(Feedback.id).where(Feedback.exchange_id == Exchange.id)
            if self.feedback == "up":
                stmt = stmt.where(fb.where(Feedback.value > 0).exists())
            elif self.feedback == "down":
                stmt = stmt.where(fb.where(Feedback.value < 0).exists())
            elif self.feedback == "any":
                stmt = stmt.where(fb.exists())
            elif self.feedback == "none":
                stmt = stmt.where(~fb.exists())
            else:
                raise ValueError(f"feedback must be up, down, any or none, not {self.feedback!r}")
        if self.review_status is not None:
            statuses = (
                [self.review_status]
                if isinstance(self.review_status, str)
                else list(self.review_status)
            )
            for status in statuses:
                _check_status(status)
            stmt = stmt.where(Exchange.review_status.in_(statuses))
        if self.source is not None:
            stmt = stmt.where(Exchange.source == self.source)
        return stmt


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_status(status: str) -> None:
    if status not in REVIEW_STATUSES:
        raise ValueError(f"review status must be one of {REVIEW_STATUSES}, not {status!r}")


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_ms: float | None
    p95_ms: float | None


class ExchangeRepository:
    """Exchanges: logging, search, review and streaming for training."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        *,
        user_id: int,
        chat_id: int,
        message_id: int | None,
        user_text: str,
        reply_text: str,
        latency_ms: float,
        model_version: str,
        decode_options: dict[str, Any] | str | None = None,
        source: str = "telegram",
        created_at: datetime | None = None,
    ) -> tuple[Exchange, bool]:
        """Log an exchange; returns ``(exchange, created)``.

        When ``(chat_id, message_id)`` is already logged (a redelivered update) nothing is
        written and the stored exchange is returned with ``created=False``.
        """
        if message_id is not None:
            existing = self.get_by_message(chat_id, message_id)
            if existing is not None:
                return existing, False
        exchange = self._new(
            user_id=user_id,
            chat_id=chat_id,
            message_id=message_id,
            user_text=user_text,
            reply_text=reply_text,
            latency_ms=latency_ms,
            model_version=model_version,
            decode_options=decode_options,
            source=source,
            created_at=created_at,
        )
        try:
            with self.session.begin_nested():
                self.session.add(exchange)
        except IntegrityError:
            if message_id is None:
                raise
            existing = self.get_by_message(chat_id, message_id)
            if existing is None:
                raise
            return existing, False
        return exchange, True

    def add_many(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Exchange, bool]]:
        """Log several exchanges (``add``'s keyword arguments each) with few statements.

        Already-logged messages are returned with ``created=False``. The users and chats must
        exist. If another process logs one of the same messages meanwhile, the whole call
        falls back to :meth:`add` one by one, so the outcome is the same.
        """
        keys = [(r["chat_id"], r["message_id"]) for r in rows if r.get("message_id") is not None]
        existing: dict[tuple[int, int], Exchange] = {}
        if keys:
            # Two expanding INs (cached, portable), then the exact pairs in Python.
            wanted = set(keys)
            stmt = select(Exchange).where(
                Exchange.chat_id.in_({c for c, _ in wanted}),
                Exchange.message_id.in_({m for _, m in wanted}),
            )
            for e in self.session.scalars(stmt):
                if (e.chat_id, e.message_id) in wanted:
                    existing[(e.chat_id, e.message_id)] = e  # type: ignore[index]
        out: list[tuple[Exchange, bool]] = []
        try:
            with self.session.begin_nested():
                for r in rows:
                    key = (r["chat_id"], r.get("message_id"))
                    if key in existing:
                        out.append((existing[key], False))
                        continue
                    exchange = self._new(**r)
                    self.session.add(exchange)
                    if key[1] is not None:
                        existing[key] = exchange  # a duplicate within the same batch
                    out.append((exchange, True))
        except IntegrityError:
            return [self.add(**r) for r in rows]
        return out

    def insert_new(self, rows: Sequence[dict[str, Any]]) -> list[Exchange]:
        """Insert exchanges that are expected to be new (``add``'s keyword arguments each), in
        one flush and no other statement. A message that was already logged raises
        ``IntegrityError`` and leaves the transaction unusable: roll back and use
        :meth:`add_many`. The fast path for a bot that sees each update once."""
        exchanges = [self._new(**r) for r in rows]
        self.session.add_all(exchanges)
        self.session.flush()
        return exchanges

    @staticmethod
    def _new(
        *,
        user_id: int,
        chat_id: int,
        message_id: int | None,
        user_text: str,
        reply_text: str,
        latency_ms: float,
        model_version: str,
        decode_options: dict[str, Any] | str | None = None,
        source: str = "telegram",
        created_at: datetime | None = None,
    ) -> Exchange:
        options = decode_options if isinstance(decode_options, str) else _json(decode_options or {})
        return Exchange(
            user_id=user_id,
            chat_id=chat_id,
            message_id=message_id,
            source=source,
            user_text=user_text,
            reply_text=reply_text,
            latency_ms=latency_ms,
            model_version=model_version,
            decode_options=options,
            created_at=created_at or utcnow(),
        )

    def get(self, exchange_id: int) -> Exchange | None:
        return self.session.get(Exchange, exchange_id)

    def get_by_message(self, chat_id: int, message_id: int) -> Exchange | None:
        return self.session.scalar(
            select(Exchange).where(Exchange.chat_id == chat_id, Exchange.message_id == message_id)
        )

    def search(
        self,
        flt: ExchangeFilter | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[Exchange]:
        """Exchanges matching ``flt``, a page at a time."""
        stmt = (flt or ExchangeFilter()).apply(select(Exchange))
        order = Exchange.id.desc() if newest_first else Exchange.id.asc()
        stmt = stmt.order_by(order).limit(limit).offset(offset)
        return list(self.session.scalars(stmt))

    def count(self, flt: ExchangeFilter | None = None) -> int:
        stmt = (flt or ExchangeFilter()).apply(select(func.count(Exchange.id)))
        return self.session.scalar(stmt) or 0

    def set_review_status(
        self, exchange_ids: int | Iterable[int], status: str, *, reviewer: int | None
    ) -> int:
        """Set the review status of one or many exchanges; returns how many rows changed."""
        _check_status(status)
        ids = [exchange_ids] if isinstance(exchange_ids, int) else list(exchange_ids)
        if not ids:
            return 0
        changed = 0
        for start in range(0, len(ids), 500):  # keep the IN list small on every backend
            chunk = ids[start : start + 500]
            changed += self.session.execute(
                update(Exchange)
                .where(Exchange.id.in_(chunk))
                .values(review_status=status, reviewed_by=reviewer, reviewed_at=utcnow())
                .execution_options(synchronize_session="fetch")
            ).rowcount
        return changed

    def set_edited_reply(
        self, exchange_id: int, edited_reply: str | None, *, reviewer: int | None
    ) -> bool:
        """Store an admin's corrected answer (blank or None clears it); False if no such row."""
        exchange = self.get(exchange_id)
        if exchange is None:
            return False
        edited = (edited_reply or "").strip() or None
        exchange.edited_reply = edited
        exchange.reviewed_by = reviewer
        exchange.reviewed_at = utcnow()
        return True

    def approved_mark(self) -> tuple[int, datetime | None]:
        """(how many exchanges are approved, when the newest of them was reviewed): changes
        whenever an exchange is approved, un-approved, or edited while approved, so a reader
        can tell when to reload the approved answers."""
        # Both over the approved rows only (found through the review_status index), not a
        # scan of every exchange: the bot asks this once a second.
        approved = Exchange.review_status == REVIEW_APPROVED
        row = self.session.execute(
            select(func.count(), func.max(Exchange.reviewed_at)).where(approved)
        ).one()
        return int(row[0] or 0), row[1]

    def iter_training_pairs(
        self,
        flt: ExchangeFilter | None = None,
        *,
        statuses: Sequence[str] | None = (REVIEW_APPROVED,),
        batch_size: int = 1000,
        distinct: bool = False,
    ) -> Iterator[tuple[str, str]]:
        """Stream ``(question, answer)`` pairs in id order, the edited reply preferred.

        Rows are fetched ``batch_size`` at a time (``yield_per``), never all at once;
        ``distinct=True`` yields each (question, answer) pair once. For a long
        export on SQLite, use a session from ``session_factory(read_only_engine(engine))``.
        """
        flt = flt or ExchangeFilter()
        if statuses is not None:
            flt = replace(flt, review_status=tuple(statuses))
        answer = func.coalesce(Exchange.edited_reply, Exchange.reply_text)
        stmt = flt.apply(select(Exchange.user_text, answer))
        # distinct: the database drops duplicate pairs (on disk, in bounded memory); id order
        # is then meaningless, so none is asked for.
        stmt = stmt.distinct() if distinct else stmt.order_by(Exchange.id)
        result = self.session.execute(stmt.execution_options(yield_per=batch_size))
        yield from ((question, reply) for question, reply in result)

    def latency(self, flt: ExchangeFilter | None = None) -> LatencyStats:
        """p50/p95 reply latency (nearest rank) without loading the rows."""
        flt = flt or ExchangeFilter()
        n = self.count(flt)
        if n == 0:
            return LatencyStats(0, None, None)

        def rank(p: float) -> float:
            k = max(0, math.ceil(p * n) - 1)
            stmt = flt.apply(select(Exchange.latency_ms)).order_by(Exchange.latency_ms)
            return float(self.session.scalar(stmt.limit(1).offset(k)))

        return LatencyStats(n, rank(0.50), rank(0.95))

    # ----- for review (ops.review): rows with the user's name and the feedback counts -----

    def review_rows(
        self,
        flt: ExchangeFilter | None = None,
        *,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
        batch_size: int = 500,
    ) -> Iterator[Any]:
        """Every exchange column, ``username`` and ``feedback_up``/``feedback_down`` counts of
        the exchanges matching ``flt`` (and among ``ids`` when given), in id order; streamed
        ``batch_size`` rows at a time."""
        up = (
            select(func.count(Feedback.id))
            .where(Feedback.exchange_id == Exchange.id, Feedback.value > 0)
            .scalar_subquery()
        )
        down = (
            select(func.count(Feedback.id))
            .where(Feedback.exchange_id == Exchange.id, Feedback.value < 0)
            .scalar_subquery()
        )
        stmt = select(
            Exchange.id,
            Exchange.created_at,
            Exchange.user_id,
            User.username,
            Exchange.chat_id,
            Exchange.message_id,
            Exchange.source,
            Exchange.user_text,
            Exchange.reply_text,
            Exchange.edited_reply,
            Exchange.review_status,
            Exchange.reviewed_by,
            Exchange.reviewed_at,
            Exchange.model_version,
            Exchange.latency_ms,
            Exchange.decode_options,
            up.label("feedback_up"),
            down.label("feedback_down"),
        ).outerjoin(User, User.id == Exchange.user_id)
        stmt = (flt or ExchangeFilter()).apply(stmt)
        if ids is not None:
            stmt = stmt.where(Exchange.id.in_(list(ids)))
        stmt = stmt.order_by(Exchange.id.desc() if newest_first else Exchange.id.asc())
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        yield from self.session.execute(stmt.execution_options(yield_per=batch_size))

    def existing_ids(self, ids: Iterable[int]) -> set[int]:
        """Those of ``ids`` that name an exchange (ids too big for the database name none)."""
        storable = [i for i in ids if 0 < i <= MAX_EXCHANGE_ID]
        found: set[int] = set()
        for start in range(0, len(storable), 500):
            chunk = storable[start : start + 500]
            found.update(self.session.scalars(select(Exchange.id).where(Exchange.id.in_(chunk))))
        return found

    def ids_to_change(self, flt: ExchangeFilter, status: str) -> list[int]:
        """The ids of exchanges matching ``flt`` not in review ``status`` yet, in id order."""
        _check_status(status)
        stmt = flt.apply(select(Exchange.id)).where(Exchange.review_status != status)
        return list(self.session.scalars(stmt.order_by(Exchange.id)))


class FeedbackRepository:
    """👍/👎 on exchanges."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def set(self, exchange_id: int, user_id: int, value: int) -> Feedback | None:
        """Record ``value`` (+1 or -1) from ``user_id``; None when the exchange is gone."""
        if value not in (1, -1):
            raise ValueError("feedback value must be +1 or -1")
        if self.session.get(Exchange, exchange_id) is None:
            return None
        stmt = select(Feedback).where(
            Feedback.exchange_id == exchange_id, Feedback.user_id == user_id
        )
        feedback = self.session.scalar(stmt)
        if feedback is None:
            try:
                with self.session.begin_nested():
                    feedback = Feedback(exchange_id=exchange_id, user_id=user_id, value=value)
                    self.session.add(feedback)
                return feedback
            except IntegrityError:
                feedback = self.session.scalar(stmt)
                assert feedback is not None
        feedback.value = value
        feedback.created_at = utcnow()
        return feedback

    def counts(self) -> dict[str, int]:
        """``{"up": n, "down": m}`` over all exchanges."""
        rows = self.session.execute(
            select(Feedback.value, func.count(Feedback.id)).group_by(Feedback.value)
        ).all()
        counts = {"up": 0, "down": 0}
        for value, n in rows:
            counts["up" if value > 0 else "down"] += n
        return counts
