"""Training throughput (target tokens/s): the project's Seq2Seq against the PyTorch chatbot
tutorial's per-time-step model, same sizes, same machine, same run, interleaved.

Needs DGK data prepared with a 20k vocabulary (outside the repository):

    .venv/bin/xianliao prepare ../shared/corpus/dgk_subtitle.tsv \
        ../shared/corpus/dgk_subtitle_srt_extra.tsv --out /tmp/xl_dgk20k --max-vocab 20000
    .venv/bin/python bench/bench_throughput.py --data /tmp/xl_dgk20k --threads 2
    # allocator option: the same project config in child processes with and without jemalloc
    .venv/bin/python bench/bench_throughput.py --data /tmp/xl_dgk20k \
        --preload /usr/lib/x86_64-linux-gnu/libjemalloc.so.2

Every configuration keeps its model, optimiser and batch stream; the rounds take turns so load
changes hit all of them alike. FLOP/s are counted with torch's FlopCounterMode (matmuls of the
forward and backward pass, the GRUs included) on batches from the same stream, and compared
with the measured peak of a large fp32 ``torch.mm`` on the same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import OUT, machine  # noqa: E402
from tutorial_model import TutorialTrainer  # noqa: E402

from xianliao.model.seq2seq import Seq2Seq, Seq2SeqConfig, default_cutoffs  # noqa: E402
from xianliao.training.data import BatchSampler, PairArrays, Source  # noqa: E402
from xianliao.training.train import read_vocab  # noqa: E402


class ProjectTrainer:
    """One step of training/train.py's loop: forward, zero_grad, backward, clip, fused AdamW."""

    def __init__(self, cfg: Seq2SeqConfig, amp: bool = False) -> None:
        self.model = Seq2Seq(cfg)
        self.model.train()
        try:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.amp = amp

    def modules(self) -> list:
        return [self.model]

    def step(self, b) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.model(b.src, b.src_len, b.tgt_in, b.tgt_out)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss.item()


@dataclass
class Config:
    name: str
    batch: int
    make: object  # () -> trainer
    bucketed: bool = True  # length-grouped batches (the project's sampler); False = random pairs
    trainer: object = None
    sampler: object = None
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    flops_per_token: float = 0.0
    per_round: list = field(default_factory=list)


def project_cfg(vocab: int, args, *, adaptive: bool, tutorial_size: bool = True) -> Seq2SeqConfig:
    if not tutorial_size:  # the project's own defaults
        return Seq2SeqConfig(vocab_size=vocab, adaptive_cutoffs=default_cutoffs(vocab))
    return Seq2SeqConfig(
        vocab_size=vocab,
        emb_size=args.hidden,
        hidden_size=args.hidden,
        enc_layers=args.layers,
        dec_layers=args.layers,
        adaptive_cutoffs=default_cutoffs(vocab) if adaptive else [],
        tie_embeddings=True,
    )


