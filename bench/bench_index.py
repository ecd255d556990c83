"""The reply index: build time, file size and peak memory of ``xianliao index``, and the memory
and time of searching it, for the real corpora (DGK + the three files of real turns) and for
generated corpora of growing size (sampled from DGK with fresh rare words, as bench_memory).

    .venv/bin/python bench/bench_index.py                      # real corpora, 1M and 10M
    .venv/bin/python bench/bench_index.py --sizes 1000000      # real corpora and 1M only

Results go to stdout and bench/out/index.json. Memory is peak RssAnon of the process tree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT, ROOT, XIANLIAO, generate_corpus, machine, run_measured  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
REAL = [
    "dgk_subtitle.tsv",
    "dgk_subtitle_srt_extra.tsv",
    "wechat_3turn.tsv",
    "xiaohuangji_20k.tsv",
    "tv_drama_turns.tsv",
]
MESSAGES = ["你吃饭了吗", "晚安", "我好累", "你叫什么名字", "明天要考试了好紧张", "你喜欢什么音乐"]

SEARCH = r"""
import json, sys, time
from xianliao.model.reply_index import ReplyIndex
from xianliao.model.text import Tokenizer
tok = Tokenizer()
index = ReplyIndex.open(sys.argv[1])
msgs = json.loads(sys.argv[2])
times = []
for rep in range(int(sys.argv[3])):
    for m in msgs:
        t0 = time.perf_counter()
        index.search(tok.tokenize(m), 20)
        times.append((time.perf_counter() - t0) * 1000)
times.sort()
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:"))
print(json.dumps({"search_p50_ms": round(times[len(times) // 2], 2),
                  "search_p95_ms": round(times[int(len(times) * 0.95)], 2),
                  "rss_anon_mb_after_searches": round(rss / 1024, 1)}))
"""


def measure(corpora: list[str], out: Path, repeats: int) -> dict:
    build = run_measured([str(XIANLIAO), "index", *corpora, "--out", str(out)])
    searched = subprocess.run(
        [sys.executable, "-c", SEARCH, str(out), json.dumps(MESSAGES), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return {
        "build_s": build.seconds,
        "build_peak_rss_anon_mb": build.rss_anon_mb,
        "index_mb": round(out.stat().st_size / 1e6, 1),
        **json.loads(searched.stdout),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    p.add_argument("--work", default="/tmp/xl_bench_index")
    p.add_argument("--repeats", type=int, default=30, help="passes over the messages")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "runs": {}}
    real = [str(CORPUS / name) for name in REAL]
    if all(Path(c).is_file() for c in real):
        results["runs"]["DGK + real turns (506,507 pairs)"] = measure(
            real, work / "real.sqlite", a.repeats
        )
        print(json.dumps(results["runs"], ensure_ascii=False), flush=True)
    for n in a.sizes:
        corpus = generate_corpus(work / f"gen_{n}.tsv", n)
        results["runs"][f"generated {n:,} pairs"] = measure(
            [str(corpus)], work / f"gen_{n}.sqlite", a.repeats
        )
        (work / f"gen_{n}.sqlite").unlink()
        print(json.dumps(results["runs"], ensure_ascii=False), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "index.json").write_text(json.dumps(results, ensure_ascii=False, indent=2))
    print(
        "\n| corpus | build | peak memory | index file | search p50 / p95 | memory after searches |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results["runs"].items():
        print(
            f"| {name} | {r['build_s']} s | {r['build_peak_rss_anon_mb']} MB | {r['index_mb']} MB "
            f"| {r['search_p50_ms']} / {r['search_p95_ms']} ms | {r['rss_anon_mb_after_searches']} MB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
