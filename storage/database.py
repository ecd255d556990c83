"""One database object per process: the engine and its session factories.

Each entry point (``xianliao bot``, ``xianliao review``, ``xianliao retrain``, the web console)
builds one :class:`Database` from its settings and passes it down; nothing below an entry point
builds an engine. Opening fails with :class:`DatabaseUnavailable`, whose message is one line a
user can act on (the password of the URL never appears in it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from xianliao.storage.db import (
    NoDatabase,
    database_error_line,
    init_schema,
    make_engine,
    open_existing,
    read_only_engine,
    session_factory,
)


class DatabaseUnavailable(Exception):
    """The database cannot be opened; the message is one line that says what to do."""


class MissingDatabase(DatabaseUnavailable):
    """No database where one must exist already (``Database.open(url, create=False)``)."""


def redacted_url(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


@dataclass(eq=False)
class Database:
    """An engine with its session factories.

    ``sessions`` opens write transactions (on SQLite they take the write lock at once, so
    writers queue instead of failing); ``readers`` opens transactions for long reads (an
    export, the training data) that must not hold the write lock.
    """

    engine: Engine
    sessions: sessionmaker[Session] = field(init=False)
    readers: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = session_factory(self.engine)
        self.readers = session_factory(read_only_engine(self.engine))

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Database:
        """The database at ``url`` with its schema created or upgraded. ``create=False``: it
        must exist already (commands that only look, or undo), and nothing is created."""
        try:
            engine = _engine_with_schema(url) if create else open_existing(url)
        except ArgumentError:
            raise DatabaseUnavailable(
                f"DATABASE_URL is not a valid SQLAlchemy URL: {redacted_url(url)} "
                "(e.g. sqlite:///data/xianliao.db or postgresql://user:pass@host/db)"
            ) from None
        except ModuleNotFoundError as exc:
            raise DatabaseUnavailable(
                f"the database driver for {redacted_url(url)} is not installed ({exc.name}):"
                " pip install it, e.g. 'pip install psycopg[binary]' for PostgreSQL"
            ) from None
        except NoDatabase as exc:
            raise MissingDatabase(
                f"{exc}: nothing recorded there yet, or DATABASE_URL points elsewhere"
            ) from None
        except (SQLAlchemyError, OSError, RuntimeError) as exc:  # RuntimeError: a newer schema
            raise DatabaseUnavailable(
                f"cannot open the database {redacted_url(url)}: {database_error_line(exc)}"
            ) from None
        return cls(engine)

    def begin(self) -> AbstractContextManager[Session]:
        """A session in one write transaction, committed when the block ends without error."""
        return self.sessions.begin()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading (deferred transaction on SQLite), closed after the block."""
        with self.readers() as session:
            yield session

    @property
    def display_url(self) -> str:
        """The URL for messages, its password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()


def _engine_with_schema(url: str) -> Engine:
    """``make_engine`` + ``init_schema``, the engine disposed of if the schema step fails."""
    engine = make_engine(url)
    try:
        init_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
