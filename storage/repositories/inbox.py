"""The inbox: updates stored when received, until their reply is sent (what a restart finishes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xianliao.storage.models import InboxUpdate, utcnow


@dataclass(frozen=True)
class StoredUpdate:
    update_id: int
    payload: str
    received_at: datetime


class InboxRepository:
    """Updates received and not yet answered (the ``inbox`` table)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_new(self, rows: Sequence[dict[str, Any]]) -> set[int]:
        """Store the updates not stored yet (``update_id``, ``chat_id``, ``user_id``,
        ``payload``); returns the ids that were already there (delivered again)."""
        ids = [r["update_id"] for r in rows]
        known = set(
            self.session.scalars(
                select(InboxUpdate.update_id).where(InboxUpdate.update_id.in_(ids))
            )
        )
        now = utcnow()
        self.session.add_all(
            InboxUpdate(**r, received_at=now) for r in rows if r["update_id"] not in known
        )
        self.session.flush()
        return known

    def claim(self, row: dict[str, Any], until: datetime) -> bool:
        """Store one update held by the caller until ``until``; False when it was stored
        already (another replica, or an earlier delivery, has it). One atomic insert, so two
        replicas given the same update cannot both win."""
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(InboxUpdate)
            .values(**row, received_at=utcnow(), claimed_until=until)
            .on_conflict_do_nothing(index_elements=["update_id"])
            .returning(InboxUpdate.update_id)
        )
        return self.session.execute(stmt).scalar() is not None

    def take(
        self,
        now: datetime,
        until: datetime,
        *,
        mine: Iterable[int] = (),
        exclude: Iterable[int] = (),
        limit: int = 100,
    ) -> list[StoredUpdate]:
        """Unfinished updates nobody holds (their lease ran out before ``now``) or that are
        ``mine``, now held by the caller until ``until``; oldest first. Each is taken with a
        conditional update, so a row goes to one replica only."""
        own = list(mine)
        free = or_(InboxUpdate.claimed_until.is_(None), InboxUpdate.claimed_until < now)
        takeable = or_(free, InboxUpdate.update_id.in_(own)) if own else free
        stmt = select(InboxUpdate).where(InboxUpdate.done_at.is_(None), takeable)
        excluded = list(exclude)
        if excluded:
            stmt = stmt.where(InboxUpdate.update_id.not_in(excluded))
        rows = self.session.scalars(stmt.order_by(InboxUpdate.update_id).limit(limit)).all()
        out = []
        for r in rows:
            won = self.session.execute(
                update(InboxUpdate)
                .where(InboxUpdate.update_id == r.update_id, InboxUpdate.done_at.is_(None))
                .where(takeable)
                .values(claimed_until=until)
                .execution_options(synchronize_session=False)
            ).rowcount
            if won:
                out.append(StoredUpdate(r.update_id, r.payload, r.received_at))
        return out

    def renew(self, update_ids: Iterable[int], until: datetime) -> int:
        """Hold these (still being answered) until ``until``."""
        ids = list(update_ids)
        if not ids:
            return 0
        stmt = (
            update(InboxUpdate)
            .where(InboxUpdate.update_id.in_(ids), InboxUpdate.done_at.is_(None))
            .values(claimed_until=until)
        )
        return self.session.execute(stmt).rowcount

    def pending(self, exclude: Iterable[int] = ()) -> list[StoredUpdate]:
        """Updates not done yet, oldest first."""
        stmt = select(InboxUpdate).where(InboxUpdate.done_at.is_(None))
        excluded = list(exclude)
        if excluded:
            stmt = stmt.where(InboxUpdate.update_id.not_in(excluded))
        rows = self.session.scalars(stmt.order_by(InboxUpdate.update_id))
        return [StoredUpdate(r.update_id, r.payload, r.received_at) for r in rows]

    def mark_done(self, update_ids: Iterable[int]) -> int:
        """Done: the text is dropped, the id kept to recognise the update if it comes again."""
        ids = list(update_ids)
        if not ids:
            return 0
        stmt = (
            update(InboxUpdate)
            .where(InboxUpdate.update_id.in_(ids), InboxUpdate.done_at.is_(None))
            .values(done_at=utcnow(), payload="")
        )
        return self.session.execute(stmt).rowcount

    def prune(self, before: datetime) -> int:
        """Delete done rows finished before ``before`` (Telegram keeps updates for a day)."""
        stmt = delete(InboxUpdate).where(InboxUpdate.done_at < before)
        return self.session.execute(stmt).rowcount

    def delete_user(self, user_id: int) -> int:
        """Delete what is stored of ``user_id``'s updates (/forget)."""
        return self.session.execute(
            delete(InboxUpdate).where(InboxUpdate.user_id == user_id)
        ).rowcount
