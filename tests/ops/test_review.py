"""ops.review against a real SQLite file: every operation, its audit row and on_change."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from xianliao.ops.review import (
    ExchangeFilter,
    Review,
    ReviewError,
    UnknownExchanges,
)
from xianliao.storage.database import Database, MissingDatabase
from xianliao.storage.models import AdminAction, Exchange
from xianliao.storage.repositories import (
    ChatRepository,
    ExchangeRepository,
    FeedbackRepository,
    UserRepository,
)

ROWS = [  # (user, day in January 2026, question, reply, feedback)
    (1, 1, "你好", "你好呀", 1),
    (1, 2, "今天天气怎么样", "不知道", -1),
    (2, 3, "你叫什么\t名字", "我叫\n闲聊", None),
    (2, 5, "再见", "拜拜", None),
]


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path}/ops.db")
    with database.begin() as s:
        for n, (user, day, q, a, fb) in enumerate(ROWS, start=1):
            UserRepository(s).touch(user, username=f"u{user}")
            ChatRepository(s).touch(user, type="private")
            ExchangeRepository(s).add(
                user_id=user,
                chat_id=user,
                message_id=n,
                user_text=q,
                reply_text=a,
                latency_ms=10.0 * n,
                model_version="m1",
                created_at=datetime(2026, 1, day, 10, tzinfo=UTC),
            )
            s.flush()
            if fb is not None:
                FeedbackRepository(s).set(n, 9, fb)
    yield database
    database.dispose()


def statuses(db: Database) -> dict[int, str]:
    with db.read() as s:
        return dict(s.query(Exchange.id, Exchange.review_status).order_by(Exchange.id).all())


def audit(db: Database) -> list[tuple[int, str, dict]]:
    with db.read() as s:
        rows = s.query(AdminAction).order_by(AdminAction.id)
        return [(r.user_id, r.action, json.loads(r.detail)) for r in rows]


def test_search_count_get(db):
    review = Review(db)
    assert [r["id"] for r in review.search()] == [4, 3, 2, 1]
    assert [r["id"] for r in review.search(limit=2, offset=1, newest_first=False)] == [2, 3]
    assert [r["id"] for r in review.search(ExchangeFilter(text="闲聊"))] == [3]
    assert review.count(ExchangeFilter(user_id=1)) == 2
    one = review.get(2)
    assert one["user_text"] == "今天天气怎么样" and one["username"] == "u1"
    assert (one["feedback_up"], one["feedback_down"]) == (0, 1) and one["answer"] == "不知道"
    assert one["created_at"] == "2026-01-02T10:00:00+00:00"
    assert review.get(99) is None and review.get(2**70) is None
    assert [r["id"] for r in review.get_many([3, 1, 3])] == [3, 1]
    with pytest.raises(UnknownExchanges, match="ids 98, 99"):
        review.get_many([1, 98, 99])
    assert [r["id"] for r in review.pending(2)] == [4, 3]


def test_status_by_ids_is_audited_and_all_or_nothing(db):
    calls = []
    review = Review(db, on_change=lambda: calls.append(1), via="web")
    with pytest.raises(UnknownExchanges):
        review.approve(reviewer=5, ids=[1, 77])
    assert set(statuses(db).values()) == {"pending"} and audit(db) == [] and calls == []
    change = review.approve(reviewer=5, ids=[1, 3, 1])
    assert change.changed == 2 and change.ids == [1, 3] and calls == [1]
    assert statuses(db) == {1: "approved", 2: "pending", 3: "approved", 4: "pending"}
    assert review.reject(reviewer=6, ids=[3]).changed == 1
    assert review.to_pending(reviewer=6, ids=[1]).changed == 1
    assert statuses(db) == {1: "pending", 2: "pending", 3: "rejected", 4: "pending"}
    assert audit(db)[0] == (5, "review_approved", {"via": "web", "ids": [1, 3], "count": 2})
    assert [a[1] for a in audit(db)] == ["review_approved", "review_rejected", "review_pending"]


def test_status_by_filter_skips_those_already_there(db):
    review = Review(db)
    review.approve(reviewer=7, ids=[1])
    dry = review.approve(reviewer=8, matching=ExchangeFilter(user_id=1), dry_run=True)
    assert dry.ids == [2] and dry.changed == 0 and statuses(db)[2] == "pending"
    change = review.approve(reviewer=8, matching=ExchangeFilter(user_id=1))
    assert change.ids == [2] and change.changed == 1
    with db.read() as s:
        assert s.get(Exchange, 1).reviewed_by == 7  # left alone
    assert audit(db)[-1][2]["filter"] == {"user_id": 1}
    nothing = review.approve(reviewer=8, matching=ExchangeFilter(user_id=1))
    assert nothing.changed == 0 and nothing.ids == [] and len(audit(db)) == 2
    with pytest.raises(ReviewError):
        review.set_status("approved", reviewer=1)  # neither ids nor a filter
    with pytest.raises(ReviewError):
        review.set_status("done", reviewer=1, ids=[1])


def test_edit_approves_and_can_be_removed(db):
    calls = []
    review = Review(db, on_change=lambda: calls.append(1))
    result = review.edit(2, "  晴天  ", reviewer=3)
    assert result.answer == "晴天" and result.approved and result.previous is None
    got = review.get(2)
    assert got["edited_reply"] == "晴天" and got["answer"] == "晴天"
    assert got["review_status"] == "approved" and got["reviewed_by"] == 3
    assert review.edit(4, "再会", reviewer=3, approve=False).approved is False
    assert review.get(4)["review_status"] == "pending"
    removed = review.edit(4, None, reviewer=3)
    assert removed.previous == "再会" and review.get(4)["edited_reply"] is None
    with pytest.raises(ReviewError, match="empty"):
        review.edit(4, "  ", reviewer=3)
    with pytest.raises(UnknownExchanges):
        review.edit(99, "x", reviewer=3)
    assert calls == [1, 1, 1]
    assert [a[1] for a in audit(db)] == ["review_edit"] * 3
    assert audit(db)[0][2]["edited_reply"] == "晴天"


def test_export_streams_tsv_and_jsonl(db):
    review = Review(db)
    review.approve(reviewer=1, ids=[1, 3])
    review.edit(2, "晴天", reviewer=1)
    export = review.export("tsv")
    lines = list(export)
    assert lines == ["你好\t你好呀\n", "今天天气怎么样\t晴天\n", "你叫什么 名字\t我叫 闲聊\n"]
    assert export.written == 3 and export.skipped == 0
    pending = list(review.export("tsv", ExchangeFilter(review_status="pending")))
    assert pending == ["再见\t拜拜\n"]
    export = review.export("jsonl")
    records = [json.loads(line) for line in export]
    assert [r["id"] for r in records] == [1, 2, 3, 4] and export.written == 4
    assert records[2]["user_text"] == "你叫什么\t名字"
    with pytest.raises(ReviewError):
        review.export("csv")


def test_stats(db):
    s = Review(db).stats(now=datetime(2026, 1, 5, 12, tzinfo=UTC))
    assert (s.users, s.messages_total, s.messages_today) == (2, 4, 1)
    assert (s.feedback_up, s.feedback_down, s.pending_review) == (1, 1, 4)
    assert s.latency_window_count == 1 and s.p50_ms == 40.0


def test_missing_database_is_not_created(tmp_path):
    with pytest.raises(MissingDatabase):
        Database.open(f"sqlite:///{tmp_path}/none.db", create=False)
    assert not (tmp_path / "none.db").exists()
