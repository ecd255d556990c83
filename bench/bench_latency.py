"""Reply latency (p50/p95/p99) of ``ChatBot.reply``: greedy and beam 5 (and, with ``--strategies``,
the bot's default sampling), unquantized and dynamic int8,
for a trained default model and a tutorial-size model (hidden 500, 2+2 layers, vocabulary 20k,
random weights), on everyday questions from xiaohuangji_sample.tsv. Random weights never choose
EOS, so the tutorial-size replies are ``--tutorial-max-len`` tokens long (6 by default): the
latency of a whole 6-token reply, encoder included.

    .venv/bin/python bench/bench_latency.py --trained /work/runs/dgk_run/best.pt \
        --vocab-from /tmp/xl_dgk20k --threads 2

``--backends`` times other inference cores side by side with the one the bot serves
(TorchScript + torch.ao int8): eager, torch.compile, torchao's int8 (``pip install
xianliao[bench]``); see ``load_bot`` and bench/RESULTS.md section 23.

The tutorial-size checkpoint is written to /tmp (its vocabulary is the first 20k words of
``--vocab-from``/vocab.txt so questions map to real ids). Each variant answers every question in
a block of its own after a warm-up, in two rounds (the second in reverse order). Results: stdout
and bench/out/latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import OUT, XHJ, machine  # noqa: E402

from xianliao.model.chatbot import ChatBot  # noqa: E402
from xianliao.model.checkpoint import save_checkpoint  # noqa: E402
from xianliao.model.seq2seq import Seq2Seq, Seq2SeqConfig, default_cutoffs  # noqa: E402
from xianliao.model.text import Tokenizer  # noqa: E402
from xianliao.training.train import read_vocab  # noqa: E402


def tutorial_checkpoint(path: Path, vocab_dir: str, *, adaptive: bool, size: int = 20000) -> Path:
    itos = read_vocab(vocab_dir).itos[:size]
    cfg = Seq2SeqConfig(
        vocab_size=len(itos),
        emb_size=500,
        hidden_size=500,
        enc_layers=2,
        dec_layers=2,
        adaptive_cutoffs=default_cutoffs(len(itos)) if adaptive else [],
    )
    torch.manual_seed(0)
    model = Seq2Seq(cfg)
    payload = {
        "model_config": cfg.to_dict(),
        "vocab": itos,
        "tokenizer": Tokenizer(fast=False).describe(),
        "state_dict": model.state_dict(),
        "train": {"step": 0},
    }
    return save_checkpoint(path, payload)


BACKENDS = ("torchscript", "eager", "compile", "torchao", "torchao-compile")


class _Compiled:
    """The inference core's three entry points, each through ``torch.compile``."""

    def __init__(self, core: torch.nn.Module) -> None:
        self.step = torch.compile(core)
        self.encode = torch.compile(core.encode)
        self.head_logits = torch.compile(core.head_logits)

    def __call__(self, *args):
        return self.step(*args)


def load_bot(path: Path, threads: int, backend: str, quantize: bool) -> ChatBot:
    """A ChatBot whose inference core runs on ``backend``: "torchscript" (what the bot
    serves), "eager" (no compiled core), "compile" (torch.compile of the same core), and for
    int8 "torchao" / "torchao-compile" (torchao's dynamic int8 on the Linear layers instead of
    torch.ao's, which also quantizes the GRUs; eager core / torch.compile)."""
    torchao = backend.startswith("torchao")
    bot = ChatBot.load(path, threads=threads, quantize=quantize and not torchao)
    if backend == "torchscript":
        return bot
    from xianliao.model.inference import _InferenceCore

    fast = bot.model._fast
    if torchao:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        def linear(module: torch.nn.Module, name: str) -> bool:  # tails stay fp32, as today
            return isinstance(module, torch.nn.Linear) and not name.startswith("adaptive.tail")

        for module in (bot.model, fast.out, fast.head):
            if module is not None:
                quantize_(module, Int8DynamicActivationInt8WeightConfig(), filter_fn=linear)
    core = _InferenceCore(bot.model, fast)
    fast.core = _Compiled(core) if backend.endswith("compile") else None
    return bot


