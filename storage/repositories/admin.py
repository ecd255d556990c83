"""What admins leave behind: the audit of their commands and the promotions of checkpoints."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from xianliao.storage.models import AdminAction, Promotion
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
