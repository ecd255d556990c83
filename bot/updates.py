"""A bot that survives updates it cannot parse.

python-telegram-bot parses a whole ``getUpdates`` batch at once; one update it cannot read (a
poll without ``persistent_id``, as some older self-hosted Bot API servers send) fails the
batch, the offset never moves past it, and polling retries the same batch for ever. Here such
an update is logged once, with its id, and replaced by an empty ``Update`` of the same id that
no handler takes, so the offset moves on and every other update is answered.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.ext import ExtBot

logger = logging.getLogger(__name__)

PARSE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


class TolerantBot(ExtBot):
    """``ExtBot`` whose ``get_updates`` skips the updates it cannot parse (see module doc)."""

    async def get_updates(self, offset: int | None = None, *args: Any, **kwargs: Any):
        try:
            return await super().get_updates(offset, *args, **kwargs)
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
