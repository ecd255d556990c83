"""ops.runs and ops.models against a real SQLite file and PostgreSQL; the supervisor's child process gets the
database URL in its environment, never on its command line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import time
from datetime import timedelta

import pytest

from xianliao.model.checkpoint import file_digest
from xianliao.ops import models, runs
from xianliao.ops.runs import RunInProgress
from xianliao.ops.supervisor import RunSupervisor
from xianliao.storage.database import Database
from xianliao.storage.repositories import TrainingRunRepository

TTL = timedelta(seconds=60)


@pytest.fixture
def db(database_url):
    """A real database: a SQLite file, then PostgreSQL."""
    database = Database.open(database_url)
    yield database
    database.dispose()


def _age(db, run_id: int, seconds: float) -> None:
    """Make a run's heartbeat ``seconds`` old, as if its process had stopped renewing it."""
    with db.begin() as s:
        run = TrainingRunRepository(s).get(run_id)
        run.heartbeat_at = run.heartbeat_at - timedelta(seconds=seconds)


def test_one_run_at_a_time_and_dead_runs_are_failed(db):
    first = runs.begin_run(
        db, run_id=None, started_by=3, params={"mode": "finetune"}, owner="h1:7:aa"
    )
    record = runs.get_run(db, first)
    assert record["status"] == "running" and record["params"] == {"mode": "finetune", "host": "h1"}
    assert runs.live_run(db) == first
    with pytest.raises(RunInProgress, match=f"run {first} is still in progress.*--cancel {first}"):
        runs.begin_run(db, run_id=None, started_by=3, params={}, owner="h2:7:bb")
    with pytest.raises(RunInProgress):
        runs.create_run(db, started_by=3, params={})
    assert [r["id"] for r in runs.recent_runs(db)] == [first]  # refused: no new row

    # Its process dies without a report: once its lease is older than the TTL it is failed and
    # a run may start.
    _age(db, first, 61)
    second = runs.create_run(db, started_by=4, params={"mode": "scratch"})
    dead = runs.get_run(db, first)
    assert dead["status"] == "failed" and "no heartbeat" in dead["log"] and dead["finished_at"]
    # Queued, its process not started yet: in progress for everyone, and not failed by a look.
    assert runs.live_run(db) == second and runs.get_run(db, second)["status"] == "queued"
    with pytest.raises(RunInProgress):
        runs.create_run(db, started_by=4, params={})
    # The process of a run the supervisor created takes that same run's lease.
    assert runs.begin_run(db, run_id=second, started_by=4, params={}, owner="h1:8:cc") == second
    assert runs.get_run(db, second)["params"] == {"mode": "scratch", "host": "h1"}
    # A process that does not hold the lease cannot record the end; its holder can.
    assert not runs.finish_run(db, second, "failed", owner="h1:7:aa")
    assert runs.finish_run(
        db, second, "succeeded", owner="h1:8:cc", metrics={"x": 1}, checkpoint_path="c.pt"
    )
    assert runs.finished_candidate(db) == (second, "c.pt")
    assert runs.finished_candidate(db, first) is None
    assert runs.get_run(db, second)["metrics"] == {"x": 1}
    assert runs.get_run(db, 99) is None


def test_a_reused_pid_blocks_nothing(db):
    """A run left by a process whose pid now belongs to a live process (this one) is judged by
    its lease alone."""
    with db.begin() as s:
        old = TrainingRunRepository(s).create(
            started_by=1, params={"pid": os.getpid()}, status="running"
        )
        TrainingRunRepository(s).acquire(old.id, owner=f"here:{os.getpid()}:x", ttl=TTL)
    _age(db, old.id, 600)
    new = runs.begin_run(db, run_id=None, started_by=1, params={}, owner="here:1:y")
    assert runs.get_run(db, old.id)["status"] == "failed"
    assert runs.live_run(db) == new


def test_a_supervised_run_refused_is_recorded_and_a_cancelled_one_never_starts(db):
    holder = runs.begin_run(db, run_id=None, started_by=1, params={}, owner="a:1:x")
    _age(db, holder, 30)  # older than nothing: still holding (TTL 60 s)
    with db.begin() as s:  # queued by another console while the first runs
        queued = TrainingRunRepository(s).create(started_by=2, params={}).id
    with pytest.raises(RunInProgress):
        runs.begin_run(db, run_id=queued, started_by=2, params={}, owner="b:1:x")
    assert runs.get_run(db, queued)["status"] == "failed"
    assert f"run {holder} was in progress" in runs.get_run(db, queued)["log"]
    assert runs.request_cancel(db, holder) and not runs.request_cancel(db, queued)
    assert runs.get_run(db, holder)["status"] == "running"  # its process stops it (a heartbeat)
    runs.finish_run(db, holder, "cancelled", owner="a:1:x")
    later = runs.create_run(db, started_by=1, params={})
    assert runs.request_cancel(db, later)  # not taken up yet: cancelled at once
    assert runs.get_run(db, later)["status"] == "cancelled"
    with pytest.raises(ValueError, match="already ended"):
        runs.begin_run(db, run_id=later, started_by=1, params={}, owner="c:1:x")


def test_the_lease_thread_renews_sees_a_cancel_and_notices_a_lost_lease(db):
    run_id = runs.begin_run(db, run_id=None, started_by=1, params={}, owner="h:1:x", lease_s=1)
    with runs.Lease(db, run_id, "h:1:x", lease_s=1) as lease:
        time.sleep(1.5)  # longer than the lease: only the renewals keep it
        assert runs.live_run(db, lease_s=1) == run_id and not lease.should_stop()
        runs.request_cancel(db, run_id)
        deadline = time.monotonic() + 5
        while not lease.cancelled.is_set():
            assert time.monotonic() < deadline, "the cancel was not seen"
            time.sleep(0.05)
        assert lease.should_stop() and not lease.lost.is_set()
    # Its renewals stopped: another process finds it stale; a late beat finds the lease lost.
    time.sleep(1.2)
    assert runs.live_run(db, lease_s=1) is None
    late = runs.Lease(db, run_id, "h:1:x", lease_s=1)
    assert not late.beat() and late.lost.is_set() and late.should_stop()
    assert not runs.finish_run(db, run_id, "succeeded", owner="h:1:x")  # nothing overwritten
    assert runs.get_run(db, run_id)["status"] == "failed"


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


def test_two_runs_queued_at_the_same_instant_one_is_refused(db, monkeypatch):
    """Two starts (the bot and the console, say) check for a live run while neither has
    committed its own: they take turns, so the second sees the first and is refused. Without
    the turn, on PostgreSQL both checks found none and both runs were queued."""
    import threading

    create = TrainingRunRepository.create
    first_in = threading.Event()

    def slow_create(self, **kwargs):  # the first start holds its transaction open a while
        if not first_in.is_set():
            first_in.set()
            time.sleep(0.8)
        return create(self, **kwargs)

    monkeypatch.setattr(TrainingRunRepository, "create", slow_create)
    outcome: dict[str, object] = {}

    def start(name: str) -> None:
        try:
            outcome[name] = runs.create_run(db, started_by=1, params={"by": name})
        except RunInProgress as exc:
            outcome[name] = exc

    a = threading.Thread(target=start, args=("a",))
    a.start()
    assert first_in.wait(10)
    b = threading.Thread(target=start, args=("b",))
    b.start()
    a.join(20)
    b.join(20)
    assert isinstance(outcome["a"], int)
    assert isinstance(outcome["b"], RunInProgress) and outcome["b"].run_id == outcome["a"]
    assert [r["id"] for r in runs.recent_runs(db)] == [outcome["a"]]
