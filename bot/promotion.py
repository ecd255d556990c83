"""Promotion and rollback of checkpoints: what goes live at ``MODEL_PATH``.

``promote`` copies a checkpoint over ``MODEL_PATH`` atomically after checking that it loads,
archives the one it replaces under ``<model dir>/history/``, and records the promotion in the
database; ``rollback`` puts the previous one back (recorded as a forced promotion). The bot
swaps models between two messages when the file changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class PromotionError(Exception):
    """A checkpoint that cannot go live, or nothing to roll back to."""


def _atomic_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _archive(path: Path, history: Path) -> Path:
    """Keep a copy of a checkpoint as ``history/<sha256 prefix>.pt`` (once per content)."""
    from xianliao.model.errors import file_digest

    dest = history / f"{file_digest(path)[:16]}.pt"
    if not dest.exists():
        _atomic_copy(path, dest)
    return dest


def _open(database_url: str, *, create: bool):  # noqa: ANN202 - an Engine
    """The database, or ``PromotionError`` with one line (a bad URL, a file that is not a
    database, none there when ``create`` is False: then nothing was promoted with it)."""
    from xianliao.bot.runtime import MissingDatabase, StartupError, open_database

    try:
        return open_database(database_url, create=create)
    except MissingDatabase as exc:
        raise PromotionError(f"nothing to roll back to: {exc}") from None
    except StartupError as exc:
        raise PromotionError(str(exc)) from None


def promote(
    candidate: str | os.PathLike,
    model_path: str | os.PathLike,
    database_url: str,
    *,
    promoted_by: int | None,
    run_id: int | None = None,
    forced: bool = False,
    metrics: dict | None = None,
) -> dict:
    """Put ``candidate`` live at ``model_path`` (atomically), archive the replaced checkpoint and
    record the promotion. A candidate that does not load is never promoted."""
    from sqlalchemy.exc import SQLAlchemyError

    from xianliao.model.chatbot import ChatBot
    from xianliao.model.checkpoint import CheckpointError
    from xianliao.storage.db import database_error_line, session_factory
    from xianliao.storage.repositories import PromotionRepository

    candidate, model_path = Path(candidate), Path(model_path)
    try:
        ChatBot.load(candidate)
    except CheckpointError as exc:
        raise PromotionError(f"not promoted: {exc}") from None
    # Open the database before anything goes live, so that a bad DATABASE_URL changes nothing.
    engine = _open(database_url, create=True)
    try:
        history = model_path.parent / "history"
        archived_new = _archive(candidate, history)
        previous = _archive(model_path, history) if model_path.exists() else None
        _atomic_copy(archived_new, model_path)
        with session_factory(engine)() as session:
            row = PromotionRepository(session).add(
                checkpoint=str(archived_new),
                previous_checkpoint=None if previous is None else str(previous),
                promoted_by=promoted_by,
                run_id=run_id,
                forced=forced,
                metrics=metrics,
            )
            session.commit()
            promotion_id = row.id
    except SQLAlchemyError as exc:  # e.g. locked past the busy timeout
        raise PromotionError(
            f"{candidate} is live at {model_path}, but the promotion was not recorded: "
            f"{database_error_line(exc)}"
        ) from None
    finally:
        engine.dispose()
    return {
        "promotion_id": promotion_id,
        "checkpoint": str(archived_new),
        "previous": None if previous is None else str(previous),
    }


def rollback(model_path: str | os.PathLike, database_url: str, *, promoted_by: int | None) -> dict:
    """Put back the checkpoint that the newest promotion not yet rolled back replaced, and
    record that as a promotion: rolling back twice steps back twice (a stack)."""
    from sqlalchemy.exc import SQLAlchemyError

    from xianliao.storage.db import database_error_line, session_factory
    from xianliao.storage.repositories import PromotionRepository

    engine = _open(database_url, create=False)  # no database: no promotion to undo
    try:
        with session_factory(engine)() as session:
            latest = PromotionRepository(session).rollback_target()
    except SQLAlchemyError as exc:
        raise PromotionError(f"cannot read the promotions: {database_error_line(exc)}") from None
    finally:
        engine.dispose()
    if latest is None or not latest.previous_checkpoint:
        raise PromotionError(
            "nothing to roll back to: no promotion that replaced a model is left to undo"
        )
    if not Path(latest.previous_checkpoint).is_file():
        raise PromotionError(f"the previous model {latest.previous_checkpoint} is gone")
    return promote(
        latest.previous_checkpoint,
        model_path,
        database_url,
        promoted_by=promoted_by,
        forced=True,
        metrics={"rollback_of": latest.id},
    )
