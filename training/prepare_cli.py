"""Entry points of ``xianliao prepare`` and ``xianliao index``: corpora in, training data or a
reply index out."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from xianliao.training.cli_args import OneLineParser, whole_number


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


def _prepare_parser() -> OneLineParser:
    from xianliao.model.vocab import SPECIALS
    from xianliao.training.prepare import PrepareConfig

    p = OneLineParser(
        prog="xianliao prepare",
        description="Segment corpora into a vocabulary and token-id arrays for training. "
        "CORPUS is a question<TAB>answer file, a folder with 'question' and 'answer' files "
        "(or QFILE+AFILE), a chatterbot-corpus .yml file or folder, chatterbot:chinese, or "
        "xianliao:everyday (the everyday exchanges shipped with xianliao).",
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
    return p


def prepare_main(argv: list[str]) -> int:
    from xianliao.training.corpus import CorpusError
    from xianliao.training.prepare import PrepareConfig, prepare

    # torch is imported only for --vocab-from: prepare itself never needs it, and every worker
    # process would carry its memory.
    p = _prepare_parser()
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
    if sum(stats.pairs_written.values()) == 0:
        print(f"xianliao prepare: {_nothing_written(stats)}", file=sys.stderr)
        return 1
    _print_summary(stats, a.out)
    return 0


def _print_summary(stats, out: str) -> None:  # noqa: ANN001 - PrepareStats
    """A few lines for people on stderr, the stats as one JSON line for scripts on stdout."""
    bad = sum(stats.bad.values())
    print(
        f"read {stats.pairs_read} pairs: {stats.pairs_written['train']} train, "
        f"{stats.pairs_written['valid']} valid, {bad} skipped"
        + "".join(f"\n  skipped {n}: {reason}" for reason, n in sorted(stats.bad.items()))
        + f"\n  {stats.questions_truncated} questions truncated, unknown-word rate "
        f"{stats.unk_tokens / max(stats.tokens, 1):.2%}, {stats.seconds:.1f}s -> {out}",
        file=sys.stderr,
    )
    print(json.dumps(asdict(stats), ensure_ascii=False))


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

    from xianliao.training.corpus import EVERYDAY_CORPUS, SHIPPED_OFFSETS, CorpusError
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
        "the extension), e.g. dgk_subtitle=-1 for a corpus whose answers fit less often; a "
        "positive VALUE counts in full only where the indexed question is close to the "
        "message (decoding options trust_from/trust_full); the shipped everyday exchanges "
        f"get {EVERYDAY_CORPUS.stem}={SHIPPED_OFFSETS[EVERYDAY_CORPUS.resolve()]:g} unless given",
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
