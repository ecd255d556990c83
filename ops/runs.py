"""Training runs: their records, one run at a time across hosts, dead runs, cancelling.

A run is a ``training_runs`` row and one ``xianliao retrain`` process, started by the bot's
supervisor (:mod:`ops.supervisor`), the web console or from a shell, on any host that shares
the database. The process holds the run's *lease* in the database (storage's
``TrainingRunRepository.acquire``) and renews it every ``ttl / 4`` (:class:`Lease`); while one
run holds it, no other starts. A run whose process or host died stops renewing, goes *stale*
after ``ttl`` and is marked failed by whoever looks next, so a crash never blocks the next run.
Anyone may ask a run to stop (:func:`request_cancel`); its process sees that with its next
heartbeat.

The retraining process gets the database URL in its environment (``DATABASE_URL``), never on
its command line, where every local user could read it (``ps``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from xianliao.storage.database import Database
from xianliao.storage.repositories import TrainingRunRepository

logger = logging.getLogger(__name__)

DATABASE_URL_ENV = "DATABASE_URL"  # how the retraining process learns where the database is
# How long a run's process may go without renewing its lease before its run counts as dead
# (RETRAIN_LEASE_S). Every process that shares the database must use the same value.
DEFAULT_LEASE_S = 60.0


class RunInProgress(Exception):
    """Another training run is alive (one at a time); the message says which and how to stop it."""

    def __init__(self, run_id: int, message: str | None = None) -> None:
        super().__init__(message or f"run {run_id} is in progress")
        self.run_id = run_id


def lease_owner() -> str:
    """Who holds a lease: this host and process, and a random part (a reused pid, here or on
    another host, is another owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _ttl(lease_s: float) -> timedelta:
    return timedelta(seconds=lease_s)


def _other_run(session: Session, lease_s: float, *, skip: int | None = None) -> int | None:
    """After failing stale runs: an unfinished run other than ``skip``, holding the lease or
    queued less than ``lease_s`` ago (its process is starting)."""
    runs = TrainingRunRepository(session)
    runs.fail_stale(ttl=_ttl(lease_s))
    return next((run.id for run in runs.active() if run.id != skip), None)


def live_run(db: Database, lease_s: float = DEFAULT_LEASE_S) -> int | None:
    """The run in progress anywhere (any process, any host), stale runs failed first."""
    with db.begin() as session:
        return _other_run(session, lease_s)


def _busy_message(run_id: int) -> str:
    """Why a run cannot start while ``run_id`` runs, and how to stop that one."""
    return (
        f"run {run_id} is still in progress: one run at a time (cancel it with /retrain cancel "
        f"in Telegram, the web console, or here with: xianliao retrain --cancel {run_id})"
    )


def create_run(
    db: Database,
    *,
    started_by: int | None,
    params: dict[str, Any],
    lease_s: float = DEFAULT_LEASE_S,
) -> int:
    """A queued run for a process about to start; ``RunInProgress`` while another is alive.
    It blocks other starts for ``lease_s`` unless its process takes the lease."""
    with db.begin() as session:
        TrainingRunRepository(session).take_turn()  # two starts at one instant: one is refused
        other = _other_run(session, lease_s)
        if other is not None:
            raise RunInProgress(other, _busy_message(other))
        return TrainingRunRepository(session).create(started_by=started_by, params=params).id


def begin_run(
    db: Database,
    *,
    run_id: int | None,
    started_by: int | None,
    params: dict[str, Any],
    owner: str,
    lease_s: float = DEFAULT_LEASE_S,
) -> int:
    """Called by the retraining process itself: take the lease for run ``run_id`` (made by a
    supervisor) or for a new run, as ``owner``, and mark it running. ``RunInProgress`` while
    another run holds the lease (a given run is then recorded as failed); ``ValueError`` when
    the given run is missing or already finished (e.g. cancelled before it started)."""
    try:
        with db.begin() as session:
            runs = TrainingRunRepository(session)
            if run_id is None:
                run = runs.create(started_by=started_by, params=params, status="running")
            else:
                run = runs.get(run_id)
                if run is None or run.finished_at is not None:
                    what = "does not exist" if run is None else f"has already ended ({run.status})"
                    raise ValueError(f"run {run_id} {what}")
            other = runs.acquire(run.id, owner=owner, ttl=_ttl(lease_s))
            if other is not None:  # refused: the transaction rolls back (no row for a new run)
                raise RunInProgress(other, _busy_message(other))
            run.status = "running"
            host = owner.rsplit(":", 2)[0]
            run.params = json.dumps({**json.loads(run.params or "{}"), "host": host})
            return run.id
    except RunInProgress as exc:
        if run_id is not None:
            finish_run(db, run_id, "failed", log=f"not started: run {exc.run_id} was in progress")
        raise


def finish_run(
    db: Database, run_id: int, status: str, *, owner: str | None = None, **results: Any
) -> bool:
    """Record the end of a run: ``succeeded``, ``failed`` or ``cancelled``, with ``metrics``,
    ``checkpoint_path`` and ``log`` when given. With ``owner`` (the run's own process), only
    while it holds the lease; returns whether the end was recorded."""
    with db.begin() as session:
        runs = TrainingRunRepository(session)
        if owner is not None and runs.release(run_id, owner=owner) is None:
            return False
        return runs.finish(run_id, status=status, **results) is not None


def record_params(db: Database, run_id: int, **values: Any) -> None:
    """Add ``values`` to a run's params (e.g. ``out``, its folder, once it is known)."""
    with db.begin() as session:
        run = TrainingRunRepository(session).get(run_id)
        if run is not None:
            run.params = json.dumps({**json.loads(run.params or "{}"), **values})


def request_cancel(db: Database, run_id: int) -> bool:
    """Ask run ``run_id`` to stop, whichever process or host runs it (it saves and records
    itself as cancelled within a heartbeat); False when it is missing or has ended."""
    with db.begin() as session:
        return TrainingRunRepository(session).request_cancel(run_id)


def fail_if_open(db: Database, run_id: int, log: str) -> tuple[str, str | None, str | None]:
    """Mark the run failed with ``log`` unless its process recorded an end; returns its
    ``(status, metrics JSON, log)`` (status ``missing`` when the row is gone)."""
    with db.begin() as session:
        runs = TrainingRunRepository(session)
        run = runs.get(run_id)
        if run is None:
            return "missing", None, None
        if run.finished_at is None:
            runs.finish(run_id, status="failed", log=log)
        return run.status, run.metrics, run.log


class Lease:
    """The retraining process's hold on its run: a daemon thread renews it every ``lease_s / 4``
    in its own short transaction. ``lost`` is set when another process ended the run (it went
    stale) and ``cancelled`` when someone asked it to stop; either way the process should stop,
    and only a process whose lease is not lost records the run's end."""

    def __init__(self, db: Database, run_id: int, owner: str, lease_s: float) -> None:
        self.db, self.run_id, self.owner = db, run_id, owner
        self.interval = lease_s / 4
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def should_stop(self) -> bool:
        return self.lost.is_set() or self.cancelled.is_set()

    def beat(self) -> bool:
        """Renew once now; False when the lease is lost. A database error is logged and
        tried again on the next beat (the lease lasts four beats)."""
        try:
            with self.db.begin() as session:
                runs = TrainingRunRepository(session)
                if not runs.heartbeat(self.run_id, owner=self.owner):
                    self.lost.set()
                elif runs.cancel_requested(self.run_id):
                    self.cancelled.set()
        except SQLAlchemyError as exc:
            logger.warning("run %d: heartbeat failed, retrying: %s", self.run_id, exc)
        return not self.lost.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.beat():
                logger.warning("run %d: lease lost (another host failed it as stale)", self.run_id)
                return

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def finished_candidate(db: Database, run_id: int | None = None) -> tuple[int, str] | None:
    """``(run id, candidate checkpoint)`` of the given run, or of the newest succeeded run
    when ``run_id`` is None; None if it has no candidate."""
    with db.read() as session:
        runs = TrainingRunRepository(session)
        if run_id is not None:
            run = runs.get(run_id)
            candidates = [run] if run is not None else []
        else:
            candidates = runs.recent(50)
        for run in candidates:
            if run.status == "succeeded" and run.checkpoint_path:
                return run.id, run.checkpoint_path
    return None


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _record(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "started_by": run.started_by,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "params": _loads(run.params) or {},
        "metrics": _loads(run.metrics),
        "checkpoint_path": run.checkpoint_path,
        "log": run.log,
    }


def recent_runs(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs first, as JSON-ready dicts."""
    with db.read() as session:
        return [_record(r) for r in TrainingRunRepository(session).recent(limit)]


def get_run(db: Database, run_id: int) -> dict[str, Any] | None:
    with db.read() as session:
        run = TrainingRunRepository(session).get(run_id)
        return None if run is None else _record(run)


def child_environment(db: Database, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a retraining process: ours plus the database URL (password
    included: the environment of a process is readable only by its user)."""
    env = dict(os.environ if base is None else base)
    env[DATABASE_URL_ENV] = db.engine.url.render_as_string(hide_password=False)
    return env
