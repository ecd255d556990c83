"""What replicas share in the database, on SQLite and PostgreSQL: an update is claimed by one
replica only, held while it is renewed and taken over once its hold runs out; the per-user rate
limit counts every replica's messages, also when they come at the same moment."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from xianliao.storage.database import Database
from xianliao.storage.repositories import InboxRepository, RateLimitRepository


@pytest.fixture
def db(database_url):
    database = Database.open(database_url)
    yield database
    database.dispose()


def _row(update_id: int) -> dict:
    return {"update_id": update_id, "chat_id": 1, "user_id": 1, "payload": "{}"}


def test_an_update_is_claimed_once_and_taken_over_when_its_hold_runs_out(db):
    now = datetime.now(UTC)
    with db.begin() as s:
        assert InboxRepository(s).claim(_row(1), now + timedelta(seconds=30)) is True
        assert InboxRepository(s).claim(_row(2), now + timedelta(seconds=30)) is True
    with db.begin() as s:
        assert InboxRepository(s).claim(_row(1), now + timedelta(seconds=30)) is False
        # Held: nobody takes them, except their holder after its reply failed ("mine").
        assert InboxRepository(s).take(now, now + timedelta(seconds=30)) == []
        assert [r.update_id for r in InboxRepository(s).take(now, now, mine=[2])] == [2]
    later = now + timedelta(seconds=31)
    with db.begin() as s:
        assert InboxRepository(s).renew([1], later + timedelta(seconds=30)) == 1
    with db.begin() as s:  # 1 was renewed; 2's hold ran out
        taken = InboxRepository(s).take(later, later + timedelta(seconds=30))
        assert [r.update_id for r in taken] == [2]
    with db.begin() as s:  # taken by one replica: not by the next
        assert InboxRepository(s).take(later, later + timedelta(seconds=30)) == []
        InboxRepository(s).mark_done([1, 2])
    much_later = later + timedelta(hours=1)
    with db.begin() as s:  # done: never taken again
        assert InboxRepository(s).take(much_later, much_later) == []


def test_concurrent_claims_of_one_update_have_one_winner(db):
    until = datetime.now(UTC) + timedelta(seconds=30)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        with db.begin() as s:
            results.append(InboxRepository(s).claim(_row(7), until))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


def test_the_rate_limit_is_a_sliding_window_and_forget_resets_it(db):
    def hit(at: float, user_id: int = 1) -> str:
        with db.begin() as s:
            return RateLimitRepository(s).hit(user_id, at, 2, 60.0)

    assert [hit(0), hit(1), hit(2), hit(3)] == ["allow", "allow", "notify", "drop"]
    assert hit(3, user_id=2) == "allow"  # per user
    assert hit(60.5) == "allow"  # the hit at 0 left the window
    assert hit(61.5) == "allow"  # and the one at 1
    assert hit(62) == "notify"  # told again after a message got through
    with db.begin() as s:
        assert RateLimitRepository(s).forget(1) == 1
    assert hit(62.5) == "allow"


def test_concurrent_hits_of_one_user_let_exactly_the_limit_through(db):
    decisions: list[str] = []
    barrier = threading.Barrier(6)

    def hit() -> None:
        barrier.wait()
        for _ in range(3):
            with db.begin() as s:
                decisions.append(RateLimitRepository(s).hit(9, 100.0, 5, 60.0))

    threads = [threading.Thread(target=hit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert decisions.count("allow") == 5
    assert decisions.count("notify") == 1
    assert decisions.count("drop") == 12


def test_a_webhook_update_delivered_again_while_answered_here_is_dropped(db):
    """Telegram retries a webhook it thinks failed: the copy that reaches the replica still
    answering the first must not be answered a second time; an update this replica takes
    over passes through once."""
    import asyncio

    from telegram import Chat, Message, Update, User

    from xianliao.bot.inbox import Inbox

    def update(update_id: int) -> Update:
        chat = Chat(id=5, type="private")
        user = User(id=5, first_name="x", is_bot=False)
        message = Message(update_id, datetime.now(UTC), chat, from_user=user, text="你好")
        return Update(update_id, message=message)

    async def run() -> list[bool]:
        inbox = Inbox(db.sessions, wanted=lambda u: True, max_age_s=3600, retry_s=60)
        first = await inbox.claim(update(77))
        again = await inbox.claim(update(77))  # the same update, while still being answered
        inbox._active.add(78)  # as take_over() leaves one it hands to the queue
        inbox._requeued.add(78)
        taken = await inbox.claim(update(78))
        return [first, again, taken, await inbox.claim(update(78))]

    assert asyncio.run(run()) == [True, False, True, False]
