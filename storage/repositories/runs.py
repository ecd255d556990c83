"""Training runs, and the lease that keeps retraining to one run at a time.

The rule must hold when the bot and ``xianliao retrain`` run on different hosts that share one
database, so it lives in the database, not in a local pid: the process of a run takes the lease
with :meth:`TrainingRunRepository.acquire` and renews it with
:meth:`TrainingRunRepository.heartbeat`; it holds it while its ``heartbeat_at`` is fresher than
the callers' ``ttl``. A run whose heartbeat stopped (its process or host died), or that was
queued and never taken up, is *stale*: it blocks no one, and ``acquire`` marks it failed. Times
come from the database's clock on PostgreSQL, so the hosts' clocks need not agree.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from xianliao.storage.models import TrainingRun, utcnow
from xianliao.storage.repositories._json import to_json as _json

# Any constant, different from the schema upgrade's: the advisory lock acquirers queue on.
_LEASE_LOCK_KEY = 0x786C5F6C65617365
STALE_LOG = "no heartbeat for {seconds:.0f} s: its process or host is gone"


def database_now(session: Session) -> datetime:
    """Now, as an aware UTC datetime, by the database server's clock where there is one (on
    SQLite the database is on this host, so this host's clock is the database's)."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(select(func.timezone("UTC", func.statement_timestamp())))
        return value.replace(tzinfo=UTC)
    return utcnow()


class TrainingRunRepository:
    """Retraining runs started from the bot."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def create(
        self, *, started_by: int | None, params: dict[str, Any], status: str = "queued"
    ) -> TrainingRun:
        # Staleness counts from here, by the database's clock, until the process takes the lease.
        run = TrainingRun(
            started_by=started_by,
            params=_json(params),
            status=status,
            heartbeat_at=database_now(self.session),
        )
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

    # ----- the lease: one run at a time, across hosts ------------------------------------------

    def take_turn(self) -> None:
        """Wait until no other transaction is starting a run (until the commit): those that
        check for a live run and then start one take turns, or two that check at the same
        instant both find none. On PostgreSQL a transaction-scoped advisory lock (row locks
        alone miss a rival whose run row is not committed yet); on SQLite the write lock every
        transaction takes (BEGIN IMMEDIATE) already does it."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(select(func.pg_advisory_xact_lock(_LEASE_LOCK_KEY)))

    def acquire(self, run_id: int, *, owner: str, ttl: timedelta) -> int | None:
        """Let run ``run_id`` (unfinished) take the lease for its process ``owner`` (e.g.
        ``host:pid:random``). Returns None when it now holds it, else the id of the run whose
        live process does. Stale runs found on the way are marked failed; runs queued but not
        yet taken up neither block nor are blocked until they try. Commit soon after: until
        then other acquirers wait. The run may be created in the same transaction.
        """
        # The rows are locked as well as the turn taken, so a finish or heartbeat cannot change
        # them between this check and the commit.
        self.take_turn()
        unfinished = select(TrainingRun).where(TrainingRun.finished_at.is_(None))
        rows = list(
            self.session.scalars(
                unfinished.order_by(TrainingRun.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        now = database_now(self.session)
        mine = next((run for run in rows if run.id == run_id), None)
        if mine is None:
            raise ValueError(f"training run {run_id} does not exist or has finished")
        for run in rows:
            if run is mine:
                continue
            if self._is_stale(run, now, ttl):
                self._fail_stale(run, now)
            elif run.lease_owner is not None:
                return run.id
        mine.lease_owner = owner
        mine.heartbeat_at = now
        self.session.flush()
        return None

    def holder(self, *, ttl: timedelta) -> int | None:
        """The id of the run whose process holds the lease now, None when no run does (to say
        "run N is in progress" before queueing another)."""
        now = database_now(self.session)
        for run in self.active():
            if run.lease_owner is not None and not self._is_stale(run, now, ttl):
                return run.id
        return None

    def heartbeat(self, run_id: int, *, owner: str) -> bool:
        """Renew ``owner``'s lease on ``run_id``; False when it no longer holds it (the run was
        finished, e.g. failed as stale by another host): its process should then stop."""
        now = database_now(self.session)
        changed = self.session.execute(
            update(TrainingRun)
            .where(
                TrainingRun.id == run_id,
                TrainingRun.lease_owner == owner,
                TrainingRun.finished_at.is_(None),
            )
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        return changed == 1

    def release(self, run_id: int, *, owner: str) -> TrainingRun | None:
        """The run, locked, if ``owner`` still holds its lease (to record its end), else None:
        a process whose lease was lost must not overwrite what another host recorded."""
        stmt = (
            select(TrainingRun)
            .where(
                TrainingRun.id == run_id,
                TrainingRun.lease_owner == owner,
                TrainingRun.finished_at.is_(None),
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.session.scalars(stmt).first()

    def request_cancel(self, run_id: int) -> bool:
        """Ask an unfinished run's process to stop (it sees it with its next heartbeat); a run
        not taken up yet is cancelled at once. False when the run is missing or finished."""
        run = self.get(run_id)
        if run is None or run.finished_at is not None:
            return False
        run.cancel_requested_at = database_now(self.session)
        if run.lease_owner is None:
            self.finish(run_id, status="cancelled", log="cancelled before its process started")
        return True

    def cancel_requested(self, run_id: int) -> bool:
        run = self.get(run_id)
        return run is not None and run.cancel_requested_at is not None

    def stale(self, *, ttl: timedelta) -> list[TrainingRun]:
        """Unfinished runs whose heartbeat is older than ``ttl`` (runs from before heartbeats
        count from their start): their process is gone, whatever host it ran on."""
        now = database_now(self.session)
        return [r for r in self.active() if self._is_stale(r, now, ttl)]

    def fail_stale(self, *, ttl: timedelta) -> list[int]:
        """Mark the stale runs failed; returns their ids."""
        now = database_now(self.session)
        runs = self.stale(ttl=ttl)
        for run in runs:
            self._fail_stale(run, now)
        return [r.id for r in runs]

    @staticmethod
    def _is_stale(run: TrainingRun, now: datetime, ttl: timedelta) -> bool:
        return now - (run.heartbeat_at or run.started_at) > ttl

    @staticmethod
    def _fail_stale(run: TrainingRun, now: datetime) -> None:
        seconds = (now - (run.heartbeat_at or run.started_at)).total_seconds()
        run.status = "failed"
        run.finished_at = now
        run.log = STALE_LOG.format(seconds=seconds)
