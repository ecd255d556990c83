"""`xianliao retrain --nproc 2`: the retraining's training step (base data and logged pairs mixed
by weight) by two DDP processes on CPU, for real, through the command an admin runs."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_retrain import EDITED, _cli, _log

from xianliao.model.checkpoint import file_digest, load_checkpoint
from xianliao.storage.db import make_engine, session_factory
from xianliao.storage.repositories import TrainingRunRepository
from xianliao.training.distributed import weights_digest


@pytest.fixture
def live(tmp_path, tiny_checkpoint):
    path = tmp_path / "model" / "live.pt"
    path.parent.mkdir()
    path.write_bytes(Path(tiny_checkpoint).read_bytes())
    return path


def _ranks_alive(spec: Path) -> list[int]:
    """Processes still running a rank of this run (their command line names its spec file)."""
    alive = []
    for proc in Path("/proc").iterdir():
        try:
            if str(spec).encode() in (proc / "cmdline").read_bytes():
                alive.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return alive


def test_two_processes_retrain_on_the_mix_and_agree(tmp_path, live, tiny_data):
    db = f"sqlite:///{tmp_path}/chat.db"
    _log(db, [("你好", "随便说的", "approved", EDITED), ("晚安", "嗯", "approved", None)])
    out = tmp_path / "rt"
    done = subprocess.run(
        _cli(tmp_path, live, tiny_data, db, "--nproc", "2", "--steps", "30", "--weight", "1")
        + ["--promote", "never", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["promoted"] is False
    train = json.loads((out / "report.json").read_text("utf-8"))["train"]
    assert train["world_size"] == 2 and train["steps"] == 30 and not train["interrupted"]
    saved = weights_digest(load_checkpoint(out / "run" / "last.pt")["state_dict"])
    assert train["rank_weights"] == [saved, saved]  # both ranks ended with the saved weights
    # the progress of rank 0 reached the command (its stderr lines, every 10 steps)
    assert "step 30/30" in done.stderr
    ranks = load_checkpoint(out / "run" / "last.pt")["resume"]["ranks"]
    assert len(ranks) == 2


def test_a_cancelled_two_process_retrain_stops_every_rank_and_promotes_nothing(
    tmp_path, live, tiny_data
):
    db = f"sqlite:///{tmp_path}/chat.db"
    _log(db, [("你好", "随便", "approved", EDITED)])
    digest, out = file_digest(live), tmp_path / "k"
    progress = tmp_path / "progress.jsonl"
    proc = subprocess.Popen(
        _cli(tmp_path, live, tiny_data, db, "--nproc", "2", "--steps", "100000")
        + ["--out", str(out), "--progress-jsonl", str(progress), "--promote", "force"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "RETRAIN_LEASE_S": "30"},
    )
    deadline = time.monotonic() + 180
    while not (progress.exists() and progress.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert len(_ranks_alive(out / "run" / "ranks.json")) == 2
    proc.send_signal(signal.SIGTERM)  # what /retrain cancel and a service manager send
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "cancelled; the live model is unchanged" in err.decode()
    assert file_digest(live) == digest
    assert _ranks_alive(out / "run" / "ranks.json") == []
    assert load_checkpoint(out / "run" / "last.pt")["resume"]["world_size"] == 2
    engine = make_engine(db)
    with session_factory(engine)() as s:
        assert [r.status for r in TrainingRunRepository(s).recent()] == ["cancelled"]
    engine.dispose()


def test_nproc_that_does_not_split_the_batch_is_one_line(tmp_path, live, tiny_data):
    db = f"sqlite:///{tmp_path}/chat.db"
    done = subprocess.run(
        _cli(tmp_path, live, tiny_data, db, "--nproc", "3"),  # --batch-size 8
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not split evenly" in done.stderr
    assert not (tmp_path / "chat.db").exists()  # refused before the database is opened
