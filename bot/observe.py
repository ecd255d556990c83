"""Wires :mod:`bot.health` into the running bot: which events count, and when the server runs.

Everything here hangs off the Application from the outside (a handler group before all others,
an extra error handler, a Bot subclass that notes Bot API successes, a hook of the service),
so the message handlers stay unaware of metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

from xianliao.bot.handlers import answerable
from xianliao.bot.health import BotMetrics, HealthServer, HealthState
from xianliao.bot.service import DialogueService
from xianliao.bot.updates import TolerantBot
from xianliao.storage.database import Database
from xianliao.storage.db import schema_revision

logger = logging.getLogger(__name__)

# Before the rate gate (group -1), so a message counts even when it is refused.
COUNT_GROUP = -2


class ObservedBot(TolerantBot):
    """The bot's Bot API client, telling ``on_success`` after every call that got an answer
    (a poll included), which is what /healthz calls "Telegram reached"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_success: Any = None  # "_": PTB freezes public attributes

    def observe(self, on_success: Any) -> None:
        self._on_success = on_success

    async def _do_post(self, *args: Any, **kwargs: Any) -> Any:
        result = await super()._do_post(*args, **kwargs)
        if self._on_success is not None:
            self._on_success()
        return result


def error_kind(error: BaseException | None) -> str:
    """The ``kind`` label of an error: telegram, database or handler (the model's own failures
    surface as the handler's, since the model runs inside it)."""
    if isinstance(error, TelegramError):
        return "telegram"
    if isinstance(error, SQLAlchemyError):
        return "database"
    return "handler"


class Observer:
    """The bot process's metrics and health state, and the server for them (``port`` 0: none)."""

    def __init__(
        self, service: DialogueService, db: Database, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.service = service
        self.metrics = BotMetrics()
        self.state = HealthState(database_check=lambda: schema_revision(db.engine))
        self.host, self.port = host, port
        self.server: HealthServer | None = None
        self._version: str | None = None
        self._log_failures = 0

    def attach(self, application: Application) -> None:
        """Count messages and errors of ``application``, and replies of the service."""
        bot = application.bot
        if isinstance(bot, ObservedBot):
            bot.observe(self.state.telegram_seen)
        self.service.on_reply = lambda latency_s: self.metrics.reply(latency_s)
        application.add_handler(TypeHandler(Update, self._count_message), group=COUNT_GROUP)
        application.add_error_handler(self._count_error)

    async def _count_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if answerable(update, context.bot):  # text for the model, not commands or others' talk
            self.metrics.message()

    async def _count_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        self.metrics.error(error_kind(context.error))

    def refresh(self) -> None:
        """Bring the model version and the database's failed writes up to date (before each
        probe or scrape, on the server's thread: both are plain attribute reads)."""
        version = self.service.model_version
        self.state.model_loaded = True
        if version != self._version:
            self.metrics.model_version(version)
            self._version = version
        failures = self.service.log_failures
        for _ in range(failures - self._log_failures):
            self.metrics.error("database")
        self._log_failures = failures

    def start(self) -> None:
        self.refresh()
        if self.port and self.server is None:
            self.server = HealthServer(
                self.state, self.metrics, self.host, self.port, refresh=self.refresh
            ).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
