"""Admin commands for retraining: /retrain [status|cancel|scratch], /promote [run], /rollback,
and /edit ID ANSWER (the answer the bot should have given, used by retraining).

Training runs in a separate process (``ops.supervisor.RunSupervisor``); these handlers only
start, query and stop it, and report to the admin's chat.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes, filters

from xianliao.bot.admin import admin_only, review_ops
from xianliao.bot.sending import send_text
from xianliao.ops.models import PromotionError
from xianliao.ops.review import UnknownExchanges
from xianliao.ops.runs import RunInProgress
from xianliao.ops.supervisor import RunSupervisor

logger = logging.getLogger(__name__)

USAGE = "用法 usage: /retrain [status | cancel [run] | scratch]"


def supervisor(context: ContextTypes.DEFAULT_TYPE) -> RunSupervisor:
    return context.bot_data["retrain"]


async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: start a retraining run, or show/cancel the one in progress."""
    args = [a.lower() for a in (context.args or [])]
    if not await admin_only(update, context, "retrain", " ".join(args)):
        return
    chat_id = update.effective_chat.id
    sup = supervisor(context)
    if args and args[0] == "status":
        await send_text(context, chat_id, await sup.status_anywhere())
        return
    if args and args[0] == "cancel":
        wanted = args[1].lstrip("#") if len(args) > 1 else None
        if wanted is not None and not wanted.isdigit():
            await send_text(context, chat_id, "用法 usage: /retrain cancel [run id]")
            return
        run_id = await sup.cancel(int(wanted) if wanted else None)
        text = (
            f"正在取消训练 run {run_id}，模型不变。Cancelling; the live model stays."
            if run_id
            else "没有正在进行的训练。No retraining in progress."
        )
        await send_text(context, chat_id, text)
        return
    if args and args[0] not in ("scratch", "finetune"):
        await send_text(context, chat_id, USAGE)
        return
    mode = args[0] if args else "finetune"

    async def notify(text: str) -> None:
        await context.bot.send_message(chat_id, text[:4000])

    try:
        run_id = await sup.start(update.effective_user.id, notify, mode=mode)
    except RunInProgress as exc:
        await send_text(
            context,
            chat_id,
            f"已有训练在进行，一次只能运行一个。Already running: {exc}. "
            "/retrain status 或 /retrain cancel",
        )
        return
    await send_text(
        context,
        chat_id,
        f"开始训练 run {run_id}（{mode}，在单独的进程里，机器人照常聊天）。"
        f"Retraining started in a separate process. /retrain status",
    )


async def promote(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: force the latest (or the given) run's model live."""
    args = context.args or []
    if not await admin_only(update, context, "promote", " ".join(args)):
        return
    chat_id = update.effective_chat.id
    try:
        run_id = int(args[0]) if args else None
    except ValueError:
        await send_text(context, chat_id, "用法 usage: /promote [run id]")
        return
    try:
        version = await supervisor(context).promote(update.effective_user.id, run_id)
    except PromotionError as exc:
        await send_text(context, chat_id, f"未上线 not promoted: {exc}")
        return
    await send_text(context, chat_id, f"✅ 已上线 promoted: {version}")


async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: put back the model that the latest promotion replaced."""
    if not await admin_only(update, context, "rollback"):
        return
    chat_id = update.effective_chat.id
    try:
        version = await supervisor(context).rollback(update.effective_user.id)
    except PromotionError as exc:
        await send_text(context, chat_id, f"无法回滚 cannot roll back: {exc}")
        return
    await send_text(context, chat_id, f"↩️ 已回滚 rolled back: {version}")


async def edit(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins: /edit ID ANSWER stores the answer the bot should have given (and approves it)."""
    args = context.args or []
    if not await admin_only(update, context, "edit", " ".join(args)):
        return
    chat_id = update.effective_chat.id
    try:
        exchange_id, answer = int(args[0].lstrip("#")), " ".join(args[1:]).strip()
    except (IndexError, ValueError):
        answer = ""
    if not answer:
        await send_text(context, chat_id, "用法 usage: /edit ID 更好的回答 (the better answer)")
        return
    try:
        await asyncio.to_thread(
            review_ops(context).edit, exchange_id, answer, reviewer=update.effective_user.id
        )
        ok = True
    except UnknownExchanges:
        ok = False
    text = (
        f"#{exchange_id} 已修改并通过 edited and approved: {answer}"
        if ok
        else f"没有 #{exchange_id} 这条对话。No such exchange."
    )
    await send_text(context, chat_id, text)


def register_retrain(application: Application, sup: RunSupervisor) -> None:
    application.bot_data["retrain"] = sup
    new = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler("retrain", retrain, filters=new),
            CommandHandler("promote", promote, filters=new),
            CommandHandler("rollback", rollback, filters=new),
            CommandHandler("edit", edit, filters=new),
        ]
    )  # call before bot.handlers.register, so these come before its "unknown command" handler
