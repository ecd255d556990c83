"""Runs and models in a real browser: a finished run's curves, a running run's progress, the
candidate's comparison, promote and roll back (checked in MODEL_PATH), start and cancel a run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest
from console_helpers import ADMIN, Shots, login, serve

from xianliao.model.checkpoint import load_checkpoint, save_checkpoint
from xianliao.storage.models import AdminAction, TrainingRun
from xianliao.storage.repositories import TrainingRunRepository

pytest_plugins = ["console_fixtures"]

COMPARISON = {
    "live": {"base": {"perplexity": 80.0, "distinct_2": 0.30, "generic_share": 0.20}},
    "new": {"base": {"perplexity": 60.0, "distinct_2": 0.40, "generic_share": 0.10}},
    "promoted": False,
    "reasons": ["--promote never"],
}


def digest(path) -> str:  # noqa: ANN001
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metrics_lines(n: int) -> str:
    lines = []
    for i in range(1, n + 1):
        row = {"step": 50 * i, "elapsed_s": 2.0 * i, "train_loss": 6.0 / i, "lr": 0.001}
        if i % 2 == 0:
            row.update(valid_loss=5.0 / i, valid_ppl=300.0 / i)
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


@pytest.fixture
def models_dir(settings, tiny_checkpoint):
    """MODEL_PATH holds the tiny model; run 1 finished with a different candidate and curves."""
    live = settings.model_path
    live.parent.mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint, live)
    folder = live.parent / "retrain-1"
    (folder / "train").mkdir(parents=True)
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["train"] = {**ckpt.get("train", {}), "step": 12345}  # another file: another digest
    save_checkpoint(
        folder / "candidate.pt", {k: v for k, v in ckpt.items() if k != "format_version"}
    )
    (folder / "train" / "metrics.jsonl").write_text(metrics_lines(8))
    side = [{"question": "你好<b>吗</b>", "live": "好", "new": "我很好"}]
    (folder / "report.json").write_text(json.dumps({"comparison": {"side_by_side": side}}))
    return live, folder / "candidate.pt"


def add_run(db, *, finished: bool, candidate=None, pid=None) -> int:  # noqa: ANN001
    with db.begin() as s:
        runs = TrainingRunRepository(s)
        params = {"mode": "finetune", "started_from": "telegram"}
        if pid is not None:
            params["pid"] = pid
        run = runs.create(started_by=ADMIN, params=params, status="running")
        if finished:
            runs.finish(
                run.id, status="succeeded", metrics=COMPARISON, checkpoint_path=str(candidate)
            )
        return run.id


def actions(db) -> list[str]:  # noqa: ANN001
    with db.read() as s:
        return [a.action for a in s.query(AdminAction).order_by(AdminAction.id)]


def test_curves_progress_promote_and_rollback(page, db, models_dir, settings):
    live, candidate = models_dir
    before = digest(live)
    assert add_run(db, finished=True, candidate=candidate) == 1
    # run 2 is going: its process is this test's (alive), its progress file says step 150/600
    assert add_run(db, finished=False, pid=os.getpid()) == 2
    progress = live.parent / "retrain-2" / "progress.jsonl"
    progress.parent.mkdir()
    line = {"run_id": 2, "step": 150, "steps": 600, "loss": 3.25, "eta_s": 42.0}
    progress.write_text(json.dumps(line) + "\n")

    login(page)
    page.goto("/runs")
    assert page.locator("#runs tr[data-id='1'] .run-status").inner_text() == "succeeded"
    assert "ppl 80.0 → 60.0" in page.locator("#runs tr[data-id='1']").inner_text()
    assert page.locator("#runs tr[data-id='2'] .run-status").inner_text() == "running"
    page.shot("runs")

    page.goto("/runs/1")
    charts = page.locator("#charts svg.chart")
    assert charts.count() == 2
    assert "training loss" in charts.nth(0).text_content()
    assert "validation perplexity" in charts.nth(1).text_content()
    points = page.locator("#charts polyline.curve").nth(0).get_attribute("points").split()
    assert len(points) == 8  # one per metrics line
    assert len(page.locator("#charts polyline.curve").nth(1).get_attribute("points").split()) == 4
    assert page.locator("#comparison").count() == 1
    page.shot("run-finished-curves")

    page.goto("/runs/2")
    assert page.locator("#live-step").inner_text() == "150"
    assert page.locator("#live-loss").inner_text() == "3.250"
    assert page.locator("#live-eta").inner_text() == "42 s"
    assert page.locator("#live-progress").get_attribute("value") == "150"
    page.shot("run-live")

    page.goto("/models")
    assert "60.000" in page.locator("#candidate-metrics").inner_text()
    assert page.locator("#probes td").first.inner_text() == "你好<b>吗</b>"  # text, not markup
    page.shot("models")
    page.click("#promote-link")
    page.shot("confirm-promote")
    with page.expect_navigation():
        page.click("#confirm")
    assert "is live" in page.locator(".notice").inner_text()
    assert digest(live) == digest(candidate) != before
    assert "forced" in page.locator("#history tr.promotion").first.inner_text()

    page.click("#rollback-link")
    with page.expect_navigation():
        page.click("#confirm")
    assert "rolled back" in page.locator(".notice").inner_text()
    assert digest(live) == before
    assert "rollback of #1" in page.locator("#history tr.promotion").first.inner_text()
    page.shot("rolled-back")
    assert actions(db)[-2:] == ["promote", "rollback"]


FAKE_RETRAIN = """#!/bin/sh
# stands in for 'python -m xianliao retrain ...' in the start/cancel test
exec sleep 60
"""


def test_start_and_cancel_a_run(tmp_path, db, settings, chromium):
    """Start a run from the page (the supervisor runs a stand-in process), then cancel it."""
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_RETRAIN)
    fake.chmod(0o755)
    with serve(settings, db, python=str(fake)) as url:
        context = chromium.new_context(base_url=url)
        page = context.new_page()
        page.shot = Shots(page, tmp_path / "screenshots")
        login(page)
        page.goto("/runs")
        page.fill("#start-run input[name=extra]", "--steps 50")
        with page.expect_navigation():
            page.click("#start-run button[type=submit]")
        assert page.url.endswith("/runs/1")
        assert "run 1 started" in page.locator(".notice").inner_text()
        with db.read() as s:
            run = s.get(TrainingRun, 1)
            assert json.loads(run.params)["extra"] == ["--steps", "50"]
            assert json.loads(run.params)["started_from"] == "web"
        page.shot("started")
        with page.expect_navigation():
            page.click("#cancel")
        assert "cancel sent" in page.locator(".notice").inner_text()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with db.read() as s:
                if s.get(TrainingRun, 1).finished_at is not None:
                    break
            time.sleep(0.2)
        with db.read() as s:
            assert s.get(TrainingRun, 1).status in {"failed", "cancelled"}
        context.close()
    assert actions(db) == ["console_login", "retrain", "retrain_cancel"]
