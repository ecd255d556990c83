"""Telegram handlers: thin, typed, each a few lines around the dialogue service."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from telegram import (
    Bot,
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatType
from telegram.error import (
    BadRequest,
    Forbidden,
    TelegramError,
)
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from xianliao.bot.inbox import Inbox
from xianliao.bot.sending import send_text, typing_while
from xianliao.bot.service import DialogueService, Incoming, RateDecision, Reply
from xianliao.bot.updates import TolerantBot, attach_inbox

logger = logging.getLogger(__name__)

START_TEXT = (
    "你好！我是闲聊机器人 🤖，直接给我发消息就能聊天。\n"
    "在群里请 @我 或回复我的消息。\n"
    "回复下面的 👍/👎 可以告诉我回答得好不好。发送 /help 查看帮助。"
)
HELP_TEXT = (
    "【闲聊机器人 帮助】\n"
    "• 私聊：直接发文字给我，我会回复。\n"
    "• 群聊：@我 或回复我的消息，我才会回答。\n"
    "• 每条回复下面有 👍/👎，用来评价回答。\n"
    "• /forget 删除我保存的你的全部聊天记录。\n"
    "• 你的消息和我的回复会被保存，用于统计和改进模型。\n"
    "\n"
    "[Help] Send me any text in a private chat and I reply (Chinese chit-chat). In groups, "
    "mention me or reply to my message. Rate replies with 👍/👎. /forget deletes everything "
    "stored about you. Messages and replies are stored to improve the model."
)
NON_TEXT_TEXT = "我现在只看得懂文字哦，发句话给我吧～ (I only understand text for now.)"
RATE_LIMITED_TEXT = "你说得太快啦，我有点跟不上，请稍等一会儿再发～"
NOT_ADMIN_TEXT = "抱歉，这个命令只有管理员可以使用。"
ERROR_TEXT = "抱歉，我刚才出了点问题，请稍后再试。"
FORGET_ASK_TEXT = "确定要删除我保存的你的全部聊天记录和评价吗？此操作不可撤销。"
FORGET_DONE_TEXT = "已删除：{exchanges} 条对话、{feedback} 条评价。以后的新消息仍会被保存。"
FORGET_CANCEL_TEXT = "已取消，什么都没有删除。"

USER_COMMANDS = [
    BotCommand("start", "开始聊天"),
    BotCommand("help", "帮助 / help"),
    BotCommand("forget", "删除我的全部数据"),
]


@dataclass
class BotDeps:
    """What handlers need, stored in ``application.bot_data["deps"]``."""

    service: DialogueService
    admin_ids: frozenset[int]
    typing_delay_s: float = 1.0
    # No "typing..." while more replies than this are being made or sent (0: no limit); the
    # flood limit's replies per second (SEND_MAX_RATE), see sending.typing_while.
    typing_max_replying: int = 0
    replying: int = 0  # replies being made or sent now
    send_retry_s: float = 30.0  # how long a failing send is retried (SEND_RETRY_S)
    # Stored messages older than this are not answered after a restart (PENDING_MAX_AGE_S).
    pending_max_age_s: float = 3600.0
    # A stored message whose reply could not be sent is answered again this often.
    pending_retry_s: float = 60.0
    inbox: Inbox | None = None  # set by register() when the service logs to a database


def deps(context: ContextTypes.DEFAULT_TYPE) -> BotDeps:
    return context.bot_data["deps"]


def feedback_keyboard(exchange_id: int, chosen: int = 0) -> InlineKeyboardMarkup:
    up = "👍 ✓" if chosen > 0 else "👍"
    down = "👎 ✓" if chosen < 0 else "👎"
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(up, callback_data=f"fb:{exchange_id}:u"),
                InlineKeyboardButton(down, callback_data=f"fb:{exchange_id}:d"),
            ]
        ]
    )


# ----- who and where ------------------------------------------------------------------------------


def _is_group(message: Message) -> bool:
    return message.chat.type in (ChatType.GROUP, ChatType.SUPERGROUP)


def _addressed_to_bot(message: Message, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """In groups: the message mentions the bot or replies to one of its messages."""
    return _addressed_to(message, context.bot)


def _addressed_to(message: Message, bot: Bot) -> bool:
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
        return True
    username = (bot.username or "").lower()
    for entity, value in message.parse_entities(
        [MessageEntity.MENTION, MessageEntity.TEXT_MENTION]
    ).items():
        if entity.type == MessageEntity.MENTION and value[1:].lower() == username:
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot.id:
            return True
    return False


def _without_mention(text: str, username: str | None) -> str:
    if not username:
        return text
    mention = "@" + username
    lowered = text.lower()
    idx = lowered.find(mention.lower())
    while idx != -1:
        text = text[:idx] + text[idx + len(mention) :]
        lowered = text.lower()
        idx = lowered.find(mention.lower())
    return text.strip()


# Telegram's stand-in sender of anonymous group admins' messages: such messages (and posts
# sent on behalf of a chat) are stored under it, never under the group's own id.
ANONYMOUS_SENDER_ID = 1087968824
ANONYMOUS_SENDER_NAME = "GroupAnonymousBot"


def _sender(message: Message) -> tuple[int, str | None, str | None, str | None]:
    """(user id, username, first name, language) of who sent ``message``."""
    user = message.from_user
    if message.sender_chat is not None or user is None:
        return ANONYMOUS_SENDER_ID, ANONYMOUS_SENDER_NAME, "Group", None
    return user.id, user.username, user.first_name, user.language_code


def _incoming(message: Message, text: str, received_at: float) -> Incoming:
    chat = message.chat
    user_id, username, first_name, language = _sender(message)
    return Incoming(
        text=text,
        user_id=user_id,
        chat_id=chat.id,
        message_id=message.message_id,
        chat_type=str(chat.type),
        chat_title=chat.title,
        username=username,
        first_name=first_name,
        language_code=language,
        received_at=received_at,
    )


async def _rate_ok(message: Message, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """Apply the per-user rate limit; tells the user once when it is exceeded."""
    user_id = _sender(message)[0]
    decision = await deps(context).service.check_rate(user_id)
    if decision is RateDecision.NOTIFY:
        logger.info("rate limit hit by a user in chat %s", message.chat.id)
        await send_text(context, message.chat.id, RATE_LIMITED_TEXT, **_reply_kwargs(message))
    return decision is RateDecision.ALLOW


async def rate_gate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Before every other handler (group -1): the per-user rate limit on each message meant
    for the bot, commands included, counted as it arrives; over the limit, nothing else runs."""
    message = update.message
    inbox = deps(context).inbox
    if message is None or (inbox is not None and inbox.handed_out_again(update.update_id)):
        return  # a stored message answered again was counted when it arrived
    is_command = bool(message.text and message.text.startswith("/"))
    if _is_group(message) and not is_command and not _addressed_to_bot(message, context):
        return  # group chatter the bot does not answer costs the user nothing
    if not await _rate_ok(message, context):
        if inbox is not None:
            await inbox.finish(update.update_id)  # dropped on purpose: not answered later
        raise ApplicationHandlerStop


