"""Training runs: their records, one run at a time, and dead-run detection.

A run is a ``training_runs`` row and one ``xianliao retrain`` process, started by the bot's
supervisor (:mod:`ops.supervisor`) or from the command line. The process records its pid in the
row's params; a row still unfinished whose process is gone is marked failed the next time
anyone looks, so a crash never blocks the next run.

The retraining process gets the database URL in its environment (``DATABASE_URL``), never on
its command line, where every local user could read it (``ps``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from sqlalchemy.orm import Session

from xianliao.storage.database import Database
from xianliao.storage.repositories import TrainingRunRepository

DATABASE_URL_ENV = "DATABASE_URL"  # how the retraining process learns where the database is


class RunInProgress(Exception):
    """Another training run is alive (one at a time); the message says which and how to stop it."""

    def __init__(self, run_id: int, message: str | None = None) -> None:
        super().__init__(message or f"run {run_id} is in progress")
        self.run_id = run_id


def process_alive(params_json: str | None) -> bool:
    """Whether the process recorded in a training run's params (``pid``) still exists."""
    try:
        pid = int(json.loads(params_json or "{}").get("pid", 0))
    except (ValueError, TypeError, AttributeError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def live_run_or_fail_stale(session: Session, *, skip: int | None = None) -> int | None:
    """The id of an unfinished training run whose process is alive, after marking unfinished
    runs whose process is gone as failed. ``skip``: the caller's own run."""
    runs = TrainingRunRepository(session)
    for run in runs.active():
        if run.id == skip:
            continue
        if process_alive(run.params):
            return run.id
        runs.finish(run.id, status="failed", log="its process ended without a report")
    return None


def live_run(db: Database) -> int | None:
    """The run in progress anywhere (this process or another), stale runs failed first."""
    with db.begin() as session:
        return live_run_or_fail_stale(session)


def _busy_message(session: Session, run_id: int) -> str:
    """Why a run cannot start while ``run_id`` runs, and how to stop that one from a shell."""
    run = TrainingRunRepository(session).get(run_id)
    try:
        pid = json.loads(run.params or "{}").get("pid") if run is not None else None
    except (ValueError, AttributeError):
        pid = None
    # SIGTERM is what /retrain cancel sends: the run saves, records "cancelled" and exits.
    how = f"kill {pid}" if isinstance(pid, int) else "kill the 'xianliao retrain' process"
    return (
        f"run {run_id} is still in progress: one run at a time (cancel it with /retrain cancel "
        f"in Telegram, or here with: {how})"
    )


def create_run(db: Database, *, started_by: int | None, params: dict[str, Any]) -> int:
    """A queued run for a process about to start; ``RunInProgress`` while another is alive."""
    with db.begin() as session:
        other = live_run_or_fail_stale(session)
        if other is not None:
            raise RunInProgress(other)
        return TrainingRunRepository(session).create(started_by=started_by, params=params).id


def begin_run(
    db: Database, *, run_id: int | None, started_by: int | None, params: dict[str, Any]
) -> int:
    """Called by the retraining process itself: mark its run (``run_id``, made by the
    supervisor, or a new one) as running with this process's pid. ``RunInProgress`` while
    another run is alive."""
    with db.begin() as session:
        runs = TrainingRunRepository(session)
        other = live_run_or_fail_stale(session, skip=run_id)
        if other is not None:
            raise RunInProgress(other, _busy_message(session, other))
        run = runs.get(run_id) if run_id else None
        if run is None:
            run = runs.create(
                started_by=started_by, params={**params, "pid": os.getpid()}, status="running"
            )
        else:
            run.status = "running"
            run.params = json.dumps({**json.loads(run.params or "{}"), "pid": os.getpid()})
        return run.id


def finish_run(db: Database, run_id: int, status: str, **results: Any) -> None:
    """Record the end of a run: ``succeeded``, ``failed`` or ``cancelled``, with ``metrics``,
    ``checkpoint_path`` and ``log`` when given."""
    with db.begin() as session:
        TrainingRunRepository(session).finish(run_id, status=status, **results)


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
