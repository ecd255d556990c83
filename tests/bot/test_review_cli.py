"""``xianliao review`` against a real SQLite file: list/filters, review, edit, export, errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import xianliao.storage.db as storage_db
from xianliao.bot.review_cli import main
from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.models import AdminAction, Exchange
from xianliao.storage.repositories import (
    ChatRepository,
    ExchangeFilter,
    ExchangeRepository,
    FeedbackRepository,
    UserRepository,
)
from xianliao.training.corpus import Bad, read_tsv

# (user, day in January 2026, question, reply, feedback from user 9)
ROWS = [
    (1, 1, "你好", "你好呀", 1),
    (1, 2, "今天天气怎么样", "不知道", -1),
    (2, 3, "你叫什么\t名字", "我叫\n闲聊", None),
    (2, 5, "再见", "拜拜", None),
]


class DB:
    def __init__(self, path: Path | str) -> None:
        self.url = path if isinstance(path, str) else f"sqlite:///{path}"
        self.engine = make_engine(self.url)
        init_schema(self.engine)
        self.sessions = session_factory(self.engine)

    def exchange(self, exchange_id: int) -> Exchange:
        with self.sessions() as s:
            return ExchangeRepository(s).get(exchange_id)

    def statuses(self) -> dict[int, str]:
        with self.sessions() as s:
            return dict(s.query(Exchange.id, Exchange.review_status).order_by(Exchange.id).all())

    def audit(self) -> list[AdminAction]:
        with self.sessions() as s:
            return list(s.query(AdminAction).order_by(AdminAction.id))


@pytest.fixture
def db(tmp_path, monkeypatch, database_url) -> DB:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("DATABASE_URL", raising=False)
    db = DB(database_url)
    with db.sessions.begin() as s:
        for n, (user, day, q, a, fb) in enumerate(ROWS, start=1):
            UserRepository(s).touch(user, username=f"u{user}")
            ChatRepository(s).touch(user, type="private")
            ExchangeRepository(s).add(
                user_id=user,
                chat_id=user,
                message_id=n,
                user_text=q,
                reply_text=a,
                latency_ms=12.0,
                model_version="m-2026",
                decode_options={"beam_size": 3},
                created_at=datetime(2026, 1, day, 10, 0, tzinfo=UTC),
            )
            s.flush()
            if fb is not None:
                FeedbackRepository(s).set(n, 9, fb)
    yield db
    db.engine.dispose()


def run(capsys, db: DB, *args: str) -> tuple[int, str, str]:
    rc = main([*args, "--database-url", db.url])
    out, err = capsys.readouterr()
    return rc, out, err


def listed(capsys, db: DB, *filters: str) -> list[int]:
    rc, out, err = run(capsys, db, "list", "--json", *filters)
    assert rc == 0, err
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_list_each_filter(capsys, db):
    assert listed(capsys, db) == [4, 3, 2, 1]
    assert listed(capsys, db, "--oldest-first", "--limit", "2", "--offset", "1") == [2, 3]
    assert listed(capsys, db, "--user", "2") == [4, 3]
    assert listed(capsys, db, "--since", "2026-01-02", "--until", "2026-01-03") == [3, 2]
    assert listed(capsys, db, "--since", "2026-01-03T10:00") == [4, 3]
    assert listed(capsys, db, "--until", "2026-01-03T10:00") == [2, 1]
    assert listed(capsys, db, "--text", "天气") == [2]
    assert listed(capsys, db, "--text", "闲聊") == [3]  # the reply is searched too
    assert listed(capsys, db, "--feedback", "up") == [1]
    assert listed(capsys, db, "--feedback", "down") == [2]
    assert listed(capsys, db, "--feedback", "any") == [2, 1]
    assert listed(capsys, db, "--feedback", "none") == [4, 3]
    assert listed(capsys, db, "--status", "approved") == []
    assert listed(capsys, db, "--status", "pending", "--user", "1") == [2, 1]


def test_list_json_has_every_field(capsys, db):
    rc, out, _ = run(capsys, db, "list", "--json", "--user", "2", "--oldest-first")
    first = json.loads(out.splitlines()[0])
    assert first["user_text"] == "你叫什么\t名字" and first["reply_text"] == "我叫\n闲聊"
    assert first["username"] == "u2" and first["review_status"] == "pending"
    assert first["decode_options"] == {"beam_size": 3} and first["model_version"] == "m-2026"
    assert first["created_at"] == "2026-01-03T10:00:00+00:00"
    assert (first["feedback_up"], first["feedback_down"]) == (0, 0)


def test_list_table_shortens_and_pages(capsys, db):
    with db.sessions.begin() as s:
        ExchangeRepository(s).add(
            user_id=1,
            chat_id=1,
            message_id=99,
            user_text="很长" * 40,
            reply_text="回答" * 40,
            latency_ms=1.0,
            model_version="m-2026",
        )
    rc, out, _ = run(capsys, db, "list", "--limit", "2")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:4] == ["ID", "TIME", "(UTC)", "USER"]
    assert lines[1].startswith("5 ") and "很长很长很…" in lines[1] and "很长" * 40 not in out
    assert lines[2].startswith("4 ") and "2026-01-05 10:00" in lines[2]
    assert lines[-1] == "1-2 of 5; next page: --offset 2"
    rc, out, _ = run(capsys, db, "list", "--feedback", "up")
    assert "+1" in out.splitlines()[1] and out.splitlines()[-1] == "1-1 of 1"
    rc, out, _ = run(capsys, db, "list", "--text", "没有这个")
    assert rc == 0 and out.strip() == "no exchanges match"


def test_approve_reject_pending_by_id(capsys, db):
    rc, out, _ = run(capsys, db, "approve", "1", "3", "--reviewer", "42")
    assert rc == 0 and "2 exchanges approved" in out
    assert db.statuses() == {1: "approved", 2: "pending", 3: "approved", 4: "pending"}
    assert db.exchange(1).reviewed_by == 42 and db.exchange(1).reviewed_at is not None
    assert run(capsys, db, "reject", "3")[0] == 0
    assert db.exchange(3).review_status == "rejected" and db.exchange(3).reviewed_by == 0
    assert run(capsys, db, "pending", "#1")[0] == 0
    assert db.statuses() == {1: "pending", 2: "pending", 3: "rejected", 4: "pending"}


def test_unknown_id_changes_nothing(capsys, db):
    rc, out, err = run(capsys, db, "approve", "1", "99", "98")
    assert rc == 1 and out == ""
    assert err == "xianliao review: no exchange with ids 99, 98; nothing changed\n"
    assert set(db.statuses().values()) == {"pending"} and db.audit() == []
    rc, _, err = run(capsys, db, "edit", "77", "答案")
    assert rc == 1 and "no exchange with id 77" in err and db.audit() == []
    assert run(capsys, db, "show", "77")[0] == 1


def test_bulk_needs_a_filter_or_yes(capsys, db):
    rc, _, err = run(capsys, db, "approve", "--all-matching")
    assert rc == 2 and "--yes" in err and len(err.splitlines()) == 1
    assert set(db.statuses().values()) == {"pending"}
    rc, _, err = run(capsys, db, "approve", "--user", "1")  # filters without --all-matching
    assert rc == 2 and "--all-matching" in err
    rc, out, _ = run(capsys, db, "reject", "--all-matching", "--feedback", "down", "--dry-run")
    assert rc == 0 and "would mark 1 exchange rejected: #2" in out
    assert set(db.statuses().values()) == {"pending"} and db.audit() == []


def test_bulk_approve_and_reject(capsys, db):
    assert run(capsys, db, "approve", "1", "--reviewer", "7")[0] == 0
    rc, out, _ = run(capsys, db, "approve", "--all-matching", "--user", "1", "--reviewer", "8")
    assert rc == 0 and "marked 1 exchange approved: #2" in out
    assert db.exchange(1).reviewed_by == 7  # already approved: left alone
    rc, out, _ = run(capsys, db, "reject", "--all-matching", "--since", "2026-01-03")
    assert rc == 0 and "2 exchanges rejected" in out
    assert db.statuses() == {1: "approved", 2: "approved", 3: "rejected", 4: "rejected"}
    rc, out, _ = run(capsys, db, "pending", "--all-matching", "--yes")
    assert rc == 0 and set(db.statuses().values()) == {"pending"}
    rc, out, _ = run(capsys, db, "pending", "--all-matching", "--yes")
    assert rc == 0 and "nothing changed" in out


def test_edit_stores_the_answer_training_uses(capsys, db):
    rc, out, _ = run(capsys, db, "edit", "2", "  今天晴天,适合出去走走  ")
    assert rc == 0 and "approved" in out
    ex = db.exchange(2)
    assert ex.edited_reply == "今天晴天,适合出去走走" and ex.review_status == "approved"
    assert ex.reply_text == "不知道"  # the logged reply is kept
    with db.sessions() as s:
        pairs = list(ExchangeRepository(s).iter_training_pairs(ExchangeFilter()))
    assert pairs == [("今天天气怎么样", "今天晴天,适合出去走走")]

    assert run(capsys, db, "edit", "4", "再会", "--keep-status")[0] == 0
    assert db.exchange(4).edited_reply == "再会" and db.exchange(4).review_status == "pending"
    assert run(capsys, db, "edit", "4", "--clear")[0] == 0
    assert db.exchange(4).edited_reply is None
    rc, _, err = run(capsys, db, "edit", "4", "   ")
    assert rc == 2 and "empty" in err


def test_audit_rows_for_every_change(capsys, db):
    run(capsys, db, "approve", "1", "2", "--reviewer", "42")
    run(capsys, db, "reject", "--all-matching", "--text", "再见")
    run(capsys, db, "edit", "3", "我叫闲聊")
    run(capsys, db, "list")  # reads are not audited
    rows = db.audit()
    assert [(r.user_id, r.action, r.allowed) for r in rows] == [
        (42, "review_approved", True),
        (0, "review_rejected", True),
        (0, "review_edit", True),
    ]
    details = [json.loads(r.detail) for r in rows]
    assert details[0] == {"via": "cli", "ids": [1, 2], "count": 2}
    assert details[1]["filter"] == {"text": "再见"} and details[1]["ids"] == [4]
    assert details[2]["id"] == 3 and details[2]["edited_reply"] == "我叫闲聊"


def test_export_tsv_is_the_corpus_format(capsys, db, tmp_path):
    run(capsys, db, "approve", "1", "3")
    run(capsys, db, "edit", "2", "晴天")  # approves too
    out_file = tmp_path / "out" / "approved.tsv"
    out_file.parent.mkdir()
    rc, out, err = run(capsys, db, "export", "--format", "tsv", "--out", str(out_file))
    assert rc == 0 and out == "" and "exported 3 pairs" in err
    items = list(read_tsv(out_file))
    assert not [i for i in items if isinstance(i, Bad)]
    assert items == [("你好", "你好呀"), ("今天天气怎么样", "晴天"), ("你叫什么 名字", "我叫 闲聊")]
    assert len(out_file.read_text(encoding="utf-8").splitlines()) == 3
    assert list(out_file.parent.iterdir()) == [out_file]  # no temporary file left

    # to stdout; other statuses on request; filters apply
    rc, out, _ = run(capsys, db, "export", "--format", "tsv", "--status", "all", "--user", "2")
    assert out == "你叫什么 名字\t我叫 闲聊\n再见\t拜拜\n"
    rc, out, _ = run(capsys, db, "export", "--format", "tsv", "--status", "pending")
    assert out == "再见\t拜拜\n"


def test_export_jsonl_all_statuses_by_default(capsys, db, tmp_path):
    run(capsys, db, "edit", "2", "晴天")
    run(capsys, db, "reject", "4")
    rc, out, err = run(capsys, db, "export", "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and "exported 4 exchanges" in err
    assert [r["id"] for r in records] == [1, 2, 3, 4]
    assert [r["review_status"] for r in records] == ["pending", "approved", "pending", "rejected"]
    assert records[1]["edited_reply"] == "晴天" and records[1]["answer"] == "晴天"
    assert records[1]["reply_text"] == "不知道" and records[1]["feedback_down"] == 1
    assert records[2]["user_text"] == "你叫什么\t名字"  # JSON keeps the text as it is
    assert set(records[0]) >= {
        "id", "created_at", "user_id", "chat_id", "message_id", "source", "user_text",
        "reply_text", "edited_reply", "review_status", "reviewed_by", "reviewed_at",
        "model_version", "latency_ms", "decode_options", "feedback_up", "feedback_down",
    }  # fmt: skip
    rc, out, _ = run(capsys, db, "export", "--format", "jsonl", "--status", "rejected")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [4]


@pytest.mark.parametrize(
    "args, says",
    [
        (["list", "--since", "2026-02-30"], "is not a date"),
        (["list", "--until", "yesterday"], "is not a date"),
        (["list", "--since", "2026-01-05", "--until", "2026-01-01"], "before --until"),
        (["list", "--status", "done"], "invalid choice: 'done'"),
        (["list", "--feedback", "meh"], "invalid choice: 'meh'"),
        (["list", "--limit", "0"], "not a number >= 1"),
        (["approve", "abc"], "not an exchange id"),
        (["approve"], "give exchange ids"),
        (["export"], "--format"),
    ],
)
def test_bad_input_is_one_line(capsys, db, args, says):
    rc, out, err = run(capsys, db, *args)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err


def test_database_problems_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    def check(url: str, says: str, *args: str) -> None:
        rc = main([*(args or ("list",)), "--database-url", url])
        out, err = capsys.readouterr()
        assert rc == 1 and len(err.splitlines()) == 1, err
        assert says in err and "Traceback" not in err

    check(f"sqlite:///{tmp_path}/missing.db", "no database at")
    assert not (tmp_path / "missing.db").exists()  # not created by looking
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    check(f"sqlite:///{tmp_path}/junk.db", "database error: file is not a database")

    db = DB(tmp_path / "locked.db")
    db.engine.dispose()
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        check(db.url, "database is busy", "approve", "1")
    finally:
        holder.rollback()
        holder.close()


def test_database_url_from_env_file(capsys, db, tmp_path):
    env = tmp_path / "review.env"
    env.write_text(f"DATABASE_URL={db.url}\n")
    assert main(["list", "--json", "--env-file", str(env)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    # without it, the default data/xianliao.db does not exist (and is not created)
    assert main(["list"]) == 1
    assert "no database at data/xianliao.db" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_show_prints_full_text(capsys, db):
    run(capsys, db, "edit", "3", "我是闲聊")
    rc, out, _ = run(capsys, db, "show", "3", "1")
    assert rc == 0 and out.index("#3") < out.index("#1")
    assert "名字" in out and "edited:   我是闲聊" in out and "feedback: +1 -0" in out


def test_review_cli_does_not_import_telegram():
    code = (
        "import sys, bot.review_cli; "
        "bad = [m for m in sys.modules if m == 'telegram' or m.startswith('telegram.')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
