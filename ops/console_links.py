"""One-click login links to the web console: signed, short-lived, each usable once.

The bot makes them (``/console`` in Telegram) and the console checks them; both hold the same
``CONSOLE_SECRET_KEY``. They live here, free of any front end, because neither front end may
import the other.
"""

from __future__ import annotations

import secrets
import threading
import time

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

LINK_SALT = "xianliao-console-login"
LINK_TTL_S = 300
LINK_PATH = "/login/link"


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=LINK_SALT)


def make_login_token(secret_key: str, admin_id: int) -> str:
    """A signed token for a one-click login link (``/login/link?t=...``), valid LINK_TTL_S.
    Whoever holds CONSOLE_SECRET_KEY (the bot, on /console) can make one."""
    return _serializer(secret_key).dumps({"admin": admin_id, "nonce": secrets.token_hex(8)})


def login_link(public_url: str, secret_key: str, admin_id: int) -> str:
    """The full link for ``admin_id`` on the console at ``public_url`` (its address as the
    admin's browser reaches it, e.g. ``https://admin.example.com``)."""
    return f"{public_url.rstrip('/')}{LINK_PATH}?t={make_login_token(secret_key, admin_id)}"


class LinkTokens:
    """Checks login-link tokens; each works once."""

    def __init__(self, secret_key: str, admins: frozenset[int]) -> None:
        self._serializer = _serializer(secret_key)
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
