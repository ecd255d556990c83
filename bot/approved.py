"""The answers admins approved or edited, offered to the model beside the reply index.

An admin's edited answer is served as soon as it is saved, by every process that shares the
database (the bot, its replicas, ``xianliao chat``), without retraining: before answering, the
service asks the database whether the review state changed (at most once every
``refresh_s`` seconds, one cheap query) and, if so, rebuilds a small in-memory index of the
approved pairs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from xianliao.model.reply_index import Hit, ReplyIndex
from xianliao.model.text import Tokenizer
from xianliao.storage.db import database_error_line
from xianliao.storage.repositories import ExchangeRepository

logger = logging.getLogger(__name__)

APPROVED = "approved"  # the source name of these answers (the model weighs them more)


class ApprovedReplies:
    """``hits(texts)``: per text, the approved answers to the most similar logged questions."""

    def __init__(
        self, sessions: sessionmaker[Session], *, refresh_s: float = 1.0, k: int = 5
    ) -> None:
        self.sessions = sessions
        self.refresh_s = refresh_s
        self.k = k
        self._tokenizer = Tokenizer()
        self._index: ReplyIndex | None = None
        self._mark: tuple | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._failing = False

    def hits(self, texts: Sequence[str]) -> list[list[Hit]]:
        with self._lock:
            self._refresh()
            if self._index is None or self._index.size == 0:
                return [[] for _ in texts]
            return [self._index.search(self._tokenizer.tokenize(t), self.k) for t in texts]

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.refresh_s:
            return
        self._checked = now
        try:
            with self.sessions() as session:
                repo = ExchangeRepository(session)
                mark = repo.approved_mark()
                if mark == self._mark:
                    return
                pairs = list(repo.iter_training_pairs(distinct=True))
        except SQLAlchemyError as exc:
            if not self._failing:  # once, not per message
                logger.warning("approved answers unavailable: %s", database_error_line(exc))
            self._failing = True
            return
        self._failing = False
        index = ReplyIndex.memory(
            (self._tokenizer.tokenize(q), a, APPROVED) for q, a in pairs if a and a.strip()
        )
        if self._index is not None:
            self._index.close()
        self._index, self._mark = index, mark
        logger.info("serving %d approved answers", index.size)

    def invalidate(self) -> None:
        """Ask the database again before the next answer (a review was made here)."""
        self._checked = float("-inf")

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None
