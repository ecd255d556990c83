"""The inbox: updates stored when received, until their reply is sent (what a restart finishes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
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
