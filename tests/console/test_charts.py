"""Training curves and live progress read from a run's files (the format ``xianliao train``
writes), laid out for the server-rendered SVG."""

from __future__ import annotations

import json

from xianliao.console import charts


def write_metrics(path, n: int = 10, *, valid_every: int = 3) -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(1, n + 1):
            row = {"step": i * 100, "time": "2026-12-02T17:01:02+00:00", "elapsed_s": 10.0 * i}
            row.update(train_loss=5.0 - 0.3 * i, lr=0.001)
            if i % valid_every == 0:
                row.update(valid_loss=5.5 - 0.2 * i, valid_ppl=200.0 - 10 * i)
            f.write(json.dumps(row) + "\n")


def test_read_metrics_skips_a_torn_or_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, 4)
    with path.open("a") as f:
        f.write('["not", "an object"]\n{"no step": 1}\n{"step": 500, "train_lo')
    rows = charts.read_metrics(path)
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert charts.read_metrics(tmp_path / "missing.jsonl") == []


def test_curves_scale_into_the_chart(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", 10)
    loss, ppl = charts.curves(charts.read_metrics(tmp_path / "metrics.jsonl"))
    assert (loss.title, ppl.title) == ("training loss", "validation perplexity")
    points = [tuple(map(float, p.split(","))) for p in loss.points.split()]
    assert len(points) == 10
    xs, ys = zip(*points, strict=True)
    assert min(xs) == charts.PAD and max(xs) == charts.WIDTH - charts.PAD
    assert ys == tuple(sorted(ys))  # loss falls, so y (downwards in SVG) grows
    assert ys[-1] == charts.HEIGHT - charts.PAD
    assert len(ppl.points.split()) == 3  # validation ran on 3 of the 10 lines
    assert ppl.last == "110 at step 900"  # 200 - 10 * 9


def test_no_metrics_no_chart_and_a_flat_curve_is_drawn():
    assert charts.curves([]) == []
    flat = charts.chart([{"step": 1, "train_loss": 2.0}], "train_loss", "loss")
    assert flat is not None and flat.points  # one point, no division by zero
    assert charts.chart([{"step": 1, "train_loss": float("nan")}], "train_loss", "x") is None


def test_live_progress_from_a_running_run(tmp_path):
    folder = charts.run_folder(tmp_path / "runs" / "best.pt", 7)
    assert folder == tmp_path / "runs" / "retrain-7"
    assert charts.live_progress(folder) is None
    folder.mkdir(parents=True)
    with (folder / "progress.jsonl").open("w") as f:
        for step in (50, 100):
            f.write(
                json.dumps({"run_id": 7, "step": step, "steps": 400, "loss": 3.5, "eta_s": 90.0})
                + "\n"
            )
    live = charts.live_progress(folder)
    assert (live["step"], live["steps"], live["train_loss"], live["eta_s"]) == (100, 400, 3.5, 90.0)
    assert live["fraction"] == 0.25
    # before metrics.jsonl exists the curve comes from progress.jsonl; then from metrics.jsonl
    assert [c.title for c in charts.curves(charts.run_rows(folder))] == ["training loss"]
    write_metrics(folder / "train" / "metrics.jsonl", 6)
    assert len(charts.curves(charts.run_rows(folder))) == 2


def test_eta_from_the_pace_so_far():
    rows = [{"step": 100, "elapsed_s": 20.0, "train_loss": 3.0}]
    info = charts.progress(rows, 500)
    assert info["fraction"] == 0.2 and info["eta_s"] == 80.0
