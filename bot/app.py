"""``xianliao bot``: the Telegram bot (long polling, or a webhook when WEBHOOK_URL is set)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from telegram import Bot, BotCommandScopeChat, BotCommandScopeDefault, Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder
from telegram.request import HTTPXRequest

from xianliao.bot.admin import ADMIN_COMMANDS, register_admin
from xianliao.bot.admin_retrain import register_retrain
from xianliao.bot.config import Settings, read_settings
from xianliao.bot.handlers import USER_COMMANDS, BotDeps, register
from xianliao.bot.model_watch import ModelWatch
from xianliao.bot.observe import ObservedBot, Observer
from xianliao.bot.runtime import StartupError, create_service, open_database, setup_logging
from xianliao.bot.service import DialogueService
from xianliao.bot.updates import ClaimingQueue
from xianliao.ops.console_links import login_link
from xianliao.ops.review import Review
from xianliao.ops.supervisor import RunSupervisor
from xianliao.storage.database import Database

logger = logging.getLogger(__name__)

NO_TOKEN_MESSAGE = (
    "TELEGRAM_BOT_TOKEN is not set: put it in .env (see .env.example) "
    "or run 'xianliao chat' for the terminal chat"
)


def _service_database(service: DialogueService, settings: Settings) -> Database:
    """The database the service logs into (the same engine, not a second one); DATABASE_URL
    for a service that does not log."""
    if service.sessions is None:
        return open_database(settings.database_url)
    return Database(service.sessions.kw["bind"])


def _review_ops(service: DialogueService, db: Database) -> Review:
    """Review on the bot's database; an approval or an edit is served from the next message on
    (the approved answers are read again)."""

    def changed() -> None:
        if service.approved is not None:
            service.approved.invalidate()

    return Review(db, on_change=changed, via="telegram")


def _console_links(settings: Settings) -> Callable[[int], str] | None:
    """Admin id -> a one-time console login link, when the console's URL and key are set."""
    url, key = settings.console_public_url, settings.console_secret_key
    if not url or key is None:
        return None
    return functools.partial(login_link, url, key.get_secret_value())


class SidecarError(Exception):
    """A sidecar cannot be set up (e.g. its package is not installed); the message says why."""


class Sidecar(Protocol):
    """Something served beside the bot in its event loop (the web console): started after
    the bot is initialised, stopped when it shuts down."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# What the entry point may add to the bot's process: (settings, database, env file) -> sidecars.
SidecarFactory = Callable[[Settings, Database, str], Sequence[Sidecar]]


def build_application(
    settings: Settings,
    service: DialogueService,
    db: Database | None = None,
    sidecars: Sequence[Sidecar] = (),
) -> Application:
    """The PTB Application: base URL, flood limits, handlers, command menus. ``db`` is the
    service's database (by default, the one its sessions are bound to); ``sidecars`` run in
    its event loop from start-up to shutdown."""
    token = settings.token()
    if not token:
        raise StartupError(NO_TOKEN_MESSAGE)
    admin_ids = settings.admin_user_ids
    db = db or _service_database(service, settings)
    observer = Observer(service, db, host=settings.health_host, port=settings.health_port)

    async def post_init(application: Application) -> None:
        observer.start()
        for sidecar in sidecars:
            await sidecar.start()
        await set_command_menus(application, admin_ids)
        logger.info(
            "bot @%s ready: model %s, %d admin(s)",
            application.bot.username,
            service.model_version,
            len(admin_ids),
        )

    async def post_shutdown(application: Application) -> None:
        for sidecar in reversed(sidecars):
            await sidecar.stop()
        await supervisor.aclose()
        await service.aclose()
        observer.stop()
        logger.info("bot stopped")

    application = (
        ApplicationBuilder()
        .bot(_bot(settings, token))
        .update_queue(ClaimingQueue())  # webhook updates are claimed before queued (replicas)
        .concurrent_updates(settings.concurrent_updates)
        .post_init(post_init)
        .post_shutdown(post_shutdown)
        .build()
    )
    supervisor = RunSupervisor(
        db,
        model_path=settings.model_path,
        base_data=settings.base_data_dir,
        extra_args=shlex.split(settings.retrain_args),
        on_model_changed=lambda: service.reload(settings.model_path),
        lease_s=settings.retrain_lease_s,
    )
    # before register(): its "unknown command" catch-all comes last
    register_admin(application, _review_ops(service, db), _console_links(settings))
    register_retrain(application, supervisor)
    deps = BotDeps(
        service,
        admin_ids,
        typing_delay_s=settings.typing_delay_s,
        typing_max_replying=max(1, round(settings.send_max_rate)) if settings.send_max_rate else 0,
        send_retry_s=settings.send_retry_s,
        pending_max_age_s=settings.pending_max_age_s,
        pending_retry_s=settings.pending_retry_s,
    )
    register(application, deps)
    observer.attach(application)
    application.bot_data["observer"] = observer
    if settings.model_watch_s > 0 and application.job_queue is not None:
        watch = ModelWatch(service, settings.model_path, db)  # promotions reach every replica
        application.job_queue.run_repeating(watch.check, settings.model_watch_s, first=0)
    return application


def _bot(settings: Settings, token: str) -> ObservedBot:
    """The Bot API client: the configured server, Telegram's flood limits, a connection pool
    sized for the settings, and getUpdates on a connection of its own."""
    limiter = AIORateLimiter(
        overall_max_rate=settings.send_max_rate,
        overall_time_period=1,
        group_max_rate=settings.send_group_max_rate,
        group_time_period=60,
        max_retries=settings.send_max_retries,
    )
    return ObservedBot(
        token,
        base_url=settings.telegram_base_url,
        base_file_url=_file_url(settings.telegram_base_url),
        request=HTTPXRequest(
            connection_pool_size=settings.connection_pool_size,
            pool_timeout=settings.pool_timeout_s,
        ),
        get_updates_request=HTTPXRequest(),  # its own connection, as the builder does
        rate_limiter=limiter,
    )


def _file_url(base_url: str) -> str:
    """PTB's file URL for a Bot API server at ``base_url`` (``.../bot`` -> ``.../file/bot``)."""
    if base_url.endswith("/bot"):
        return base_url[: -len("bot")] + "file/bot"
    return base_url


