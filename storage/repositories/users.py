"""Users and chats: created on first contact, refreshed on each message, deleted on /forget."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import Engine, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xianliao.storage.models import AdminAction, Chat, Exchange, Feedback, RateLimit, User, utcnow

LAST_SEEN_RESOLUTION = timedelta(minutes=1)  # users.last_seen_at is refreshed at most this often


class UserRepository:
    """Users: created on first contact, refreshed on each message."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, user_id: int) -> User | None:
        return self.session.get(User, user_id)

    def touch(
        self,
        user_id: int,
        *,
        username: str | None = None,
        first_name: str | None = None,
        language_code: str | None = None,
    ) -> User:
        """Create the user or refresh its names and ``last_seen_at``."""
        user = self.session.get(User, user_id)
        if user is None:
            try:
                with self.session.begin_nested():
                    user = User(id=user_id)
                    self.session.add(user)
            except IntegrityError:  # another session created it first
                user = self.session.get(User, user_id, populate_existing=True)
                assert user is not None
        # Write only what changed: most messages come from users seen a moment ago.
        if user.username != username:
            user.username = username
        if user.first_name != first_name:
            user.first_name = first_name
        if user.language_code != language_code:
            user.language_code = language_code
        now = utcnow()
        if user.last_seen_at is None or now - user.last_seen_at >= LAST_SEEN_RESOLUTION:
            user.last_seen_at = now
        return user

    def count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(User)) or 0

    def load(self, user_ids: Iterable[int]) -> dict[int, User]:
        """The existing users among ``user_ids`` in one query (they stay in the session)."""
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        return {u.id: u for u in self.session.scalars(select(User).where(User.id.in_(ids)))}

    def delete_user_data(self, user_id: int) -> dict[str, int]:
        """Delete everything stored about ``user_id``; returns the rows removed per table.
        On SQLite the freed pages are overwritten with zeros (``secure_delete``); call
        :func:`flush_deleted` after the commit so no copy stays in the WAL file either."""
        s = self.session
        if s.get_bind().dialect.name == "sqlite":
            s.execute(text("PRAGMA secure_delete = ON"))
        own_exchanges = select(Exchange.id).where(Exchange.user_id == user_id)
        removed = {
            "feedback": s.execute(
                delete(Feedback).where(
                    or_(Feedback.user_id == user_id, Feedback.exchange_id.in_(own_exchanges))
                )
            ).rowcount,
            "exchanges": s.execute(delete(Exchange).where(Exchange.user_id == user_id)).rowcount,
            "admin_actions": s.execute(
                delete(AdminAction).where(AdminAction.user_id == user_id)
            ).rowcount,
        }
        s.execute(update(Exchange).where(Exchange.reviewed_by == user_id).values(reviewed_by=None))
        # The private chat with a user has the user's id; keep it if others still use it.
        removed["chats"] = s.execute(
            delete(Chat).where(Chat.id == user_id, ~exists().where(Exchange.chat_id == Chat.id))
        ).rowcount
        removed["users"] = s.execute(delete(User).where(User.id == user_id)).rowcount
        s.expire_all()
        return removed


def flush_deleted(engine: Engine) -> None:
    """SQLite keeps deleted text readable in its write-ahead log until a checkpoint: copy the
    log back into the (zeroed) database and truncate it. Outside any transaction (the DBAPI
    connection runs in autocommit; SQLAlchemy's BEGIN is not involved)."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


class ChatRepository:
    """Chats the bot has talked in."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def load(self, chat_ids: Iterable[int]) -> dict[int, Chat]:
        """The existing chats among ``chat_ids`` in one query (they stay in the session)."""
        ids = sorted(set(chat_ids))
        if not ids:
            return {}
        return {c.id: c for c in self.session.scalars(select(Chat).where(Chat.id.in_(ids)))}

    def touch(self, chat_id: int, *, type: str, title: str | None = None) -> Chat:  # noqa: A002
        chat = self.session.get(Chat, chat_id)
        if chat is None:
            try:
                with self.session.begin_nested():
                    chat = Chat(id=chat_id, type=type, title=title)
                    self.session.add(chat)
            except IntegrityError:
                chat = self.session.get(Chat, chat_id, populate_existing=True)
                assert chat is not None
        if chat.title != title:
            chat.title = title
        return chat


class RateLimitRepository:
    """The per-user rate limit in the database, so it holds across bot replicas."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def hit(self, user_id: int, now: float, limit: int, window_s: float) -> str:
        """Count a message of ``user_id`` at ``now`` (epoch seconds) against at most ``limit``
        per sliding ``window_s``: "allow", "notify" (over: tell them once) or "drop". The row
        is locked first (the insert on SQLite, FOR UPDATE on PostgreSQL), so replicas counting
        the same user at once wait for each other instead of both letting a message through."""
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.session.execute(
            insert(RateLimit)
            .values(user_id=user_id, hits="[]", told=False)
            .on_conflict_do_nothing(index_elements=["user_id"])
        )
        row = self.session.scalars(
            select(RateLimit)
            .where(RateLimit.user_id == user_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        hits = [t for t in json.loads(row.hits or "[]") if now - t < window_s]
        if len(hits) < limit:
            row.hits, row.told = json.dumps([*hits, now]), False
            return "allow"
        row.hits = json.dumps(hits)
        if row.told:
            return "drop"
        row.told = True
        return "notify"

    def forget(self, user_id: int) -> int:
        return self.session.execute(delete(RateLimit).where(RateLimit.user_id == user_id)).rowcount
