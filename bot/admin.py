"""Telegram admin commands on review and the model: /stats, /review (with approve/reject
buttons), /reload. Each parses, calls ``ops.review`` (or the service, for the model) in a
thread, and formats the answer; every attempt is audited, and non-admins are refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, filters

from xianliao.bot.handlers import (
    NOT_ADMIN_TEXT,
    USER_COMMANDS,
    _parse_button,
    deps,
    send_text,
)
from xianliao.ops.console_links import LINK_TTL_S
from xianliao.ops.review import REVIEW_APPROVED, REVIEW_REJECTED, Review, UnknownExchanges

logger = logging.getLogger(__name__)

ADMIN_COMMANDS = [
    *USER_COMMANDS,
    BotCommand("stats", "统计 (admin)"),
    BotCommand("review", "审核最近的对话 (admin)"),
    BotCommand("reload", "重新加载模型 (admin)"),
    BotCommand("retrain", "重新训练 retrain [status|cancel] (admin)"),
    BotCommand("promote", "强制上线新模型 promote [run] (admin)"),
    BotCommand("rollback", "回滚到上一个模型 (admin)"),
    BotCommand("edit", "修改回答 edit ID answer (admin)"),
    BotCommand("console", "网页管理台登录链接 console login link (admin)"),
]
CONSOLE_NOT_SET = (
    "网页管理台未配置。The web console link is not set up: set CONSOLE_PUBLIC_URL (the "
    "console's address, e.g. https://admin.example.com) and CONSOLE_SECRET_KEY (the same "
    "in the bot's and the console's settings), then restart the bot."
)
CONSOLE_PRIVATE_ONLY = "请在与机器人的私聊中发送 /console。Send /console in a private chat with me."
MAX_REVIEW = 20


def review_ops(context: ContextTypes.DEFAULT_TYPE) -> Review:
    return context.bot_data["review"]


def review_keyboard(exchange_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("✅ approve", callback_data=f"rv:{exchange_id}:a"),
                InlineKeyboardButton("❌ reject", callback_data=f"rv:{exchange_id}:r"),
            ]
        ]
    )


async def admin_only(
    update: Update, context: ContextTypes.DEFAULT_TYPE, action: str, detail: str = ""
) -> bool:
    """True for admins; anyone else gets a refusal, and the attempt is logged either way."""
    user = update.effective_user
    user_id = user.id if user else 0
    allowed = user_id in deps(context).admin_ids
    await deps(context).service.audit(user_id, action, allowed=allowed, detail=detail)
    if not allowed:
        logger.warning("refused admin action %r for non-admin user %s", action, user_id)
        if update.callback_query is not None:
            await update.callback_query.answer(NOT_ADMIN_TEXT, show_alert=True)
        elif update.effective_chat is not None:
            await send_text(context, update.effective_chat.id, NOT_ADMIN_TEXT)
    return allowed


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: users, messages, latency, model version, feedback."""
    if not await admin_only(update, context, "stats"):
        return
    s = await asyncio.to_thread(review_ops(context).stats)
    text = (
        f"用户 users: {s.users}\n"
        f"今日消息 today (UTC): {s.messages_today}\n"
        f"总消息 total: {s.messages_total}\n"
        f"回复延迟 latency (24h, n={s.latency_window_count}): "
        f"p50 {_ms(s.p50_ms)}, p95 {_ms(s.p95_ms)}\n"
        f"模型 model: {deps(context).service.model_version}\n"
        f"反馈 feedback: 👍 {s.feedback_up} / 👎 {s.feedback_down}\n"
        f"待审核 pending review: {s.pending_review}"
    )
    await send_text(context, update.effective_chat.id, text)


async def review(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: show the newest pending exchanges with approve/reject buttons."""
    args = context.args or []
    if not await admin_only(update, context, "review", " ".join(args)):
        return
    try:
        n = max(1, min(MAX_REVIEW, int(args[0]))) if args else 5
    except ValueError:
        await send_text(context, update.effective_chat.id, "用法 usage: /review [n]")
        return
    items = await asyncio.to_thread(review_ops(context).pending, n)
    chat_id = update.effective_chat.id
    if not items:
        await send_text(context, chat_id, "没有待审核的对话。Nothing to review.")
        return
    for item in items:
        text = (
            f"#{item['id']} [{item['model_version']}]\n"
            f"👤 {item['user_text']}\n🤖 {item['reply_text']}"
        )
        if item["edited_reply"]:
            text += f"\n✏️ {item['edited_reply']}"
        await send_text(context, chat_id, text, reply_markup=review_keyboard(item["id"]))


async def review_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: approve (``rv:ID:a``) or reject (``rv:ID:r``) an exchange."""
    query = update.callback_query
    if not await admin_only(update, context, "review_set", query.data or ""):
        return
    parsed = _parse_button(query, "ar")
    if parsed is None:
        await query.answer()
        return
    exchange_id, status = parsed[0], (REVIEW_APPROVED if parsed[1] == "a" else REVIEW_REJECTED)
    try:
        change = await asyncio.to_thread(
            review_ops(context).set_status,
            status,
            reviewer=query.from_user.id,
            ids=[exchange_id],
        )
        changed = change.changed > 0
    except UnknownExchanges:
        changed = False
    await query.answer(status if changed else "not found")
    if changed and query.message is not None and isinstance(query.message, Message):
        with contextlib.suppress(BadRequest):
            await query.edit_message_text(f"{query.message.text}\n→ {status}")


async def reload_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: load the checkpoint at MODEL_PATH again without a restart."""
    if not await admin_only(update, context, "reload"):
        return
    service = deps(context).service
    chat_id = update.effective_chat.id
    old = service.model_version
    try:
        version = await service.reload()
    except Exception as exc:  # CheckpointError and friends: keep serving the old model
        logger.warning("reload failed: %s", exc)
        await send_text(context, chat_id, f"重新加载失败，仍在使用 {old}：{exc}")
        return
    await send_text(context, chat_id, f"模型已重新加载 reloaded: {old} → {version}")


async def console_link(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins, in a private chat: a one-time login link to the web console (5 minutes)."""
    if not await admin_only(update, context, "console"):
        return
    chat = update.effective_chat
    if chat.type != "private":  # anyone in a group could click it
        await send_text(context, chat.id, CONSOLE_PRIVATE_ONLY)
        return
    make_link = context.bot_data.get("console_link")
    if make_link is None:
        await send_text(context, chat.id, CONSOLE_NOT_SET)
        return
    minutes = LINK_TTL_S // 60
    await send_text(
        context,
        chat.id,
        f"网页管理台登录链接（{minutes} 分钟内有效，只能用一次）"
        f"Console login link, valid {minutes} minutes, once:\n{make_link(update.effective_user.id)}",
    )


def register_admin(
    application: Application,
    review_ops: Review,
    console_link_maker: Callable[[int], str] | None = None,
) -> None:
    """Add the admin commands; call before ``bot.handlers.register``, so that they come before
    its "unknown command" handler. ``console_link_maker``: admin id -> a login link to the
    web console (None: /console says how to set it up)."""
    application.bot_data["review"] = review_ops
    application.bot_data["console_link"] = console_link_maker
    new = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler("stats", stats, filters=new),
            CommandHandler("review", review, filters=new),
            CommandHandler("reload", reload_model, filters=new),
            CommandHandler("console", console_link, filters=new),
            CallbackQueryHandler(review_button, pattern=r"^rv:"),
        ]
    )
