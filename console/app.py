"""The console's web application: a Starlette app whose every page but the login page needs a
logged-in admin, and whose every form carries the session's CSRF token."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from xianliao.console import auth
from xianliao.console.config import ConsoleSettings, verify_token
from xianliao.ops.review import Review
from xianliao.ops.supervisor import RunSupervisor
from xianliao.storage.database import Database

logger = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


@dataclass
class Console:
    """What every page needs: settings, the database, templates, login state."""

    settings: ConsoleSettings
    db: Database
    review: Review
    templates: Jinja2Templates
    limiter: auth.LoginLimiter
    links: auth.LinkTokens
    supervisor: RunSupervisor
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any):
        context.setdefault("admin", getattr(request.state, "admin", None))
        context["csrf"] = auth.csrf_token(request)
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)


def console_of(request: Request) -> Console:
    return request.app.state.console


def _admin(request: Request) -> int | None:
    c = console_of(request)
    return auth.current_admin(
        request, max_age_s=c.settings.console_session_s, idle_s=c.settings.console_idle_s
    )


View = Callable[..., Response]


def page(view: View) -> Callable[[Request], Any]:
    """A GET page for admins only; the view runs in a worker thread (it reads the database)."""

    @functools.wraps(view)
    async def endpoint(request: Request) -> Response:
        admin = _admin(request)
        if admin is None:
            return RedirectResponse("/login", status_code=303)
        request.state.admin = admin
        return await run_in_threadpool(view, request, console_of(request))

    return endpoint


def action(view: Callable[[Request, Console, FormData], Any]) -> Callable[[Request], Any]:
    """A form POST for admins only, refused (403) without this session's CSRF token. A plain
    view runs in a worker thread; a coroutine view (one that awaits the supervisor) runs here."""

    @functools.wraps(view)
    async def endpoint(request: Request) -> Response:
        admin = _admin(request)
        if admin is None:
            return PlainTextResponse("not logged in", status_code=403)
        form = await request.form()
        if not auth.csrf_ok(request, form.get("csrf")):
            return PlainTextResponse("bad or missing CSRF token: reload the page", status_code=403)
        request.state.admin = admin
        if inspect.iscoroutinefunction(view):
            return await view(request, console_of(request), form)
        return await run_in_threadpool(view, request, console_of(request), form)

    return endpoint


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def login_page(request: Request) -> Response:
    if _admin(request) is not None:
        return RedirectResponse("/", status_code=303)
    return console_of(request).render(request, "login.html")


async def login(request: Request) -> Response:
    c = console_of(request)
    form = await request.form()
    address = _client(request)
    if not auth.csrf_ok(request, form.get("csrf")):
        return c.render(request, "login.html", 403, error="the form expired: try again")
    if c.limiter.blocked(address):
        return c.render(request, "login.html", 429, error="too many failed logins: wait a while")
    token = form.get("token")
    stored = c.settings.console_token_hash
    ok = bool(stored) and isinstance(token, str) and token != ""
    if ok:
        ok = await run_in_threadpool(verify_token, token, stored)
    if not ok:
        c.limiter.failed(address)
        logger.warning("console: failed login from %s", address)  # never the token
        return c.render(request, "login.html", 401, error="wrong token")
    admin = c.settings.admin_id()
    assert admin is not None  # the settings refuse a token hash without an admin id
    auth.start_session(request, admin)
    await run_in_threadpool(record_audit, c, admin, "console_login", f"from {address}")
    return RedirectResponse("/", status_code=303)


async def login_link(request: Request) -> Response:
    c = console_of(request)
    address = _client(request)
    if c.limiter.blocked(address):
        return c.render(request, "login.html", 429, error="too many failed logins: wait a while")
    admin = c.links.admin_for(request.query_params.get("t", ""))
    if admin is None:
        c.limiter.failed(address)
        return c.render(request, "login.html", 401, error="the link is invalid, used or expired")
    auth.start_session(request, admin)
    await run_in_threadpool(record_audit, c, admin, "console_login", f"link from {address}")
    return RedirectResponse("/", status_code=303)


@action
def logout(request: Request, c: Console, form: FormData) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def record_audit(c: Console, admin: int, action_name: str, detail: str | None) -> None:
    from xianliao.storage.repositories import AuditRepository

    with c.db.begin() as session:
        AuditRepository(session).record(admin, action_name, allowed=True, detail=detail)


@page
def home(request: Request, c: Console) -> Response:
    return RedirectResponse("/conversations", status_code=303)


async def healthz(request: Request) -> Response:
    """The console's own liveness: the database answers."""
    from sqlalchemy.exc import SQLAlchemyError

    from xianliao.storage.db import schema_revision

    try:
        await run_in_threadpool(schema_revision, console_of(request).db.engine)
    except SQLAlchemyError:
        return PlainTextResponse("database unreachable", status_code=503)
    return PlainTextResponse("ok")


class SecurityHeaders:
    """ASGI middleware: no framing, no MIME sniffing, scripts and styles from this origin only
    (the templates use no inline script or style), no referrer to other sites."""

    HEADERS = (
        (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    settings: ConsoleSettings, db: Database, *, env_file: str = ".env", python: str | None = None
) -> Starlette:
    """The console for ``settings`` over the xianliao database ``db``; retraining runs read
    ``env_file`` and run under ``python`` (this interpreter by default)."""
    import sys

    from xianliao.console import views_models, views_review, views_runs

    secret = settings.secret_key()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    admins = frozenset(a for a in (settings.admin_id(), *settings.admin_user_ids) if a)
    console = Console(
        settings=settings,
        db=db,
        review=Review(db, via="web"),
        templates=templates,
        limiter=auth.LoginLimiter(settings.console_login_attempts, settings.console_login_window_s),
        links=auth.LinkTokens(secret, admins),
        supervisor=RunSupervisor(
            db,
            model_path=settings.model_path,
            base_data=settings.base_data_dir,
            env_file=env_file,
            extra_args=shlex.split(settings.retrain_args),
            python=python or sys.executable,
            started_from="web",
            lease_s=settings.retrain_lease_s,
        ),
    )
    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/login/link", login_link, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        *views_review.routes(),
        *views_runs.routes(),
        *views_models.routes(),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie="xianliao_console",
            max_age=settings.console_session_s,
            same_site="strict",
            https_only=settings.console_secure_cookies,
        )
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        yield
        await console.supervisor.aclose()  # a run this console started stops with it, saved

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app
