"""Helpers for the console tests: a seeded SQLite file, settings, the console in a real uvicorn
server on a free port of 127.0.0.1, screenshots, logging in.

The fixtures are in ``console_fixtures`` (``pytest_plugins = ["console_fixtures"]``): a
conftest.py here would shadow the ``conftest`` module that other tests import by name.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("starlette", reason="the console's web stack is not installed")

from xianliao.console.config import ConsoleSettings, hash_token  # noqa: E402
from xianliao.storage.database import Database  # noqa: E402
from xianliao.storage.repositories import (  # noqa: E402
    ChatRepository,
    ExchangeRepository,
    FeedbackRepository,
    UserRepository,
)

TOKEN = "correct-horse-battery-staple-42"
ADMIN = 4242
# hashing once for the whole session: scrypt is slow on purpose
TOKEN_HASH = hash_token(TOKEN)
N_EXCHANGES = 60
SCRIPT = "<script>document.title='pwned'</script>你好"


def seed(db: Database, n: int = N_EXCHANGES) -> None:
    """``n`` exchanges from users 1-3 over days of December 2026; exchange 7 says <script>;
    exchanges 1-10 are from user 3 and have text 天气; exchange 2 has 👍, exchange 3 👎."""
    start = datetime(2026, 12, 1, 8, tzinfo=UTC)
    with db.begin() as s:
        for user in (1, 2, 3):
            UserRepository(s).touch(user, username=f"user{user}")
            ChatRepository(s).touch(user, type="private")
        for i in range(1, n + 1):
            user = 3 if i <= 10 else 1 + i % 2
            question = SCRIPT if i == 7 else (f"天气{i}怎么样" if i <= 10 else f"问题{i}")
            ExchangeRepository(s).add(
                user_id=user,
                chat_id=user,
                message_id=i,
                user_text=question,
                reply_text=f"回答{i}",
                latency_ms=12.0,
                model_version="m1",
                created_at=start + timedelta(hours=i),
            )
        s.flush()
        FeedbackRepository(s).set(2, 9, 1)
        FeedbackRepository(s).set(3, 9, -1)


def make_settings(tmp_path, **overrides) -> ConsoleSettings:
    values = {
        "database_url": f"sqlite:///{tmp_path}/console.db",
        "model_path": tmp_path / "runs" / "best.pt",
        "console_token_hash": TOKEN_HASH,
        "console_admin_id": ADMIN,
        "console_secret_key": "test-secret-key",
        "console_secure_cookies": False,  # plain http on 127.0.0.1 in tests
        **overrides,
    }
    return ConsoleSettings(_env_file=None, **values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(settings: ConsoleSettings, db: Database, **app_options):  # noqa: ANN202
    """The console served by uvicorn on a free port of 127.0.0.1; yields its base URL."""
    import uvicorn

    from xianliao.console.app import create_app

    port = _free_port()
    app = create_app(settings, db, **app_options)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(30)


class Shots:
    """Screenshots of each page visited, kept under the test's temporary folder."""

    def __init__(self, page, folder) -> None:  # noqa: ANN001
        self.page, self.folder, self.n = page, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


def login(page) -> None:  # noqa: ANN001
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/conversations")
