"""The bot's ``getUpdates``: it survives updates it cannot parse, and loses none in a crash.

python-telegram-bot parses a whole ``getUpdates`` batch at once; one update it cannot read (a
poll without ``persistent_id``, as some older self-hosted Bot API servers send) fails the
batch, the offset never moves past it, and polling retries the same batch for ever. Here such
an update is logged once, with its id, and replaced by an empty ``Update`` of the same id that
no handler takes, so the offset moves on and every other update is answered.

With an inbox (:mod:`bot.inbox`), the messages of each batch are stored before the batch is
returned, that is before the next ``getUpdates`` confirms them to Telegram; updates stored
earlier and not finished (before a restart, or whose reply failed) are returned with the batch;
an update stored before that comes again is replaced by an empty one, so nothing is answered
twice.

In webhook mode the updates arrive through the Application's queue instead:
:class:`ClaimingQueue` stores (claims) each message before the webhook request is answered, so a
replica killed after the answer still has it stored, and an update another replica (or an
earlier delivery) claimed is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.ext import ExtBot

if TYPE_CHECKING:
    from telegram.ext import Application, ContextTypes

    from xianliao.bot.inbox import Inbox

logger = logging.getLogger(__name__)

PARSE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)
BOT_API_MAX_LIMIT = 100  # getUpdates' default and largest batch


class TolerantBot(ExtBot):
    """``ExtBot`` whose ``get_updates`` skips the updates it cannot parse and stores the
    messages in ``inbox`` when one is set (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before Bot.__init__ freezes the object's attributes; filled by use_inbox().
        self._inbox: list[Inbox] = []
        super().__init__(*args, **kwargs)

    def use_inbox(self, inbox: Inbox) -> None:
        self._inbox[:] = [inbox]

    @property
    def inbox(self) -> Inbox | None:
        return self._inbox[0] if self._inbox else None

    async def get_updates(self, offset: int | None = None, *args: Any, **kwargs: Any):
        inbox = self.inbox
        if inbox is None:
            return await self._fetch(offset, *args, **kwargs)
        replay = await inbox.replay(self)
        if replay and len(args) < 2:
            kwargs["timeout"] = 0  # answer the stored ones now, not after a long poll
        fetched = await self._fetch(offset, *args, **kwargs)
        known = await inbox.received(fetched)
        limit = kwargs.get("limit", args[0] if args else None) or BOT_API_MAX_LIMIT
        if len(fetched) >= limit:
            # More may wait at Telegram: hand out no stored update past this batch, or the
            # next offset would confirm updates not fetched (so not stored) yet.
            last = fetched[-1].update_id
            inbox.defer([u for u in replay if u.update_id > last])
            replay = [u for u in replay if u.update_id <= last]
        out = {u.update_id: (Update(u.update_id) if u.update_id in known else u) for u in fetched}
        out.update((u.update_id, u) for u in replay)
        return tuple(out[k] for k in sorted(out))

    async def _fetch(self, offset: int | None, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        try:
            return tuple(await super().get_updates(offset, *args, **kwargs))
        except PARSE_ERRORS:
            pass  # PTB logged it; read the same batch again, one update at a time
        limit = kwargs.get("limit", args[0] if args else None)
        # Bot._post is python-telegram-bot's one request path (what get_updates itself calls).
        raw = await self._post("getUpdates", {"offset": offset, "limit": limit, "timeout": 0})
        return tuple(self._parse_one(item) for item in raw)

    def _parse_one(self, item: dict) -> Update:
        try:
            return Update.de_json(item, self)
        except PARSE_ERRORS as exc:
            update_id = int(item.get("update_id", 0))
            logger.warning(
                "skipped update %s: python-telegram-bot cannot read it (%s)",
                update_id,
                type(exc).__name__,
            )
            return Update(update_id)


class ClaimingQueue(asyncio.Queue):
    """The Application's update queue: in webhook mode each message is claimed in the inbox
    (:meth:`bot.inbox.Inbox.claim`) before it is queued, and dropped when it was claimed
    already. PTB's webhook server answers Telegram only after ``put`` returns, so a claimed
    update is stored before Telegram considers it delivered. Polled updates were stored by
    :class:`TolerantBot` and pass straight through."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._inbox: list[Inbox] = []

    def use_inbox(self, inbox: Inbox) -> None:
        self._inbox[:] = [inbox]

    async def put(self, item: object) -> None:
        inbox = self._inbox[0] if self._inbox else None
        if inbox is not None and isinstance(item, Update) and not await inbox.claim(item):
            return
        await super().put(item)


def attach_inbox(application: Application, bot: TolerantBot, inbox: Inbox) -> None:
    """Store received messages in ``inbox``: polled ones through ``bot``, webhook ones through
    the queue (when it is a :class:`ClaimingQueue`), whose stored updates nobody is answering
    (a crashed replica's, a failed reply) a job hands out every ``inbox.retry_s``."""
    bot.use_inbox(inbox)
    queue = application.update_queue
    if not isinstance(queue, ClaimingQueue):
        return
    queue.use_inbox(inbox)
    if application.job_queue is None:
        return

    async def take_over(context: ContextTypes.DEFAULT_TYPE) -> None:
        for update in await inbox.take_over(context.bot):
            await queue.put(update)

    application.job_queue.run_repeating(take_over, inbox.retry_s, first=1.0)
