"""Entry points of ``xianliao prepare``, ``xianliao train`` and ``xianliao eval``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the usage + the error:
    the line that says what is wrong is the last thing a user sees, and scripts log one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def whole_number(minimum: int, maximum: int | None = None):  # noqa: ANN201 - an argparse type
    """An argparse type: an integer from ``minimum`` to ``maximum``. Values out of range would
    do nothing (0 steps), or break a later step (a vocabulary of 0 words, 2000 per mille)."""
    where = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < minimum or (maximum is not None and n > maximum):
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number {where}")
        return n

    return parse


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _device(value: str) -> str:
    """An argparse type: auto, or a torch device this machine has (checked before training
    starts, instead of a traceback from deep inside torch)."""
    if value == "auto":
        return value
    from xianliao.model.checkpoint import DeviceError, check_device

    try:
        check_device(value)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _vocab_from(path: str):
    """The vocabulary of a prepared data dir (its vocab.txt) or of a checkpoint."""
    from pathlib import Path

    from xianliao.model.checkpoint import CheckpointError, load_checkpoint
    from xianliao.model.vocab import Vocab

    if Path(path).is_dir():
        tokens = (Path(path) / "vocab.txt").read_text("utf-8").split("\n")
        return Vocab(tokens[:-1] if tokens and tokens[-1] == "" else tokens)
    try:
        return Vocab(load_checkpoint(path)["vocab"])
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None


def prepare_main(argv: list[str]) -> int:
    from xianliao.model.vocab import SPECIALS
    from xianliao.training.corpus import CorpusError
    from xianliao.training.prepare import PrepareConfig, prepare

    # torch is imported only for --vocab-from: prepare itself never needs it, and every worker
    # process would carry its memory.

    p = OneLineParser(
        prog="xianliao prepare",
        description="Segment corpora into a vocabulary and token-id arrays for training. "
        "CORPUS is a question<TAB>answer file, a folder with 'question' and 'answer' files "
        "(or QFILE+AFILE), a chatterbot-corpus .yml file or folder, or chatterbot:chinese.",
    )
    p.add_argument("corpus", nargs="+", metavar="CORPUS")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    d = PrepareConfig()
    p.add_argument(
        "--min-freq", type=whole_number(1), default=d.min_freq, help="rarer words become <unk>"
    )
    p.add_argument(
        "--max-vocab",
        type=whole_number(len(SPECIALS) + 1),  # room for one word beside the special tokens
        default=d.max_vocab,
        help="vocabulary size cap",
    )
    p.add_argument("--max-len", type=whole_number(1), default=d.max_len, help="max tokens per side")
    p.add_argument(
        "--workers", type=whole_number(0), default=d.workers, help="0 = one per CPU core"
    )
    p.add_argument("--valid-permille", type=whole_number(0, 1000), default=d.valid_permille)
    p.add_argument(
        "--counter-cap",
        type=int,
        default=d.counter_cap,
        help="most distinct words counted at once; the rarest are pruned beyond it "
        "(memory; default: max(100000, 4 x --max-vocab))",
    )
    p.add_argument(
        "--vocab-from",
        metavar="CHECKPOINT_OR_DATA_DIR",
        help="reuse the vocabulary of this checkpoint (for fine-tuning it) or of this prepared "
        "data dir (to mix several data dirs by weight in 'train')",
    )
    p.add_argument(
        "--blocklist",
        metavar="FILE",
        help="more words (one per line) whose answers are dropped, beside the shipped list",
    )
    p.add_argument(
        "--no-clean",
        action="store_true",
        help="keep answers that are only punctuation/emoticons or hold blocklisted words",
    )
    p.add_argument("--no-fast", action="store_true", help="use jieba even if rjieba is installed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="overwrite DATA_DIR's prepared data")
    a = p.parse_args(argv)
    if not a.force and any((Path(a.out) / name).exists() for name in ("meta.json", "vocab.txt")):
        p.error(f"{a.out} already holds prepared data: choose another --out, or --force")
    if a.counter_cap and a.counter_cap < 2 * a.max_vocab:
        p.error("--counter-cap must be at least twice --max-vocab (pruning keeps half of it)")
    cfg = PrepareConfig(
        min_freq=a.min_freq,
        max_vocab=a.max_vocab,
        max_len=a.max_len,
        workers=a.workers,
        valid_permille=a.valid_permille,
        counter_cap=a.counter_cap,
        fast=not a.no_fast,
        clean=not a.no_clean,
        blocklist=a.blocklist,
    )
    vocab = None
    if a.vocab_from:
        try:
            vocab = _vocab_from(a.vocab_from)
        except (OSError, ValueError) as exc:
            print(f"xianliao prepare: --vocab-from {a.vocab_from}: {exc}", file=sys.stderr)
            return 1
    if a.blocklist:
        try:
            open(a.blocklist, encoding="utf-8").close()
        except OSError as exc:
            print(f"xianliao prepare: --blocklist: {exc.strerror}: {a.blocklist}", file=sys.stderr)
            return 1
    try:
        stats = prepare(a.corpus, a.out, cfg, progress=not a.quiet, vocab=vocab)
    except (CorpusError, OSError) as exc:
        print(f"xianliao prepare: {exc}", file=sys.stderr)
        return 1
    bad = sum(stats.bad.values())
    if sum(stats.pairs_written.values()) == 0:
        print(f"xianliao prepare: {_nothing_written(stats)}", file=sys.stderr)
        return 1
    print(
        f"read {stats.pairs_read} pairs: {stats.pairs_written['train']} train, "
        f"{stats.pairs_written['valid']} valid, {bad} skipped"
        + "".join(f"\n  skipped {n}: {reason}" for reason, n in sorted(stats.bad.items()))
        + f"\n  {stats.questions_truncated} questions truncated, unknown-word rate "
        f"{stats.unk_tokens / max(stats.tokens, 1):.2%}, {stats.seconds:.1f}s -> {a.out}",
        file=sys.stderr,
    )
    print(json.dumps(asdict(stats), ensure_ascii=False))
    return 0


def _nothing_written(stats) -> str:  # noqa: ANN001 - PrepareStats
    """Why a prepare run wrote no pair, in one line."""
    if stats.pairs_read == 0:
        return "no pairs written: the corpus holds no question<TAB>answer lines"
    reasons = sorted(stats.bad.items(), key=lambda item: -item[1])
    why = "; ".join(f"{n}: {reason}" for reason, n in reasons[:3])
    return f"no pairs written: all {stats.pairs_read} pairs read were skipped ({why})"


def _offsets(p: argparse.ArgumentParser, specs: list[str]) -> dict[str, float]:
    offsets = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            offsets[name] = float(value)
        except ValueError:
            p.error(f"--offset wants NAME=NUMBER, not {spec!r}")
    return offsets


def index_main(argv: list[str]) -> int:
    import sqlite3
    from pathlib import Path

    from xianliao.training.corpus import CorpusError
    from xianliao.training.index import build

    p = OneLineParser(
        prog="xianliao index",
        description="Build the reply index: the answers of CORPUS (same formats as 'prepare') "
        "searchable by their questions. The bot serves it with the model when it lies beside "
        "the checkpoint (replies.sqlite in MODEL_PATH's folder) or where REPLY_INDEX says.",
    )
    p.add_argument("corpus", nargs="+", metavar="CORPUS")
    p.add_argument("--out", required=True, metavar="FILE", help="e.g. runs/replies.sqlite")
    p.add_argument(
        "--valid-permille",
        type=int,
        default=10,
        help="leave out the pairs 'prepare' holds out with this setting (default 10)",
    )
    p.add_argument(
        "--blocklist", metavar="FILE", help="more blocked words, beside the shipped list"
    )
    p.add_argument(
        "--offset",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add VALUE to the scores of the answers of corpus NAME (its file name without "
        "the extension), e.g. dgk_subtitle=-1 for a corpus whose answers fit less often",
    )
    a = p.parse_args(argv)
    if not 0 <= a.valid_permille <= 1000:
        p.error("--valid-permille must be between 0 and 1000")
    try:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        stats = build(
            a.corpus,
            a.out,
            valid_permille=a.valid_permille,
            blocklist=a.blocklist,
            offsets=_offsets(p, a.offset),
        )
    except (CorpusError, OSError, sqlite3.Error) as exc:
        print(f"xianliao index: {exc}", file=sys.stderr)
        return 1
    skipped = "".join(f"\n  skipped {n}: {r}" for r, n in sorted(stats.skipped.items()))
    print(
        f"read {stats.pairs_read} pairs, indexed {stats.pairs_indexed}{skipped}\n"
        f"  {stats.bytes / 1e6:.1f} MB in {stats.seconds:.1f}s -> {a.out}",
        file=sys.stderr,
    )
    print(json.dumps(asdict(stats), ensure_ascii=False))
    return 0


def _data_arg(spec: str) -> tuple[str, float]:
    """DATA_DIR or DATA_DIR:WEIGHT."""
    if ":" in spec:
        path, _, w = spec.rpartition(":")
        try:
            return path, float(w)
        except ValueError:
            pass
    return spec, 1.0


def train_main(argv: list[str]) -> int:
    from xianliao.model.checkpoint import CheckpointError
    from xianliao.training.data import DataError
    from xianliao.training.train import TrainConfig, result_json, train

    d = TrainConfig()
    p = OneLineParser(
        prog="xianliao train",
        description="Train a seq2seq model on prepared data. Several DATA_DIRs (prepared with "
        "the same vocabulary) are mixed by weight: DATA_DIR:WEIGHT.",
    )
    p.add_argument("data", nargs="+", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--steps", type=whole_number(1), default=d.steps)
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--batch-size", type=whole_number(1), default=d.batch_size)
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
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", type=_device, default=d.device, help="auto, cpu or cuda")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="fine-tune from this checkpoint")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly")
    p.add_argument("--progress-jsonl", metavar="FILE", help="append progress as JSON lines")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="start afresh over RUN_DIR's checkpoints")
    a = p.parse_args(argv)
    kept = [n for n in ("best.pt", "last.pt") if (Path(a.out) / n).exists()]
    if kept and not (a.resume or a.force):
        p.error(
            f"{a.out} already holds {' and '.join(kept)}: --resume to continue that run, "
            "--force to start again over it, or choose another --out"
        )
    _threads(a.threads)
    # (xianliao.cli makes SIGINT and SIGTERM interrupt; this is for train_main called directly.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model = {
        k: v
        for k, v in {
            "hidden_size": a.hidden_size,
            "emb_size": a.emb_size,
            "enc_layers": a.layers,
            "dec_layers": a.layers,
            "dropout": a.dropout,
            "word_dropout": a.word_dropout,
        }.items()
        if v is not None
    }
    if a.resume and model:
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
        seed=a.seed,
        device=a.device,
        init_from=a.init_from,
        both_directions=a.both_directions,
        model=model,
    )
    on_progress = None
    if a.progress_jsonl:

        def on_progress(info: dict, path=a.progress_jsonl) -> None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(info) + "\n")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(
            [_data_arg(x) for x in a.data],
            a.out,
            cfg,
            resume=a.resume,
            progress=not a.quiet,
            on_progress=on_progress,
        )
    except (DataError, CheckpointError, OSError, ValueError) as exc:
        print(f"xianliao train: {exc}", file=sys.stderr)
        return 1
    print(result_json(result), flush=True)
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
        "index beside the checkpoint); sample_rank draws 16 replies and keeps the best one",
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
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    a = p.parse_args(argv)
    _threads(a.threads)
    try:
        bot = ChatBot.load(a.checkpoint, index_path=a.index)
        extra = json.loads(a.options)
        if not isinstance(extra, dict):
            raise ValueError("--options must be a JSON object")
        given = {"strategy": a.strategy, "beam_size": a.beam_size}
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
