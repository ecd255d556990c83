"""Peak memory of ``xianliao prepare`` and ``xianliao train`` (200 steps) as the corpus grows.

Generates TSV corpora of 0.1M, 1M and 10M pairs into /tmp (sampled from the DGK corpora, with a
fresh rare word in 5% of the pairs so the number of distinct words grows with size), runs
prepare and train as subprocesses and samples /proc of the whole process tree every 50 ms.

    .venv/bin/python bench/bench_memory.py            # 0.1M, 1M, 10M
    .venv/bin/python bench/bench_memory.py --sizes 100000 --skip-seed

Results go to stdout and bench/out/memory.json. Memory numbers do not depend on CPU load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT, ROOT, XIANLIAO, generate_corpus, load_pairs, machine, run_measured  # noqa: E402

SEED_STYLE = r"""
import sys
from xianliao.model.text import Tokenizer
tok = Tokenizer()
pairs = []
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        q, a = line.rstrip("\n").split("\t")
        pairs.append((tok.tokenize(q), tok.tokenize(a)))
for line in open("/proc/self/status"):
    if line.startswith("RssAnon:"):
        print(int(line.split()[1]) // 1024, len(pairs))
"""


def label(n: int) -> str:
    return f"{n / 1e6:g}M"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--work", default="/tmp/xl_bench_mem", help="corpora, data and runs go here")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed-max", type=int, default=1_000_000, help="largest seed-style baseline")
    p.add_argument("--skip-seed", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep prepared data and runs")
    p.add_argument("--prepare-only", action="store_true", help="measure prepare, not train")
    p.add_argument("--prepare-args", default="", help="extra prepare options, e.g. '--workers 2'")
    p.add_argument("--out-name", default="memory.json", help="file name in bench/out")
    a = p.parse_args(argv)

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "sizes": {}}
    base = None
    for n in a.sizes:
        name = label(n)
        tsv = work / f"corpus_{name}.tsv"
        if not (tsv.is_file() and tsv.with_suffix(".done").is_file()):
            base = base if base is not None else load_pairs()
            print(f"[{name}] generating {tsv}", flush=True)
            generate_corpus(tsv, n, seed=n, base=base)
        mb = tsv.stat().st_size / 1e6
        data, run = work / f"data_{name}", work / f"run_{name}"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
        row: dict = {"pairs": n, "corpus_mb": round(mb, 1)}
        print(f"[{name}] prepare ({mb:.0f} MB)", flush=True)
        with open(work / f"prepare_{name}.log", "w") as log:
            pk = run_measured(
                [
                    XIANLIAO,
                    "prepare",
                    str(tsv),
                    "--out",
                    str(data),
                    "--quiet",
                    "--force",
                    *a.prepare_args.split(),
                ],
                log=log,
            )
        row["prepare"] = asdict(pk)
        meta = json.loads((data / "meta.json").read_text())
        row["prepare_stats"] = {
            k: meta["stats"][k]
            for k in ("distinct_words_seen", "counter_prunes", "tokens", "unk_tokens", "seconds")
        }
        row["data_mb"] = round(sum(f.stat().st_size for f in data.iterdir()) / 1e6, 1)
        if a.prepare_only:
            d = row["prepare"]
            print(
                f"[{name}] prepare: RssAnon sum {d['rss_anon_mb']} MB, VmRSS sum "
                f"{d['vm_rss_mb']} MB, parent RssAnon {d['parent_rss_anon_mb']} MB, "
                f"{d['seconds']} s, {row['prepare_stats']}",
                flush=True,
            )
            results["sizes"][name] = row
            (OUT / a.out_name).write_text(json.dumps(results, indent=1))
            if not a.keep:
                shutil.rmtree(data, ignore_errors=True)
            continue
        print(f"[{name}] train {a.steps} steps", flush=True)
        cmd = [XIANLIAO, "train", str(data), "--out", str(run), "--steps", str(a.steps)]
        cmd += ["--eval-every", "1000", "--quiet", "--force", "--threads", str(a.threads)]
        # Passive OpenMP waiting: the same memory, but no spinning against other jobs' CPU.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        with open(work / f"train_{name}.log", "w") as log:
            tk = run_measured(cmd, log=log, env=env)
        row["train"] = asdict(tk)
        if not a.skip_seed and n <= a.seed_max:
            print(f"[{name}] seed-style whole-corpus load", flush=True)
            r = subprocess.run(
                [sys.executable, "-c", SEED_STYLE, str(tsv)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            anon, pairs = (int(x) for x in r.stdout.split())
            row["seed_style_rss_anon_mb"] = anon
            row["seed_style_mb_per_corpus_mb"] = round(anon / mb, 1)
        results["sizes"][name] = row
        for k in ("prepare", "train"):
            d = row[k]
            print(
                f"[{name}] {k}: RssAnon sum {d['rss_anon_mb']} MB, Pss_Anon sum "
                f"{d['pss_anon_mb']} MB, VmRSS sum {d['vm_rss_mb']} MB, parent RssAnon "
                f"{d['parent_rss_anon_mb']} MB, procs {d['max_procs']}, {d['seconds']} s",
                flush=True,
            )
        if "seed_style_rss_anon_mb" in row:
            print(
                f"[{name}] seed-style load: RssAnon {row['seed_style_rss_anon_mb']} MB", flush=True
            )
        if not a.keep:
            shutil.rmtree(run, ignore_errors=True)
        (OUT / a.out_name).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
