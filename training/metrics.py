"""A run's metrics over time: ``metrics.jsonl`` in the run folder, one JSON object per progress
report, appended as training goes (a live view tails it), and ``curves.png`` drawn from it.

A line looks like ``{"step": 1200, "time": "2026-12-02T17:01:02+00:00", "elapsed_s": 73.2,
"train_loss": 4.12, "valid_loss": 4.95, "valid_ppl": 141.2, "lr": 0.001}``; ``valid_loss`` and
``valid_ppl`` appear only on the lines of steps where validation ran.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file; a line cut short (a run killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


class MetricsLog:
    """Appends one record per line to ``metrics.jsonl``, steps strictly increasing.

    A fresh run starts the file afresh. A resumed run keeps the lines up to the checkpoint's step
    and continues after them: lines written after the last checkpoint describe steps that the
    resumed run will train again.
    """

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.last_step = -1
        if resume_step is None or not self.path.is_file():
            self.path.write_text("", encoding="utf-8")
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self.last_step = max((r["step"] for r in kept), default=-1)

    def append(self, record: dict) -> None:
        # A record for a step already written (the validation of a run resumed at its last step)
        # would break the curve's order; the earlier line stands.
        if record["step"] <= self.last_step:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.last_step = record["step"]


def jsonl_appender(path: str | os.PathLike) -> Callable[[dict], None]:
    """A training ``on_progress`` callback that appends each report to ``path`` as a JSON line
    (``--progress-jsonl``; what a supervising process reads)."""

    def on_progress(info: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(info) + "\n")

    return on_progress


def plot_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw training loss and validation perplexity over steps from ``run_dir/metrics.jsonl``
    into ``run_dir/curves.png`` (or ``out``), atomically. Raises OSError or ValueError."""
    # The object-oriented API with the Agg canvas: no pyplot, so no global backend to choose
    # and nothing that needs a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run = Path(run_dir)
    records = read_metrics(run / METRICS_FILE)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    valid = [(r["step"], r["valid_ppl"]) for r in records if "valid_ppl" in r]
    if not train and not valid:
        raise ValueError(f"{run / METRICS_FILE} holds no measurements yet")
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, ppl_ax = fig.subplots(1, 2)
    _curve(loss_ax, train, "training loss", "C0")
    _curve(ppl_ax, valid, "validation perplexity", "C1")
    if len(valid) > 1 and max(p for _, p in valid) > 10 * min(p for _, p in valid):
        ppl_ax.set_yscale("log")  # early perplexities are orders of magnitude above late ones
    fig.suptitle(run.resolve().name)
    target = Path(out) if out is not None else run / CURVES_FILE
    tmp = target.with_name(target.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, target)
    return target


def _curve(ax, points: list[tuple[int, float]], label: str, color: str) -> None:  # noqa: ANN001
    ax.set_title(label)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, color=color, marker="o" if len(points) < 30 else None)
    else:
        ax.text(0.5, 0.5, "no measurement yet", ha="center", va="center", transform=ax.transAxes)


def plot_quietly(run_dir: str | os.PathLike) -> Path | None:
    """plot_curves, but a failure is one warning line: a plot must never fail a training run."""
    try:
        return plot_curves(run_dir)
    except Exception as exc:  # noqa: BLE001 - matplotlib can fail in many ways; none matters here
        logger.warning("could not draw %s: %s", Path(run_dir) / CURVES_FILE, exc)
        return None
