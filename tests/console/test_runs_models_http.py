"""Runs and models pages over HTTP: refusals and bad input are one line on the page, and
nothing changes."""

from __future__ import annotations

import json
import re
import warnings
from datetime import timedelta

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


def test_cancel_any_run_through_the_database(app, db):
    """A run started elsewhere (the bot, the CLI, another host) is asked to stop through the
    database: its process sees the request with its next heartbeat."""
    with db.begin() as s:
        runs = TrainingRunRepository(s)
        run_id = runs.create(started_by=1, params={}, status="running").id
        runs.acquire(run_id, owner="cli-host:4242:ab", ttl=timedelta(minutes=1))
        done = runs.create(started_by=1, params={}, status="running").id
        runs.finish(done, status="succeeded")
    client, csrf = logged_in(app)
    r = client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf})
    assert f"run {run_id}: cancel sent" in r.text
    with db.read() as s:
        run = s.get(TrainingRun, run_id)
        assert run.cancel_requested_at is not None and run.finished_at is None
        assert [a.action for a in s.query(AdminAction)] == ["console_login", "retrain_cancel"]
    r = client.post(f"/runs/{done}/cancel", data={"csrf": csrf})
    assert f"run {done} is not in progress" in r.text
    with db.read() as s:
        assert s.get(TrainingRun, done).status == "succeeded"


def test_curves_of_a_run_in_a_folder_of_its_own(app, db, tmp_path):
    """``xianliao retrain --out`` anywhere: the run records its folder, the page reads it."""
    folder = tmp_path / "elsewhere" / "run"
    (folder / "run").mkdir(parents=True)
    lines = [{"step": 10 * i, "train_loss": 5.0 / i, "valid_ppl": 90.0 / i} for i in (1, 2, 3)]
    (folder / "run" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with db.begin() as s:
        run_id = (
            TrainingRunRepository(s)
            .create(started_by=1, params={"out": str(folder)}, status="running")
            .id
        )
        TrainingRunRepository(s).finish(run_id, status="succeeded")
    client, _ = logged_in(app)
    page = client.get(f"/runs/{run_id}").text
    assert len(re.findall(r"<svg[^>]*chart", page)) == 2  # loss and perplexity
    assert "No metrics recorded" not in page
    assert client.get("/runs/9").status_code == 404
    assert client.get("/runs/abc").status_code == 404
