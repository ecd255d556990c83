"""Runs and models pages over HTTP: refusals and bad input are one line on the page, and
nothing changes."""

from __future__ import annotations

import re
import warnings

from console_helpers import TOKEN

from xianliao.storage.models import AdminAction, Promotion, TrainingRun
from xianliao.storage.repositories import TrainingRunRepository

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytest_plugins = ["console_fixtures"]


def logged_in(app) -> tuple[TestClient, str]:  # noqa: ANN001
    client = TestClient(app)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"token": TOKEN, "csrf": csrf})
    # a new session has a new CSRF token: the one from before login is worthless now
    fresh = re.search(r'name="csrf" value="([^"]+)"', client.get("/runs").text).group(1)
    assert fresh != csrf
    return client, fresh


def test_bad_run_options_and_modes_start_nothing(app, db):
    client, csrf = logged_in(app)
    r = client.post("/runs", data={"csrf": csrf, "mode": "finetune", "extra": "--steps '5"})
    assert r.status_code == 200 and "options: No closing quotation" in r.text
    r = client.post("/runs", data={"csrf": csrf, "mode": "rm -rf", "extra": ""})
    assert "mode must be one of finetune, scratch" in r.text
    with db.read() as s:
        assert s.query(TrainingRun).count() == 0


def test_promote_and_rollback_refused_with_a_reason(app, db, settings):
    client, csrf = logged_in(app)
    assert "No finished retraining run to promote" in client.get("/models").text
    r = client.post("/models/promote", data={"csrf": csrf, "run": "3"})
    assert "run 3 has no finished candidate" in r.text
    r = client.post("/models/promote", data={"csrf": csrf, "run": "x"})
    assert "which run?" in r.text
    r = client.post("/models/rollback", data={"csrf": csrf})
    assert "nothing to roll back to" in r.text
    assert not settings.model_path.exists()
    with db.read() as s:
        assert s.query(Promotion).count() == 0
        assert [a.action for a in s.query(AdminAction)] == ["console_login"]


def test_cancel_a_run_started_elsewhere_says_where(app, db):
    with db.begin() as s:
        run_id = TrainingRunRepository(s).create(started_by=1, params={}, status="running").id
    client, csrf = logged_in(app)
    r = client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf})
    assert "was not started by this console" in r.text
    assert client.get("/runs/9").status_code == 404
    assert client.get("/runs/abc").status_code == 404
