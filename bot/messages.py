"""What goes in and out of the dialogue service: messages, replies, the per-user rate limit.

Nothing here touches the model, the database or Telegram, so the handlers, the terminal chat and
every part of the service share these types without importing each other.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

TELEGRAM_MAX_CHARS = 4096  # Telegram's limit, counted here in UTF-16 code units (the strict way)
EMPTY_INPUT_REPLY = "说点什么吧～"
FALLBACK_REPLY = "嗯嗯。"
TOO_LONG_REPLY = "消息太长啦，请控制在 {limit} 个字以内再发给我～"


@dataclass(frozen=True)
class Incoming:
    """One message to answer, with who sent it and where."""

    text: str
    user_id: int
    chat_id: int
    message_id: int | None = None
    chat_type: str = "private"
    chat_title: str | None = None
    username: str | None = None
    first_name: str | None = None
    language_code: str | None = None
    source: str = "telegram"
    received_at: float = field(default_factory=time.monotonic)  # time.monotonic()


@dataclass(frozen=True)
class Reply:
    """The answer to send; ``exchange_id`` is None when nothing was logged."""

    text: str
    exchange_id: int | None = None
    duplicate: bool = False  # the message was already answered (a redelivered update)
    from_model: bool = True


class RateDecision(Enum):
    ALLOW = "allow"
    NOTIFY = "notify"  # over the limit: tell the user once
    DROP = "drop"  # over the limit and already told


class RateLimiter:
    """At most ``limit`` messages per user in any ``window_s`` seconds (sliding window)."""

    MAX_TRACKED = 10_000  # users remembered before idle ones are pruned

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[int, deque[float]] = {}
        self._told: set[int] = set()
        self._lock = threading.Lock()

    def check(self, user_id: int) -> RateDecision:
        if self.limit <= 0:
            return RateDecision.ALLOW
        now = self.clock()
        with self._lock:
            if len(self._hits) > self.MAX_TRACKED and user_id not in self._hits:
                self._prune(now)
            hits = self._hits.setdefault(user_id, deque())
            while hits and now - hits[0] >= self.window_s:
                hits.popleft()
            if len(hits) < self.limit:
                hits.append(now)
                self._told.discard(user_id)
                return RateDecision.ALLOW
            if user_id in self._told:
                return RateDecision.DROP
            self._told.add(user_id)
            return RateDecision.NOTIFY

    def _prune(self, now: float) -> None:
        """Drop users with no message inside the window (keeps memory bounded)."""
        for uid in [u for u, h in self._hits.items() if not h or now - h[-1] >= self.window_s]:
            del self._hits[uid]
            self._told.discard(uid)

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._hits.pop(user_id, None)
            self._told.discard(user_id)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def fit_message(text: str, limit: int = TELEGRAM_MAX_CHARS) -> str:
    """Strip ``text`` and cut it to ``limit`` UTF-16 units; never returns an empty string."""
    text = text.strip()
    if utf16_len(text) > limit:
        out, used = [], 0
        for ch in text:
            n = 2 if ord(ch) > 0xFFFF else 1
            if used + n > limit - 1:
                break
            out.append(ch)
            used += n
        text = "".join(out).rstrip() + "…"
    return text or FALLBACK_REPLY
