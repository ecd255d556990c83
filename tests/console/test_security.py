"""Who gets in and what they can do, over HTTP (Starlette's test client on the real app and a
real SQLite file): login, rate limit, sessions, CSRF, cookie flags, escaping, audit."""

from __future__ import annotations

import json
import logging
import re
import warnings

import pytest
from console_helpers import ADMIN, TOKEN, make_settings
from starlette.routing import Route

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from xianliao.console import auth
from xianliao.console.app import create_app
from xianliao.console.config import hash_token, verify_token
from xianliao.storage.models import AdminAction, Exchange

pytest_plugins = ["console_fixtures"]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def logged_in(app) -> TestClient:  # noqa: ANN001
    client = TestClient(app, follow_redirects=False)
    html = client.get("/login").text
    r = client.post("/login", data={"token": TOKEN, "csrf": csrf_of(html)})
    assert r.status_code == 303, r.text
    return client


def audit_rows(db) -> list[tuple[int, str]]:  # noqa: ANN001
    with db.read() as s:
        return [(a.user_id, a.action) for a in s.query(AdminAction).order_by(AdminAction.id)]


def status_of(db, exchange_id: int) -> str:  # noqa: ANN001
    with db.read() as s:
        return s.get(Exchange, exchange_id).review_status


def test_the_token_is_stored_hashed_and_checked():
    stored = hash_token("s3cret-token-xyz!")
    assert "s3cret" not in stored and stored.startswith("scrypt$")
    assert verify_token("s3cret-token-xyz!", stored)
    assert not verify_token("s3cret-token-xyz?", stored)
    assert hash_token("same") != hash_token("same")  # salted


def test_without_login_every_page_is_the_login_page(app):
    client = TestClient(app, follow_redirects=False)
    open_paths = {"/login", "/login/link", "/healthz"}
    checked = 0
    for route in app.routes:
        if not isinstance(route, Route) or route.path in open_paths:
            continue
        path = route.path.replace("{exchange_id}", "1").replace("{run_id}", "1")
        for method in route.methods - {"HEAD"}:
            r = client.request(method, path, data={"csrf": "x", "status": "approved", "ids": "1"})
            if method == "GET":
                assert r.status_code == 303 and r.headers["location"] == "/login", path
            else:
                assert r.status_code == 403, path
            checked += 1
    assert checked >= 8
    assert status_of(app.state.console.db, 1) == "pending"
    assert client.get("/conversations", follow_redirects=True).url.path == "/login"


def test_wrong_token_refused_right_token_logs_in_and_is_audited(app, db):
    client = TestClient(app, follow_redirects=False)
    csrf = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"token": "wrong", "csrf": csrf})
    assert r.status_code == 401 and "wrong token" in r.text
    assert client.get("/conversations").status_code == 303
    r = client.post("/login", data={"token": TOKEN, "csrf": csrf})
    assert r.status_code == 303
    assert client.get("/conversations").status_code == 200
    assert audit_rows(db) == [(ADMIN, "console_login")]


def test_login_is_rate_limited_per_address(app):
    client = TestClient(app, follow_redirects=False)
    csrf = csrf_of(client.get("/login").text)
    for _ in range(5):
        assert client.post("/login", data={"token": "guess", "csrf": csrf}).status_code == 401
    r = client.post("/login", data={"token": TOKEN, "csrf": csrf})
    assert r.status_code == 429  # even the right token, until the window has passed
    assert client.get("/conversations").status_code == 303


def test_limiter_window_passes():
    now = [0.0]
    limiter = auth.LoginLimiter(2, 60, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 61
    assert not limiter.blocked("a")


def test_the_token_is_never_logged(app, caplog):
    caplog.set_level(logging.DEBUG)
    client = TestClient(app, follow_redirects=False)
    csrf = csrf_of(client.get("/login").text)
    client.post("/login", data={"token": TOKEN + "x", "csrf": csrf})
    client.post("/login", data={"token": TOKEN, "csrf": csrf})
    assert "failed login" in caplog.text
    assert TOKEN not in caplog.text


def test_cookie_flags(tmp_path, db):
    app = create_app(make_settings(tmp_path, console_secure_cookies=True), db)
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    csrf = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"token": TOKEN, "csrf": csrf})
    cookie = r.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert r.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_sessions_expire_when_idle_and_after_their_lifetime(app, monkeypatch):
    client = logged_in(app)
    now = [auth.time.time()]
    monkeypatch.setattr(auth.time, "time", lambda: now[0])
    now[0] += 29 * 60
    assert client.get("/conversations").status_code == 200  # within the idle limit: renewed
    now[0] += 29 * 60
    assert client.get("/conversations").status_code == 200
    now[0] += 31 * 60  # idle too long
    assert client.get("/conversations").status_code == 303