def configs(vocab: int, args) -> dict[str, Config]:
    h = args.hidden
    return {
        "tutorial-b64": Config(
            "tutorial-b64", 64, lambda: TutorialTrainer(vocab, h, args.layers), bucketed=False
        ),
        "project-adaptive-b64": Config(
            "project-adaptive-b64",
            64,
            lambda: ProjectTrainer(project_cfg(vocab, args, adaptive=True)),
        ),
        "project-full-b64": Config(
            "project-full-b64", 64, lambda: ProjectTrainer(project_cfg(vocab, args, adaptive=False))
        ),
        "project-adaptive-b256": Config(
            "project-adaptive-b256",
            256,
            lambda: ProjectTrainer(project_cfg(vocab, args, adaptive=True)),
        ),
        "project-full-b256": Config(
            "project-full-b256",
            256,
            lambda: ProjectTrainer(project_cfg(vocab, args, adaptive=False)),
        ),
        # bf16 autocast with the full softmax: with the adaptive softmax the project's forward
        # fails under autocast (index_copy_ Float vs BFloat16 inside AdaptiveLogSoftmaxWithLoss).
        "project-full-b256-bf16": Config(
            "project-full-b256-bf16",
            256,
            lambda: ProjectTrainer(project_cfg(vocab, args, adaptive=False), amp=True),
        ),
        "project-defaults-b128": Config(
            "project-defaults-b128",
            128,
            lambda: ProjectTrainer(project_cfg(vocab, args, adaptive=True, tutorial_size=False)),
        ),
    }


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) fp32 matmul on the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def count_flops(c: Config, n_batches: int = 3) -> float:
    """Forward + backward FLOPs per target token, on the next batches of the config's stream."""
    flops, tokens = 0, 0
    for _ in range(n_batches):
        b = c.sampler.next_batch()
        with FlopCounterMode(display=False) as fc:
            c.trainer.step(b)
        flops += fc.get_total_flops()
        tokens += b.n_tokens
    return flops / tokens


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = len(read_vocab(args.data))
    arrays = PairArrays(args.data, "train")
    all_cfgs = configs(vocab, args)
    chosen = [all_cfgs[n] for n in args.configs]
    res: dict = {"machine_start": machine(), "threads": args.threads, "vocab": vocab}
    res["matmul_peak_gflops"] = round(matmul_peak() / 1e9, 1)
    for c in chosen:
        c.trainer = c.make()
        # Random pairs for the tutorial (its batches are random.choice pairs): a pool of one
        # batch is exactly that. The project's sampler groups a pool of 50 batches by length.
        c.sampler = BatchSampler(
            [Source(arrays)], c.batch, seed=1, pool_batches=50 if c.bucketed else 1
        )
        for _ in range(args.warmup):
            c.trainer.step(c.sampler.next_batch())
    for r in range(args.rounds):
        for c in chosen:
            batches = [c.sampler.next_batch() for _ in range(args.steps)]
            t = time.perf_counter()
            for b in batches:
                c.trainer.step(b)
            dt = time.perf_counter() - t
            n = sum(b.n_tokens for b in batches)
            c.tokens += n
            c.seconds += dt
            c.steps += len(batches)
            c.per_round.append(round(n / dt, 1))
            print(f"round {r} {c.name}: {n / dt:.0f} tokens/s", flush=True)
    rows = {}
    for c in chosen:
        c.flops_per_token = count_flops(c)
        tps = c.tokens / c.seconds
        rows[c.name] = {
            "tokens_per_s": round(tps, 1),
            "per_round": c.per_round,
            "steps": c.steps,
            "tokens_per_batch": round(c.tokens / c.steps, 1),
            "gflop_per_token": round(c.flops_per_token / 1e9, 4),
            "gflops": round(tps * c.flops_per_token / 1e9, 2),
        }
        rows[c.name]["peak_fraction"] = round(rows[c.name]["gflops"] / res["matmul_peak_gflops"], 3)
    base = rows.get("tutorial-b64", {}).get("tokens_per_s")
    if base:
        for r in rows.values():
            r["speedup_vs_tutorial"] = round(r["tokens_per_s"] / base, 2)
    res["rows"] = rows
    res["machine_end"] = machine()
    return res


def preload_compare(args) -> dict:
    """The same config in child processes, alternating without and with LD_PRELOAD."""
    out: dict = {"lib": args.preload, "config": args.configs[0], "runs": []}
    for r in range(args.rounds):
        for use in (False, True):
            env = dict(os.environ)
            if use:
                env["LD_PRELOAD"] = args.preload
            cmd = [sys.executable, __file__, "--data", args.data, "--threads", str(args.threads)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", "1"]
            cmd += ["--configs", args.configs[0], "--json-only"]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(p.stdout.strip().splitlines()[-1])["rows"][args.configs[0]]
            out["runs"].append({"jemalloc": use, "round": r, "tokens_per_s": row["tokens_per_s"]})
            print(out["runs"][-1], flush=True)
    for use in (False, True):
        v = [x["tokens_per_s"] for x in out["runs"] if x["jemalloc"] == use]
        out["mean_jemalloc" if use else "mean_default"] = round(sum(v) / len(v), 1)
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="training throughput, tutorial vs project")
    p.add_argument("--data", default="/tmp/xl_dgk20k", help="prepared data (20k vocabulary)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--layers", type=int, default=2, help="the tutorial's 2 layers each side")
    p.add_argument("--steps", type=int, default=15, help="timed steps per config per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--configs",
        nargs="+",
        default=[
            "tutorial-b64",
            "project-adaptive-b64",
            "project-full-b64",
            "project-adaptive-b256",
            "project-full-b256",
            "project-defaults-b128",
        ],
    )
    p.add_argument("--preload", help="compare the first config with this LD_PRELOAD library")
    p.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.preload:
        res = preload_compare(a)
        name = "throughput_preload.json"
    else:
        res = run(a)
        name = "throughput.json"
    if a.json_only:
        print(json.dumps(res))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
