"""One ``xianliao retrain`` at a time across processes (and so across hosts: nothing here is
local but the database), on SQLite and PostgreSQL: a second process is refused, a killed one
stops blocking once its lease expires, any process can cancel a run, and the run records its
folder."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xianliao.model.checkpoint import file_digest
from xianliao.ops import runs
from xianliao.storage.database import Database
from xianliao.storage.repositories import ChatRepository, ExchangeRepository, UserRepository

LEASE_S = 4  # short, so a dead run stops blocking within the test; renewed every second


@pytest.fixture
def setup(tmp_path, database_url, tiny_checkpoint):
    live = tmp_path / "model" / "live.pt"
    live.parent.mkdir()
    shutil.copy(tiny_checkpoint, live)
    db = Database.open(database_url)
    with db.begin() as s:
        UserRepository(s).touch(42, username="u", first_name="U")
        ChatRepository(s).touch(42, type="private")
        ex, _ = ExchangeRepository(s).add(
            user_id=42,
            chat_id=42,
            message_id=1,
            user_text="你好",
            reply_text="随便",
            latency_ms=5.0,
            model_version="v1",
        )
        s.flush()
        ExchangeRepository(s).set_review_status(ex.id, "approved", reviewer=1)
    yield db, live
    db.dispose()


def retrain(base: Path, live: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "xianliao",
        "retrain",
        "--env-file",
        "/dev/null",
        "--model",
        str(live),
        "--base",
        str(base),
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--promote",
        "force",
        *args,
    ]


def env_for(db: Database) -> dict[str, str]:
    """The URL in the environment, as the supervisor passes it; the short lease."""
    return {**runs.child_environment(db), "RETRAIN_LEASE_S": str(LEASE_S)}


def start_long(cmd: list[str], env: dict[str, str], progress: Path, cwd: Path):
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd)
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no training progress"
        time.sleep(0.2)
    return proc


def test_two_processes_one_refused_a_killed_one_expires_any_process_cancels(
    tmp_path, setup, tiny_data
):
    db, live = setup
    env, digest = env_for(db), file_digest(live)
    elsewhere = tmp_path / "elsewhere" / "first"
    progress = tmp_path / "p1.jsonl"
    long = ("--steps", "100000", "--progress-jsonl")
    first = start_long(
        retrain(tiny_data, live, *long, str(progress), "--out", str(elsewhere)),
        env,
        progress,
        tmp_path,
    )
    (run1,) = [r["id"] for r in runs.recent_runs(db)]
    record = runs.get_run(db, run1)
    assert record["status"] == "running" and record["params"]["out"] == str(elsewhere)

    second = subprocess.run(
        retrain(tiny_data, live, "--steps", "5"),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert second.returncode == 1 and "one run at a time" in second.stderr
    assert len(runs.recent_runs(db)) == 1  # the refused run left no row

    first.send_signal(signal.SIGKILL)  # no report, no more heartbeats
    first.wait(30)
    assert runs.live_run(db, LEASE_S) == run1  # its lease has not expired yet
    time.sleep(LEASE_S + 0.5)
    assert runs.live_run(db, LEASE_S) is None
    assert "no heartbeat" in runs.get_run(db, run1)["log"]

    progress = tmp_path / "p3.jsonl"
    third = start_long(
        retrain(tiny_data, live, *long, str(progress), "--out", str(tmp_path / "third")),
        env,
        progress,
        tmp_path,
    )
    run3 = runs.recent_runs(db)[0]["id"]
    cancel = subprocess.run(
        retrain(tiny_data, live, "--cancel", str(run3)),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert cancel.returncode == 0, cancel.stderr
    _, err = third.communicate(timeout=60)
    assert third.returncode == 130, err.decode()
    assert runs.get_run(db, run3)["status"] == "cancelled"
    assert file_digest(live) == digest  # nothing was promoted
