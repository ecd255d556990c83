"""metrics.jsonl and curves.png of real tiny training runs."""

import json
import logging
import subprocess
import sys
from datetime import datetime

from xianliao.training.metrics import read_metrics
from xianliao.training.train import TrainConfig, train

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = {"emb_size": 16, "hidden_size": 24, "dropout": 0.0}


def _cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=4, log_every=5, eval_every=10, model=SMALL, seed=3, **kw
    )


def _lines(run) -> list[dict]:  # noqa: ANN001 - Path
    text = (run / "metrics.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]  # every line parses


def test_training_records_its_curves(tiny_data, tmp_path):
    run = tmp_path / "run"
    train([(str(tiny_data), 1.0)], run, _cfg(30), progress=False)
    lines = _lines(run)
    steps = [r["step"] for r in lines]
    assert steps == sorted(set(steps)) and steps[0] == 5 and steps[-1] == 30
    for r in lines:
        assert {"step", "time", "elapsed_s", "train_loss", "lr"} <= r.keys()
        assert datetime.fromisoformat(r["time"]).utcoffset() is not None
        assert ("valid_loss" in r) == ("valid_ppl" in r) == (r["step"] % 10 == 0)
    elapsed = [r["elapsed_s"] for r in lines]
    assert elapsed == sorted(elapsed)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learnt something
    assert (run / "curves.png").read_bytes()[:8] == PNG


def test_resume_keeps_the_lines_up_to_the_checkpoint_and_continues(tiny_data, tmp_path):
    run = tmp_path / "run"
    train([(str(tiny_data), 1.0)], run, _cfg(40), progress=False)
    (run / "metrics.jsonl").write_text(  # a line for a step after last.pt (step 40), and a torn one
        (run / "metrics.jsonl").read_text("utf-8") + '{"step": 45, "train_loss": 1.0}\n{"ste',
        encoding="utf-8",
    )
    train([(str(tiny_data), 1.0)], run, _cfg(60), resume=True, progress=False)
    steps = [r["step"] for r in _lines(run)]
    assert steps == list(range(5, 61, 5))
    assert _lines(run)[-1]["elapsed_s"] >= _lines(run)[7]["elapsed_s"]  # continued, not reset
    # Starting afresh over the run (no --resume) starts the file afresh.
    train([(str(tiny_data), 1.0)], run, _cfg(10), progress=False)
    assert [r["step"] for r in _lines(run)] == [5, 10]


def test_xianliao_plot_redraws_the_png(tiny_data, tmp_path):
    run = tmp_path / "run"
    train([(str(tiny_data), 1.0)], run, _cfg(10), progress=False)
    (run / "curves.png").unlink()
    out = subprocess.run(
        [sys.executable, "-m", "xianliao", "plot", str(run)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert (run / "curves.png").read_bytes()[:8] == PNG
    missing = subprocess.run(
        [sys.executable, "-m", "xianliao", "plot", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_a_plot_that_fails_is_one_warning_not_a_failed_run(tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    (run / "curves.png").mkdir(parents=True)  # the PNG cannot replace a folder
    with caplog.at_level(logging.WARNING):
        r = train([(str(tiny_data), 1.0)], run, _cfg(10), progress=False)
    assert r.steps == 10 and (run / "best.pt").is_file()
    warnings = [rec for rec in caplog.records if "curves.png" in rec.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == 10
