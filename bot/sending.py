"""Sending to Telegram: plain text with bounded retries, and "typing..." while a reply is made.

Both read the bot's settings from ``context.bot_data["deps"]`` (``BotDeps`` in handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from telegram import Message
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import ContextTypes

from xianliao.bot.messages import fit_message

logger = logging.getLogger(__name__)

TYPING_REPEAT_S = 4.5  # Telegram shows "typing..." for about 5 seconds


SEND_BACKOFF_S = 0.2  # first wait before resending a failed message; doubles each time
SEND_BACKOFF_MAX_S = 5.0


async def send_text(
    context: ContextTypes.DEFAULT_TYPE, chat_id: int, text: str, **kwargs: Any
) -> Message | None:
    """Send plain text, retrying transient failures (5xx, dropped connections, timeouts, 429)
    with backoff for up to ``send_retry_s`` seconds; then the error is raised."""
    text = fit_message(text)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + context.bot_data["deps"].send_retry_s
    backoff = SEND_BACKOFF_S
    while True:
        try:
            return await context.bot.send_message(chat_id, text, **kwargs)
        except RetryAfter as exc:  # left over after the rate limiter's own retries
            error, wait, why = exc, _seconds(exc.retry_after) + 0.1, "flood limit"
        except (BadRequest, Forbidden):
            raise
        except TimedOut as exc:  # the message may have arrived: a resend may show it twice
            error, wait = exc, backoff
            why = "timed out; it may have arrived, so the retry may duplicate it"
        except NetworkError as exc:  # 5xx answers, dropped connections
            error, wait, why = exc, backoff, str(exc)
        if loop.time() + wait > deadline:
            raise error
        logger.warning("sendMessage to chat %s failed (%s): retrying in %.1fs", chat_id, why, wait)
        await asyncio.sleep(wait)
        backoff = min(backoff * 2, SEND_BACKOFF_MAX_S)


def _seconds(value: Any) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


async def typing_while(
    context: ContextTypes.DEFAULT_TYPE, chat_id: int, work: Awaitable[Any]
) -> Any:
    """Await ``work``; if it takes longer than the typing delay, show "typing..." meanwhile,
    unless more replies are in the making than the flood limit sends in a second: chat actions
    count against the same limit as the replies, and showing them to every waiting user then
    halved the reply rate (bench/RESULTS.md section 27)."""
    deps = context.bot_data["deps"]
    task = asyncio.ensure_future(work)
    delay = deps.typing_delay_s
    deps.replying += 1
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=delay)
            if done:
                return task.result()
            if not deps.typing_max_replying or deps.replying <= deps.typing_max_replying:
                with contextlib.suppress(TelegramError):
                    await context.bot.send_chat_action(chat_id, ChatAction.TYPING)
            delay = TYPING_REPEAT_S
    finally:
        deps.replying -= 1
