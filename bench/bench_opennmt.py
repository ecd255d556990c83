"""Training throughput against OpenNMT-py's RNN, same sizes, same data, same machine, same window.

OpenNMT-py 3.5 pins torch < 2.3, so it lives in a venv of its own (it runs there on torch 2.13
too; its imports of spacy, fasttext and ctranslate2 serve transforms and inference that RNN
training does not use, so this script can hand it empty stand-ins for them):

    python3.11 -m venv /tmp/onmt_venv
    /tmp/onmt_venv/bin/pip install torch==2.13.0 numpy configargparse pyyaml six tensorboard \
        sacrebleu rapidfuzz pyonmttok pyahocorasick
    /tmp/onmt_venv/bin/pip install --no-deps OpenNMT-py==3.5.1
    .venv/bin/python bench/bench_opennmt.py --data /tmp/xl_dgk20k \
        --onmt-train /tmp/onmt_venv/bin/onmt_train --stub-imports

The prepared data (a 20k vocabulary, see bench_throughput.py) is written out as space-separated
tokens for OpenNMT-py, with the same vocabulary. OpenNMT-py is configured at the tutorial size
used by bench_throughput.py: a 2-layer bi-GRU encoder and a 2-layer GRU decoder, hidden and
embeddings 500, Luong "general" attention (its defaults: input feeding, a full softmax), Adam,
dropout 0.1, gradient clipping 1.0, batches of B sentences. Its target tokens/s are read from its
own log lines (the first report is warm-up); the project trains in this process exactly as
bench_throughput.py's ProjectTrainer. Rounds alternate the two, so load changes hit both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_throughput import ProjectTrainer, project_cfg  # noqa: E402
from common import OUT, machine  # noqa: E402

from xianliao.training.data import BatchSampler, PairArrays, Source  # noqa: E402
from xianliao.training.train import read_vocab  # noqa: E402

# "Step 10/ 40; acc: ...; bsz:  307/ 333/64; 368/399 tok/s;     11 sec;"
REPORT = re.compile(r"Step\s+(\d+)/\s*\d+;.*bsz:\s*(\d+)/\s*(\d+)/\s*\d+;.*?;\s+(\d+) sec;")


def write_corpus(data: Path, work: Path) -> None:
    """The prepared training pairs as token text, and the vocabulary, for OpenNMT-py."""
    if (work / "tgt-train.txt").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    words = np.array(read_vocab(data).itos, dtype=object)
    words[3] = "<unk>"  # the project's UNK -> OpenNMT-py's
    arrays = PairArrays(data, "train")
    with (
        open(work / "src-train.txt", "w", encoding="utf-8") as fs,
        open(work / "tgt-train.txt", "w", encoding="utf-8") as ft,
    ):
        for i in range(len(arrays)):
            s, t = arrays.pair(i)
            fs.write(" ".join(words[s.astype(np.int64)]) + "\n")
            ft.write(" ".join(words[t.astype(np.int64)]) + "\n")
    # The project's ids are in frequency order: counts only need to keep that order.
    with open(work / "vocab.txt", "w", encoding="utf-8") as f:
        for k, w in enumerate(words[4:]):
            f.write(f"{w}\t{len(words) - k}\n")
    for side in ("src", "tgt"):
        lines = (work / f"{side}-train.txt").read_text("utf-8").splitlines()[:200]
        (work / f"{side}-valid.txt").write_text("\n".join(lines) + "\n", "utf-8")


def onmt_config(work: Path, args, batch: int, vocab: int) -> Path:
    cfg = {
        "data": {
            "corpus_1": {
                "path_src": str(work / "src-train.txt"),
                "path_tgt": str(work / "tgt-train.txt"),
            },
            "valid": {
                "path_src": str(work / "src-valid.txt"),
                "path_tgt": str(work / "tgt-valid.txt"),
            },
        },
        "src_vocab": str(work / "vocab.txt"),
        "share_vocab": True,
        "src_vocab_size": vocab + 4,
        "tgt_vocab_size": vocab + 4,
        "src_seq_length": 45,
        "tgt_seq_length": 45,
        "save_model": str(work / "run" / "model"),
        "save_checkpoint_steps": 10**6,
        "valid_steps": 10**6,
        "train_steps": args.onmt_steps,
        "report_every": args.report_every,
        "encoder_type": "brnn",
        "decoder_type": "rnn",
        "rnn_type": "GRU",
        "enc_layers": args.layers,
        "dec_layers": args.layers,
        "hidden_size": args.hidden,
        "word_vec_size": args.hidden,
        "global_attention": "general",
        "batch_type": "sents",
        "batch_size": batch,
        "bucket_size": 32768,
        "optim": "adam",
        "learning_rate": 0.001,
        "max_grad_norm": 1.0,
        "dropout": [0.1],
        "seed": 1,
        "num_workers": 0,
    }
    path = work / f"onmt_b{batch}.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(cfg, indent=1), "utf-8")
    return path


def run_onmt(args, config: Path, work: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.stub_imports:
        stubs = work / "stubs"
        stubs.mkdir(exist_ok=True)
        for name in ("spacy", "fasttext", "ctranslate2"):
            (stubs / f"{name}.py").write_text("# unused by RNN training\n")
        env["PYTHONPATH"] = str(stubs)
    t = time.perf_counter()
    p = subprocess.run(
        [args.onmt_train, "-config", str(config)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    log = p.stdout + p.stderr
    (work / f"{config.stem}.log").write_text(log, "utf-8")
    reports = [tuple(int(x) for x in m.groups()) for m in REPORT.finditer(log)]
    if p.returncode != 0 or len(reports) < 2:
        raise SystemExit(f"onmt_train failed (rc {p.returncode}); see {work / config.stem}.log")
    # Each report: step, mean src tokens/step, mean tgt tokens/step, elapsed seconds (whole
    # seconds, so windows of several reports). Skip the first window (warm-up).
    (s0, _, _, e0), (s1, _, _, e1) = reports[0], reports[-1]
    tokens = sum(r[2] * args.report_every for r in reports[1:])
    return {
        "tokens_per_s": round(tokens / max(e1 - e0, 1), 1),
        "steps_timed": s1 - s0,
        "tgt_tokens_per_step": round(tokens / (s1 - s0), 1),
        "wall_s": round(wall, 1),
    }


def run_project(trainer: ProjectTrainer, sampler: BatchSampler, steps: int) -> dict:
    batches = [sampler.next_batch() for _ in range(steps)]
    t = time.perf_counter()
    for b in batches:
        trainer.step(b)
    dt = time.perf_counter() - t
    n = sum(b.n_tokens for b in batches)
    return {"tokens_per_s": round(n / dt, 1), "tgt_tokens_per_step": round(n / steps, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="training throughput, project vs OpenNMT-py")
    p.add_argument("--data", type=Path, default=Path("/tmp/xl_dgk20k"))
    p.add_argument("--onmt-train", required=True, help="onmt_train of a venv with OpenNMT-py")
    p.add_argument("--stub-imports", action="store_true", help="empty spacy/fasttext/ctranslate2")
    p.add_argument("--work", type=Path, default=Path("/tmp/xl_onmt"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed project steps per round")
    p.add_argument("--onmt-steps", type=int, default=30, help="OpenNMT-py steps per round")
    p.add_argument("--report-every", type=int, default=5)
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    write_corpus(a.data, a.work)
    vocab = len(read_vocab(a.data))
    arrays = PairArrays(a.data, "train")
    res: dict = {"machine_start": machine(), "threads": a.threads, "vocab": vocab, "rows": {}}
    projects = {}
    for b in a.batches:
        for kind in ("adaptive", "full"):
            trainer = ProjectTrainer(project_cfg(vocab, a, adaptive=kind == "adaptive"))
            sampler = BatchSampler([Source(arrays)], b, seed=1)
            for _ in range(2):  # warm-up
                trainer.step(sampler.next_batch())
            projects[f"project-{kind}-b{b}"] = (trainer, sampler)
    for r in range(a.rounds):
        for b in a.batches:
            runs = {
                f"opennmt-gru-b{b}": lambda b=b: run_onmt(
                    a, onmt_config(a.work, a, b, vocab), a.work
                )
            }
            for name in (f"project-adaptive-b{b}", f"project-full-b{b}"):
                runs[name] = lambda name=name: run_project(*projects[name], a.steps)
            for name, fn in runs.items():
                row = fn()
                res["rows"].setdefault(name, []).append(row)
                print(f"round {r} {name}: {row}", flush=True)
    summary = {}
    for name, rows in res["rows"].items():
        summary[name] = round(sum(x["tokens_per_s"] for x in rows) / len(rows), 1)
    for b in a.batches:
        base = summary[f"opennmt-gru-b{b}"]
        for kind in ("adaptive", "full"):
            name = f"project-{kind}-b{b}"
            summary[f"{name} / opennmt"] = round(summary[name] / base, 2)
    res["mean_tokens_per_s"] = summary
    res["machine_end"] = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "throughput_opennmt.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
