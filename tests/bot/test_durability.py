"""Lose nothing (DESIGN.md): a killed bot answers, after its restart, every message it had
received, exactly once; a reply that cannot be sent waits stored and is sent later.

The crash tests run the real bot (PTB Application, polling the fake Bot API over HTTP, a real
SQLite file) in a subprocess and kill it with SIGKILL: no clean-up code runs, as after a power
cut or the OOM killer. This file is also that subprocess's program (``python FILE URL DB``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bot_helpers import ADMIN_ID, TOKEN, EchoModel, db_rows, db_url

pytest_plugins = ["bot_fixtures"]

USER = 1001


# ----- the bot subprocess -----------------------------------------------------------------------


def _serve(base_url: str, db_path: str, delay: float) -> None:
    """Run the bot until killed: an echo model that takes ``delay`` s per batch of 4."""
    from xianliao.bot.app import build_application
    from xianliao.bot.config import Settings
    from xianliao.bot.runtime import open_sessions
    from xianliao.bot.service import DialogueService

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    settings = Settings(
        _env_file=None,
        telegram_bot_token=TOKEN,
        telegram_base_url=base_url,
        database_url=db_url(db_path if "://" in db_path else Path(db_path)),
        admin_user_ids=frozenset({ADMIN_ID}),
        model_path=Path("unused.pt"),
        rate_limit_messages=0,
        typing_delay_s=10,
        model_watch_s=0,
        send_max_rate=0,
    )
    service = DialogueService(
        EchoModel(delay=delay), sessions=open_sessions(settings.database_url), max_batch=4
    )
    build_application(settings, service).run_polling(poll_interval=0, timeout=1)


def start_subprocess_bot(fake_api, db_path: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, __file__, fake_api.base_url, str(db_path), str(delay)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        kill(process)


def replies_by_text(fake_api, chats) -> Counter:
    return Counter((m["chat"]["id"], m["text"]) for c in chats for m in fake_api.sent_to(c))


# ----- crash tests --------------------------------------------------------------------------------


def test_a_bot_killed_mid_batch_answers_every_message_exactly_once(fake_api, db_path):
    users = list(range(2001, 2011))
    texts = {u: [f"{u}的第{i}句" for i in range(3)] for u in users}
    for i in range(3):
        for u in users:
            fake_api.private_text(u, texts[u][i])
    bot = start_subprocess_bot(fake_api, db_path, delay=0.6)
    try:
        fake_api.wait_for(lambda: len(fake_api.sent) >= 8, timeout=60, what="8 replies")
        time.sleep(0.25)  # the sends of that batch are done; the next batch is in the model
        kill(bot)
        before = len(fake_api.sent)
        assert before < 30  # killed with messages still to answer
        bot = start_subprocess_bot(fake_api, db_path, delay=0.05)
        fake_api.wait_for(lambda: len(fake_api.sent) >= 30, timeout=60, what="30 replies")
        time.sleep(1.5)  # time for any duplicate to show
    finally:
        stop(bot)
    sent = replies_by_text(fake_api, users)
    assert sent == Counter({(u, f"你说：{t}"): 1 for u in users for t in texts[u]})
    for u in users:  # each chat's replies in the order of its messages
        assert [m["text"] for m in fake_api.sent_to(u)] == [f"你说：{t}" for t in texts[u]]
    assert db_rows(db_path, "SELECT COUNT(*) FROM exchanges") == [(30,)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM inbox WHERE done_at IS NULL") == [(0,)]


def test_a_bot_killed_just_after_getupdates_loses_none_of_the_batch(fake_api, db_path):
    users = list(range(3001, 3051))
    for u in users:
        fake_api.private_text(u, "在吗")
    bot = start_subprocess_bot(fake_api, db_path, delay=0.5)
    try:
        # Handed out, and confirmed by the next getUpdates: Telegram would not send them again.
        fake_api.wait_for(lambda: fake_api.pending_updates() == 0, timeout=60, what="confirmed")
        kill(bot)
        assert len(fake_api.sent) < 50
        bot = start_subprocess_bot(fake_api, db_path, delay=0.01)
        fake_api.wait_for(lambda: len(fake_api.sent) >= 50, timeout=60, what="50 replies")
        time.sleep(1.5)
    finally:
        stop(bot)
    assert replies_by_text(fake_api, users) == Counter({(u, "你说：在吗"): 1 for u in users})
    assert db_rows(db_path, "SELECT COUNT(*) FROM exchanges") == [(50,)]


# ----- in-process tests ---------------------------------------------------------------------------


def test_a_reply_whose_send_fails_past_send_retry_s_is_sent_later(fake_api, start_bot, db_path):
    bot = start_bot(send_retry_s=0.3, pending_retry_s=1.0)
    fake_api.fail("sendMessage", "500", times=4)  # two give-ups of ~0.2 s each
    fake_api.private_text(USER, "别丢下我")
    [msg] = fake_api.wait_sent(USER, 1, timeout=20)
    assert msg["text"] == "你说：别丢下我"
    assert len(fake_api.calls_of("sendMessage:500")) == 4
    time.sleep(1.5)
    assert len(fake_api.sent_to(USER)) == 1  # neither an apology nor a second copy
    assert db_rows(db_path, "SELECT COUNT(*) FROM exchanges") == [(1,)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM inbox WHERE done_at IS NULL") == [(0,)]
    assert bot.service.log_failures == 0


def test_an_update_delivered_again_after_a_crash_is_not_answered_twice(fake_api, start_bot):
    first = start_bot()
    update = fake_api.private_text(USER, "一次就好")
    fake_api.wait_sent(USER, 1)
    first.stop()
    time.sleep(1.5)  # the stopped bot's last long poll (1 s) ends; it would confirm the copy
    # A bot killed before its next getUpdates never confirmed the update: Telegram sends the
    # same update (same id) to the next start.
    fake_api.push_update(dict(update))
    start_bot()
    fake_api.wait_for(lambda: fake_api.pending_updates() == 0, what="the update confirmed")
    fake_api.private_text(USER, "第二句")
    fake_api.wait_sent(USER, 2)
    time.sleep(0.5)
    assert [m["text"] for m in fake_api.sent_to(USER)] == ["你说：一次就好", "你说：第二句"]


def _stored_update(update_id: int, chat_id: int, message_id: int, text: str) -> str:
    message = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": "x"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "x"},
        "text": text,
    }
    return json.dumps({"update_id": update_id, "message": message}, ensure_ascii=False)


def test_a_restart_sends_the_stored_reply_and_gives_up_old_messages(
    fake_api, start_bot, db_path, caplog
):
    from xianliao.bot.runtime import open_sessions
    from xianliao.storage.models import Chat, Exchange, InboxUpdate, User

    for chat in (7, 8):
        fake_api.known_chats[chat] = {"id": chat, "type": "private", "first_name": "x"}
    sessions = open_sessions(db_url(db_path))
    now = datetime.now(UTC)
    with sessions.begin() as s:  # what a bot killed between storing and sending leaves
        s.add_all([User(id=7), Chat(id=7, type="private"), User(id=8), Chat(id=8, type="private")])
        s.flush()
        s.add(
            Exchange(
                user_id=7,
                chat_id=7,
                message_id=70,
                user_text="还记得吗",
                reply_text="记得，这是存下的回答",
                latency_ms=5.0,
                model_version="old",
            )
        )
        s.add(
            InboxUpdate(
                update_id=900,
                chat_id=7,
                user_id=7,
                received_at=now,
                payload=_stored_update(900, 7, 70, "还记得吗"),
            )
        )
        s.add(
            InboxUpdate(
                update_id=901,
                chat_id=8,
                user_id=8,
                received_at=now - timedelta(hours=3),
                payload=_stored_update(901, 8, 80, "太久了"),
            )
        )
    sessions.kw["bind"].dispose()
    with caplog.at_level(logging.INFO):
        start_bot(pending_max_age_s=3600)
        [msg] = fake_api.wait_sent(7, 1)
    assert msg["text"] == "记得，这是存下的回答"  # the stored reply, not a new answer
    time.sleep(0.5)
    assert fake_api.sent_to(8) == []
    assert any("gave up 1 stored message" in r.getMessage() for r in caplog.records)
    assert db_rows(db_path, "SELECT COUNT(*) FROM exchanges") == [(1,)]
    assert db_rows(db_path, "SELECT update_id FROM inbox WHERE done_at IS NULL") == []
    assert db_rows(db_path, "SELECT payload FROM inbox") == [("",), ("",)]  # text not kept


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a read-only file
def test_a_database_that_cannot_be_written_still_gets_every_message_answered(
    fake_api, start_bot, db_path, caplog
):
    from xianliao.bot.runtime import open_database

    open_database(f"sqlite:///{db_path}").dispose()  # the schema, then read-only from now on
    with caplog.at_level(logging.ERROR):
        start_bot(database_url=f"sqlite:///file:{db_path}?mode=ro&uri=true")
        for i in range(3):
            fake_api.private_text(USER, f"只读{i}")
        texts = [m["text"] for m in fake_api.wait_sent(USER, 3)]
    assert texts == [f"你说：只读{i}" for i in range(3)]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inbox:")]
    assert len(said) == 1 and "readonly database" in said[0]  # once per outage, not per message
    assert db_rows(db_path, "SELECT COUNT(*) FROM inbox") == [(0,)]


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], float(sys.argv[3]))


def test_stored_messages_answered_after_a_restart_are_not_rate_limited_again(
    fake_api, start_bot, db_path
):
    """A restart hands a user's unanswered messages out in a burst: they were counted when they
    arrived, so a second count must not drop them as over the limit."""
    from xianliao.bot.runtime import open_sessions
    from xianliao.storage.models import Chat, InboxUpdate, User

    fake_api.known_chats[7] = {"id": 7, "type": "private", "first_name": "x"}
    sessions = open_sessions(db_url(db_path))
    with sessions.begin() as s:
        s.add_all([User(id=7), Chat(id=7, type="private")])
        s.flush()
        s.add_all(
            InboxUpdate(
                update_id=910 + i,
                chat_id=7,
                user_id=7,
                received_at=datetime.now(UTC),
                payload=_stored_update(910 + i, 7, 90 + i, f"第{i}句"),
            )
            for i in range(4)
        )
    sessions.kw["bind"].dispose()
    start_bot(rate_limit_messages=1, rate_limit_window_s=60)
    sent = fake_api.wait_sent(7, 4)
    assert sorted(m["text"] for m in sent) == sorted(f"你说：第{i}句" for i in range(4))
    deadline = time.monotonic() + 5  # the last one is marked done just after its send
    while db_rows(db_path, "SELECT COUNT(*) FROM inbox WHERE done_at IS NULL") != [(0,)]:
        assert time.monotonic() < deadline, "a replayed message was never marked done"
        time.sleep(0.05)
