"""Conversations: the paged, filtered list, one exchange with its edit form, status changes one
by one, for a selection or for all matching a filter (after a confirmation), and export.
Every change goes through ``ops.review`` (which writes the audit row with the admin's id)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from xianliao.console import filters
from xianliao.console.app import Console, action, page
from xianliao.ops.review import REVIEW_STATUSES, ReviewError

PER_PAGE = 50
MAX_BULK_IDS = 10_000


def _notice(request: Request, text: str, *, error: bool = False) -> None:
    """A one-line message shown on the next page (the session carries it over the redirect)."""
    request.session["error" if error else "notice"] = text


def _flash(request: Request) -> dict[str, str | None]:
    return {
        "notice": request.session.pop("notice", None),
        "error": request.session.pop("error", None),
    }


def _page_number(value: str | None) -> int:
    try:
        return min(max(1, int(value or 1)), 10**9)  # beyond the last page: an empty page
    except ValueError:
        return 1


@page
def conversations(request: Request, c: Console) -> Response:
    raw = filters.values(request.query_params)
    page_no = _page_number(request.query_params.get("p"))
    context = {
        **_flash(request),
        "raw": raw,
        "statuses": REVIEW_STATUSES,
        "rows": [],
        "total": 0,
        "page": 1,
        "pages": 1,
        "query": filters.query(raw),
        "back": request.url.path + ("?" + request.url.query if request.url.query else ""),
    }
    try:
        flt = filters.parse(raw)
    except filters.FilterError as exc:
        return c.render(request, "conversations.html", 400, **{**context, "error": str(exc)})
    total = c.review.count(flt)
    rows = c.review.search(flt, limit=PER_PAGE, offset=(page_no - 1) * PER_PAGE)
    pages = max(1, -(-total // PER_PAGE))
    return c.render(
        request,
        "conversations.html",
        **{**context, "rows": rows, "total": total, "page": page_no, "pages": pages},
    )


def _safe_back(value: object) -> str:
    """Where to go after a change: a path of this console only (never another site)."""
    # Browsers read a backslash as a slash ("/\\evil.com" is "//evil.com"), and control
    # characters are dropped from URLs: neither belongs in a path of ours.
    if (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
    ):
        return value
    return "/conversations"


def _ids(form: FormData) -> list[int]:
    ids = []
    for value in form.getlist("ids"):
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            raise ReviewError(f"not an exchange id: {value!r}") from None
    return ids


@action
def set_status(request: Request, c: Console, form: FormData) -> Response:
    back = _safe_back(form.get("back"))
    status = form.get("status")
    try:
        ids = _ids(form)
        if not ids:
            raise ReviewError("select at least one exchange")
        if len(ids) > MAX_BULK_IDS:
            raise ReviewError(f"at most {MAX_BULK_IDS} at once: use 'all matching' instead")
        change = c.review.set_status(str(status), reviewer=request.state.admin, ids=ids)
    except ReviewError as exc:
        _notice(request, str(exc), error=True)
    else:
        _notice(request, f"{change.changed} exchange(s) marked {change.status}")
    return RedirectResponse(back, status_code=303)


@page
def confirm_all(request: Request, c: Console) -> Response:
    """How many exchanges a filter selects for a status, and a form to go ahead."""
    raw = filters.values(request.query_params)
    status = request.query_params.get("to", "")
    try:
        flt = filters.parse(raw)
        change = c.review.set_status(
            status, reviewer=request.state.admin, matching=flt, dry_run=True
        )
    except (filters.FilterError, ReviewError) as exc:
        _notice(request, str(exc), error=True)
        return RedirectResponse("/conversations?" + filters.query(raw), status_code=303)
    return c.render(
        request,
        "confirm.html",
        raw=raw,
        status=status,
        count=len(change.ids),
        query=filters.query(raw),
    )


@action
def apply_all(request: Request, c: Console, form: FormData) -> Response:
    raw = filters.values(form)
    try:
        flt = filters.parse(raw)
        change = c.review.set_status(
            str(form.get("to", "")), reviewer=request.state.admin, matching=flt
        )
    except (filters.FilterError, ReviewError) as exc:
        _notice(request, str(exc), error=True)
    else:
        _notice(request, f"{change.changed} exchange(s) matching the filter marked {change.status}")
    return RedirectResponse("/conversations?" + filters.query(raw), status_code=303)


def _exchange_id(request: Request) -> int | None:
    try:
        return int(request.path_params["exchange_id"])
    except ValueError:
        return None


@page
def exchange(request: Request, c: Console) -> Response:
    exchange_id = _exchange_id(request)
    row = c.review.get(exchange_id) if exchange_id is not None else None
    if row is None:
        return c.render(request, "exchange.html", 404, row=None, error="no such exchange")
    return c.render(
        request,
        "exchange.html",
        row=row,
        statuses=REVIEW_STATUSES,
        back=_safe_back(request.query_params.get("back")),
        **_flash(request),
    )


@action
def edit(request: Request, c: Console, form: FormData) -> Response:
    exchange_id = _exchange_id(request)
    back = _safe_back(form.get("back"))
    here = f"/conversations/{exchange_id}?" + urlencode({"back": back})
    answer = form.get("answer")
    try:
        if exchange_id is None or not isinstance(answer, str):
            raise ReviewError("no such exchange")
        result = c.review.edit(
            exchange_id, answer, reviewer=request.state.admin, approve=bool(form.get("approve"))
        )
    except ReviewError as exc:
        _notice(request, str(exc), error=True)
        return RedirectResponse(here, status_code=303)
    done = "saved and approved" if result.approved else "saved"
    _notice(request, f"exchange {exchange_id}: answer {done}")
    return RedirectResponse(back, status_code=303)


def _chunks(lines: Iterable[str], size: int = 1 << 16) -> Iterator[bytes]:
    """Lines joined into chunks of about ``size`` bytes: the server pulls each item of a plain
    iterator through a worker thread, a hop that costs more than a line."""
    buffer: list[str] = []
    length = 0
    for line in lines:
        buffer.append(line)
        length += len(line)
        if length >= size:
            yield "".join(buffer).encode("utf-8")
            buffer, length = [], 0
    if buffer:
        yield "".join(buffer).encode("utf-8")


@page
def export(request: Request, c: Console) -> Response:
    raw = filters.values(request.query_params)
    fmt = request.query_params.get("format", "jsonl")
    try:
        stream = c.review.export(fmt, filters.parse(raw))
    except (filters.FilterError, ReviewError) as exc:
        _notice(request, str(exc), error=True)
        return RedirectResponse("/conversations?" + filters.query(raw), status_code=303)
    media = "text/tab-separated-values" if fmt == "tsv" else "application/x-ndjson"
    return StreamingResponse(
        _chunks(stream),
        media_type=media + "; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="exchanges.{fmt}"'},
    )


def routes() -> list[Route]:
    return [
        Route("/conversations", conversations, methods=["GET"]),
        Route("/conversations/status", set_status, methods=["POST"]),
        Route("/conversations/all", confirm_all, methods=["GET"]),
        Route("/conversations/all", apply_all, methods=["POST"]),
        Route("/conversations/export", export, methods=["GET"]),
        Route("/conversations/{exchange_id}", exchange, methods=["GET"]),
        Route("/conversations/{exchange_id}/edit", edit, methods=["POST"]),
    ]
