"""Entry points of ``xianliao retrain``, ``xianliao promote`` and ``xianliao rollback``.

They read ``DATABASE_URL`` / ``MODEL_PATH`` / ``BASE_DATA_DIR`` through the bot's settings (an
entry point may read configuration; what is below it only gets plain values), open the one
:class:`~xianliao.storage.database.Database` of the process, and call ``ops`` (run records,
promotion) and ``training.retrain`` (the work itself).

``--database-url`` is for a person at a shell; the bot starts ``xianliao retrain`` with the URL
in its environment (``DATABASE_URL``), where other users cannot read it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields
from typing import Any

EXIT_CANCELLED = 130
_NOT_RECORDED = ("env_file", "database_url")  # never stored with a run: the URL has a password


def _settings(env_file: str, prog: str):  # noqa: ANN202 - Settings | None
    """The bot's settings, or None after printing what is wrong with them."""
    from xianliao.bot.config import read_settings

    return read_settings(env_file, prog)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return 1


def _open_database(url: str, *, create: bool = True):  # noqa: ANN202 - Database
    """The process's database; ``DatabaseUnavailable`` with one line if it cannot be opened."""
    from xianliao.storage.database import Database

    return Database.open(url, create=create)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    p.add_argument(
        "--database-url",
        help="default: DATABASE_URL (from the environment or .env; a URL given here is "
        "visible to other local users in 'ps')",
    )
    p.add_argument("--model", help="the live checkpoint (default: MODEL_PATH)")
    p.add_argument("--by", type=int, default=0, help="user id recorded as the actor (0 = CLI)")


def _read_blocklist(path: str, label: str | None = None) -> list[str]:
    """The words of a blocklist file, one per line; ``ValueError`` with one line if unreadable,
    starting with ``label`` (default: ``--blocklist PATH``)."""
    label = label or f"--blocklist {path}"
    try:
        with open(path, encoding="utf-8") as f:
            return [w.strip() for w in f if w.strip()]
    except OSError as exc:
        raise ValueError(f"{label}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{label}: not UTF-8 text") from None


# ----- xianliao retrain -------------------------------------------------------------------------


def _retrain_parser() -> argparse.ArgumentParser:
    from xianliao.training.cli import OneLineParser, whole_number
    from xianliao.training.retrain import RetrainConfig

    d = {f.name: f.default for f in fields(RetrainConfig) if not callable(f.default)}
    p = OneLineParser(
        prog="xianliao retrain",
        description="Retrain on the base corpus plus logged exchanges (approved ones by "
        "default), compare with the live model, and promote the result if it is not worse.",
    )
    _common(p)
    p.add_argument("--base", help="prepared base data dir (default: BASE_DATA_DIR)")
    p.add_argument(
        "--base-corpus",
        action="append",
        default=[],
        help="raw base corpus for --mode scratch (repeatable)",
    )
    p.add_argument("--mode", choices=["finetune", "scratch"], default=d["mode"])
    p.add_argument(
        "--weight",
        type=float,
        default=d["log_weight"],
        help="sampling weight of logged pairs against 1.0 for the base corpus",
    )
    p.add_argument(
        "--include",
        default="approved",
        help="review statuses to learn from, comma-separated (default: approved)",
    )
    p.add_argument("--min-chars", type=int, default=d["min_chars"])
    p.add_argument("--max-chars", type=int, default=d["max_chars"])
    p.add_argument("--blocklist", metavar="FILE", help="one word per line; pairs with any dropped")
    p.add_argument("--steps", type=whole_number(1), default=d["steps"])
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--batch-size", type=whole_number(1), default=d["batch_size"])
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--nproc",
        type=whole_number(1),
        default=1,
        help="train with N processes on this machine (DistributedDataParallel; "
        "--batch-size is over all of them)",
    )
    p.add_argument("--out", help="run folder (default: runs/retrain-<run id>)")
    p.add_argument(
        "--promote",
        choices=["auto", "never", "force"],
        default="auto",
        help="auto: promote if not worse than the live model (default)",
    )
    p.add_argument("--run-id", type=int, help="the training_runs row to report into")
    p.add_argument(
        "--cancel",
        type=int,
        metavar="RUN_ID",
        help="ask run RUN_ID to stop (on any host; it saves and records itself cancelled)",
    )
    p.add_argument("--progress-jsonl", metavar="FILE", help="append progress as JSON lines")
    return p


