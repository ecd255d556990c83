"""Retraining from logged conversations, evaluation against the live model, promotion.

``retrain`` runs in its own process (``xianliao retrain``, started by an admin from the command
line or by the bot's ``/retrain``), never on the bot's event loop:

1. export the logged exchanges straight from the database (any SQLAlchemy URL), streamed and
   deduplicated in SQL, by default only approved ones, the edited answer replacing the logged
   reply, with length, blocklist and broken-text filters (``ReplyFilter.unusable``);
2. prepare them with the live model's vocabulary (``finetune``: new words map to <unk>) or
   rebuild the vocabulary over base corpus + logs (``scratch``);
3. train on the base data mixed with the logs by weight, so the model does not forget;
4. compare the new checkpoint with the live one on held-out pairs and a fixed probe set.

Promotion (``bot.promotion``) is the caller's decision, made on the returned comparison.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xianliao.storage.database import Database

logger = logging.getLogger(__name__)

# Everyday questions every candidate model answers side by side with the live one.
PROBE_QUESTIONS = (
    "你好",
    "你叫什么名字",
    "今天天气怎么样",
    "我好累",
    "你吃饭了吗",
    "你喜欢什么",
    "晚安",
    "你在干什么",
    "我很无聊",
    "你是谁",
    "我们去看电影吧",
    "你多大了",
)


class RetrainError(Exception):
    """A retraining step that cannot go on; the message says what to do."""


@dataclass
class RetrainConfig:
    database_url: str  # where the logged exchanges are
    model_path: str  # the live checkpoint (MODEL_PATH)
    base_data: str  # prepared base corpus (for finetune: prepared with the live vocabulary)
    out_dir: str  # this run's folder
    mode: str = "finetune"  # "finetune" the live model, or "scratch" with a rebuilt vocabulary
    base_corpus: list[str] = field(default_factory=list)  # raw base corpora (scratch mode)
    log_weight: float = 0.3  # sampling weight of logged pairs; the base corpus weighs 1.0
    statuses: tuple[str, ...] = ("approved",)  # review statuses to learn from
    min_chars: int = 1  # shortest question/answer kept
    max_chars: int = 200  # longest question/answer kept
    blocklist: list[str] = field(default_factory=list)  # drop pairs containing any of these
    steps: int = 2000
    minutes: float | None = None
    batch_size: int = 64
    lr: float | None = None  # default: 3e-4 when fine-tuning, 1e-3 from scratch
    eval_limit: int = 300  # held-out pairs per evaluation set
    tolerance: float = 0.05  # "not worse": new perplexity <= live perplexity * (1 + tolerance)
    seed: int = 1234
    # logged pairs kept out of training, per thousand (by a hash of the pair), for the gate to
    # compare the models on pairs the candidate has not seen
    heldout_permille: int = 100
    decode_options: dict = field(default_factory=dict)  # the served decoding (DECODE_OPTIONS)
    quantize: bool | None = None  # the served precision (MODEL_QUANTIZE; None: int8 on CPU)
    reply_index: str | None = None  # the served reply index (REPLY_INDEX; None: beside the model)
    reply_blocklist: str | None = None  # the served extra blocklist file (REPLY_BLOCKLIST)
    nproc: int = 1  # training processes on this machine (DDP, as ``xianliao train --nproc``)


def export_logged_pairs(
    database: str | Database,
    out_tsv: str | os.PathLike,
    *,
    statuses: Iterable[str] = ("approved",),
    min_chars: int = 1,
    max_chars: int = 200,
    blocklist: Iterable[str] = (),
    heldout_tsv: str | os.PathLike | None = None,
    heldout_permille: int = 0,
) -> dict[str, int]:
    """Stream logged (question, answer) pairs into a corpus TSV; with ``heldout_tsv``, the
    pairs a hash puts among the ``heldout_permille`` go there instead (for the gate). Pairs
    with a word of the shipped blocklist or of ``blocklist``, or with broken text (U+FFFD, a
    message's bytes that were not UTF-8), on either side are dropped (counted as blocked).
    Duplicates are removed by the database (SELECT DISTINCT), so memory stays bounded however
    many rows.
    ``database``: the process's database, or a URL (opened and closed here)."""
    from xianliao.model.reply_filter import ReplyFilter, read_blocklist
    from xianliao.model.text import normalise
    from xianliao.storage.database import Database
    from xianliao.storage.repositories import ExchangeRepository
    from xianliao.training.prepare import held_out

    db = Database.open(database) if isinstance(database, str) else database
    try:
        statuses = list(statuses)
        reply_filter = ReplyFilter([*read_blocklist(), *(b for b in blocklist if b)])
        stats = {"rows": 0, "written": 0, "too_short": 0, "too_long": 0, "blocked": 0}
        stats["held_out"] = 0
        with (
            db.read() as session,
            open(out_tsv, "w", encoding="utf-8") as f,
            open(heldout_tsv or os.devnull, "w", encoding="utf-8") as held,
        ):
            pairs = ExchangeRepository(session).iter_training_pairs(
                statuses=statuses, distinct=True
            )
            for question, reply in pairs:
                stats["rows"] += 1
                q = " ".join(question.split())
                a = " ".join(reply.split())
                if min(len(q), len(a)) < min_chars:
                    stats["too_short"] += 1
                elif max(len(q), len(a)) > max_chars:
                    stats["too_long"] += 1
                elif reply_filter.unusable(q) or reply_filter.unusable(a):
                    stats["blocked"] += 1
                elif heldout_tsv and held_out(normalise(q), normalise(a), heldout_permille):
                    held.write(f"{q}\t{a}\n")
                    stats["held_out"] += 1
                else:
                    f.write(f"{q}\t{a}\n")
                    stats["written"] += 1
        if stats["written"] == 0 and stats["held_out"]:
            # Too few pairs to keep any from training: learn them all, compare on the base set.
            Path(out_tsv).write_text(Path(heldout_tsv).read_text("utf-8"), "utf-8")
            Path(heldout_tsv).write_text("", "utf-8")
            stats["written"], stats["held_out"] = stats["held_out"], 0
    finally:
        if db is not database:
            db.dispose()
    return stats


def _describe_model(bot, tsvs: dict[str, str], limit: int, options: dict) -> dict:
    """Metrics and probe replies of ``bot`` with the served decoding (its own defaults and
    ``options``, as the bot's DECODE_OPTIONS)."""
    from xianliao.model.decode import DecodeOptions
    from xianliao.training.evaluate import evaluate

    out: dict = {"version": bot.version}
    served = {**bot.options.to_dict(), **options, "seed": 0}
    for name, tsv in tsvs.items():
        report, _ = evaluate(bot, tsv, limit=limit, options=DecodeOptions.from_dict(served))
        out[name] = {
            "perplexity": report.perplexity,
            "distinct_2": report.distinct_2,
            "generic_share": report.generic_share,
        }
    out["probes"] = bot.reply_many(list(PROBE_QUESTIONS), **served)
    return out


def compare(
    live_path: str,
    new_path: str,
    tsvs: dict[str, str],
    *,
    limit: int = 300,
    tolerance: float = 0.05,
    options: dict | None = None,
    quantize: bool | None = None,
    index_path: str | None = None,
    blocklist: str | None = None,
) -> dict:
    """Evaluate both checkpoints on the same held-out sets and probes; decide if the new one is
    not worse: perplexity within ``tolerance`` on every set, generic share up by at most 5
    points and distinct-2 down by at most 5 points on the base set. Both are loaded as the bot
    serves them: ``options``, ``quantize``, the reply index ``index_path`` (None: the one
    beside the live model) and the extra ``blocklist`` file."""
    from xianliao.model.chatbot import ChatBot

    tsvs = {k: v for k, v in tsvs.items() if Path(v).is_file() and Path(v).stat().st_size}
    served = {"quantize": quantize, "blocklist": blocklist}
    live_bot = ChatBot.load(live_path, index_path=index_path, **served)
    # The candidate is served with the live model's reply index once promoted: judge it so.
    index = live_bot.index.path if live_bot.index is not None else "none"
    live = _describe_model(live_bot, tsvs, limit, options or {})
    del live_bot
    new_bot = ChatBot.load(new_path, index_path=index, **served)
    new = _describe_model(new_bot, tsvs, limit, options or {})
    reasons = []
    for name in tsvs:
        lp, np_ = live[name]["perplexity"], new[name]["perplexity"]
        if np_ > lp * (1 + tolerance):
            reasons.append(f"{name} perplexity {np_:.1f} > {lp:.1f}")
    if "base" in tsvs:
        if new["base"]["generic_share"] > live["base"]["generic_share"] + 0.05:
            reasons.append("more generic replies")
        if new["base"]["distinct_2"] < live["base"]["distinct_2"] - 0.05:
            reasons.append("less diverse replies")
    side_by_side = [
        {"question": q, "live": a, "new": b}
        for q, a, b in zip(PROBE_QUESTIONS, live.pop("probes"), new.pop("probes"), strict=True)
    ]
    return {
        "live": live,
        "new": new,
        "not_worse": not reasons,
        "reasons": reasons,
        "side_by_side": side_by_side,
    }


def _load_live(cfg: RetrainConfig) -> dict:
    from xianliao.model.checkpoint import CheckpointError, load_checkpoint

    if cfg.mode not in ("finetune", "scratch"):
        raise RetrainError(f"mode must be finetune or scratch, not {cfg.mode!r}")
    try:
        return load_checkpoint(cfg.model_path)
    except CheckpointError as exc:
        raise RetrainError(f"the live model cannot be read: {exc}") from None


def _export_logs(cfg: RetrainConfig, out: Path, database: str | Database) -> dict[str, int]:
    """Step 1: the logged pairs to ``logged.tsv`` (and ``logged_heldout.tsv``)."""
    export = export_logged_pairs(
        database,
        out / "logged.tsv",
        statuses=cfg.statuses,
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        blocklist=cfg.blocklist,
        heldout_tsv=out / "logged_heldout.tsv",
        heldout_permille=cfg.heldout_permille,
    )
    if export["written"] == 0:
        raise RetrainError(
            f"no logged exchanges to learn from (statuses {', '.join(cfg.statuses)}): "
            "approve some with /review or 'xianliao review approve'"
        )
    return export


def _prepare_data(cfg: RetrainConfig, live: dict, out: Path) -> tuple[Path, Path, str | None]:
    """Step 2: prepare the logs (and, from scratch, the base corpus with them); returns
    ``(base data dir, logs data dir, checkpoint to start from)``."""
    from xianliao.model.vocab import Vocab
    from xianliao.training.prepare import PrepareConfig, prepare
    from xianliao.training.train import read_vocab

    logged_tsv = str(out / "logged.tsv")
    pcfg = PrepareConfig(min_freq=1, workers=1, valid_permille=0)
    logs_dir = out / "logs_data"
    if cfg.mode == "finetune":
        vocab = Vocab(live["vocab"])
        try:
            base_vocab = read_vocab(cfg.base_data)
        except Exception as exc:  # DataError and OSError: say what to do
            raise RetrainError(f"base data {cfg.base_data}: {exc}") from None
        if base_vocab.itos != vocab.itos:
            raise RetrainError(
                f"base data {cfg.base_data} was prepared with another vocabulary than "
                f"{cfg.model_path}: prepare it with --vocab-from, or use --mode scratch"
            )
        prepare([logged_tsv], logs_dir, pcfg, progress=False, vocab=vocab)
        return Path(cfg.base_data), logs_dir, cfg.model_path
    if not cfg.base_corpus:
        raise RetrainError("scratch mode needs the raw base corpus (--base-corpus)")
    base_dir = out / "base_data"
    prepare([*cfg.base_corpus, logged_tsv], base_dir, PrepareConfig(workers=0), progress=False)
    prepare([logged_tsv], logs_dir, pcfg, progress=False, vocab=read_vocab(base_dir))
    return base_dir, logs_dir, None


def _train_config(cfg: RetrainConfig, live: dict, init_from: str | None) -> Any:
    """Step 3's settings: the live model's sizes and training mode, this run's budget."""
    from xianliao.training.train import TrainConfig

    model_sizes = {
        k: live["model_config"][k]
        for k in ("emb_size", "hidden_size", "enc_layers", "dec_layers", "dropout", "word_dropout")
        if k in live["model_config"]  # word_dropout: not in checkpoints older than it
    }
    live_train = live.get("train") if isinstance(live.get("train"), dict) else {}
    # A model trained both ways is retrained both ways (bidi_weight needs the way back).
    both_directions = bool((live_train.get("config") or {}).get("both_directions", False))
    return TrainConfig(
        steps=cfg.steps,
        minutes=cfg.minutes,
        batch_size=cfg.batch_size,
        lr=cfg.lr or (3e-4 if cfg.mode == "finetune" else 1e-3),
        eval_every=max(50, cfg.steps // 4),
        log_every=10,
        seed=cfg.seed,
        init_from=init_from,
        both_directions=both_directions,
        model=model_sizes,
    )


def _public_config(cfg: RetrainConfig) -> dict:
    """The config for the report file: the database URL without its password."""
    from xianliao.storage.database import redacted_url

    return {**asdict(cfg), "database_url": redacted_url(cfg.database_url)}


def retrain(
    cfg: RetrainConfig,
    *,
    db: Database | None = None,
    on_progress: Callable[[dict], None] | None = None,
    progress_bar: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Export, prepare, train, compare. Returns the report (also in ``out_dir/report.json``).
    ``db``: the process's database (default: opened from ``cfg.database_url``).
    ``should_stop``: polled after every training step; True ends training early (the report
    then says ``interrupted``)."""
    from xianliao.model.chatbot import serving_entry
    from xianliao.model.checkpoint import export_for_inference
    from xianliao.training.train import train

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    live = _load_live(cfg)
    export = _export_logs(cfg, out, db if db is not None else cfg.database_url)
    base_dir, logs_dir, init_from = _prepare_data(cfg, live, out)
    tcfg = _train_config(cfg, live, init_from)
    # How the live model is served (its decoding, its precision) carries over to the candidate,
    # so the gate judges both alike and a promotion keeps what was chosen for the model.
    serving = serving_entry(live) or None
    del live  # only its vocabulary, sizes and training mode were needed; training loads it again
    data = [(str(base_dir), 1.0), (str(logs_dir), cfg.log_weight)]
    if cfg.nproc > 1:
        from xianliao.training.rank_job import DistributedTrainingError, train_distributed

        try:
            result = train_distributed(
                data,
                out / "run",
                tcfg,
                cfg.nproc,
                on_progress=on_progress,
                should_stop=should_stop,
            )
        except DistributedTrainingError as exc:
            raise RetrainError(str(exc)) from None
    else:
        result = train(
            data,
            out / "run",
            tcfg,
            progress=progress_bar,
            on_progress=on_progress,
            should_stop=should_stop,
        )
    # The logs' last step matters most to an admin who edited answers: judge the final weights.
    last_weights = out / "candidate.pt"
    export_for_inference(out / "run" / "last.pt", last_weights, serving=serving)
    comparison = compare(
        cfg.model_path,
        str(last_weights),
        {
            "base": str(base_dir / "valid.tsv"),
            "logged (held out)": str(out / "logged_heldout.tsv"),
        },
        limit=cfg.eval_limit,
        tolerance=cfg.tolerance,
        options=cfg.decode_options,
        quantize=cfg.quantize,
        index_path=cfg.reply_index,
        blocklist=cfg.reply_blocklist,
    )
    report = {
        "config": _public_config(cfg),
        "export": export,
        "train": asdict(result),
        "candidate": str(last_weights),
        "best_checkpoint": str(out / "run" / "best.pt"),
        "comparison": comparison,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
    return report
