"""Helpers for the bot tests: the fake Bot API, a fake model, a bot running in a thread, SQL.

The fixtures are in ``bot_fixtures`` (``pytest_plugins = ["bot_fixtures"]``): a conftest.py here
would shadow the ``conftest`` module that other tests import by name.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so "tests.fake_bot_api" imports however pytest is started
    sys.path.insert(0, str(ROOT))

from tests.fake_bot_api import TOKEN, FakeBotAPI  # noqa: E402
from xianliao.bot.config import Settings  # noqa: E402
from xianliao.bot.service import DialogueService  # noqa: E402

__all__ = ["TOKEN", "FakeBotAPI"]

ADMIN_ID = 4242


class EchoModel:
    """A stand-in for ``model.chatbot.ChatBot`` with the same surface: echoes the input."""

    def __init__(self, version: str = "echo-v1", delay: float = 0.0) -> None:
        self.version = version
        self.delay = delay
        self.batches: list[int] = []
        self._lock = threading.Lock()

    @property
    def decode_options(self) -> dict[str, Any]:
        return {"strategy": "echo", "beam_size": 1}

    def reply(self, text: str, **options: Any) -> str:
        return self.reply_many([text], **options)[0]

    def reply_many(self, texts: list[str], **options: Any) -> list[str]:
        with self._lock:
            self.batches.append(len(texts))
            if self.delay:
                time.sleep(self.delay)
            return [("哈" * 5000) if t.startswith("REPEAT") else f"你说：{t}" for t in texts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningBot:
    """``application.run_polling`` (or ``run_webhook``) in a thread with its own event loop."""

    def __init__(self, application: Any, service: DialogueService, mode: str, **kwargs: Any):
        self.application = application
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self._mode = mode
        self._kwargs = kwargs
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            if self._mode == "webhook":
                self.application.run_webhook(stop_signals=None, close_loop=False, **self._kwargs)
            else:
                self.application.run_polling(
                    poll_interval=0, timeout=1, stop_signals=None, close_loop=False, **self._kwargs
                )
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def start(self) -> RunningBot:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the bot did not stop"
        self.loop.close()
        self.service.close()
        if self.error is not None:
            raise self.error


def db_url(db_path: Path | str) -> str:
    """The bot's database URL: ``db_path`` is a SQLite file, or already a (PostgreSQL) URL."""
    return db_path if isinstance(db_path, str) else f"sqlite:///{db_path}"


def make_settings(fake: FakeBotAPI, db_path: Path | str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": TOKEN,
        "telegram_base_url": fake.base_url,
        "database_url": db_url(db_path),
        "admin_user_ids": frozenset({ADMIN_ID}),
        "model_path": Path("unused.pt"),
        "rate_limit_messages": 100,
        "typing_delay_s": 0.5,
        "send_max_retries": 3,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def db_rows(db_path: Path | str, sql: str, *args: Any) -> list[tuple]:
    """Read the bot's database directly, as an operator would (``?`` marks the parameters)."""
    if isinstance(db_path, str):
        return postgres_rows(db_path, sql.replace("?", "%s"), *args)
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def postgres_rows(url: str, sql: str, *args: Any) -> list[tuple]:
    from sqlalchemy import create_engine

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql, args).fetchall()]
    finally:
        engine.dispose()
