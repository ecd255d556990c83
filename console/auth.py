"""Who may use the console: login (token or signed link), sessions that expire, CSRF tokens,
and a limit on failed logins per address."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from starlette.requests import Request

LINK_SALT = "xianliao-console-login"
LINK_TTL_S = 300


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


def _links(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=LINK_SALT)


def make_login_token(secret_key: str, admin_id: int) -> str:
    """A signed token for a one-click login link (``/login/link?t=...``), valid LINK_TTL_S.
    Whoever holds CONSOLE_SECRET_KEY (the bot, on /console) can make one."""
    return _links(secret_key).dumps({"admin": admin_id, "nonce": secrets.token_hex(8)})


class LinkTokens:
    """Checks login-link tokens; each works once."""

    def __init__(self, secret_key: str, admins: frozenset[int]) -> None:
        self._serializer = _links(secret_key)
        self._admins = admins
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def admin_for(self, token: str) -> int | None:
        try:
            data = self._serializer.loads(token, max_age=LINK_TTL_S)
        except (SignatureExpired, BadSignature):
            return None
        admin = data.get("admin") if isinstance(data, dict) else None
        if not isinstance(admin, int) or admin not in self._admins:
            return None
        now = time.time()
        with self._lock:
            self._used = {t: at for t, at in self._used.items() if now - at < 2 * LINK_TTL_S}
            if token in self._used:
                return None
            self._used[token] = now
        return admin