def _reply_kwargs(message: Message) -> dict[str, Any]:
    if _is_group(message):
        return {
            "reply_parameters": ReplyParameters(
                message.message_id, allow_sending_without_reply=True
            )
        }
    return {}


# ----- user commands and messages -------------------------------------------------------------------


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the user."""
    await send_text(context, update.effective_chat.id, START_TEXT)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to use the bot, in Chinese and English."""
    await send_text(context, update.effective_chat.id, HELP_TEXT)


async def text_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a text message with the model and log the exchange; a stored message (the
    inbox) is marked done once answered, or kept to be answered again if the send failed."""
    inbox = deps(context).inbox
    if inbox is None:
        await _answer_text(update, context)
        return
    try:
        await _answer_text(update, context)
    except (BadRequest, Forbidden):
        await inbox.finish(update.update_id)  # sending it again would fail the same way
        raise
    except TelegramError as exc:  # Telegram unreachable: the reply waits, stored
        inbox.release(update.update_id)
        logger.warning(
            "reply in chat %s not sent (%s): kept, sent again within PENDING_RETRY_S=%gs",
            update.effective_chat.id if update.effective_chat else "?",
            exc,
            deps(context).pending_retry_s,
        )
        return
    except Exception:
        await inbox.finish(update.update_id)  # the user gets the apology of error_handler
        raise
    await inbox.finish(update.update_id)


async def _answer_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    received_at = time.monotonic()
    message = update.message
    if message is None or message.text is None:
        return
    text = message.text
    if _is_group(message):
        if not _addressed_to_bot(message, context):
            return
        text = _without_mention(text, context.bot.username)
    chat_id = message.chat.id

    async def deliver(reply: Reply) -> None:
        markup = feedback_keyboard(reply.exchange_id) if reply.exchange_id is not None else None
        await send_text(context, chat_id, reply.text, reply_markup=markup, **_reply_kwargs(message))

    # The service holds the chat's turn until the reply is sent: replies keep message order.
    incoming = _incoming(message, text, received_at)
    await typing_while(context, chat_id, deps(context).service.respond(incoming, deliver))


async def non_text_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer stickers, photos, voice and other non-text with a friendly note."""
    message = update.message
    if message is None:
        return
    if _is_group(message) and not _addressed_to_bot(message, context):
        return
    await send_text(context, message.chat.id, NON_TEXT_TEXT, **_reply_kwargs(message))


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Point users who typed an unknown command to /help."""
    await send_text(context, update.effective_chat.id, "没有这个命令，发送 /help 查看帮助。")


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask for confirmation before deleting everything stored about the user."""
    buttons = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("确定删除 / Delete", callback_data="fg:y"),
                InlineKeyboardButton("取消 / Cancel", callback_data="fg:n"),
            ]
        ]
    )
    await send_text(context, update.effective_chat.id, FORGET_ASK_TEXT, reply_markup=buttons)


