"""Engine, sessions and the versioned schema step.

``make_engine(url)`` accepts any SQLAlchemy URL as the user wrote it. For SQLite files it
creates the parent directory and sets WAL, ``busy_timeout`` and ``foreign_keys`` on every
connection; transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the
busy timeout instead of failing with "database is locked" when a read turns into a write.
A session bound to :func:`read_only_engine` starts plain deferred transactions, for long reads
(streaming training data) that must not hold the write lock.

``open_existing(url)`` is for commands that only look (review, rollback): it writes nothing
where there is no database yet, not even an empty file.

``init_schema(engine)`` is safe to call on every start: a fresh database gets the current
schema and is stamped with the latest version; an older one runs the missing migration steps in
order, each in its own transaction.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from xianliao.storage.models import Base, InboxUpdate, SchemaVersion

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 15_000

# The option that makes a SQLite transaction start deferred instead of immediate.
_SQLITE_BEGIN = "xianliao_sqlite_begin"


def _normalise_url(url: str | URL) -> URL:
    """Turn the URL the user wrote into one whose driver is installed."""
    u = make_url(url)
    if u.drivername in {"postgres", "postgresql"}:
        # A bare postgresql:// means psycopg2 to SQLAlchemy; use whichever driver is here.
        for module, driver in (
            ("psycopg", "postgresql+psycopg"),
            ("psycopg2", "postgresql"),
            ("pg8000", "postgresql+pg8000"),
            ("asyncpg", None),
        ):
            if driver and importlib.util.find_spec(module) is not None:
                return u.set(drivername=driver)
        return u.set(drivername="postgresql")
    return u


class NoDatabase(Exception):
    """There is no xianliao database at a URL that must already hold one; nothing was created."""


def _sqlite_file(u: URL) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory or URI ones."""
    database = u.database or ""
    if u.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return None if database.startswith("file:") else Path(database).expanduser()


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``; for SQLite files, create the directory and set pragmas."""
    u = _normalise_url(url)
    is_sqlite = u.get_backend_name() == "sqlite"
    kwargs: dict = {"echo": echo}
    if is_sqlite:
        path = _sqlite_file(u)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Connections are used from worker threads.
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(u, **kwargs)
    if is_sqlite:
        _install_sqlite_listeners(engine)
    return engine


def _install_sqlite_listeners(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Let SQLAlchemy (the "begin" listener below) own BEGIN, so savepoints work.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN" if mode == "DEFERRED" else "BEGIN IMMEDIATE")


def open_existing(url: str | URL) -> Engine:
    """The engine of an existing xianliao database (its schema upgraded if older); raises
    ``NoDatabase`` for a SQLite file that is missing or empty (SQLite would create the file, then
    ``init_schema`` the tables) and for a database without our tables."""
    u = _normalise_url(url)
    path = _sqlite_file(u)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        raise NoDatabase(f"no database at {path}")
    engine = make_engine(u)
    try:
        if schema_version(engine) == 0:
            where = path or u.render_as_string(hide_password=True)
            raise NoDatabase(f"no xianliao database at {where} (it has none of its tables)")
        init_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def read_only_engine(engine: Engine) -> Engine:
    """The same engine, but SQLite transactions start deferred (for long reads)."""
    return engine.execution_options(**{_SQLITE_BEGIN: "DEFERRED"})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; the caller owns each transaction (``with factory.begin() as s:``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


# ----- versioned schema -----------------------------------------------------------------------

Migration = Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    """Version 1: the first schema (users, chats, exchanges, feedback, audit, training)."""
    Base.metadata.create_all(conn)


def _v2_inbox(conn: Connection) -> None:
    """Version 2: the inbox of received updates (a crash loses no message)."""
    InboxUpdate.__table__.create(conn, checkfirst=True)


# Ordered: MIGRATIONS[i] upgrades a database from version i to version i + 1. Append new steps
# (with ALTER TABLE ... written portably) and change the models to match; never edit old steps.
MIGRATIONS: tuple[Migration, ...] = (_v1_initial, _v2_inbox)


def schema_version(engine: Engine) -> int:
    """The version stamped in the database, 0 when it has no schema yet."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(SchemaVersion.__tablename__):
            return 0
        value = conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar()
        return int(value or 0)


def init_schema(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Create or upgrade the schema to ``len(migrations)``; returns the version reached."""
    latest = len(migrations)
    current = schema_version(engine)
    if current > latest:
        raise RuntimeError(
            f"the database schema is version {current}, newer than this code ({latest}): "
            "upgrade xianliao"
        )
    if current == 0:
        with engine.begin() as conn:
            # A fresh database: the models already describe the latest schema.
            Base.metadata.create_all(conn)
            _stamp(conn, latest)
        logger.info("created database schema version %d", latest)
        return latest
    for version in range(current, latest):
        with engine.begin() as conn:
            migrations[version](conn)
            _stamp(conn, version + 1)
        logger.info("upgraded database schema to version %d", version + 1)
    return latest


def _stamp(conn: Connection, version: int) -> None:
    SchemaVersion.__table__.create(conn, checkfirst=True)
    conn.execute(SchemaVersion.__table__.delete())
    conn.execute(SchemaVersion.__table__.insert().values(version=version))


def database_error_line(exc: Exception) -> str:
    """The first line of a database error (SQLAlchemy's own, without its background link)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