def _progress_writer(run_id: int, progress_file: str | None):  # noqa: ANN202 - a callback
    """Training progress to stderr, and as JSON lines to ``progress_file`` (the supervisor
    reads them)."""

    def on_progress(info: dict) -> None:
        print(
            f"step {info['step']}/{info['steps']} loss {info['loss']:.3f} eta {info['eta_s']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        if progress_file:
            with open(progress_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"run_id": run_id, **info}) + "\n")

    return on_progress


def _gate_precision(s: Any) -> bool | None:
    """MODEL_QUANTIZE for the gate, which judges on CPU: unset on a GPU bot means fp32 served
    (``served_int8`` decides for the bot's device)."""
    from xianliao.model.chatbot import served_int8

    quantize = getattr(s, "model_quantize", None)
    if quantize is None and not served_int8(str(getattr(s, "model_device", "cpu")), None):
        return False
    return quantize


def _gate_reply_settings(s: Any) -> dict:
    """REPLY_INDEX and REPLY_BLOCKLIST for the gate, which judges the models as served.
    ``ValueError`` (one line) for a blocklist file that cannot be read, before any training."""
    index, blocklist = getattr(s, "reply_index", None), getattr(s, "reply_blocklist", None)
    if blocklist:
        _read_blocklist(str(blocklist), label="setting REPLY_BLOCKLIST")
    return {
        "reply_index": str(index) if index else None,
        "reply_blocklist": str(blocklist) if blocklist else None,
    }


def _config(a: argparse.Namespace, s: Any, run_id: int, url: str, blocklist: list[str]):  # noqa: ANN202
    from xianliao.training.retrain import RetrainConfig

    return RetrainConfig(
        database_url=url,
        model_path=a.model or str(s.model_path),
        base_data=a.base or str(getattr(s, "base_data_dir", "data/quickstart")),
        out_dir=a.out or f"runs/retrain-{run_id}",
        mode=a.mode,
        base_corpus=a.base_corpus,
        log_weight=a.weight,
        statuses=tuple(x.strip() for x in a.include.split(",") if x.strip()),
        min_chars=a.min_chars,
        max_chars=a.max_chars,
        blocklist=blocklist,
        steps=a.steps,
        minutes=a.minutes,
        batch_size=a.batch_size,
        lr=a.lr,
        decode_options=dict(getattr(s, "decode_options", None) or {}),  # the served decoding
        quantize=_gate_precision(s),  # ... and precision
        **_gate_reply_settings(s),  # ... and reply index and blocklist
        nproc=a.nproc,
    )


def _summary(report: dict) -> dict:
    comparison = report["comparison"]
    return {
        "live": comparison["live"],
        "new": comparison["new"],
        "not_worse": comparison["not_worse"],
        "reasons": comparison["reasons"],
        "train": report["train"],
        "export": report["export"],
    }


def _stopped(prog: str, db: Any, lease: Any, when: str) -> int:
    """The end of a run stopped by a cancel request or a lost lease: record it if still ours."""
    from xianliao.ops.runs import finish_run

    if lease.lost.is_set():
        print(
            f"{prog}: the lease was lost (run failed as stale); nothing promoted", file=sys.stderr
        )
        return 1
    log = f"cancelled {when}; the live model is unchanged"
    finish_run(db, lease.run_id, "cancelled", owner=lease.owner, log=log)
    print(f"{prog}: cancelled; the live model is unchanged", file=sys.stderr)
    return EXIT_CANCELLED


