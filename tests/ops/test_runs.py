"""ops.runs and ops.models against a real SQLite file; the supervisor's child process gets the
database URL in its environment, never on its command line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from xianliao.model.checkpoint import file_digest
from xianliao.ops import models, runs
from xianliao.ops.runs import RunInProgress
from xianliao.ops.supervisor import RunSupervisor
from xianliao.storage.database import Database
from xianliao.storage.repositories import TrainingRunRepository


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path}/runs.db")
    yield database
    database.dispose()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_run_at_a_time_and_dead_runs_are_failed(db):
    first = runs.begin_run(db, run_id=None, started_by=3, params={"mode": "finetune"})
    record = runs.get_run(db, first)
    assert record["status"] == "running" and record["params"]["pid"] == os.getpid()
    assert runs.live_run(db) == first
    with pytest.raises(RunInProgress, match=f"run {first} is still in progress.*kill"):
        runs.begin_run(db, run_id=None, started_by=3, params={})
    with pytest.raises(RunInProgress):
        runs.create_run(db, started_by=3, params={})
    assert [r["id"] for r in runs.recent_runs(db)] == [first]  # refused: no new row

    # Its process dies without a report: the next look marks it failed, and a run may start.
    with db.begin() as s:
        TrainingRunRepository(s).get(first).params = json.dumps({"pid": _dead_pid()})
    second = runs.create_run(db, started_by=4, params={"mode": "scratch"})
    dead = runs.get_run(db, first)
    assert dead["status"] == "failed" and "ended" in dead["log"] and dead["finished_at"]
    assert runs.get_run(db, second)["status"] == "queued"
    # The process of a run the supervisor created marks that same run running.
    assert runs.begin_run(db, run_id=second, started_by=4, params={}) == second
    assert runs.get_run(db, second)["params"] == {"mode": "scratch", "pid": os.getpid()}
    runs.finish_run(db, second, "succeeded", metrics={"x": 1}, checkpoint_path="c.pt")
    assert runs.finished_candidate(db) == (second, "c.pt")
    assert runs.finished_candidate(db, first) is None
    assert runs.get_run(db, second)["metrics"] == {"x": 1}
    assert runs.get_run(db, 99) is None


def test_fail_if_open_keeps_a_reported_end(db):
    run_id = runs.create_run(db, started_by=1, params={})
    runs.finish_run(db, run_id, "cancelled", log="by the admin")
    assert runs.fail_if_open(db, run_id, "exit 1") == ("cancelled", None, "by the admin")
    other = runs.create_run(db, started_by=1, params={})
    assert runs.fail_if_open(db, other, "exit 1")[0] == "failed"
    assert runs.fail_if_open(db, 999, "x") == ("missing", None, None)


def test_promote_rollback_and_history(db, tmp_path, tiny_checkpoint):
    live = tmp_path / "models" / "live.pt"
    live.parent.mkdir()
    shutil.copy(tiny_checkpoint, live)
    before = file_digest(live)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(models.PromotionError, match="not promoted"):
        models.promote(bad, live, db, promoted_by=1)
    assert file_digest(live) == before and models.history(db) == []
    with pytest.raises(models.PromotionError, match="nothing to roll back"):
        models.rollback(live, db, promoted_by=1)

    info = models.promote(tiny_checkpoint, live, db, promoted_by=5, forced=True)
    assert info["previous"] is not None  # the replaced one is archived
    back = models.rollback(live, db, promoted_by=6)
    assert file_digest(live) == before
    history = models.history(db)
    assert [h["id"] for h in history] == [back["promotion_id"], info["promotion_id"]]
    assert history[0]["rollback_of"] == info["promotion_id"] and history[0]["promoted_by"] == 6
    assert history[1]["forced"] is True and history[1]["promoted_at"]


def test_the_child_gets_the_database_url_in_its_environment_only(db, tmp_path):
    """A stand-in for Python records its arguments and environment, then exits."""
    seen = tmp_path / "seen.json"
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv, 'url': os.environ.get('DATABASE_URL')}}, "
        f"open({str(seen)!r}, 'w'))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    messages: list[str] = []

    async def notify(text: str) -> None:
        messages.append(text)

    async def scenario() -> int:
        sup = RunSupervisor(
            db, model_path=tmp_path / "m" / "live.pt", base_data=tmp_path, python=str(fake)
        )
        run_id = await sup.start(1, notify)
        assert sup.progress()["run_id"] == run_id
        await sup.wait()
        await sup.aclose()
        return run_id

    run_id = asyncio.run(scenario())
    got = json.loads(seen.read_text())
    url = str(db.engine.url)
    assert got["url"] == url
    assert not any(url in arg or "runs.db" in arg for arg in got["argv"])
    assert "--database-url" not in got["argv"] and "--run-id" in got["argv"]
    # It exited without reporting: recorded as failed, and the admin told so.
    assert runs.get_run(db, run_id)["status"] == "failed"
    assert "failed" in messages[-1]
