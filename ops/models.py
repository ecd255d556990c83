"""Promotion and rollback of checkpoints: what goes live at ``MODEL_PATH``, and its history.

``promote`` copies a checkpoint over ``MODEL_PATH`` atomically after checking that it loads,
archives the one it replaces under ``<model dir>/history/``, and records the promotion in the
database; ``rollback`` puts the previous one back (recorded as a forced promotion). A running bot
swaps models between two messages when the file changes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from xianliao.storage.database import Database
from xianliao.storage.db import database_error_line
from xianliao.storage.repositories import PromotionRepository


class PromotionError(Exception):
    """A checkpoint that cannot go live, or nothing to roll back to; one line."""


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


def check_loads(candidate: str | os.PathLike) -> None:
    """``PromotionError`` unless ``candidate`` loads as a model."""
    from xianliao.model.chatbot import ChatBot
    from xianliao.model.checkpoint import CheckpointError

    try:
        ChatBot.load(Path(candidate))
    except CheckpointError as exc:
        raise PromotionError(f"not promoted: {exc}") from None


def promote(
    candidate: str | os.PathLike,
    model_path: str | os.PathLike,
    db: Database,
    *,
    promoted_by: int | None,
    run_id: int | None = None,
    forced: bool = False,
    metrics: dict | None = None,
) -> dict[str, Any]:
    """Put ``candidate`` live at ``model_path`` (atomically), archive the replaced checkpoint and
    record the promotion. A candidate that does not load is never promoted. Returns
    ``{"promotion_id", "checkpoint" (the archived copy), "previous"}``."""
    candidate, model_path = Path(candidate), Path(model_path)
    check_loads(candidate)
    history = model_path.parent / "history"
    archived_new = _archive(candidate, history)
    previous = _archive(model_path, history) if model_path.exists() else None
    _atomic_copy(archived_new, model_path)
    try:
        with db.begin() as session:
            row = PromotionRepository(session).add(
                checkpoint=str(archived_new),
                previous_checkpoint=None if previous is None else str(previous),
                promoted_by=promoted_by,
                run_id=run_id,
                forced=forced,
                metrics=metrics,
            )
            promotion_id = row.id
    except SQLAlchemyError as exc:  # e.g. locked past the busy timeout
        raise PromotionError(
            f"{candidate} is live at {model_path}, but the promotion was not recorded: "
            f"{database_error_line(exc)}"
        ) from None
    return {
        "promotion_id": promotion_id,
        "checkpoint": str(archived_new),
        "previous": None if previous is None else str(previous),
    }


def rollback(model_path: str | os.PathLike, db: Database, *, promoted_by: int | None) -> dict:
    """Put back the checkpoint that the newest promotion not yet rolled back replaced, and
    record that as a promotion: rolling back twice steps back twice (a stack)."""
    try:
        with db.read() as session:
            latest = PromotionRepository(session).rollback_target()
    except SQLAlchemyError as exc:
        raise PromotionError(f"cannot read the promotions: {database_error_line(exc)}") from None
    if latest is None or not latest.previous_checkpoint:
        raise PromotionError(
            "nothing to roll back to: no promotion that replaced a model is left to undo"
        )
    if not Path(latest.previous_checkpoint).is_file():
        raise PromotionError(f"the previous model {latest.previous_checkpoint} is gone")
    return promote(
        latest.previous_checkpoint,
        model_path,
        db,
        promoted_by=promoted_by,
        forced=True,
        metrics={"rollback_of": latest.id},
    )


def history(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The newest promotions first, as JSON-ready dicts (rollbacks have ``rollback_of``)."""
    with db.read() as session:
        rows = PromotionRepository(session).recent(limit)
        out = []
        for r in rows:
            try:
                metrics = json.loads(r.metrics) if r.metrics else None
            except ValueError:
                metrics = None
            out.append(
                {
                    "id": r.id,
                    "run_id": r.run_id,
                    "checkpoint": r.checkpoint,
                    "previous_checkpoint": r.previous_checkpoint,
                    "promoted_by": r.promoted_by,
                    "forced": r.forced,
                    "rollback_of": (metrics or {}).get("rollback_of"),
                    "metrics": metrics,
                    "promoted_at": _iso(r.created_at),
                }
            )
        return out


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
