"""Engine, sessions and the versioned schema step.

``make_engine(url)`` accepts any SQLAlchemy URL as the user wrote it. For SQLite files it
creates the parent directory and sets WAL, ``busy_timeout`` and ``foreign_keys`` on every
connection; transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the
busy timeout instead of failing with "database is locked" when a read turns into a write.
A session bound to :func:`read_only_engine` starts plain deferred transactions, for long reads
(streaming training data) that must not hold the write lock.

``open_existing(url)`` is for commands that only look (review, rollback): it writes nothing
where there is no database yet, not even an empty file.

``init_schema(engine)`` is safe to call on every start: it runs the Alembic revisions in
``migrations/versions`` that the database lacks (all of them on a fresh one), in one transaction.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sqlite3
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

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


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory or URI ones."""
    return _sqlite_file(make_url(url))


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
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN" if mode == "DEFERRED" else "BEGIN IMMEDIATE")


def _switch_to_wal(cursor) -> None:  # noqa: ANN001 - a sqlite3 cursor
    """``PRAGMA journal_mode=WAL``, again while SQLite says "locked": the first connections to a
    new file (the bot and ``xianliao retrain`` starting together) can each hold the lock the
    other needs to switch, and SQLite then fails one at once instead of waiting (busy_timeout
    does not apply to that deadlock)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


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
        if schema_revision(engine) is None:
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


# ----- the schema, through Alembic -----------------------------------------------------------

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Before Alembic, xianliao stamped its own "schema_version" table; its version 1 is revision 0001.
_LEGACY_TABLE = "schema_version"
_LEGACY_REVISIONS = {1: "0001"}
# Any constant: the key of the PostgreSQL advisory lock that serialises schema upgrades.
_UPGRADE_LOCK_KEY = 0x7869616E6C69616F % (2**63)


@functools.lru_cache(maxsize=8)
def _scripts(location: str) -> ScriptDirectory:
    return ScriptDirectory(location)


def _revision(conn: Connection) -> tuple[str | None, bool]:
    """The revision a database is at (Alembic's, else the one its legacy version matches) and
    whether it is a legacy one, not yet stamped by Alembic."""
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None or not inspect(conn).has_table(_LEGACY_TABLE):
        return current, False
    legacy = conn.execute(text(f"SELECT MAX(version) FROM {_LEGACY_TABLE}")).scalar()
    if int(legacy or 0) not in _LEGACY_REVISIONS:
        raise RuntimeError(
            f"the database schema is version {legacy}, newer than this code: upgrade xianliao"
        )
    return _LEGACY_REVISIONS[int(legacy)], True


def schema_revision(engine: Engine) -> str | None:
    """The schema revision of the database, None when it has no xianliao schema yet."""
    with engine.connect() as conn:
        return _revision(conn)[0]


def init_schema(engine: Engine, script_location: str | Path | None = None) -> str:
    """Create or upgrade the schema to the newest revision; returns that revision.

    Safe to call on every start and from several processes at once: the check and the upgrade
    run in one transaction (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so one
    process upgrades and the others then find the schema current. A database made before
    Alembic is stamped with the revision its legacy version matches, then upgraded.
    """
    location = str(script_location or MIGRATIONS_DIR)
    scripts = _scripts(location)
    head = scripts.get_current_head()
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            _sqlite_foreign_keys(conn, on=False)
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK_KEY})
                current, legacy = _revision(conn)
                if current == head and not legacy:
                    return head
                _check_known(scripts, current)
                _upgrade(conn, location, current, legacy=legacy)
                _check_foreign_keys(conn)
        finally:
            if conn.dialect.name == "sqlite":
                _sqlite_foreign_keys(conn, on=True)
    logger.info("database schema upgraded from %s to %s", current or "nothing", head)
    return head


def _check_known(scripts: ScriptDirectory, current: str | None) -> None:
    if current is None:
        return
    try:
        scripts.get_revision(current)
    except (CommandError, RevisionError) as exc:
        raise RuntimeError(
            f"the database schema is at revision {current}, newer than this code: upgrade xianliao"
        ) from exc


def _upgrade(conn: Connection, location: str, current: str | None, *, legacy: bool) -> None:
    config = Config()
    config.set_main_option("script_location", location)
    config.attributes["connection"] = conn
    if legacy:
        # It already has this revision's tables: record that instead of creating them.
        command.stamp(config, current)
        conn.execute(text(f"DROP TABLE {_LEGACY_TABLE}"))
    command.upgrade(config, "head")


def _sqlite_foreign_keys(conn: Connection, *, on: bool) -> None:
    """Switch SQLite's foreign keys, outside any transaction (inside one, SQLite ignores it).

    Off while revisions run: batch mode copies a table and drops the old one, and with foreign
    keys on, dropping ``users`` would cascade and delete every exchange.
    """
    raw = conn.connection.driver_connection
    raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _check_foreign_keys(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the schema upgrade broke {len(broken)} foreign keys; not applied")


def database_error_line(exc: Exception) -> str:
    """The first line of a database error (SQLAlchemy's own, without its background link)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
