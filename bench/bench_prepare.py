"""``xianliao prepare`` throughput (MB/s of corpus, 2 workers, rjieba) against one process
running ``jieba.lcut``, and how often rjieba and jieba segment a line identically.

    .venv/bin/python bench/bench_prepare.py --mb 1000          # generates /tmp/xl_bench_prep
    .venv/bin/python bench/bench_prepare.py --corpus /tmp/xl_bench_mem/corpus_10M.tsv

Order: jieba on a ~5 MB slice, prepare on the big corpus, jieba on the slice again (so a load
change shows up as a difference between the two jieba numbers); the CPU seconds of prepare's
parent and of its workers are sampled from /proc. Results: stdout and bench/out/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import DGK, OUT, XIANLIAO, generate_corpus, machine, run_measured  # noqa: E402

from xianliao.model.text import normalise  # noqa: E402

PAIR_BYTES = 57.5  # mean bytes per generated pair (DGK lines + 5% rare words)


def read_slice(path: Path, mb: float) -> list[tuple[str, str]]:
    pairs, size = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            size += len(line.encode())
            q, _, a = line.rstrip("\n").partition("\t")
            pairs.append((q, a))
            if size >= mb * 1e6:
                break
    return pairs


def slice_mb(pairs: list[tuple[str, str]]) -> float:
    return sum(len(q.encode()) + len(a.encode()) + 2 for q, a in pairs) / 1e6


def time_jieba(pairs: list[tuple[str, str]], hmm: bool) -> float:
    """MB/s of one process segmenting both sides with jieba.lcut (after normalising, as
    prepare does)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    t = time.perf_counter()
    for q, a in pairs:
        jieba.lcut(normalise(q), HMM=hmm)
        jieba.lcut(normalise(a), HMM=hmm)
    return slice_mb(pairs) / (time.perf_counter() - t)


def time_rjieba(pairs: list[tuple[str, str]], hmm: bool) -> float:
    import rjieba

    rjieba.cut("预热", hmm=hmm)
    t = time.perf_counter()
    for q, a in pairs:
        rjieba.cut(normalise(q), hmm=hmm)
        rjieba.cut(normalise(a), hmm=hmm)
    return slice_mb(pairs) / (time.perf_counter() - t)


def agreement(lines: list[str], hmm: bool) -> tuple[float, list]:
    import jieba
    import rjieba

    same, diffs = 0, []
    for text in lines:
        j = [t for t in jieba.lcut(text, HMM=hmm) if not t.isspace()]
        r = [t for t in rjieba.cut(text, hmm=hmm) if not t.isspace()]
        if j == r:
            same += 1
        elif len(diffs) < 5:
            diffs.append({"text": text, "jieba": j, "rjieba": r})
    return same / len(lines), diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="prepare throughput vs single-process jieba")
    p.add_argument("--corpus", help="an existing TSV to prepare (else one is generated)")
    p.add_argument("--mb", type=float, default=1000, help="size of the generated corpus")
    p.add_argument("--work", default="/tmp/xl_bench_prep")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slice-mb", type=float, default=5.0, help="text for the jieba baseline")
    p.add_argument("--agree-lines", type=int, default=20000)
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.corpus:
        corpus = Path(a.corpus)
    else:
        n = int(a.mb * 1e6 / PAIR_BYTES)
        corpus = work / f"corpus_{a.mb:g}MB.tsv"
        print(f"generating {corpus} ({n} pairs)", flush=True)
        generate_corpus(corpus, n, seed=7)
    mb = corpus.stat().st_size / 1e6
    res: dict = {"machine_start": machine(), "corpus": str(corpus), "corpus_mb": round(mb, 1)}

    sl = read_slice(DGK[0], a.slice_mb)
    res["slice_mb"] = round(slice_mb(sl), 2)
    print(f"jieba (HMM off) on {res['slice_mb']} MB ...", flush=True)
    res["jieba_mb_s_before"] = round(time_jieba(sl, hmm=False), 3)
    res["rjieba_1proc_mb_s_before"] = round(time_rjieba(sl, hmm=False), 2)
    print(res, flush=True)

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    print(f"prepare {mb:.0f} MB with {a.workers} workers ...", flush=True)
    cmd = [XIANLIAO, "prepare", str(corpus), "--out", str(data), "--quiet"]
    cmd += ["--workers", str(a.workers)]
    with open(work / "prepare.log", "w") as log:
        pk = run_measured(cmd, log=log, interval=0.5)  # CPU times only: sample rarely
    stats = json.loads((data / "meta.json").read_text())["stats"]
    res["prepare"] = {
        "seconds": pk.seconds,
        "mb_s": round(mb / pk.seconds, 2),
        "parent_cpu_s": pk.parent_cpu_s,
        "workers_cpu_s": pk.children_cpu_s,
        "timeline_every_10s": pk.timeline[::10],
        "pairs_read": stats["pairs_read"],
    }
    res["seconds_for_1GB"] = round(1000 / res["prepare"]["mb_s"], 1)
    print(res["prepare"], flush=True)
    shutil.rmtree(data, ignore_errors=True)

    res["jieba_mb_s_after"] = round(time_jieba(sl, hmm=False), 3)
    res["rjieba_1proc_mb_s_after"] = round(time_rjieba(sl, hmm=False), 2)
    jieba_mb_s = (res["jieba_mb_s_before"] + res["jieba_mb_s_after"]) / 2
    res["speedup_vs_jieba"] = round(res["prepare"]["mb_s"] / jieba_mb_s, 1)

    lines = [normalise(q) for q, _ in read_slice(DGK[1], 2.0)[: a.agree_lines]]
    lines = [x for x in lines if x]
    for hmm in (False, True):
        share, diffs = agreement(lines, hmm)
        res[f"agreement_hmm_{'on' if hmm else 'off'}"] = {
            "lines": len(lines),
            "identical": round(100 * share, 3),
            "examples": diffs,
        }
    res["machine_end"] = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prepare.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print(json.dumps(res, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
