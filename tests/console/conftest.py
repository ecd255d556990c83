"""The console's test rig: a seeded SQLite file, the console in a real uvicorn server on a free
port of 127.0.0.1, and Debian's chromium driven by Playwright (skipped with a reason where
either is missing, unless XIANLIAO_REQUIRE_BROWSER=1, as CI sets: then it fails)."""

from __future__ import annotations

import contextlib
import os
import shutil
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


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path}/console.db")
    seed(database)
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path, db):
    return make_settings(tmp_path)


@pytest.fixture
def app(settings, db):
    from xianliao.console.app import create_app

    return create_app(settings, db)


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


@pytest.fixture
def server(settings, db):
    with serve(settings, db) as url:
        yield url


def _no_browser(reason: str):  # noqa: ANN202
    if os.environ.get("XIANLIAO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required here, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium():
    """A headless chromium (Debian's package) under Playwright. Per module, not per session:
    Playwright's sync API keeps an event loop running in the main thread while it is open, and
    other tests call asyncio.run."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _no_browser("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


class Shots:
    """Screenshots of each page visited, kept under the test's temporary folder."""

    def __init__(self, page, folder) -> None:  # noqa: ANN001
        self.page, self.folder, self.n = page, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


@pytest.fixture
def page(chromium, server, tmp_path):
    """A fresh browser context (no cookies) on the console; ``page.shot(name)`` screenshots."""
    context = chromium.new_context(base_url=server, viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.shot = Shots(pg, tmp_path / "screenshots")
    yield pg
    context.close()


def login(page) -> None:  # noqa: ANN001
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/conversations")