def _train(a: argparse.Namespace, db: Any, cfg: Any, lease: Any) -> tuple[int, dict | None]:
    """Run the retraining and record a failure or a cancellation; ``(exit code, report)``."""
    from xianliao.ops.runs import finish_run
    from xianliao.training.retrain import RetrainError, retrain

    prog, run_id, owner = "xianliao retrain", lease.run_id, lease.owner
    try:
        report = retrain(
            cfg,
            db=db,
            on_progress=_progress_writer(run_id, a.progress_jsonl),
            should_stop=lease.should_stop,
        )
    except KeyboardInterrupt:
        report = None
    except (RetrainError, OSError, ValueError) as exc:
        finish_run(db, run_id, "failed", owner=owner, log=str(exc))
        return _fail(prog, str(exc)), None
    except Exception as exc:  # record any other failure, then let it show its traceback
        finish_run(db, run_id, "failed", owner=owner, log=f"{type(exc).__name__}: {exc}")
        raise
    if report is None or report["train"]["interrupted"]:
        when = "before the end" if report is None else "during training"
        return _stopped(prog, db, lease, when), None
    return 0, report


def _promote_and_record(a: argparse.Namespace, db: Any, cfg: Any, lease: Any, report: dict) -> int:
    """Promote the candidate when ``--promote`` says so (and the lease is still held), record
    the run's end, print the side-by-side replies and the verdict (and one JSON line)."""
    from xianliao.ops.models import PromotionError, promote
    from xianliao.ops.runs import finish_run

    prog, run_id, owner = "xianliao retrain", lease.run_id, lease.owner
    comparison, summary = report["comparison"], _summary(report)
    promoted = None
    # The comparison takes a while: a cancel or a lost lease during it still stops the run.
    if not lease.beat() or lease.cancelled.is_set():
        return _stopped(prog, db, lease, "after training")
    if a.promote == "force" or (a.promote == "auto" and comparison["not_worse"]):
        try:
            promoted = promote(
                report["candidate"],
                cfg.model_path,
                db,
                promoted_by=a.by,
                run_id=run_id,
                forced=a.promote == "force",
                metrics=summary,
            )
        except PromotionError as exc:
            finish_run(
                db,
                run_id,
                "failed",
                owner=owner,
                metrics=summary,
                checkpoint_path=report["candidate"],
                log=str(exc),
            )
            return _fail(prog, str(exc))
    summary["promoted"] = promoted
    finish_run(
        db,
        run_id,
        "succeeded",
        owner=owner,
        metrics=summary,
        checkpoint_path=report["candidate"],
    )
    for row in comparison["side_by_side"]:
        print(f"{row['question']}\n   live: {row['live']}\n   new:  {row['new']}", file=sys.stderr)
    reasons = "; ".join(comparison["reasons"]) or "--promote never"
    verdict = "promoted" if promoted else f"not promoted: {reasons}"
    print(f"run {run_id}: {verdict}", file=sys.stderr)
    result = {
        "run_id": run_id,
        "candidate": report["candidate"],
        "not_worse": comparison["not_worse"],
        "promoted": promoted is not None,
        "reasons": comparison["reasons"],
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _cancel(db: Any, run_id: int) -> int:
    from xianliao.ops.runs import request_cancel

    if not request_cancel(db, run_id):
        return _fail("xianliao retrain", f"run {run_id} is not in progress")
    print(f"run {run_id}: cancel requested (it saves and stops within a heartbeat)")
    return 0


def _run(a: argparse.Namespace, s: Any, db: Any, url: str) -> int:
    """Take the lease for the run, train under it, record the end."""
    from sqlalchemy.exc import SQLAlchemyError

    from xianliao.ops.runs import (
        Lease,
        RunInProgress,
        begin_run,
        finish_run,
        lease_owner,
        record_params,
    )
    from xianliao.storage.db import database_error_line

    prog, owner = "xianliao retrain", lease_owner()
    params = {k: v for k, v in vars(a).items() if k not in _NOT_RECORDED}
    try:
        run_id = begin_run(
            db,
            run_id=a.run_id,
            started_by=a.by,
            params=params,
            owner=owner,
            lease_s=s.retrain_lease_s,
        )
    except SQLAlchemyError as exc:
        return _fail(prog, f"database error: {database_error_line(exc)}")
    except (RunInProgress, ValueError) as exc:
        return _fail(prog, str(exc))
    with Lease(db, run_id, owner, s.retrain_lease_s) as lease:
        # /retrain cancel sends SIGTERM: stop like Ctrl+C (training saves last.pt and returns).
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            blocklist = _read_blocklist(a.blocklist) if a.blocklist else []
            cfg = _config(a, s, run_id, url, blocklist)
        except ValueError as exc:
            finish_run(db, run_id, "failed", owner=owner, log=str(exc))
            return _fail(prog, str(exc))
        # Its folder and progress file, for the console's curves wherever --out put them.
        progress = os.path.abspath(a.progress_jsonl) if a.progress_jsonl else None
        record_params(db, run_id, out=os.path.abspath(cfg.out_dir), progress=progress)
        code, report = _train(a, db, cfg, lease)
        if report is None:
            return code
        return _promote_and_record(a, db, cfg, lease, report)


def retrain_main(argv: list[str]) -> int:
    """Entry point of ``xianliao retrain``: one run, recorded from start to end."""
    from xianliao.storage.database import DatabaseUnavailable

    prog = "xianliao retrain"
    p = _retrain_parser()
    a = p.parse_args(argv)
    if a.batch_size % a.nproc:
        p.error(f"--batch-size {a.batch_size} does not split evenly over {a.nproc} processes")
    s = _settings(a.env_file, prog)
    if s is None:
        return 2
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    url = a.database_url or s.database_url
    try:
        db = _open_database(url)
    except DatabaseUnavailable as exc:
        return _fail(prog, str(exc))
    try:
        return _cancel(db, a.cancel) if a.cancel is not None else _run(a, s, db, url)
    finally:
        db.dispose()


# ----- xianliao promote / rollback ---------------------------------------------------------------


def promote_main(argv: list[str]) -> int:
    from xianliao.ops.models import PromotionError, check_loads, promote
    from xianliao.storage.database import DatabaseUnavailable
    from xianliao.training.cli import OneLineParser

    prog = "xianliao promote"
    p = OneLineParser(
        prog=prog,
        description="Put a checkpoint live at MODEL_PATH (an admin's "
        "forced promotion; the running bot picks it up).",
    )
    p.add_argument("checkpoint")
    _common(p)
    a = p.parse_args(argv)
    s = _settings(a.env_file, prog)
    if s is None:
        return 2
    try:
        check_loads(a.checkpoint)  # before the database: a bad candidate creates nothing
        # Open the database before anything goes live, so that a bad DATABASE_URL changes nothing.
        with _open_database(a.database_url or s.database_url) as db:
            info = promote(a.checkpoint, a.model or s.model_path, db, promoted_by=a.by, forced=True)
    except (PromotionError, DatabaseUnavailable, OSError) as exc:
        return _fail(prog, str(exc))
    print(json.dumps(info, ensure_ascii=False))
    return 0


def rollback_main(argv: list[str]) -> int:
    from xianliao.ops.models import PromotionError, rollback
    from xianliao.storage.database import DatabaseUnavailable, MissingDatabase
    from xianliao.training.cli import OneLineParser

    prog = "xianliao rollback"
    p = OneLineParser(
        prog=prog, description="Put back the model that the latest promotion replaced."
    )
    _common(p)
    a = p.parse_args(argv)
    s = _settings(a.env_file, prog)
    if s is None:
        return 2
    try:
        # No database: no promotion to undo, and none is created by looking.
        with _open_database(a.database_url or s.database_url, create=False) as db:
            info = rollback(a.model or s.model_path, db, promoted_by=a.by)
    except MissingDatabase as exc:
        return _fail(prog, f"nothing to roll back to: {exc}")
    except (PromotionError, DatabaseUnavailable, OSError) as exc:
        return _fail(prog, str(exc))
    print(json.dumps(info, ensure_ascii=False))
    return 0
