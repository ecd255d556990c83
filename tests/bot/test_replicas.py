"""Replicas: two bot processes in webhook mode on one PostgreSQL database, behind a proxy.

The fake Bot API plays Telegram and the reverse proxy: it POSTs each update to the two
replicas' webhook servers in turn (PTB's own webhook server, in two real subprocesses), skips a
replica that does not answer, and POSTs some updates to both (a retry after a lost answer).
Every message must be answered once and logged once, the per-user rate limit and /forget must
hold whichever replica a message reaches, and a killed replica's messages must be answered by
the other. This file is also the replica's program (``python FILE URL DB PORT DELAY LIMIT``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from bot_helpers import ADMIN_ID, TOKEN, EchoModel, db_rows, free_port

pytest_plugins = ["bot_fixtures"]

SECRET = "replica-s3cret"
RATE_WINDOW_S = 600.0


def _serve(base_url: str, database_url: str, port: int, delay: float, rate_limit: int) -> None:
    """One replica until killed: webhook mode, an echo model taking ``delay`` s per batch."""
    from xianliao.bot.app import build_application
    from xianliao.bot.config import Settings
    from xianliao.bot.runtime import open_sessions
    from xianliao.bot.service import DialogueService

    logging.basicConfig(level=logging.INFO, format=f"replica {port} %(name)s %(message)s")
    settings = Settings(
        _env_file=None,
        telegram_bot_token=TOKEN,
        telegram_base_url=base_url,
        database_url=database_url,
        admin_user_ids=frozenset({ADMIN_ID}),
        model_path=Path("unused.pt"),
        typing_delay_s=10,
        model_watch_s=0,
        send_max_rate=0,
        pending_retry_s=1.0,  # a killed replica's messages are taken over after 3 s
    )
    service = DialogueService(
        EchoModel(delay=delay),
        sessions=open_sessions(database_url),
        max_batch=4,
        rate_limit=rate_limit,
        rate_window_s=RATE_WINDOW_S,
    )
    build_application(settings, service).run_webhook(
        listen="127.0.0.1",
        port=port,
        url_path="hook",
        webhook_url=f"http://127.0.0.1:{port}/hook",
        secret_token=SECRET,
    )


class Replicas:
    """Two replica subprocesses; the fake Bot API balances webhook updates over them."""

    def __init__(self, fake_api, database_url: str, tmp_path: Path) -> None:
        self.fake_api = fake_api
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def start(self, *, delay: float = 0.05, rate_limit: int = 0, n: int = 2) -> Replicas:
        for i in range(n):
            port = free_port()
            log = open(self.tmp_path / f"replica{i}.log", "w")  # noqa: SIM115 - the child's
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, self.fake_api.base_url, self.database_url]
                    + [str(port), str(delay), str(rate_limit)],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            self.urls.append(f"http://127.0.0.1:{port}/hook")
        self.fake_api.wait_for(
            lambda: len(self.fake_api.calls_of("setWebhook")) >= n, timeout=60, what="replicas"
        )
        self.fake_api.webhook_targets = list(self.urls)
        return self

    def kill(self, i: int) -> None:
        self.processes[i].send_signal(signal.SIGKILL)
        self.processes[i].wait(timeout=10)

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp_path.glob("replica*.log")))


@pytest.fixture
def replicas(fake_api, postgres_url, tmp_path):
    running = Replicas(fake_api, postgres_url, tmp_path)
    yield running
    running.stop()


def replies(fake_api, chats) -> Counter:
    return Counter((m["chat"]["id"], m["text"]) for c in chats for m in fake_api.sent_to(c))


def test_two_replicas_answer_100_users_once_each(fake_api, replicas, postgres_url):
    replicas.start()
    fake_api.webhook_twice = 7  # every 7th update reaches both replicas
    users = list(range(5001, 5101))
    for i in range(2):
        for u in users:
            fake_api.private_text(u, f"{u}说{i}")
    fake_api.wait_for(lambda: len(fake_api.sent) >= 200, timeout=120, what="200 replies")
    time.sleep(2.0)  # time for a duplicate to show
    expected = Counter({(u, f"你说：{u}说{i}"): 1 for u in users for i in range(2)})
    assert replies(fake_api, users) == expected, replicas.log()[-3000:]
    posts = Counter(update_id for _, update_id in fake_api.webhook_posts)
    assert sum(1 for n in posts.values() if n == 2) >= 25  # duplicates were really delivered
    assert {url for url, _ in fake_api.webhook_posts} == set(replicas.urls)
    assert db_rows(postgres_url, "SELECT COUNT(*) FROM exchanges") == [(200,)]
    assert db_rows(postgres_url, "SELECT COUNT(*) FROM inbox WHERE done_at IS NULL") == [(0,)]


def test_the_rate_limit_and_forget_hold_across_replicas(fake_api, replicas, postgres_url):
    from xianliao.bot.handlers import FORGET_ASK_TEXT, FORGET_DONE_TEXT, RATE_LIMITED_TEXT

    replicas.start(rate_limit=4)
    hasty, leaving = 6001, 6002
    for i in range(9):  # the proxy sends them to the replicas in turn
        fake_api.private_text(hasty, f"第{i}句")
    fake_api.wait_for(lambda: len(fake_api.sent_to(hasty)) >= 5, timeout=60, what="5 replies")
    time.sleep(2.0)
    texts = [m["text"] for m in fake_api.sent_to(hasty)]
    assert sum(t.startswith("你说：") for t in texts) == 4, texts
    assert texts.count(RATE_LIMITED_TEXT) == 1, texts
    assert {url for url, _ in fake_api.webhook_posts} == set(replicas.urls)

    for i in range(3):
        fake_api.private_text(leaving, f"再见{i}")
    fake_api.wait_sent(leaving, 3, timeout=30)
    fake_api.private_text(leaving, "/forget")  # the 4th message of 4 allowed
    ask = fake_api.wait_for(
        lambda: [m for m in fake_api.sent_to(leaving) if m["text"] == FORGET_ASK_TEXT],
        timeout=30,
        what="the /forget question",
    )[0]
    fake_api.callback(leaving, ask, "fg:y")
    fake_api.wait_for(
        lambda: any(e["text"].startswith(FORGET_DONE_TEXT[:3]) for e in fake_api.edits),
        timeout=30,
        what="/forget done",
    )
    assert db_rows(postgres_url, "SELECT COUNT(*) FROM exchanges WHERE user_id = ?", leaving) == [
        (0,)
    ]
    before = len(fake_api.sent_to(leaving))
    for i in range(2):  # to both replicas: without the forget these were over the limit
        fake_api.private_text(leaving, f"又来了{i}")
    fake_api.wait_for(lambda: len(fake_api.sent_to(leaving)) >= before + 2, timeout=30)
    time.sleep(1.0)
    new = [m["text"] for m in fake_api.sent_to(leaving)[before:]]
    assert sorted(new) == ["你说：又来了0", "你说：又来了1"]
    assert db_rows(postgres_url, "SELECT COUNT(*) FROM exchanges WHERE user_id = ?", leaving) == [
        (2,)
    ]


def test_a_killed_replicas_messages_are_answered_by_the_other(fake_api, replicas, postgres_url):
    replicas.start(delay=0.5)
    users = list(range(7001, 7041))
    for u in users:
        fake_api.private_text(u, "还在吗")
    fake_api.wait_for(lambda: len(fake_api.sent) >= 4, timeout=60, what="4 replies")
    replicas.kill(0)
    assert len(fake_api.sent) < 40  # killed with messages it had claimed still unanswered
    fake_api.wait_for(lambda: len(fake_api.sent) >= 40, timeout=90, what="40 replies")
    time.sleep(2.0)
    answered = replies(fake_api, users)
    # At least once: a reply sent just before the kill, not yet marked done, may come twice.
    assert set(answered) == {(u, "你说：还在吗") for u in users}
    assert sum(answered.values()) <= 40 + 4
    assert "nobody is answering" in replicas.log()  # the survivor took the claimed ones over
    assert db_rows(postgres_url, "SELECT COUNT(*) FROM exchanges") == [(40,)]
    assert db_rows(postgres_url, "SELECT COUNT(*) FROM inbox WHERE done_at IS NULL") == [(0,)]


def test_in_webhook_mode_a_reply_whose_send_fails_is_sent_later(fake_api, start_bot, db_path):
    bot = start_bot(mode="webhook", send_retry_s=0.3, pending_retry_s=1.0)
    fake_api.fail("sendMessage", "500", times=4)  # two give-ups of ~0.2 s each
    fake_api.private_text(6101, "别丢下我")
    [msg] = fake_api.wait_sent(6101, 1, timeout=20)
    assert msg["text"] == "你说：别丢下我"
    assert len(fake_api.calls_of("sendMessage:500")) == 4
    time.sleep(2.5)
    assert len(fake_api.sent_to(6101)) == 1  # neither an apology nor a second copy
    assert db_rows(db_path, "SELECT COUNT(*) FROM exchanges") == [(1,)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM inbox WHERE done_at IS NULL") == [(0,)]
    assert bot.service.log_failures == 0


if __name__ == "__main__":
    url, database, port, delay, limit = sys.argv[1:6]
    _serve(url, database, int(port), float(delay), int(limit))
