"""A training step run by several processes for a caller that is itself a command (``xianliao
retrain --nproc N``): the parent writes the step's settings to a JSON file, starts N ranks of
``python -m xianliao.training.rank_job SPEC`` (see ``distributed.launch``), passes their
progress on, and reads back the result rank 0 wrote.

A spec file rather than ``xianliao train``'s options: the ranks get the caller's
``TrainConfig`` whole (every model size, the init checkpoint), with nothing lost in between.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from xianliao.training.distributed import Dist, StopRequest, launch
from xianliao.training.metrics import jsonl_appender
from xianliao.training.train import TrainConfig, TrainResult, train

SPEC_FILE = "ranks.json"


class DistributedTrainingError(Exception):
    """The ranks failed; the message says how, their own lines are above it on stderr."""


def train_distributed(
    data: list[tuple[str, float]],
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    nproc: int,
    *,
    on_progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """``train`` by ``nproc`` processes on this machine (DDP; gloo on CPU, NCCL on CUDA).
    ``on_progress`` gets rank 0's progress; ``should_stop`` True stops the ranks at an agreed
    step (they save ``last.pt``; the result says ``interrupted``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress, result = out / "progress.jsonl", out / "result.json"
    for stale in (progress, result):
        stale.unlink(missing_ok=True)
    spec = {
        "data": [[str(d), float(w)] for d, w in data],
        "out_dir": str(out),
        "config": asdict(cfg),
        "progress": str(progress),
        "result": str(result),
    }
    (out / SPEC_FILE).write_text(json.dumps(spec), "utf-8")
    seen = 0

    def poll() -> bool:
        nonlocal seen
        if on_progress is not None and progress.is_file():
            with open(progress, encoding="utf-8") as f:
                f.seek(seen)
                for line in f:
                    if not line.endswith("\n"):
                        break  # rank 0 is still writing it
                    seen += len(line.encode("utf-8"))
                    on_progress(json.loads(line))
        return bool(should_stop and should_stop())

    code = launch(nproc, [str(out / SPEC_FILE)], command=("xianliao.training.rank_job",), poll=poll)
    if code != 0 or not result.is_file():
        raise DistributedTrainingError(f"training with {nproc} processes failed (exit {code})")
    return TrainResult(**json.loads(result.read_text("utf-8")))


def run_rank(spec_path: str) -> int:
    """One rank (RANK, WORLD_SIZE, MASTER_ADDR/PORT from ``launch``): train, rank 0 writes the
    result atomically."""
    from xianliao.model.checkpoint import CheckpointError
    from xianliao.training.data import DataError

    spec = json.loads(Path(spec_path).read_text("utf-8"))
    dist = Dist.from_env()
    stop = StopRequest()  # Ctrl+C and SIGTERM: stop at a step every rank agrees on
    stop.install()
    try:
        result = train(
            [(d, w) for d, w in spec["data"]],
            spec["out_dir"],
            TrainConfig(**spec["config"]),
            progress=False,
            on_progress=jsonl_appender(spec["progress"]) if dist.is_main else None,
            dist=dist,
            should_stop=stop,
        )
    except (DataError, CheckpointError, OSError, ValueError) as exc:
        print(f"xianliao retrain (rank {dist.rank}): {exc}", file=sys.stderr)
        return 1
    if dist.is_main:
        tmp = Path(spec["result"] + ".tmp")
        tmp.write_text(json.dumps(asdict(result)), "utf-8")
        tmp.replace(spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(Dist.from_env().exit(run_rank(sys.argv[1])))
