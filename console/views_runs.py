"""Training runs: the list, one run's curves and live progress, start a retrain, cancel it.
Runs go through ``ops.supervisor`` (the same code as /retrain) and ``ops.runs``."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from xianliao.console import charts
from xianliao.console.app import Console, action, page, record_audit
from xianliao.ops import runs
from xianliao.ops.runs import RunInProgress

logger = logging.getLogger(__name__)
MODES = ("finetune", "scratch")


def _folder(c: Console, run: dict) -> Path:
    """The run's folder: the one it recorded (``xianliao retrain --out`` anywhere), else where
    the supervisor puts runs."""
    out = run["params"].get("out") if isinstance(run["params"], dict) else None
    if isinstance(out, str) and out:
        return Path(out)
    return charts.run_folder(c.settings.model_path, run["id"])


def _live(run: dict, folder: Path) -> dict | None:
    recorded = run["params"].get("progress") if isinstance(run["params"], dict) else None
    return charts.live_progress(folder, Path(recorded) if isinstance(recorded, str) else None)


@page
def run_list(request: Request, c: Console) -> Response:
    rows = runs.recent_runs(c.db, limit=50)
    for r in rows:
        r["steps"] = (_live(r, _folder(c, r)) or {}).get("step")
    return c.render(
        request,
        "runs.html",
        runs=rows,
        modes=MODES,
        ours=c.supervisor.active.run_id if c.supervisor.active else None,
        notice=request.session.pop("notice", None),
        error=request.session.pop("error", None),
    )


def _run_id(request: Request) -> int | None:
    try:
        return int(request.path_params["run_id"])
    except ValueError:
        return None


@page
def run_detail(request: Request, c: Console) -> Response:
    run_id = _run_id(request)
    run = runs.get_run(c.db, run_id) if run_id is not None else None
    if run is None:
        request.session.pop("error", None)
        return c.render(request, "run.html", 404, run=None, error=f"no run {run_id}")
    folder = _folder(c, run)
    rows = charts.run_rows(folder)
    live = _live(run, folder) if run["finished_at"] is None else None
    return c.render(
        request,
        "run.html",
        run=run,
        charts=charts.curves(rows),
        live=live,
        running=run["finished_at"] is None,
        metrics_json=json.dumps(run["metrics"], ensure_ascii=False, indent=1)
        if run["metrics"] is not None
        else None,
        notice=request.session.pop("notice", None),
        error=request.session.pop("error", None),
    )


async def _notify(text: str) -> None:
    """The supervisor's messages (progress, the final report): the pages show the run's state
    from the database and its files, so these only go to the log."""
    logger.info("%s", text)


@action
async def start_run(request: Request, c: Console, form: FormData) -> Response:
    admin = request.state.admin
    mode = form.get("mode", "finetune")
    try:
        extra = shlex.split(str(form.get("extra", "")))
    except ValueError as exc:
        request.session["error"] = f"options: {exc}"
        return RedirectResponse("/runs", status_code=303)
    if mode not in MODES:
        request.session["error"] = f"mode must be one of {', '.join(MODES)}"
        return RedirectResponse("/runs", status_code=303)
    try:
        run_id = await c.supervisor.start(admin, _notify, mode=str(mode), extra=extra)
    except RunInProgress as exc:
        request.session["error"] = str(exc)
        return RedirectResponse("/runs", status_code=303)
    except OSError as exc:
        request.session["error"] = f"could not start the run: {exc}"
        return RedirectResponse("/runs", status_code=303)
    detail = json.dumps({"via": "web", "run_id": run_id, "mode": mode, "extra": extra})
    await run_in_threadpool(record_audit, c, admin, "retrain", detail)
    request.session["notice"] = f"run {run_id} started"
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@action
async def cancel_run(request: Request, c: Console, form: FormData) -> Response:
    admin = request.state.admin
    run_id = _run_id(request)
    # Its own run by a signal, any other (the bot's, the CLI's, another host's) through the
    # database: the run's process sees the request with its next heartbeat.
    cancelled = await c.supervisor.cancel(run_id) if run_id is not None else None
    if cancelled is None:
        request.session["error"] = f"run {run_id} is not in progress"
        return RedirectResponse(f"/runs/{run_id}", status_code=303)
    detail = json.dumps({"via": "web", "run_id": run_id})
    await run_in_threadpool(record_audit, c, admin, "retrain_cancel", detail)
    request.session["notice"] = f"run {run_id}: cancel sent (it saves and stops)"
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/runs", run_list, methods=["GET"]),
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs/{run_id}", run_detail, methods=["GET"]),
        Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    ]
