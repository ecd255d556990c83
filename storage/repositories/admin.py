"""What admins do and leave behind: the audit, training runs and promotions."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from xianliao.storage.models import AdminAction, Promotion, TrainingRun, utcnow
from xianliao.storage.repositories._json import to_json as _json


class AuditRepository:
    """The audit of admin commands and refused attempts."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self, user_id: int, action: str, *, allowed: bool, detail: str | None = None
    ) -> AdminAction:
        row = AdminAction(user_id=user_id, action=action, allowed=allowed, detail=detail)
        self.session.add(row)
        return row

    def recent(self, limit: int = 50) -> list[AdminAction]:
        stmt = select(AdminAction).order_by(AdminAction.id.desc()).limit(limit)
        return list(self.session.scalars(stmt))


class TrainingRunRepository:
    """Retraining runs started from the bot."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def create(
        self, *, started_by: int | None, params: dict[str, Any], status: str = "queued"
    ) -> TrainingRun:
        run = TrainingRun(started_by=started_by, params=_json(params), status=status)
        self.session.add(run)
        self.session.flush()
        return run

    def get(self, run_id: int) -> TrainingRun | None:
        return self.session.get(TrainingRun, run_id)

    def set_status(self, run_id: int, status: str) -> TrainingRun | None:
        run = self.get(run_id)
        if run is not None:
            run.status = status
        return run

    def finish(
        self,
        run_id: int,
        *,
        status: str,
        metrics: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        log: str | None = None,
    ) -> TrainingRun | None:
        """Mark a run finished (``succeeded`` or ``failed``) with its results."""
        run = self.get(run_id)
        if run is None:
            return None
        run.status = status
        run.finished_at = utcnow()
        if metrics is not None:
            run.metrics = _json(metrics)
        if checkpoint_path is not None:
            run.checkpoint_path = checkpoint_path
        if log is not None:
            run.log = log
        return run

    def recent(self, limit: int = 20) -> list[TrainingRun]:
        stmt = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
        return list(self.session.scalars(stmt))

    def active(self) -> list[TrainingRun]:
        """Runs not finished yet (queued or running)."""
        stmt = select(TrainingRun).where(TrainingRun.finished_at.is_(None))
        return list(self.session.scalars(stmt.order_by(TrainingRun.id)))


class PromotionRepository:
    """Checkpoints put into service, newest last."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        *,
        checkpoint: str,
        previous_checkpoint: str | None,
        promoted_by: int | None,
        run_id: int | None = None,
        forced: bool = False,
        metrics: dict[str, Any] | None = None,
    ) -> Promotion:
        row = Promotion(
            run_id=run_id,
            checkpoint=checkpoint,
            previous_checkpoint=previous_checkpoint,
            promoted_by=promoted_by,
            forced=forced,
            metrics=None if metrics is None else _json(metrics),
        )
        self.session.add(row)
        self.session.flush()
        return row

    def latest(self) -> Promotion | None:
        return self.session.scalar(select(Promotion).order_by(Promotion.id.desc()).limit(1))

    def recent(self, limit: int = 20) -> list[Promotion]:
        stmt = select(Promotion).order_by(Promotion.id.desc()).limit(limit)
        return list(self.session.scalars(stmt))

    def rollback_target(self) -> Promotion | None:
        """The newest promotion not yet undone: rollbacks pop promotions like a stack (each
        rollback is itself recorded as a promotion with ``metrics.rollback_of``)."""
        undone: set[int] = set()
        for row in self.session.scalars(select(Promotion).order_by(Promotion.id.desc())):
            of = json.loads(row.metrics or "{}").get("rollback_of")
            if of is not None:
                undone.add(int(of))
            elif row.id not in undone:
                return row
        return None
