"""Storage against a real SQLite file and a real PostgreSQL database: dedup, search, review,
streaming, forget. The schema and its upgrades are tested in test_schema.py."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest

from xianliao.storage.db import (
    init_schema,
    make_engine,
    read_only_engine,
    session_factory,
)
from xianliao.storage.models import Exchange
from xianliao.storage.repositories import (
    AuditRepository,
    ChatRepository,
    ExchangeFilter,
    ExchangeRepository,
    FeedbackRepository,
    PromotionRepository,
    TrainingRunRepository,
    UserRepository,
)


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    init_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine):
    return session_factory(engine)


def log(session, user_id=1, chat_id=1, message_id=1, q="你好", a="你好呀", latency=10.0, **kw):
    UserRepository(session).touch(user_id, username=f"u{user_id}")
    ChatRepository(session).touch(chat_id, type="private")
    return ExchangeRepository(session).add(
        user_id=user_id,
        chat_id=chat_id,
        message_id=message_id,
        user_text=q,
        reply_text=a,
        latency_ms=latency,
        model_version="v1",
        decode_options={"beam": 3},
        **kw,
    )


def test_make_engine_creates_dir_and_sets_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/sub/dir/chat.db")
    init_schema(engine)
    assert (tmp_path / "sub" / "dir" / "chat.db").exists()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()


def test_exchange_logged_once_per_message(factory):
    with factory.begin() as s:
        first, created = log(s)
        assert created
    with factory.begin() as s:
        again, created = log(s, a="another reply")
        assert not created
        assert again.id == first.id and again.reply_text == "你好呀"
    with factory() as s:
        assert ExchangeRepository(s).count() == 1
        row = ExchangeRepository(s).get(first.id)
        assert json.loads(row.decode_options) == {"beam": 3}
        assert row.created_at.tzinfo is not None
        assert row.review_status == "pending"


def test_concurrent_writers_do_not_fail_or_duplicate(factory):
    errors = []

    def worker(w: int) -> None:
        try:
            for i in range(30):
                with factory.begin() as s:
                    # Every worker logs message i of the same chat: only one may win each.
                    log(s, user_id=100 + w % 3, chat_id=-5, message_id=i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with factory() as s:
        assert ExchangeRepository(s).count() == 30
        assert UserRepository(s).count() == 3


def test_search_filters_and_paging(factory):
    now = datetime.now(UTC)
    with factory.begin() as s:
        for i in range(10):
            log(
                s,
                user_id=1 + i % 2,
                message_id=i,
                q=f"问题{i}",
                a=f"回答_{i}%",
                created_at=now - timedelta(days=i),
            )
        FeedbackRepository(s).set(1, 1, +1)
        FeedbackRepository(s).set(2, 1, -1)
    with factory() as s:
        repo = ExchangeRepository(s)
        assert [e.user_text for e in repo.search(limit=3)] == ["问题9", "问题8", "问题7"]
        assert len(repo.search(limit=3, offset=9)) == 1
        assert repo.count(ExchangeFilter(user_id=2)) == 5
        assert repo.count(ExchangeFilter(since=now - timedelta(days=2, hours=1))) == 3
        assert repo.count(ExchangeFilter(until=now - timedelta(days=8, hours=1))) == 1
        assert [e.user_text for e in repo.search(ExchangeFilter(text="问题3"))] == ["问题3"]
        assert repo.count(ExchangeFilter(text="_3%")) == 1  # LIKE wildcards are escaped
        assert repo.count(ExchangeFilter(text="%")) == 10
        assert [e.id for e in repo.search(ExchangeFilter(feedback="up"))] == [1]
        assert [e.id for e in repo.search(ExchangeFilter(feedback="down"))] == [2]
        assert repo.count(ExchangeFilter(feedback="any")) == 2
        assert repo.count(ExchangeFilter(feedback="none")) == 8
        assert repo.count(ExchangeFilter(review_status="pending")) == 10
        with pytest.raises(ValueError):
            repo.count(ExchangeFilter(review_status="bogus"))


def test_review_edit_and_training_stream(engine, factory):
    with factory.begin() as s:
        for i in range(5):
            log(s, message_id=i, q=f"q{i}", a=f"a{i}")
    with factory.begin() as s:
        repo = ExchangeRepository(s)
        assert repo.set_review_status([1, 2, 3], "approved", reviewer=42) == 3
        assert repo.set_review_status(4, "rejected", reviewer=42) == 1
        assert repo.set_edited_reply(2, "  更好的回答 ", reviewer=42)
        assert not repo.set_edited_reply(999, "x", reviewer=42)
    with session_factory(read_only_engine(engine))() as s:
        repo = ExchangeRepository(s)
        pairs = list(repo.iter_training_pairs(batch_size=2))
        assert pairs == [("q0", "a0"), ("q1", "更好的回答"), ("q2", "a2")]
        assert len(list(repo.iter_training_pairs(statuses=None))) == 5
        row = repo.get(2)
        assert row.reviewed_by == 42 and row.reviewed_at is not None


def test_feedback_replaces_and_counts(factory):
    with factory.begin() as s:
        log(s)
        fb = FeedbackRepository(s)
        fb.set(1, 7, +1)
        fb.set(1, 7, -1)
        fb.set(1, 8, -1)
        assert fb.set(999, 8, 1) is None
        with pytest.raises(ValueError):
            fb.set(1, 8, 5)
    with factory() as s:
        assert FeedbackRepository(s).counts() == {"up": 0, "down": 2}


def test_latency_percentiles(factory):
    with factory.begin() as s:
        for i in range(100):
            log(s, message_id=i, latency=float(i + 1))
    with factory() as s:
        stats = ExchangeRepository(s).latency()
        assert (stats.count, stats.p50_ms, stats.p95_ms) == (100, 50.0, 95.0)
        assert ExchangeRepository(s).latency(ExchangeFilter(user_id=999)).p50_ms is None


def test_delete_user_data_removes_everything_about_the_user(tmp_path, engine, factory):
    with factory.begin() as s:
        log(s, user_id=1, chat_id=1, message_id=1)
        log(s, user_id=1, chat_id=-100, message_id=2)
        log(s, user_id=2, chat_id=-100, message_id=3)
        FeedbackRepository(s).set(3, 1, +1)  # user 1 rated someone else's exchange
        FeedbackRepository(s).set(1, 2, +1)  # someone rated user 1's exchange
        AuditRepository(s).record(1, "stats", allowed=False)
        ExchangeRepository(s).set_review_status(3, "approved", reviewer=1)
    with factory.begin() as s:
        removed = UserRepository(s).delete_user_data(1)
    assert removed == {"feedback": 2, "exchanges": 2, "admin_actions": 1, "chats": 1, "users": 1}
    with factory() as s:
        assert UserRepository(s).get(1) is None
        assert ExchangeRepository(s).count(ExchangeFilter(user_id=1)) == 0
        assert ExchangeRepository(s).get(3).reviewed_by is None
        assert FeedbackRepository(s).counts() == {"up": 0, "down": 0}
    if engine.dialect.name != "sqlite":
        return
    # Nothing about user 1 is left in the file.
    db = sqlite3.connect(engine.url.database)
    assert db.execute("SELECT COUNT(*) FROM exchanges WHERE user_id = 1").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)
    db.close()


def test_training_runs_and_promotions(factory):
    with factory.begin() as s:
        runs = TrainingRunRepository(s)
        run = runs.create(started_by=42, params={"steps": 100})
        assert [r.id for r in runs.active()] == [run.id]
        runs.set_status(run.id, "running")
        runs.finish(run.id, status="succeeded", metrics={"loss": 1.5}, checkpoint_path="r/x.pt")
        assert runs.active() == []
        promos = PromotionRepository(s)
        promos.add(
            checkpoint="r/x.pt",
            previous_checkpoint="old.pt",
            promoted_by=42,
            run_id=run.id,
            metrics={"loss": 1.5},
        )
        promos.add(checkpoint="old.pt", previous_checkpoint="r/x.pt", promoted_by=42, forced=True)
    with factory() as s:
        run = TrainingRunRepository(s).recent()[0]
        assert run.status == "succeeded" and json.loads(run.metrics) == {"loss": 1.5}
        assert run.finished_at is not None
        latest = PromotionRepository(s).latest()
        assert latest.forced and latest.run_id is None
        assert len(PromotionRepository(s).recent()) == 2


def test_postgres_url_is_mapped_to_an_installed_driver():
    from xianliao.storage.db import _normalise_url

    url = _normalise_url("postgresql://u:p@localhost/db")
    assert url.get_backend_name() == "postgresql"
    assert _normalise_url("sqlite:////tmp/x.db").drivername == "sqlite"


def test_exchange_model_has_review_columns():
    cols = set(Exchange.__table__.columns.keys())
    assert {"review_status", "edited_reply", "reviewed_by", "reviewed_at"} <= cols


def test_add_many_logs_a_batch_once(factory):
    def row(message_id, reply="r"):
        return {
            "user_id": 1,
            "chat_id": 1,
            "message_id": message_id,
            "user_text": f"q{message_id}",
            "reply_text": reply,
            "latency_ms": 1.0,
            "model_version": "v1",
        }

    with factory.begin() as s:
        log(s, message_id=1)
    with factory.begin() as s:
        out = ExchangeRepository(s).add_many([row(1), row(2), row(2, "again"), row(None)])
        assert [created for _, created in out] == [False, True, False, True]
        assert out[0][0].reply_text == "你好呀" and out[2][0] is out[1][0]
    with factory() as s:
        assert ExchangeRepository(s).count() == 3


def test_insert_new_is_one_flush_and_refuses_a_message_logged_before(factory):
    from sqlalchemy.exc import IntegrityError

    def row(message_id):
        return {
            "user_id": 1,
            "chat_id": 1,
            "message_id": message_id,
            "user_text": f"q{message_id}",
            "reply_text": "r",
            "latency_ms": 1.0,
            "model_version": "v1",
        }

    with factory.begin() as s:
        log(s, message_id=1)
    with factory.begin() as s:
        made = ExchangeRepository(s).insert_new([row(2), row(None)])
        assert all(e.id is not None for e in made)
    with pytest.raises(IntegrityError), factory.begin() as s:
        ExchangeRepository(s).insert_new([row(3), row(1)])
    with factory() as s:  # the failed batch left nothing behind
        assert sorted(e.message_id or 0 for e in ExchangeRepository(s).search()) == [0, 1, 2]
