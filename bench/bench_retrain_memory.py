"""Peak memory of retraining over 1M logged exchanges in SQLite vs training on files.

Fills a SQLite database with N approved exchanges (DGK pairs with fresh rare words, so they do
not deduplicate away), then measures, with the same model and base data:

* ``xianliao train BASE --steps 200`` (training on files only), and
* ``xianliao retrain --steps 200`` (export from SQLite, prepare with the live vocabulary,
  train on base + logs, compare with the live model),

sampling /proc of each process tree every 50 ms (RssAnon and VmRSS summed).

    .venv/bin/python bench/bench_retrain_memory.py --model runs/dgk/best.pt --base data/dgk
    .venv/bin/python bench/bench_retrain_memory.py --rows 100000 ...   # a smaller run

Results go to stdout and bench/out/retrain_memory.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import OUT, XIANLIAO, load_pairs, machine, rare_word, run_measured  # noqa: E402


def fill_database(db: Path, rows: int, seed: int = 0) -> float:
    """Insert ``rows`` approved exchanges through SQLAlchemy (bound parameters, batches)."""
    from sqlalchemy import insert

    from xianliao.storage.db import init_schema, make_engine
    from xianliao.storage.models import Chat, Exchange, User

    t0 = time.perf_counter()
    engine = make_engine(f"sqlite:///{db}")
    init_schema(engine)
    base = load_pairs()
    rng = random.Random(seed)
    users = 1000
    with engine.begin() as conn:
        conn.execute(
            insert(User.__table__), [{"id": u, "username": f"u{u}"} for u in range(1, users + 1)]
        )
        conn.execute(
            insert(Chat.__table__), [{"id": u, "type": "private"} for u in range(1, users + 1)]
        )
    batch: list[dict] = []
    for i in range(rows):
        q, a = base[rng.randrange(len(base))].split("\t", 1)
        if rng.random() < 0.3:
            q = q + rare_word(rng)
        u = 1 + i % users
        batch.append(
            {
                "user_id": u,
                "chat_id": u,
                "message_id": i,
                "source": "telegram",
                "user_text": q,
                "reply_text": a,
                "latency_ms": 5.0,
                "model_version": "bench",
                "decode_options": "{}",
                "review_status": "approved",
            }
        )
        if len(batch) == 10000:
            with engine.begin() as conn:
                conn.execute(insert(Exchange.__table__), batch)
            batch = []
    if batch:
        with engine.begin() as conn:
            conn.execute(insert(Exchange.__table__), batch)
    engine.dispose()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--model", required=True, help="live checkpoint (its vocabulary = BASE's)")
    p.add_argument("--base", required=True, help="prepared base data dir")
    p.add_argument("--work", default="/tmp/xl_retrain_bench")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"chat-{a.rows}.db"
    fill_s = None
    if not db.exists():
        fill_s = round(fill_database(db, a.rows), 1)
    common = ["--batch-size", "128", "--threads", str(a.threads)]
    shutil.rmtree(work / "train", ignore_errors=True)
    shutil.rmtree(work / "retrain", ignore_errors=True)
    train = run_measured(
        [
            XIANLIAO,
            "train",
            a.base,
            "--out",
            str(work / "train"),
            "--steps",
            str(a.steps),
            "--eval-every",
            "100000",
            "--quiet",
            *common,
        ]
    )
    log = open(work / "retrain.log", "w")  # noqa: SIM115
    retrain = run_measured(
        [
            XIANLIAO,
            "retrain",
            "--env-file",
            "/dev/null",
            "--database-url",
            f"sqlite:///{db}",
            "--model",
            a.model,
            "--base",
            a.base,
            "--steps",
            str(a.steps),
            "--promote",
            "never",
            "--out",
            str(work / "retrain"),
            *common,
        ],
        log=log,
    )
    log.close()
    report = json.loads((work / "retrain" / "report.json").read_text())
    result = {
        "machine": machine(),
        "rows": a.rows,
        "db_mb": round(db.stat().st_size / 2**20, 1),
        "fill_seconds": fill_s,
        "export": report["export"],
        "train_files": {k: v for k, v in asdict(train).items() if k != "timeline"},
        "retrain_db": {k: v for k, v in asdict(retrain).items() if k != "timeline"},
        "retrain_timeline": retrain.timeline,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "retrain_memory.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "retrain_timeline"}, indent=2))
    print("\n| run | peak RssAnon (MB) | peak VmRSS (MB) | seconds |\n|---|---:|---:|---:|")
    for name, m in (
        (f"train on files, {a.steps} steps", train),
        (f"retrain, {a.rows:,} logged rows, {a.steps} steps", retrain),
    ):
        print(f"| {name} | {m.rss_anon_mb} | {m.vm_rss_mb} | {m.seconds} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
