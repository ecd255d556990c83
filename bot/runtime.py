"""Start-up shared by the entry points (``xianliao bot`` and ``xianliao chat``), no Telegram.

Loading the model, opening the database and configuring logging, each failing with one line a
user can act on (:class:`StartupError`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from xianliao.bot.config import Settings
from xianliao.bot.service import DialogueService, ReplyModel
from xianliao.storage.database import Database, DatabaseUnavailable
from xianliao.storage.db import sqlite_file

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """A problem that stops the program; the message is one line that says what to do."""


def _load(settings: Settings, path: Path, workers: int) -> ReplyModel:
    """A ``model.chatbot.ChatBot`` in this process, or a pool of ``workers`` processes."""
    if workers > 0:
        from xianliao.bot.model_workers import ModelWorkerPool

        return ModelWorkerPool(
            path,
            workers=workers,
            device=settings.model_device,
            threads=settings.torch_threads or 1,
            quantize=settings.model_quantize,
            index_path=settings.reply_index,
            blocklist=settings.reply_blocklist,
        )
    from xianliao.model.chatbot import ChatBot

    return ChatBot.load(
        path,
        device=settings.model_device,
        threads=settings.torch_threads or 1,
        quantize=settings.model_quantize,
        index_path=settings.reply_index,
        blocklist=settings.reply_blocklist,
    )


def load_model(settings: Settings, path: Path | None = None, workers: int = 0) -> ReplyModel:
    """Load the checkpoint (``MODEL_PATH`` unless ``path``): in this process, or in
    ``workers`` worker processes (:class:`bot.model_workers.ModelWorkerPool`)."""
    from xianliao.model.errors import CheckpointError, DeviceError

    path = Path(path or settings.model_path)
    if not path.exists():
        raise StartupError(
            f"no model checkpoint at {path}: train one with 'xianliao train' "
            "(or 'xianliao quickstart'), or set MODEL_PATH in .env to a checkpoint file"
        )
    try:
        return _load(settings, path, workers)
    except OSError as exc:  # REPLY_BLOCKLIST
        raise StartupError(f"setting REPLY_BLOCKLIST: {exc.strerror}: {exc.filename}") from None
    except DeviceError as exc:
        raise StartupError(f"setting MODEL_DEVICE: {exc} (set MODEL_DEVICE=cpu)") from None
    except CheckpointError as exc:
        raise StartupError(
            f"cannot use the checkpoint {path}: {exc} (train a new one with 'xianliao train' "
            "or 'xianliao quickstart', or point MODEL_PATH at another file)"
        ) from None


def model_loader(settings: Settings, workers: int = 0):  # noqa: ANN201 - a ModelLoader
    """A loader for /reload: the same device, threads and worker processes as at start-up."""

    def load(path: Path) -> ReplyModel:
        return _load(settings, Path(path), workers)

    return load


def open_database(database_url: str) -> Database:
    """The process's database (one per process), its schema created or upgraded."""
    try:
        return Database.open(database_url)
    except DatabaseUnavailable as exc:
        raise StartupError(str(exc)) from None


def open_sessions(database_url: str):  # noqa: ANN201 - sessionmaker
    """Engine + schema (created or upgraded) + session factory for ``DATABASE_URL``."""
    return open_database(database_url).sessions


def create_service(
    settings: Settings,
    *,
    model_path: Path | None = None,
    log: bool = True,
    workers: int = 0,
    db: Database | None = None,
) -> DialogueService:
    """Load the model (in ``workers`` worker processes, or here when 0), open the database
    (``db``, or DATABASE_URL; none when ``log`` is False) and check both work."""
    model = load_model(settings, model_path, workers)
    sessions = None
    if log:
        fresh = db is None and _new_sqlite_file(settings.database_url)
        sessions = (db or open_database(settings.database_url)).sessions
        _remember_database(settings, fresh)
    service = DialogueService(
        model,
        sessions=sessions,
        model_path=Path(model_path or settings.model_path),
        load_model=model_loader(settings, workers),
        decode_options=settings.decode_options,
        max_input_chars=settings.max_input_chars,
        rate_limit=settings.rate_limit_messages,
        rate_window_s=settings.rate_limit_window_s,
        max_batch=settings.model_max_batch,
    )
    try:
        service.check_model()
    except (ValueError, TypeError) as exc:
        service.close()
        raise StartupError(f"DECODE_OPTIONS does not suit this model: {exc}") from None
    return service


# Beside the model, which outlives a deleted data folder: when the bot last opened which SQLite
# file, so that a start that finds it gone says so instead of silently beginning an empty log.
DATABASE_MEMO = ".xianliao-database.json"


def _new_sqlite_file(database_url: str) -> bool:
    """Whether DATABASE_URL is a SQLite file that does not exist yet (about to be created)."""
    try:
        path = sqlite_file(database_url)
    except ArgumentError:
        return False
    return path is not None and not path.exists()


def _remember_database(settings: Settings, created: bool) -> None:
    """Warn (once, at start) when the SQLite file this bot logged to before has disappeared and
    an empty one was just created in its place; then note the database for the next start."""
    memo = Path(settings.model_path).parent / DATABASE_MEMO
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    try:
        seen = json.loads(memo.read_text("utf-8")) if memo.exists() else {}
    except (OSError, ValueError):
        seen = {}
    if created and url in seen:
        logger.warning(
            "the database %s was created empty, but this bot logged to it since %s: it was "
            "deleted or moved, and the conversations logged before are not in it",
            url,
            seen[url],
        )
    if created or url not in seen:
        seen[url] = datetime.now(UTC).isoformat(timespec="seconds")
        with contextlib.suppress(OSError):  # a read-only model folder: no memo, no harm
            memo.write_text(json.dumps(seen, ensure_ascii=False), "utf-8")


def valid_text(text: str) -> str:
    """``text`` with what is not valid Unicode (the surrogate escapes Python puts in argv, and
    in a stream read with ``surrogateescape``, for bytes that are not UTF-8) replaced by U+FFFD:
    such text fails later, in the segmenter or in the database driver."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def tolerate_bad_bytes(stream: TextIO) -> None:
    """Read bytes that are not UTF-8 as U+FFFD instead of failing the whole read (a pasted
    binary, a terminal in another encoding): one bad line must not end a chat."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")


class RedactFilter(logging.Filter):
    """Replace secrets (the bot token) in every log record, traceback included."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<TOKEN>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._clean(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


def setup_logging(level: str = "INFO", secrets: list[str] | None = None) -> None:
    """Log to stderr; quiet ``httpx`` (its URLs contain the token) and redact secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(secrets or []))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
