"""Who may use the console: login (token or signed link), sessions that expire, CSRF tokens,
and a limit on failed logins per address."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from starlette.requests import Request

# The login links are made by the bot too, so they live in ops (re-exported here).
from xianliao.ops.console_links import LINK_SALT, LINK_TTL_S, LinkTokens, make_login_token

__all__ = [
    "LINK_SALT",
    "LINK_TTL_S",
    "LinkTokens",
    "LoginLimiter",
    "csrf_ok",
    "csrf_token",
    "current_admin",
    "make_login_token",
    "start_session",
]


class LoginLimiter:
    """At most ``attempts`` failed logins per address per ``window_s`` seconds."""

    def __init__(self, attempts: int, window_s: float, clock=time.monotonic) -> None:  # noqa: ANN001
        self.attempts = attempts
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque[float]:
        now = self.clock()
        failures = self._failures.setdefault(address, deque())
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        return failures

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= self.attempts

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self.clock())


def start_session(request: Request, admin_id: int) -> None:
    """A fresh session (a new CSRF token too, so one seen before login is worthless)."""
    now = time.time()
    request.session.clear()
    request.session.update(
        {"admin": admin_id, "at": now, "seen": now, "csrf": secrets.token_urlsafe(32)}
    )


def current_admin(request: Request, *, max_age_s: float, idle_s: float) -> int | None:
    """The logged-in admin's id, or None (and the session cleared) when there is none or it
    has expired: ``max_age_s`` after login or ``idle_s`` after the last request."""
    session = request.session
    admin, at, seen = session.get("admin"), session.get("at"), session.get("seen")
    now = time.time()
    if not isinstance(admin, int) or not isinstance(at, float) or not isinstance(seen, float):
        return None  # not logged in (the login form's CSRF token stays)
    if now - at > max_age_s or now - seen > idle_s:
        session.clear()
        return None
    session["seen"] = now
    return admin


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use (the login form has one too)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, submitted: object) -> bool:
    expected = request.session.get("csrf")
    return (
        isinstance(expected, str)
        and isinstance(submitted, str)
        and hmac.compare_digest(expected.encode(), submitted.encode())
    )
