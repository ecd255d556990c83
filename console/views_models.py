"""Models: the live model, the newest candidate with its comparison report, promote (after a
confirmation) and roll back, and the promotion history. Through ``ops.supervisor`` (the same
promote and rollback as /promote, /rollback and the CLI) and ``ops.models``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from xianliao.console import charts
from xianliao.console.app import Console, action, page, record_audit
from xianliao.ops import models, runs
from xianliao.ops.models import PromotionError


def _live(c: Console) -> dict[str, Any]:
    path = c.settings.model_path
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "exists": False}
    when = datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds")
    return {"path": str(path), "exists": True, "size_mb": st.st_size / 1e6, "modified": when}


def _report(c: Console, run_id: int) -> dict[str, Any] | None:
    """The run's ``report.json`` (the comparison /retrain reports), or None."""
    path = charts.run_folder(c.settings.model_path, run_id) / "report.json"
    try:
        report = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _candidate(c: Console) -> dict[str, Any] | None:
    found = runs.finished_candidate(c.db)
    if found is None:
        return None
    run = runs.get_run(c.db, found[0]) or {}
    report = _report(c, found[0]) or {}
    comparison = report.get("comparison") if isinstance(report.get("comparison"), dict) else {}
    side = comparison.get("side_by_side") if isinstance(comparison, dict) else None
    return {
        "run_id": found[0],
        "checkpoint": found[1],
        "metrics": run.get("metrics") if isinstance(run.get("metrics"), dict) else {},
        "side_by_side": side if isinstance(side, list) else [],
    }


@page
def model_page(request: Request, c: Console) -> Response:
    return c.render(
        request,
        "models.html",
        live=_live(c),
        candidate=_candidate(c),
        history=models.history(c.db, limit=50),
        notice=request.session.pop("notice", None),
        error=request.session.pop("error", None),
    )


@page
def confirm(request: Request, c: Console) -> Response:
    """Promote or roll back only after a second look."""
    what = request.url.path.rsplit("/", 1)[-1]
    run_id = request.query_params.get("run")
    if what == "promote" and (run_id is None or not run_id.isdigit()):
        request.session["error"] = "which run? (promote from this page)"
        return RedirectResponse("/models", status_code=303)
    return c.render(request, "confirm_model.html", what=what, run_id=run_id, live=_live(c))


@action
async def promote(request: Request, c: Console, form: FormData) -> Response:
    run_id = str(form.get("run", ""))
    if not run_id.isdigit():
        request.session["error"] = "which run?"
        return RedirectResponse("/models", status_code=303)
    try:
        live = await c.supervisor.promote(request.state.admin, int(run_id))
    except PromotionError as exc:
        request.session["error"] = str(exc)
        return RedirectResponse("/models", status_code=303)
    detail = json.dumps({"via": "web", "run_id": int(run_id), "live": live})
    await run_in_threadpool(record_audit, c, request.state.admin, "promote", detail)
    request.session["notice"] = f"run {run_id} is live at {live}"
    return RedirectResponse("/models", status_code=303)


@action
async def rollback(request: Request, c: Console, form: FormData) -> Response:
    try:
        live = await c.supervisor.rollback(request.state.admin)
    except PromotionError as exc:
        request.session["error"] = str(exc)
        return RedirectResponse("/models", status_code=303)
    detail = json.dumps({"via": "web", "live": live})
    await run_in_threadpool(record_audit, c, request.state.admin, "rollback", detail)
    request.session["notice"] = "rolled back: the previous model is live"
    return RedirectResponse("/models", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/models", model_page, methods=["GET"]),
        Route("/models/promote", confirm, methods=["GET"]),
        Route("/models/promote", promote, methods=["POST"]),
        Route("/models/rollback", confirm, methods=["GET"]),
        Route("/models/rollback", rollback, methods=["POST"]),
    ]
