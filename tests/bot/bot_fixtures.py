"""Fixtures for the bot tests; test modules load them with ``pytest_plugins = ["bot_fixtures"]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bot_helpers import ADMIN_ID, EchoModel, RunningBot, free_port, make_settings

from tests.fake_bot_api import FakeBotAPI
from xianliao.bot.service import DialogueService


@pytest.fixture
def fake_api():
    with FakeBotAPI() as api:
        api.known_chats[ADMIN_ID] = {"id": ADMIN_ID, "type": "private", "first_name": "admin"}
        yield api


@pytest.fixture
def db_path(tmp_path, database_url) -> Path | str:
    """The bot's database: a SQLite file, or the URL of a PostgreSQL one (``database_url``)."""
    return tmp_path / "data" / "chat.db" if database_url.startswith("sqlite") else database_url


@pytest.fixture
def start_bot(fake_api, db_path):
    """``start_bot(model=..., mode="polling", **settings)`` -> a running bot, stopped after."""
    from xianliao.bot.app import build_application
    from xianliao.bot.runtime import open_sessions

    running: list[RunningBot] = []

    def start(
        model: Any = None, *, loader: Any = None, mode: str = "polling", **overrides: Any
    ) -> RunningBot:
        settings = make_settings(fake_api, db_path, **overrides)
        service = DialogueService(
            model or EchoModel(),
            sessions=open_sessions(settings.database_url),
            model_path=settings.model_path,
            load_model=loader,
            decode_options=settings.decode_options,
            max_input_chars=settings.max_input_chars,
            rate_limit=settings.rate_limit_messages,
            rate_window_s=settings.rate_limit_window_s,
            max_batch=settings.model_max_batch,
        )
        application = build_application(settings, service)
        kwargs: dict[str, Any] = {}
        if mode == "webhook":
            port = free_port()
            kwargs = {
                "listen": "127.0.0.1",
                "port": port,
                "url_path": "hook",
                "webhook_url": f"http://127.0.0.1:{port}/hook",
                "secret_token": "s3cret-token",
            }
        bot = RunningBot(application, service, mode, **kwargs).start()
        running.append(bot)
        if mode == "webhook":
            fake_api.wait_for(lambda: fake_api.webhook["url"], what="setWebhook")
        else:
            fake_api.wait_for(lambda: fake_api.calls_of("getUpdates"), what="polling to start")
        return bot

    yield start
    for bot in running:
        bot.stop()
