"""Every replica serves the model that was promoted last, wherever the promotion was made.

A promotion (``xianliao promote``, /promote, an automatic retrain, a rollback) copies the
checkpoint atomically to ``MODEL_PATH`` and records a row in the ``promotions`` table. Replicas
share both: the database, and ``MODEL_PATH`` on storage every replica mounts (a volume, NFS).
Each replica checks, every ``MODEL_WATCH_S``, the newest promotion id and the file's signature
(mtime and size, for a checkpoint copied there by hand), and loads ``MODEL_PATH`` again when
either changed. The promotion row is the signal a shared file system cannot be trusted to give
(mtime caching over NFS); the file itself never appears half-written, as it is renamed into place.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from telegram.ext import ContextTypes

from xianliao.bot.service import DialogueService
from xianliao.storage.database import Database
from xianliao.storage.db import database_error_line
from xianliao.storage.repositories import PromotionRepository

logger = logging.getLogger(__name__)


def file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def latest_promotion(db: Database | None) -> int | None:
    """The newest promotion's id (None: none yet, or no database)."""
    if db is None:
        return None
    with db.read() as session:
        row = PromotionRepository(session).latest()
        return None if row is None else row.id


class ModelWatch:
    """The job that reloads ``path`` when a promotion was recorded or the file changed."""

    def __init__(self, service: DialogueService, path: Path, db: Database | None) -> None:
        self.service = service
        self.path = Path(path)
        self.db = db
        self.signature = file_signature(self.path)
        self.promotion: int | None = None
        self._started = False
        self._db_failing = False

    async def _promotion(self) -> int | None:
        try:
            promotion = await asyncio.to_thread(latest_promotion, self.db)
        except Exception as exc:  # keep serving; the file's signature still counts
            if not self._db_failing:
                logger.warning("cannot read the promotions: %s", database_error_line(exc))
            self._db_failing = True
            return self.promotion
        self._db_failing = False
        return promotion

    async def check(self, context: ContextTypes.DEFAULT_TYPE | None = None) -> str | None:
        """One look; returns the new version when the model was reloaded."""
        promotion = await self._promotion()
        signature = file_signature(self.path)
        if not self._started:  # the model loaded at start-up is the latest promotion's
            self._started, self.promotion = True, promotion
        promoted = promotion is not None and promotion != self.promotion
        if signature is None or (not promoted and signature == self.signature):
            return None
        old = self.service.model_version
        try:
            version = await self.service.reload(self.path)
        except Exception as exc:  # a bad file: keep serving the old model, try again later
            logger.warning("MODEL_PATH changed but did not load, keeping %s: %s", old, exc)
            self.signature = signature  # not again until it changes again
            return None
        self.promotion, self.signature = promotion, signature
        if version != old:
            why = f"promotion {promotion}" if promoted else "MODEL_PATH changed"
            logger.info("%s: now serving %s (was %s)", why, version, old)
        return version