def questions(n: int) -> list[str]:
    qs = []
    with open(XHJ, encoding="utf-8") as f:
        for line in f:
            q = line.split("\t", 1)[0].strip()
            if q and q not in qs:
                qs.append(q)
    return qs[:n]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_model(
    name: str,
    path: Path,
    qs: list[str],
    threads: int,
    warmup: int,
    max_len: int = 30,
    strategies: tuple[str, ...] = ("greedy", "beam"),
    guidance: float = 3.0,
    backends: tuple[str, ...] = ("torchscript",),
) -> dict:
    # Sampling draws with a fixed seed per reply, so int8 and fp32 see the same random numbers.
    opts = {"beam_size": 5, "max_len": max_len, "seed": 0}
    # "guided", "guided_beam": sampling and beam search with guidance (option ``guidance``)
    per = {s: {"strategy": s} for s in strategies} | {
        "guided": {"strategy": "sample", "guidance": guidance},
        "guided_beam": {"strategy": "beam", "guidance": guidance},
    }
    bots = {
        (b, q): load_bot(path, threads, b, q)
        for b in backends
        for q in (False, True)
        if q or not b.startswith("torchao")
    }
    variants = [(s, b, q) for s in strategies for b, q in bots]
    times = {v: [] for v in variants}
    lengths = {v: [] for v in variants}
    replies = {v: [] for v in variants}
    # Each variant answers all questions in a block of its own, as a serving process with one
    # model does (its weights stay in cache between replies; interleaving the variants reply by
    # reply made each one start from a cache full of another model's weights). Two rounds, the
    # second in reverse order, spread any drift of the machine's speed evenly.
    for rnd, order in enumerate((variants, variants[::-1])):
        for v in order:
            s, bot = v[0], bots[v[1:]]
            for text in qs[:warmup]:
                bot.reply(text, **opts, **per[s])
            for text in qs:
                t = time.perf_counter()
                r = bot.reply(text, **opts, **per[s])
                times[v].append((time.perf_counter() - t) * 1000)
                if rnd == 0:
                    replies[v].append(r)
                    lengths[v].append(len(bot.tokenizer.tokenize(r)))
    rows = {}
    for s, b, q in variants:
        ts = times[s, b, q]
        rows[_label(s, b, q)] = {
            "p50_ms": round(pct(ts, 50), 2),
            "p95_ms": round(pct(ts, 95), 2),
            "p99_ms": round(pct(ts, 99), 2),
            "mean_ms": round(sum(ts) / len(ts), 2),
            "mean_reply_tokens": round(sum(lengths[s, b, q]) / len(lengths[s, b, q]), 1),
        }
    for s, b, q in variants:  # against today's serving path of the same precision
        ref = (s, "torchscript", True if b.startswith("torchao") else q)
        if ref != (s, b, q) and ref in replies:
            row, ref_row = rows[_label(s, b, q)], rows[_label(*ref)]
            same = sum(x == y for x, y in zip(replies[ref], replies[s, b, q], strict=True))
            row["same_reply_as_torchscript_pct"] = round(100 * same / len(qs), 1)
            row["p50_vs_torchscript"] = round(row["p50_ms"] / ref_row["p50_ms"], 2)
    for s in strategies:
        if (s, "torchscript", True) in replies and (s, "torchscript", False) in replies:
            ref, int8 = replies[s, "torchscript", False], replies[s, "torchscript", True]
            same = sum(a == b for a, b in zip(ref, int8, strict=True))
            rows[f"{s}-int8"]["same_reply_as_fp32_pct"] = round(100 * same / len(qs), 1)
            rows[f"{s}-int8"]["speedup_p50"] = round(
                rows[s]["p50_ms"] / rows[f"{s}-int8"]["p50_ms"], 2
            )
    examples = [
        {"q": qs[i]} | {_label(*v): replies[v][i] for v in variants} for i in range(min(8, len(qs)))
    ]
    cfg = next(iter(bots.values())).model.cfg
    return {
        "name": name,
        "checkpoint": str(path),
        "max_len": max_len,
        "model": cfg.to_dict() | {"adaptive_cutoffs": cfg.adaptive_cutoffs},
        "questions": len(qs),
        "rows": rows,
        "examples": examples,
    }


def _label(strategy: str, backend: str, quantize: bool) -> str:
    suffix = "" if backend == "torchscript" else f"@{backend}"
    return f"{strategy}{'-int8' if quantize else ''}{suffix}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="reply latency, greedy and beam, fp32 and int8")
    p.add_argument("--trained", help="a trained checkpoint (e.g. /work/runs/dgk_run/best.pt)")
    p.add_argument("--vocab-from", default="/tmp/xl_dgk20k", help="prepared data dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=200, help="questions")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--work", default="/tmp/xl_bench_lat")
    p.add_argument("--skip-tutorial", action="store_true", help="no adaptive tutorial-size model")
    p.add_argument("--out-name", default="latency.json", help="file name in bench/out")
    p.add_argument("--full-softmax", action="store_true", help="also tutorial size, full softmax")
    p.add_argument(
        "--tutorial-max-len",
        type=int,
        default=6,
        help="reply length of the tutorial-size models (random weights never stop on their own)",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        default=["greedy", "beam"],
        choices=["greedy", "beam", "sample", "sample_rank", "guided", "guided_beam"],
        help="decodings to time (sample: top-k 20 / top-p 0.9, seeded, the bot's default; "
        "sample_rank: 16 samples reranked by MMI; guided, guided_beam: sample and beam 5 with "
        "--guidance)",
    )
    p.add_argument("--guidance", type=float, default=3.0, help="guidance of the guided variants")
    p.add_argument(
        "--backends",
        nargs="+",
        default=["torchscript"],
        choices=BACKENDS,
        help="inference cores to time side by side (see load_bot); torchscript is what the bot "
        "serves",
    )
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    qs = questions(a.n)
    res: dict = {"machine_start": machine(), "threads": a.threads, "models": []}
    todo = []
    if a.trained:
        todo.append(("trained", Path(a.trained)))
    if not a.skip_tutorial:
        ck = tutorial_checkpoint(work / "tutorial.pt", a.vocab_from, adaptive=True)
        todo.append(("tutorial-size", ck))
    if a.full_softmax:
        ck = tutorial_checkpoint(work / "tutorial_full.pt", a.vocab_from, adaptive=False)
        todo.append(("tutorial-size-full-softmax", ck))
    for name, path in todo:
        print(f"{name}: {path}", flush=True)
        max_len = 30 if name == "trained" else a.tutorial_max_len
        r = bench_model(
            name,
            path,
            qs,
            a.threads,
            a.warmup,
            max_len,
            tuple(a.strategies),
            a.guidance,
            tuple(a.backends),
        )
        r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(r["rows"], indent=1), flush=True)
        res["models"].append(r)
    res["machine_end"] = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / a.out_name).write_text(json.dumps(res, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