def test_bad_csrf_token_changes_nothing(app, db):
    client = logged_in(app)
    for csrf in ("", "forged", None):
        data = {"status": "approved", "ids": "1", **({"csrf": csrf} if csrf is not None else {})}
        r = client.post("/conversations/status", data=data)
        assert r.status_code == 403
    r = client.post("/conversations/1/edit", data={"answer": "hacked", "csrf": "forged"})
    assert r.status_code == 403
    assert status_of(db, 1) == "pending"
    assert [a for _, a in audit_rows(db)] == ["console_login"]


def test_login_form_needs_its_csrf_token(app):
    client = TestClient(app, follow_redirects=False)
    client.get("/login")
    assert client.post("/login", data={"token": TOKEN, "csrf": "nope"}).status_code == 403


def test_a_login_link_works_once_and_only_signed_and_fresh(app, monkeypatch):
    token = auth.make_login_token("test-secret-key", ADMIN)
    client = TestClient(app, follow_redirects=False)
    assert client.get(f"/login/link?t={token}").status_code == 303
    assert client.get("/conversations").status_code == 200
    other = TestClient(app, follow_redirects=False)
    assert other.get(f"/login/link?t={token}").status_code == 401  # used
    forged = auth.make_login_token("another-key", ADMIN)
    assert other.get(f"/login/link?t={forged}").status_code == 401
    stranger = auth.make_login_token("test-secret-key", 999)  # not an admin
    assert other.get(f"/login/link?t={stranger}").status_code == 401
    old = auth.make_login_token("test-secret-key", ADMIN)
    real_time = auth.time.time
    import itsdangerous.timed

    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real_time() + 301)
    assert other.get(f"/login/link?t={old}").status_code == 401
    assert other.get("/conversations").status_code == 303


def test_message_text_is_escaped(app):
    client = logged_in(app)
    html = client.get("/conversations?user=3").text
    assert "&lt;script&gt;document.title=" in html
    assert "<script>document" not in html
    html = client.get("/conversations/7").text
    assert "&lt;script&gt;" in html and "<script>document" not in html


def test_bad_filter_is_one_line_not_a_traceback(app):
    client = logged_in(app)
    r = client.get("/conversations?user=abc")
    assert r.status_code == 400 and "user must be a number" in r.text
    r = client.get("/conversations?since=yesterday")
    assert r.status_code == 400 and "since must be a date" in r.text
    r = client.get("/conversations?user=99999999999999999999")
    assert r.status_code == 400 and "out of range" in r.text
    assert client.get("/conversations?p=" + "9" * 30).status_code == 200  # past the end: empty
    assert client.get("/conversations/99999").status_code == 404
    assert client.get("/conversations/" + "9" * 30).status_code == 404
    assert client.get("/conversations/abc").status_code == 404


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_export_streams_the_filtered_set(app, db, fmt):
    client = logged_in(app)
    if fmt == "tsv":  # TSV holds approved exchanges: approve two of user 3 first
        csrf = csrf_of(client.get("/conversations").text)
        client.post(
            "/conversations/status", data={"csrf": csrf, "status": "approved", "ids": ["1", "2"]}
        )
    r = client.get(f"/conversations/export?format={fmt}&user=3")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    lines = r.text.splitlines()
    if fmt == "tsv":
        assert lines == ["天气1怎么样\t回答1", "天气2怎么样\t回答2"]
    else:
        assert [json.loads(x)["id"] for x in lines] == list(range(1, 11))


def test_healthz_needs_no_login(app):
    assert TestClient(app).get("/healthz").text == "ok"


def test_export_sends_chunks_not_lines():
    from xianliao.console.views_review import _chunks

    lines = [f"{i}\t答{i}\n" for i in range(1000)]
    chunks = list(_chunks(iter(lines), size=1000))
    assert b"".join(chunks).decode() == "".join(lines)  # nothing lost, order kept
    assert 5 < len(chunks) < 50  # about 1000 characters each, not one per line
    assert list(_chunks(iter([]))) == []


@pytest.mark.parametrize(
    ("back", "expected"),
    [
        ("/conversations?page=2", "/conversations?page=2"),
        ("//evil.example", "/conversations"),
        ("/\\evil.example", "/conversations"),  # a browser reads it as //evil.example
        ("/\tconversations", "/conversations"),
        ("https://evil.example/", "/conversations"),
        (None, "/conversations"),
    ],
)
def test_the_way_back_after_a_change_stays_on_this_console(back, expected):
    from xianliao.console.views_review import _safe_back

    assert _safe_back(back) == expected