async def forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Delete the clicking user's data (``fg:y``) or cancel (``fg:n``)."""
    query = update.callback_query
    if query.data == "fg:y":
        removed = await deps(context).service.forget(query.from_user.id)
        text = FORGET_DONE_TEXT.format(
            exchanges=removed.get("exchanges", 0), feedback=removed.get("feedback", 0)
        )
    else:
        text = FORGET_CANCEL_TEXT
    await query.answer()
    with contextlib.suppress(BadRequest):
        await query.edit_message_text(text)


def _parse_button(query: CallbackQuery, choices: str) -> tuple[int, str] | None:
    """(exchange id, choice) of a ``xx:ID:C`` button pressed on the message that carries it,
    or None for anything else: garbage, an unknown choice, or data that no button of that
    message holds (a forged callback naming another exchange)."""
    parts = (query.data or "").split(":")
    if len(parts) != 3 or parts[2] not in choices or not parts[1].isdigit():
        return None
    markup = getattr(query.message, "reply_markup", None)
    buttons = [b for row in (markup.inline_keyboard if markup else ()) for b in row]
    if not any(b.callback_data == query.data for b in buttons):
        return None
    return int(parts[1]), parts[2]


async def feedback_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Store 👍/👎 on an exchange of this chat and mark the chosen button."""
    query = update.callback_query
    parsed = _parse_button(query, "ud")
    if parsed is None or query.message is None:
        await query.answer()
        return
    exchange_id, value = parsed[0], (1 if parsed[1] == "u" else -1)
    stored = await deps(context).service.feedback(
        exchange_id, query.from_user.id, value, chat_id=query.message.chat.id
    )
    await query.answer("谢谢你的反馈！" if stored else "这条对话已被删除。")
    if stored:
        with contextlib.suppress(BadRequest):  # "message is not modified"
            await query.edit_message_reply_markup(feedback_keyboard(exchange_id, value))


async def unknown_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any other callback: answered (so no button keeps spinning), nothing changed."""
    await update.callback_query.answer()


# ----- errors and registration ----------------------------------------------------------------------


async def error_handler(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log every handler error with its traceback; tell the user something went wrong."""
    if isinstance(context.error, Forbidden):  # the user blocked the bot or left the chat
        logger.info("cannot write to a chat any more: %s", context.error)
        return
    logger.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.message is not None:
        with contextlib.suppress(TelegramError, KeyError):
            await send_text(context, update.message.chat.id, ERROR_TEXT)


NON_TEXT = (
    filters.Sticker.ALL
    | filters.PHOTO
    | filters.VOICE
    | filters.VIDEO
    | filters.VIDEO_NOTE
    | filters.AUDIO
    | filters.Document.ALL
    | filters.ANIMATION
    | filters.LOCATION
    | filters.CONTACT
    | filters.POLL
    | filters.Dice.ALL
)


TEXT_MESSAGE = filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND


def answerable(update: Update, bot: Bot) -> bool:
    """Whether ``update`` is a message :func:`text_message` answers (what the inbox stores)."""
    message = update.message
    if message is None or not TEXT_MESSAGE.check_update(update):
        return False
    return not _is_group(message) or _addressed_to(message, bot)


def _use_inbox(application: Application, bot_deps: BotDeps) -> None:
    """Store received messages (``bot.inbox``) when polling through a TolerantBot and the
    service logs to a database."""
    bot, sessions = application.bot, bot_deps.service.sessions
    if bot_deps.inbox is None and sessions is not None and isinstance(bot, TolerantBot):
        bot_deps.inbox = Inbox(
            sessions,
            wanted=lambda update: answerable(update, bot),
            max_age_s=bot_deps.pending_max_age_s,
            retry_s=bot_deps.pending_retry_s,
        )
        attach_inbox(application, bot, bot_deps.inbox)


def register(application: Application, bot_deps: BotDeps) -> None:
    """Add all handlers to ``application``; edited messages are deliberately ignored."""
    application.bot_data["deps"] = bot_deps
    _use_inbox(application, bot_deps)
    new = filters.UpdateType.MESSAGE  # not edits, not channel posts

    def command(name: str, callback: Callable[..., Awaitable[None]]) -> CommandHandler:
        return CommandHandler(name, callback, filters=new)

    application.add_handler(TypeHandler(Update, rate_gate), group=-1)
    application.add_handlers(
        [
            command("start", start),
            command("help", help_command),
            command("forget", forget),
            MessageHandler(new & filters.COMMAND & filters.ChatType.PRIVATE, unknown_command),
            MessageHandler(TEXT_MESSAGE, text_message),
            MessageHandler(new & NON_TEXT, non_text_message),
            CallbackQueryHandler(feedback_button, pattern=r"^fb:"),
            CallbackQueryHandler(forget_button, pattern=r"^fg:"),
            CallbackQueryHandler(unknown_button),
        ]
    )
    application.add_error_handler(error_handler)