async def set_command_menus(application: Application, admin_ids: frozenset[int]) -> None:
    """User commands for everyone; admin commands only in each admin's private chat."""
    bot = application.bot
    await bot.set_my_commands(USER_COMMANDS, scope=BotCommandScopeDefault())
    for admin_id in sorted(admin_ids):
        try:
            await bot.set_my_commands(ADMIN_COMMANDS, scope=BotCommandScopeChat(admin_id))
        except TelegramError as exc:  # e.g. the admin has not started the bot yet
            logger.warning("could not set the admin command menu for %s: %s", admin_id, exc)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="xianliao bot",
        description="Run the Telegram bot. Settings come from the environment and .env "
        "(see .env.example); long polling unless WEBHOOK_URL is set.",
    )
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    return parser.parse_args(argv)


async def _check_bot_api(settings: Settings) -> str:
    """Ask the Bot API who we are (getMe) once, so a bad token or URL fails with one line."""
    bot = Bot(settings.token() or "", base_url=settings.telegram_base_url)
    async with bot:
        return bot.username


def _use_uvloop() -> None:
    """Run the event loop on uvloop when it is installed (Linux and macOS): its socket I/O is
    about half the bot's CPU per message under load (bench/RESULTS.md). ``XIANLIAO_UVLOOP=0``
    keeps the standard loop."""
    if os.environ.get("XIANLIAO_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    logger.info("event loop: uvloop %s", uvloop.__version__)


NO_WEBHOOK_SECRET_MESSAGE = (
    "xianliao bot: WEBHOOK_URL is set but WEBHOOK_SECRET is not: without it anyone who finds "
    "the URL can post updates as any user, admins included. Set WEBHOOK_SECRET to a random "
    "string (or WEBHOOK_UNSAFE_NO_SECRET=true to run without one)"
)


def main(argv: list[str], sidecars: SidecarFactory | None = None) -> int:
    """Entry point of ``xianliao bot``; ``sidecars`` (from the ``xianliao`` command, which may
    import the console) adds servers to the bot's event loop."""
    args = _parse_args(argv)
    settings = read_settings(args.env_file, "xianliao bot")
    if settings is None:
        return 2
    token = settings.token()
    if not token:
        print(NO_TOKEN_MESSAGE, file=sys.stderr)
        return 2
    if (
        settings.webhook_url
        and not settings.webhook_secret
        and not settings.webhook_unsafe_no_secret
    ):
        print(NO_WEBHOOK_SECRET_MESSAGE, file=sys.stderr)
        return 2
    setup_logging(settings.log_level, secrets=[token])
    try:
        # The model first: a missing checkpoint must not leave an empty database behind.
        service = create_service(settings, workers=settings.model_workers)
        db = _service_database(service, settings)  # the one database object of the process
    except StartupError as exc:
        print(f"xianliao bot: {exc}", file=sys.stderr)
        return 2
    _use_uvloop()
    try:
        username = asyncio.run(_check_bot_api(settings))
        logger.info("connected to the Bot API as @%s", username)
        extra = sidecars(settings, db, args.env_file) if sidecars is not None else ()
        application = build_application(settings, service, db, extra)
        if settings.webhook_url:
            secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
            if secret is None:
                logger.warning(
                    "WEBHOOK_SECRET is not set (WEBHOOK_UNSAFE_NO_SECRET): anyone who finds the "
                    "URL can post updates, as any user, admins included"
                )
            path = urlsplit(settings.webhook_url).path.lstrip("/")
            logger.info(
                "webhook mode: listening on %s:%d/%s",
                settings.webhook_listen,
                settings.webhook_port,
                path,
            )
            application.run_webhook(
                listen=settings.webhook_listen,
                port=settings.webhook_port,
                url_path=path,
                webhook_url=settings.webhook_url,
                secret_token=secret,
                allowed_updates=Update.ALL_TYPES,
            )
        else:
            logger.info("long polling %s", settings.telegram_base_url)
            application.run_polling(allowed_updates=Update.ALL_TYPES)
    except SidecarError as exc:
        print(f"xianliao bot: {exc}", file=sys.stderr)
        return 2
    except InvalidToken:
        print(
            "xianliao bot: Telegram rejected TELEGRAM_BOT_TOKEN: copy the token from "
            "@BotFather into .env again",
            file=sys.stderr,
        )
        return 2
    except NetworkError as exc:
        print(
            f"xianliao bot: cannot reach the Bot API at {settings.telegram_base_url} "
            f"({str(exc).replace(token, '<TOKEN>')}): check your network or TELEGRAM_BASE_URL",
            file=sys.stderr,
        )
        return 1
    finally:
        service.close()
        db.dispose()
    return 0
