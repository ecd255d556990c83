"""Entry points of ``xianliao train``, ``xianliao plot`` and ``xianliao eval``; ``prepare`` and
``index`` live in ``prepare_cli`` and are re-exported here for the command table."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

from xianliao.training.cli_args import OneLineParser, device_arg, set_threads, whole_number
from xianliao.training.prepare_cli import index_main, prepare_main

__all__ = [
    "OneLineParser",
    "eval_main",
    "index_main",
    "plot_main",
    "prepare_main",
    "train_main",
    "whole_number",
]


def _data_arg(spec: str) -> tuple[str, float]:
    """DATA_DIR or DATA_DIR:WEIGHT."""
    if ":" in spec:
        path, _, w = spec.rpartition(":")
        try:
            return path, float(w)
        except ValueError:
            pass
    return spec, 1.0


def _train_parser() -> OneLineParser:
    from xianliao.training.train import TrainConfig

    d = TrainConfig()
    p = OneLineParser(
        prog="xianliao train",
        description="Train a seq2seq model on prepared data. Several DATA_DIRs (prepared with "
        "the same vocabulary) are mixed by weight: DATA_DIR:WEIGHT. Under torchrun (or with "
        "--nproc), each process trains a replica on its share of every batch.",
    )
    p.add_argument("data", nargs="+", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--steps", type=whole_number(1), default=d.steps)
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes")
    p.add_argument(
        "--batch-size",
        type=whole_number(1),
        default=d.batch_size,
        help="pairs per step, over all processes together",
    )
    p.add_argument("--hidden-size", type=int, default=None, help="GRU size (default 384)")
    p.add_argument("--emb-size", type=int, default=None, help="embedding size (default 256)")
    p.add_argument("--layers", type=int, default=None, help="encoder and decoder layers")
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument(
        "--word-dropout",
        type=float,
        default=None,
        help="share of answer words fed to the decoder as <unk> while training (default 0)",
    )
    p.add_argument(
        "--both-directions",
        action="store_true",
        help="also train on every pair read backwards (answer -> question), same weight: a "
        "better model of the corpus in the same time on DGK, and one that can rerank replies by "
        "how well they lead back to the question (decoding option bidi_weight)",
    )
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument(
        "--lr-rule",
        choices=["plateau", "seed", "linear"],
        default=d.lr_rule,
        help="plateau (default): halve the rate after 2 validations without progress; seed: "
        "the seed's x0.9 rule; linear: fall to 0 by the end of --steps or --minutes",
    )
    p.add_argument("--eval-every", type=whole_number(1), default=d.eval_every)
    p.add_argument("--log-every", type=whole_number(1), default=d.log_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", type=device_arg, default=d.device, help="auto, cpu or cuda")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="fine-tune from this checkpoint")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly")
    p.add_argument("--progress-jsonl", metavar="FILE", help="append progress as JSON lines")
    p.add_argument(
        "--nproc",
        type=whole_number(1),
        default=None,
        help="train with N processes on this machine (runs torchrun --standalone)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="start afresh over RUN_DIR's checkpoints")
    return p


def _model_sizes(a) -> dict:  # noqa: ANN001 - argparse.Namespace
    given = {
        "hidden_size": a.hidden_size,
        "emb_size": a.emb_size,
        "enc_layers": a.layers,
        "dec_layers": a.layers,
        "dropout": a.dropout,
        "word_dropout": a.word_dropout,
    }
    return {k: v for k, v in given.items() if v is not None}


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def train_main(argv: list[str]) -> int:
    from xianliao.model.checkpoint import CheckpointError
    from xianliao.training.data import DataError
    from xianliao.training.distributed import Dist, StopRequest, launch
    from xianliao.training.metrics import jsonl_appender
    from xianliao.training.train import TrainConfig, result_json, train

    p = _train_parser()
    a = p.parse_args(argv)
    dist = Dist.from_env()
    if a.nproc and dist.enabled:
        p.error("--nproc starts torchrun itself: leave it out under torchrun")
    kept = [n for n in ("best.pt", "last.pt") if (Path(a.out) / n).exists()]
    if kept and not (a.resume or a.force):
        p.error(
            f"{a.out} already holds {' and '.join(kept)}: --resume to continue that run, "
            "--force to start again over it, or choose another --out"
        )
    if a.nproc and a.nproc > 1:
        if a.batch_size % a.nproc and not a.resume:  # (a resumed run keeps its own batch size)
            p.error(f"--batch-size {a.batch_size} does not split evenly over {a.nproc} processes")
        return launch(a.nproc, _without_nproc(argv))
    set_threads(a.threads)
    should_stop = None
    if dist.enabled:  # stop at the end of a step, all ranks together (see StopRequest)
        should_stop = StopRequest()
        should_stop.install()
    else:  # (xianliao.cli makes SIGINT and SIGTERM interrupt; this is for a direct call)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    model = _model_sizes(a)
    if a.resume and model and dist.is_main:
        sizes = ", ".join("--" + k.replace("_", "-") for k in model)
        print(
            f"xianliao train: --resume keeps the checkpoint's model; ignoring {sizes}",
            file=sys.stderr,
        )
    cfg = TrainConfig(
        steps=a.steps,
        minutes=a.minutes,
        batch_size=a.batch_size,
        lr=a.lr,
        lr_rule=a.lr_rule,
        eval_every=a.eval_every,
        log_every=a.log_every,
        seed=a.seed,
        device=a.device,
        init_from=a.init_from,
        both_directions=a.both_directions,
        model=model,
    )
    on_progress = jsonl_appender(a.progress_jsonl) if a.progress_jsonl else None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(
            [_data_arg(x) for x in a.data],
            a.out,
            cfg,
            resume=a.resume,
            progress=not a.quiet,
            on_progress=on_progress,
            dist=dist,
            should_stop=should_stop,
        )
    except (DataError, CheckpointError, OSError, ValueError) as exc:
        who = f" (rank {dist.rank})" if dist.rank else ""
        print(f"xianliao train{who}: {exc}", file=sys.stderr)
        return dist.exit(1)
    if dist.is_main:
        print(result_json(result), flush=True)
    return dist.exit(0)


def plot_main(argv: list[str]) -> int:
    from xianliao.training.metrics import CURVES_FILE, METRICS_FILE, plot_curves

    p = OneLineParser(
        prog="xianliao plot",
        description=f"Draw a training run's curves (training loss, validation perplexity) from "
        f"RUN_DIR/{METRICS_FILE} into RUN_DIR/{CURVES_FILE}.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="PNG", help=f"write here instead of RUN_DIR/{CURVES_FILE}")
    a = p.parse_args(argv)
    try:
        path = plot_curves(a.run_dir, a.out)
    except (OSError, ValueError) as exc:
        print(f"xianliao plot: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def eval_main(argv: list[str]) -> int:
    from xianliao.model.chatbot import ChatBot
    from xianliao.model.checkpoint import CheckpointError
    from xianliao.model.decode import DecodeOptions
    from xianliao.training.corpus import CorpusError
    from xianliao.training.evaluate import evaluate, report_dict

    p = OneLineParser(
        prog="xianliao eval",
        description="Perplexity, distinct-1/2, generic-reply share and unknown-word rate of a "
        "checkpoint on question<TAB>answer pairs.",
    )
    p.add_argument("checkpoint")
    p.add_argument("tsv")
    p.add_argument(
        "--limit", type=whole_number(1), default=1000, help="pairs to use (default 1000)"
    )
    p.add_argument(
        "--strategy",
        choices=["greedy", "beam", "sample", "sample_rank"],
        default=None,
        help="decoding for the reply metrics (default: the one the bot serves, with the reply "
        "index beside the checkpoint); sample_rank draws 16 replies and keeps the best one; "
        "given, the model generates even if its checkpoint is served without generating",
    )
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument(
        "--index", default=None, help="reply index (default: beside the checkpoint; none: off)"
    )
    p.add_argument(
        "--options",
        metavar="JSON",
        default="{}",
        help="more decoding options, as the bot's DECODE_OPTIONS, e.g. '{\"guidance\": 2}'",
    )
    p.add_argument("--samples", type=whole_number(0), default=10, help="example replies to print")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--fp32",
        action="store_true",
        help="judge the fp32 model (as a bot with MODEL_QUANTIZE=false); default: as served, "
        "int8 on CPU",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    a = p.parse_args(argv)
    set_threads(a.threads)
    try:
        bot = ChatBot.load(a.checkpoint, index_path=a.index, quantize=False if a.fp32 else None)
        extra = json.loads(a.options)
        if not isinstance(extra, dict):
            raise ValueError("--options must be a JSON object")
        given = {"strategy": a.strategy, "beam_size": a.beam_size}
        if a.strategy is not None:  # a decoding to judge: the model generates, whatever the
            given["generate"] = True  # checkpoint says
        opts = DecodeOptions.from_dict(
            {
                **bot.options.to_dict(),
                **{k: v for k, v in given.items() if v is not None},
                "seed": 0,
                **extra,
            }
        )
        report, triples = evaluate(bot, a.tsv, limit=a.limit, options=opts, samples=a.samples)
    except (CheckpointError, CorpusError, OSError, ValueError) as exc:
        print(f"xianliao eval: {exc}", file=sys.stderr)
        return 1
    for q, ref, reply in triples:
        print(f"Q: {q}\n   ref:   {ref}\n   reply: {reply}")
    r = report_dict(report)
    if a.json:
        print(json.dumps(r, ensure_ascii=False))
    else:
        for k, v in r.items():
            print(f"{k:>18}: {v}")
    return 0
