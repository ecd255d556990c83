"""The schema through Alembic, on SQLite and PostgreSQL: created, upgraded in place (also from a
database made before Alembic), serialised between processes, refused when newer than the code."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from xianliao.storage.db import (
    MIGRATIONS_DIR,
    NoDatabase,
    init_schema,
    make_engine,
    open_existing,
    schema_revision,
    session_factory,
)
from xianliao.storage.models import Base
from xianliao.storage.repositories import (
    ExchangeFilter,
    ExchangeRepository,
    FeedbackRepository,
    PromotionRepository,
    TrainingRunRepository,
    UserRepository,
)

LEGACY_SQL = Path(__file__).parent / "data" / "legacy_schema_v1.sql"
HEAD = "0005"

# A later revision as a developer would write it, in batch mode; on SQLite the table is copied
# ("always"), so the test also shows that copying users does not cascade-delete their exchanges.
REVISION_NEXT = """
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("users", recreate=recreate) as batch:
        batch.add_column(sa.Column("nickname", sa.String(32), nullable=True))


def downgrade():
    with op.batch_alter_table("users") as batch:
        batch.drop_column("nickname")
"""


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _differences(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def _log_one(engine) -> None:
    with session_factory(engine).begin() as s:
        UserRepository(s).touch(1, username="u1")
        from xianliao.storage.repositories import ChatRepository

        ChatRepository(s).touch(1, type="private")
        ExchangeRepository(s).add(
            user_id=1,
            chat_id=1,
            message_id=1,
            user_text="你好",
            reply_text="你好呀",
            latency_ms=1.0,
            model_version="v1",
        )


def test_a_fresh_database_gets_exactly_the_models_schema(engine):
    assert schema_revision(engine) is None
    assert init_schema(engine) == HEAD
    assert schema_revision(engine) == HEAD
    # The hand-written revisions and the models describe the same tables, indexes and keys.
    assert _differences(engine) == []


def test_init_schema_is_idempotent(engine):
    init_schema(engine)
    _log_one(engine)
    tables = set(inspect(engine).get_table_names())
    assert init_schema(engine) == HEAD
    assert set(inspect(engine).get_table_names()) == tables
    with session_factory(engine)() as s:
        assert ExchangeRepository(s).count() == 1


def test_a_database_made_before_alembic_upgrades_in_place(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(LEGACY_SQL.read_text("utf-8"))
    old.close()
    engine = open_existing(f"sqlite:///{path}")  # what `xianliao review` does first
    try:
        assert schema_revision(engine) == HEAD
        assert "schema_version" not in inspect(engine).get_table_names()
        assert _differences(engine) == []
        with session_factory(engine).begin() as s:
            repo = ExchangeRepository(s)
            (row,) = repo.search()
            assert (row.user_text, row.reply_text, row.review_status) == (
                "你好",
                "你好呀",
                "approved",
            )
            assert row.created_at.year == 2026 and row.created_at.tzinfo is not None
            assert FeedbackRepository(s).counts() == {"up": 1, "down": 0}
            assert TrainingRunRepository(s).recent()[0].status == "succeeded"
            assert PromotionRepository(s).latest().checkpoint == "runs/1/best.pt"
            assert UserRepository(s).get(7).username == "alice"
            # and it takes new rows
            repo.add(
                user_id=7, chat_id=7, message_id=2, user_text="再见", reply_text="下次再聊",
                latency_ms=3.0, model_version="v2",
            )  # fmt: skip
        with session_factory(engine)() as s:
            assert ExchangeRepository(s).count(ExchangeFilter(user_id=7)) == 2
    finally:
        engine.dispose()


def test_a_new_revision_runs_once_keeps_rows_and_older_code_refuses(engine, tmp_path):
    init_schema(engine)
    _log_one(engine)
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "0006_nickname.py").write_text(REVISION_NEXT, "utf-8")

    assert init_schema(engine, location) == "0006"
    assert init_schema(engine, location) == "0006"
    assert "nickname" in {c["name"] for c in inspect(engine).get_columns("users")}
    with session_factory(engine)() as s:
        assert ExchangeRepository(s).count() == 1  # copying users deleted no exchange
        assert UserRepository(s).get(1).username == "u1"
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # foreign keys are back on after the upgrade
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(RuntimeError, match="newer than this code"):
        init_schema(engine)


def _start_together(url: str, n: int = 4) -> tuple[list[str], list[Exception]]:
    """``init_schema`` from ``n`` threads at once, each with an engine of its own."""
    results, errors = [], []

    def start() -> None:
        engine = make_engine(url)
        try:
            results.append(init_schema(engine))
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_processes_starting_at_once_create_the_schema_once(database_url, tmp_path):
    """The bot and `xianliao retrain` may start together on a fresh database. On SQLite, 40
    fresh files: the first connections to a new file switching it to WAL at once failed one
    start in about 20 with "database is locked"."""
    sqlite = database_url.startswith("sqlite")
    urls = [f"sqlite:///{tmp_path}/fresh{i}.db" for i in range(40)] if sqlite else [database_url]
    for url in urls:
        results, errors = _start_together(url)
        assert errors == [] and results == [HEAD] * 4


def test_open_existing_creates_nothing_in_an_empty_postgresql_database(postgres_url):
    with pytest.raises(NoDatabase, match="none of its tables"):
        open_existing(postgres_url)
    engine = make_engine(postgres_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
