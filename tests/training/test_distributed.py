"""Distributed training for real: 2 processes on CPU (gloo) on the tiny corpus."""

import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from xianliao.model.checkpoint import load_checkpoint
from xianliao.training.distributed import Dist, weights_digest
from xianliao.training.metrics import read_metrics
from xianliao.training.train import TrainConfig, train

SIZES = ["--hidden-size", "24", "--emb-size", "16", "--dropout", "0"]
# eval_every=40: validations at 40, 80, ... in every run compared below
COMMON = ["--batch-size", "8", "--log-every", "5", "--eval-every", "40", "--quiet", *SIZES]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)


def _result(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _losses(run) -> dict[int, float]:  # noqa: ANN001 - Path
    return {r["step"]: r["train_loss"] for r in read_metrics(run / "metrics.jsonl")}


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory, tiny_data):
    """200 steps by 2 ranks under torchrun itself, without a stop."""
    run = tmp_path_factory.mktemp("ddp") / "full"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "xianliao", "train", str(tiny_data), "--out", str(run), "--steps", "200"]
    done = _run([*cmd, *COMMON])
    assert done.returncode == 0, done.stderr
    return run, _result(done.stdout)


def test_two_ranks_train_and_their_weights_are_the_checkpoint(torchrun_run):
    run, result = torchrun_run
    assert result["world_size"] == 2 and result["steps"] == 200 and not result["interrupted"]
    assert result["target_tokens_per_s"] > 0
    last = load_checkpoint(run / "last.pt")
    saved = weights_digest(last["state_dict"])
    assert result["rank_weights"] == [saved, saved]  # every rank ended with the saved weights
    assert last["resume"]["world_size"] == 2 and len(last["resume"]["ranks"]) == 2
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(5, 201, 5))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_after_40_steps_matches_one_process_with_the_same_global_batch(
    torchrun_run, tiny_data, tmp_path
):
    """Same global batch (8 pairs: 4 per rank): the validation loss after 40 steps is within
    10% of a one-process run's. Not equal: the ranks draw other batches, and DDP averages the
    ranks' mean losses rather than weighting every token alike."""
    run, _ = torchrun_run
    two = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}[40]["valid_loss"]
    cfg = TrainConfig(
        steps=40,
        batch_size=8,
        log_every=5,
        eval_every=40,
        model={"hidden_size": 24, "emb_size": 16, "dropout": 0.0},
    )
    one = train([(str(tiny_data), 1.0)], tmp_path / "one", cfg, progress=False)
    first = read_metrics(run / "metrics.jsonl")[0]["train_loss"]
    assert two < 0.8 * first  # it learnt
    assert one.valid_ppl is not None
    one_loss = load_checkpoint(one.last_checkpoint)["train"]["metrics"]["valid_loss"]
    assert two == pytest.approx(one_loss, rel=0.10)


def test_sigterm_stops_all_ranks_and_resume_continues_exactly(torchrun_run, tiny_data, tmp_path):
    """`xianliao train --nproc 2`, stopped by SIGTERM, saves last.pt and exits 0; resumed, it
    gives the uninterrupted torchrun run's losses."""
    full, _ = torchrun_run
    run = tmp_path / "split"
    base = [sys.executable, "-m", "xianliao", "train", str(tiny_data), "--out", str(run)]
    proc = subprocess.Popen(
        [*base, "--nproc", "2", "--steps", "200", *COMMON],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or not read_metrics(run / "metrics.jsonl"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    stopped = _result(out)
    assert stopped["interrupted"] is True and 5 <= stopped["steps"] < 200, stopped
    assert load_checkpoint(run / "last.pt")["resume"]["step"] == stopped["steps"]

    done = _run([*base, "--nproc", "2", "--steps", "200", "--resume", *COMMON])
    assert done.returncode == 0, done.stderr
    assert _result(done.stdout)["steps"] == 200
    split, reference = _losses(run), _losses(full)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 200
    # The report after the stop averages a shorter window; every other one is the same.
    cut = stopped["steps"] // 5 * 5 + 5
    compared = [s for s in range(5, 201, 5) if s != cut]
    assert [split[s] for s in compared] == pytest.approx([reference[s] for s in compared], rel=1e-4)


def test_another_number_of_processes_resumes_but_not_exactly(torchrun_run, tmp_path, caplog):
    import shutil

    full, _ = torchrun_run
    run = tmp_path / "more"
    shutil.copytree(full, run)
    data = load_checkpoint(run / "last.pt")["train"]["data"]
    with caplog.at_level(logging.WARNING):
        r = train(
            [(d, w) for d, w in data],
            run,
            TrainConfig(steps=210),
            resume=True,
            progress=False,
            dist=Dist(),
        )
    assert r.steps == 210 and r.world_size == 1
    assert "resuming a 2-process run on 1 processes" in caplog.text
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == 210


def test_nproc_refuses_what_cannot_run_in_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    from xianliao.training.cli import train_main

    base = [str(tiny_data), "--out", str(tmp_path / "run"), "--steps", "2"]
    with pytest.raises(SystemExit) as exit_:
        train_main([*base, "--nproc", "3", "--batch-size", "8"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("does not split evenly over 3 processes (see --help)")
    )
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    with pytest.raises(SystemExit):
        train_main([*base, "--nproc", "2"])
    assert "leave it out under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_rank_ends_without_the_interpreters_shutdown_and_keeps_its_output():
    """A rank's process ends with os._exit (the process group's threads can abort the
    shutdown): what it printed, even unflushed into a pipe, still arrives; atexit does not run.
    A process that never joined a group exits normally, even with WORLD_SIZE set."""
    code = (
        "import atexit, sys\n"
        "from xianliao.training import distributed\n"
        "from xianliao.training.distributed import Dist\n"
        "distributed._JOINED = True  # (as Dist.start sets it)\n"
        "atexit.register(lambda: print('shutdown ran'))\n"
        "print('result line')\n"
        "print('a warning', file=sys.stderr)\n"
        "sys.exit(Dist(rank=1, world_size=2).exit(3))\n"
    )
    done = _run([sys.executable, "-c", code])
    assert done.returncode == 3
    assert done.stdout == "result line\n" and "a warning" in done.stderr
    for other in (code.replace("rank=1, world_size=2", ""), code.replace("= True", "= False")):
        done = _run([sys.executable, "-c", other])
        assert done.returncode == 3 and "shutdown ran" in done.stdout  # a normal exit


def test_launch_reports_a_rank_killed_by_a_signal(tmp_path, monkeypatch):
    """A rank that dies of a signal fails the launch even when the others exit 0."""
    from xianliao.training.distributed import launch

    (tmp_path / "xl_fake_rank.py").write_text(
        "import os, signal\n"
        "if os.environ['RANK'] == '1':\n"
        "    os.kill(os.getpid(), signal.SIGABRT)\n",
        "utf-8",
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert launch(2, [], grace_s=5, command=("xl_fake_rank",)) == 128 + signal.SIGABRT
    (tmp_path / "xl_fine_rank.py").write_text("pass\n", "utf-8")
    assert launch(2, [], grace_s=5, command=("xl_fine_rank",)) == 0
