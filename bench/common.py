"""Shared helpers for the hand-run benchmarks: corpus generation, process-tree memory sampling,
machine facts. Nothing here runs at import time."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = (ROOT / ".." / "shared" / "corpus").resolve()
DGK = [CORPUS_DIR / "dgk_subtitle.tsv", CORPUS_DIR / "dgk_subtitle_srt_extra.tsv"]
XHJ = CORPUS_DIR / "xiaohuangji_sample.tsv"
OUT = ROOT / "bench" / "out"
XIANLIAO = str(ROOT / ".venv" / "bin" / "xianliao")

# Common CJK characters and Latin syllables for "fresh rare words": a big real corpus keeps
# meeting names, slang and typos, so its distinct-word count grows with its size.
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ar", "en", "ix")]


def machine() -> dict:
    """Cores, CPU model, load average: printed next to every timing."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model or platform.processor(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def load_pairs(paths: list[Path] = DGK) -> list[str]:
    """Raw TSV lines (no newline) of the given corpora."""
    lines: list[str] = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            lines.extend(line.rstrip("\n") for line in f if "\t" in line)
    return lines


def rare_word(rng: random.Random) -> str:
    """A fresh Latin name (one jieba token) or a random 2-3 character CJK string."""
    if rng.random() < 0.6:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(2, 3)))


def generate_corpus(
    path: Path, n_pairs: int, *, seed: int = 0, rare_share: float = 0.05, base=None
) -> Path:
    """Write ``n_pairs`` TSV pairs sampled (with replacement) from the DGK corpora, with a fresh
    rare word inserted into ``rare_share`` of them. Reuses an existing file of the right name."""
    path = Path(path)
    if path.is_file() and path.with_suffix(".done").is_file():
        return path
    base = base if base is not None else load_pairs()
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        buf: list[str] = []
        for _ in range(n_pairs):
            line = base[rng.randrange(len(base))]
            if rng.random() < rare_share:
                q, a = line.split("\t", 1)
                w = rare_word(rng)
                if rng.random() < 0.5:
                    q = q + w if rng.random() < 0.5 else w + q
                else:
                    a = a + w if rng.random() < 0.5 else w + a
                line = q + "\t" + a
            buf.append(line)
            if len(buf) >= 100_000:
                f.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            f.write("\n".join(buf) + "\n")
    path.with_suffix(".done").write_text(str(n_pairs))
    return path


# ---- memory of a process tree -----------------------------------------------------------
def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _status_kb(pid: int) -> dict[str, int]:
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "VmRSS:", "RssFile:")):
                    k, v = line.split(":", 1)
                    vals[k] = int(v.split()[0])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    vals["Pss_Anon"] = int(line.split()[1])
    except OSError:
        pass
    return vals


@dataclass
class MemPeak:
    rss_anon_mb: float = 0.0  # peak of RssAnon summed over the tree (forked COW pages counted
    # once per process that maps them: an upper bound)
    pss_anon_mb: float = 0.0  # peak of Pss_Anon summed (shared anon pages split: the true share)
    vm_rss_mb: float = 0.0  # peak of VmRSS summed (includes memory-mapped file pages)
    parent_rss_anon_mb: float = 0.0  # peak RssAnon of the top process alone
    max_procs: int = 0
    seconds: float = 0.0
    parent_cpu_s: float = 0.0  # user+sys CPU seconds of the top process (last sample)
    children_cpu_s: float = 0.0  # ... summed over its descendants (last sample of each)
    timeline: list = field(default_factory=list)  # (t, rss_anon, pss_anon, vm_rss, procs) MB


def run_measured(cmd: list[str], *, interval: float = 0.05, env=None, log=None) -> MemPeak:
    """Run ``cmd`` and sample the memory of it and all its descendants every ``interval`` s."""
    peak = MemPeak()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=log or None, env=env)
    stop = threading.Event()
    last_tl = -1.0
    cpu: dict[int, float] = {}

    def sample() -> None:
        nonlocal last_tl
        while not stop.is_set():
            pids = tree(proc.pid)
            tot = {"RssAnon": 0, "VmRSS": 0, "Pss_Anon": 0}
            for p in pids:
                v = _status_kb(p)
                c = _cpu_s(p)
                if c:
                    cpu[p] = c
                for k in tot:
                    tot[k] += v.get(k, 0)
                if p == proc.pid:
                    peak.parent_rss_anon_mb = max(
                        peak.parent_rss_anon_mb, v.get("RssAnon", 0) / 1024
                    )
            peak.rss_anon_mb = max(peak.rss_anon_mb, tot["RssAnon"] / 1024)
            peak.vm_rss_mb = max(peak.vm_rss_mb, tot["VmRSS"] / 1024)
            peak.pss_anon_mb = max(peak.pss_anon_mb, tot["Pss_Anon"] / 1024)
            peak.max_procs = max(peak.max_procs, len(pids))
            t = time.perf_counter() - t0
            if t - last_tl >= 1.0:
                peak.timeline.append(
                    (
                        round(t, 1),
                        round(tot["RssAnon"] / 1024),
                        round(tot["Pss_Anon"] / 1024),
                        round(tot["VmRSS"] / 1024),
                        len(pids),
                    )
                )
                last_tl = t
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    peak.seconds = round(time.perf_counter() - t0, 1)
    peak.parent_cpu_s = round(cpu.get(proc.pid, 0.0), 1)
    peak.children_cpu_s = round(sum(v for k, v in cpu.items() if k != proc.pid), 1)
    if rc != 0:
        raise subprocess.CalledProcessError(rc, cmd)
    for k in ("rss_anon_mb", "pss_anon_mb", "vm_rss_mb", "parent_rss_anon_mb"):
        setattr(peak, k, round(getattr(peak, k), 1))
    return peak
