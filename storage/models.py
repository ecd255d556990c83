"""The tables: users, chats, exchanges, feedback, admin audit, training runs, promotions and
the inbox of received updates.

Portable SQLAlchemy 2.0 constructs only (SQLite and PostgreSQL). Text columns go through
:class:`CleanText`/:class:`CleanString`, so input SQLite would take and PostgreSQL refuse (NUL
characters, names longer than their column) is stored on PostgreSQL too, as close as it allows. The schema itself
changes only through the Alembic revisions in ``migrations/versions``. Times are stored as
UTC and read back as aware UTC datetimes on every backend. JSON payloads are text columns holding
JSON, so no backend-specific JSON type is needed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

REVIEW_PENDING = "pending"
REVIEW_APPROVED = "approved"
REVIEW_REJECTED = "rejected"
REVIEW_STATUSES = (REVIEW_PENDING, REVIEW_APPROVED, REVIEW_REJECTED)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str, length: int | None = None, *, keep_nul: bool = False) -> str:
    """``value`` as a backend will store it. Neither SQLite nor PostgreSQL can encode a lone
    UTF-16 surrogate (a broken client's half emoji): it becomes U+FFFD. PostgreSQL also refuses
    NUL characters, which become U+FFFD too unless ``keep_nul`` (SQLite keeps them), and text
    longer than a VARCHAR's ``length``, which is cut to end with an ellipsis. The rest of the
    row, and so the message, is kept."""
    if not keep_nul and "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if _SURROGATE.search(value):
        # Pairs become the character they encode; a lone half becomes U+FFFD.
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if length is not None and len(value) > length:
        value = value[: length - 1] + "…"
    return value


class CleanText(TypeDecorator[str]):
    """TEXT that never makes a backend refuse the row (see :func:`clean_text`); SQLite keeps
    what it can store as it was."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect) -> str | None:  # noqa: ANN001
        if value is None:
            return None
        return clean_text(value, keep_nul=dialect.name == "sqlite")


class CleanString(TypeDecorator[str]):
    """VARCHAR(n) whose values never make a backend refuse the row (see :func:`clean_text`):
    PostgreSQL enforces the length, so there they are cut to n characters; SQLite ignores it
    and keeps them whole."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect) -> str | None:  # noqa: ANN001
        if value is None:
            return None
        if dialect.name == "sqlite":
            return clean_text(value, keep_nul=True)
        return clean_text(value, self.impl.length)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A Telegram user (id 0 is the local terminal user)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    username: Mapped[str | None] = mapped_column(CleanString(64))
    first_name: Mapped[str | None] = mapped_column(CleanString(128))
    language_code: Mapped[str | None] = mapped_column(CleanString(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Chat(Base):
    """A chat the bot talked in: private, group, supergroup, or the local terminal."""

    __tablename__ = "chats"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(CleanString(16))
    title: Mapped[str | None] = mapped_column(CleanString(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Exchange(Base):
    """One user message and the bot's reply, with what produced it and its review state.

    ``(chat_id, message_id)`` is unique, so a redelivered Telegram update is never logged twice
    (terminal exchanges have no message id).
    """

    __tablename__ = "exchanges"
    __table_args__ = (
        UniqueConstraint("chat_id", "message_id", name="uq_exchanges_chat_message"),
        Index("ix_exchanges_created_at", "created_at"),
        Index("ix_exchanges_user_id", "user_id"),
        Index("ix_exchanges_review_status", "review_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("chats.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(CleanString(16), default="telegram")
    user_text: Mapped[str] = mapped_column(CleanText)
    reply_text: Mapped[str] = mapped_column(CleanText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    latency_ms: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(CleanString(64))
    decode_options: Mapped[str] = mapped_column(CleanText, default="{}")  # JSON object
    review_status: Mapped[str] = mapped_column(CleanString(16), default=REVIEW_PENDING)
    edited_reply: Mapped[str | None] = mapped_column(CleanText)
    reviewed_by: Mapped[int | None] = mapped_column(BigInteger)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    feedback: Mapped[list[Feedback]] = relationship(
        back_populates="exchange", cascade="all, delete-orphan", passive_deletes=True
    )


class Feedback(Base):
    """A 👍 (+1) or 👎 (-1) from one user on one exchange; clicking again replaces it."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("exchange_id", "user_id", name="uq_feedback_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exchange_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("exchanges.id", ondelete="CASCADE")
    )
    user_id: Mapped[int] = mapped_column(BigInteger, index=True)
    value: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    exchange: Mapped[Exchange] = relationship(back_populates="feedback")


class AdminAction(Base):
    """The audit of admin commands, including refused attempts by non-admins."""

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, index=True)
    action: Mapped[str] = mapped_column(CleanString(32))
    detail: Mapped[str | None] = mapped_column(CleanText)
    allowed: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrainingRun(Base):
    """A retraining run (status: queued, running, succeeded, failed)."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_by: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(CleanString(16), default="queued")
    params: Mapped[str] = mapped_column(CleanText, default="{}")  # JSON object
    metrics: Mapped[str | None] = mapped_column(CleanText)  # JSON object
    checkpoint_path: Mapped[str | None] = mapped_column(CleanText)
    log: Mapped[str | None] = mapped_column(CleanText)
    # The lease that keeps retraining to one run at a time across hosts: who holds it and when
    # it was last renewed (repositories/runs.py).
    lease_owner: Mapped[str | None] = mapped_column(CleanString(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by anyone (the bot, the console, another host) to ask the run's process to stop; the
    # process sees it with its next heartbeat.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Promotion(Base):
    """A checkpoint put into service (from a training run, or by hand when run_id is null)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    checkpoint: Mapped[str] = mapped_column(CleanText)
    previous_checkpoint: Mapped[str | None] = mapped_column(CleanText)
    promoted_by: Mapped[int | None] = mapped_column(BigInteger)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[str | None] = mapped_column(CleanText)  # JSON object
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InboxUpdate(Base):
    """A Telegram update stored as it was received, before Telegram is told it arrived.

    ``done_at`` is set once it was answered (the reply sent) or needed no answer; until then a
    restarted bot answers it. Done rows keep only their id (``payload`` emptied), so an update
    delivered again is recognised without keeping the user's text twice.
    """

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_done_at", "done_at"),)

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    payload: Mapped[str] = mapped_column(Text)  # the update's JSON, as the Bot API sent it
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The replica answering it holds it until then (renewed while it works); null: nobody.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RateLimit(Base):
    """A user's recent messages (epoch seconds, JSON list) for the per-user rate limit, shared
    by every replica; ``told``: the user was told they are over the limit."""

    __tablename__ = "rate_limits"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hits: Mapped[str] = mapped_column(Text, default="[]")
    told: Mapped[bool] = mapped_column(Boolean, default=False)
