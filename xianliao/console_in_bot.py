"""``xianliao bot`` with ``CONSOLE_IN_BOT=1``: the web console served by uvicorn inside the
bot's process and event loop, on ``CONSOLE_HOST:CONSOLE_PORT``, over the bot's database.

Here, in the entry point, because it is the one place that may import both the bot and the
console (the bot itself never imports the console).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from xianliao.bot.app import SidecarError
from xianliao.bot.config import Settings
from xianliao.storage.database import Database


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; ``SidecarError`` with one line when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SidecarError(
            f"the console cannot listen on {host}:{port} ({exc.strerror}): change CONSOLE_PORT"
        ) from None
    return sock


class ConsoleServer:
    """A uvicorn server for an ASGI app as a task of the running event loop."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            # The bot's Application owns SIGINT/SIGTERM; uvicorn must not take them over.
            def capture_signals(self) -> contextlib.AbstractContextManager[None]:
                return contextlib.nullcontext()

        # access_log off: a one-time login link carries its token in the URL
        config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None)
        self.server = Server(config)
        self.host, self.port = host, port
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # Bound here, not by uvicorn, which exits the process when it cannot listen.
        sock = _listen(self.host, self.port)
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self._task.done():
                with contextlib.suppress(Exception):
                    self._task.result()
                sock.close()
                raise SidecarError(f"the console did not start on {self.host}:{self.port}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self.server.should_exit = True
            await self._task


def console_sidecars(settings: Settings, db: Database, env_file: str) -> list[ConsoleServer]:
    """The console server when CONSOLE_IN_BOT is on (nothing otherwise)."""
    if not settings.console_in_bot:
        return []
    try:
        from pydantic import ValidationError

        from xianliao.console.app import create_app
        from xianliao.console.config import ConsoleSettings
    except ModuleNotFoundError as exc:
        raise SidecarError(
            f"CONSOLE_IN_BOT needs {exc.name}: pip install 'xianliao[console]'"
        ) from None
    try:
        console_settings = ConsoleSettings(_env_file=env_file)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]).upper()
        raise SidecarError(f"setting {name}: {err['msg']}") from None
    app = create_app(console_settings, db, env_file=env_file)
    return [ConsoleServer(app, settings.console_host, settings.console_port)]


def main(argv: list[str]) -> int:
    """``xianliao bot``, with the console beside it when CONSOLE_IN_BOT is on."""
    from xianliao.bot.app import main as bot_main

    return bot_main(argv, sidecars=console_sidecars)
