"""CONSOLE_IN_BOT=1: the web console served by uvicorn in the bot's own event loop, over the
bot's database, started and stopped with the bot; a busy port is one line, not a crash."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from bot_helpers import ADMIN_ID, EchoModel, RunningBot, free_port, make_settings

from xianliao.bot.app import SidecarError, build_application
from xianliao.bot.runtime import open_sessions
from xianliao.bot.service import DialogueService
from xianliao.console_in_bot import ConsoleServer, console_sidecars
from xianliao.ops.console_links import login_link
from xianliao.storage.database import Database

pytest.importorskip("uvicorn")
pytest_plugins = ["bot_fixtures"]
KEY = "console-in-bot-secret-key"


def test_the_console_runs_inside_the_bot(fake_api, db_path, tmp_path):
    env_file = tmp_path / "console.env"
    env_file.write_text(
        f"CONSOLE_SECRET_KEY={KEY}\nCONSOLE_SECURE_COOKIES=false\nADMIN_USER_IDS={ADMIN_ID}\n"
    )
    port = free_port()
    settings = make_settings(fake_api, db_path, console_in_bot=True, console_port=port)
    service = DialogueService(EchoModel(), sessions=open_sessions(settings.database_url))
    db = Database(service.sessions.kw["bind"])
    sidecars = console_sidecars(settings, db, str(env_file))
    assert len(sidecars) == 1
    bot = RunningBot(build_application(settings, service, db, sidecars), service, "polling")
    bot.start()
    try:
        fake_api.wait_for(lambda: fake_api.calls_of("getUpdates"), what="polling to start")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/login").status_code == 200
        assert "/login" in httpx.get(f"{base}/runs").headers.get("location", "")  # not logged in
        with httpx.Client() as browser:  # a one-time link logs in; the pages read the bot's db
            r = browser.get(login_link(base, KEY, ADMIN_ID), follow_redirects=True)
            assert r.status_code == 200 and str(r.url) == f"{base}/conversations"  # logged in
            assert browser.get(f"{base}/runs").status_code == 200
        fake_api.private_text(5001, "你好")  # and the bot keeps answering
        assert fake_api.wait_sent(5001, 1)
    finally:
        bot.stop()
    with pytest.raises(httpx.HTTPError):  # stopped with the bot
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)


def test_off_by_default_and_a_busy_port_is_one_line(fake_api, db_path):
    settings = make_settings(fake_api, db_path)
    assert console_sidecars(settings, None, "/dev/null") == []  # type: ignore[arg-type]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def start() -> None:
            await ConsoleServer(object(), "127.0.0.1", port).start()

        with pytest.raises(SidecarError, match=f"cannot listen on 127.0.0.1:{port}"):
            asyncio.run(start())
