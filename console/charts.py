"""Training curves from a run's ``metrics.jsonl``, laid out for a server-rendered SVG chart
(no JavaScript chart library: the template draws the polylines this computes)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, PAD = 640, 240, 44


def read_metrics(path: Path, *, limit_bytes: int = 20_000_000) -> list[dict[str, Any]]:
    """The JSON objects of a ``metrics.jsonl`` (a line being written or malformed is skipped;
    only the last ``limit_bytes`` of a huge file are read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit_bytes))
            data = f.read()
    except OSError:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int | float):
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Chart:
    title: str
    points: str  # the SVG polyline's "x,y x,y ..."
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    last: str
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def chart(rows: list[dict[str, Any]], key: str, title: str) -> Chart | None:
    """``key`` over ``step`` as a chart, or None when no row has a finite ``key``."""
    pts = [
        (float(r["step"]), float(r[key]))
        for r in rows
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)

    points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    x_ticks = [(sx(x0 + (x1 - x0) * i / 4), f"{x0 + (x1 - x0) * i / 4:.0f}") for i in range(5)]
    y_ticks = [(sy(y0 + (y1 - y0) * i / 4), _fmt(y0 + (y1 - y0) * i / 4)) for i in range(5)]
    return Chart(title, points, x_ticks, y_ticks, f"{_fmt(ys[-1])} at step {xs[-1]:.0f}")


def curves(rows: list[dict[str, Any]]) -> list[Chart]:
    """Training loss and validation perplexity over steps (those the file has)."""
    found = [
        chart(rows, "train_loss", "training loss"),
        chart(rows, "valid_ppl", "validation perplexity"),
    ]
    return [c for c in found if c is not None]


def progress(rows: list[dict[str, Any]], total_steps: int | None) -> dict[str, Any] | None:
    """The newest step, its losses, the fraction done and an ETA in seconds (from the steps per
    second so far), for a running run's live view."""
    if not rows:
        return None
    last = rows[-1]
    info: dict[str, Any] = {
        "step": int(last["step"]),
        "train_loss": last.get("train_loss"),
        "valid_ppl": next((r["valid_ppl"] for r in reversed(rows) if "valid_ppl" in r), None),
        "elapsed_s": last.get("elapsed_s"),
        "fraction": None,
        "eta_s": None,
    }
    elapsed = last.get("elapsed_s")
    if total_steps and total_steps > 0:
        info["fraction"] = min(1.0, info["step"] / total_steps)
        if isinstance(elapsed, int | float) and elapsed > 0 and info["step"] > 0:
            rate = info["step"] / elapsed
            info["eta_s"] = max(0.0, (total_steps - info["step"]) / rate)
    return info


def run_folder(model_path: Path, run_id: int) -> Path:
    """Where a run started by the bot or the console writes (ops.supervisor's layout)."""
    return Path(model_path).parent / f"retrain-{run_id}"


def find_metrics(folder: Path) -> Path | None:
    """The run's ``metrics.jsonl``: in its folder or one level below (retrain trains there)."""
    for candidate in (folder / "metrics.jsonl", *sorted(folder.glob("*/metrics.jsonl"))):
        if candidate.is_file():
            return candidate
    return None


def run_rows(folder: Path) -> list[dict[str, Any]]:
    """The run's metrics over time: ``metrics.jsonl``, else its ``progress.jsonl`` (whose
    ``loss`` is the training loss) while a run that predates metrics.jsonl is going."""
    path = find_metrics(folder)
    if path is not None:
        return read_metrics(path)
    rows = read_metrics(folder / "progress.jsonl")
    return [{**r, "train_loss": r.get("loss")} for r in rows]


def live_progress(folder: Path, progress_file: Path | None = None) -> dict[str, Any] | None:
    """The newest progress line of a running run: step, steps, loss, ETA (from the training
    loop itself, which knows its time budget), or None before the first one. The progress
    file is ``folder/progress.jsonl`` unless the run recorded another."""
    rows = read_metrics(progress_file or folder / "progress.jsonl")
    if not rows:
        return None
    last = rows[-1]
    steps = last.get("steps")
    info = progress(run_rows(folder), steps if isinstance(steps, int) else None) or {}
    info.update({"step": int(last["step"]), "steps": steps, "train_loss": last.get("loss")})
    if isinstance(last.get("eta_s"), int | float):
        info["eta_s"] = float(last["eta_s"])
    return info
