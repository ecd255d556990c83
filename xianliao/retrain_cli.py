"""Entry points of ``xianliao retrain``, ``xianliao promote`` and ``xianliao rollback``.

They read ``DATABASE_URL`` / ``MODEL_PATH`` / ``BASE_DATA_DIR`` through the bot's settings (an
entry point may read configuration; the training package below it only gets plain values).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields


class RunInProgress(Exception):
    """Another training run is alive; the message says how to cancel it."""


def _settings(env_file: str, prog: str):
    """The bot's settings, or None after printing what is wrong with them."""
    from xianliao.bot.config import read_settings

    return read_settings(env_file, prog)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    p.add_argument("--database-url", help="default: DATABASE_URL")
    p.add_argument("--model", help="the live checkpoint (default: MODEL_PATH)")
    p.add_argument("--by", type=int, default=0, help="user id recorded as the actor (0 = CLI)")


def _read_blocklist(path: str) -> list[str]:
    """The words of a blocklist file, one per line; ``ValueError`` with one line if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return [w.strip() for w in f if w.strip()]
    except OSError as exc:
        raise ValueError(f"--blocklist {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--blocklist {path}: not UTF-8 text") from None


def _busy_message(session, run_id: int) -> str:  # noqa: ANN001 - a Session
    """Why a run cannot start while ``run_id`` runs, and how to stop that one from here too."""
    from xianliao.storage.repositories import TrainingRunRepository

    run = TrainingRunRepository(session).get(run_id)
    try:
        pid = json.loads(run.params or "{}").get("pid") if run is not None else None
    except (ValueError, AttributeError):
        pid = None
    # SIGTERM is what /retrain cancel sends: the run saves, records "cancelled" and exits.
    how = f"kill {pid}" if isinstance(pid, int) else "kill the 'xianliao retrain' process"
    return (
        f"run {run_id} is still in progress: one run at a time (cancel it with /retrain cancel "
        f"in Telegram, or here with: {how})"
    )


def retrain_main(argv: list[str]) -> int:
    from xianliao.bot.promotion import PromotionError, promote
    from xianliao.training.cli import OneLineParser, whole_number
    from xianliao.training.retrain import RetrainConfig, RetrainError, retrain

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
    p.add_argument("--out", help="run folder (default: runs/retrain-<run id>)")
    p.add_argument(
        "--promote",
        choices=["auto", "never", "force"],
        default="auto",
        help="auto: promote if not worse than the live model (default)",
    )
    p.add_argument("--run-id", type=int, help="the training_runs row to report into")
    p.add_argument("--progress-jsonl", metavar="FILE", help="append progress as JSON lines")
    a = p.parse_args(argv)

    s = _settings(a.env_file, "xianliao retrain")
    if s is None:
        return 2
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from sqlalchemy.exc import SQLAlchemyError

    from xianliao.bot.runtime import StartupError, open_database
    from xianliao.storage.db import database_error_line, session_factory
    from xianliao.storage.repositories import TrainingRunRepository

    db_url = a.database_url or s.database_url
    model_path = a.model or str(s.model_path)
    base = a.base or str(getattr(s, "base_data_dir", "data/quickstart"))
    try:
        sessions = session_factory(open_database(db_url))
    except StartupError as exc:
        print(f"xianliao retrain: {exc}", file=sys.stderr)
        return 1
    params = {k: v for k, v in vars(a).items() if k not in ("env_file",)}
    params["pid"] = os.getpid()
    try:
        run_id = _start_run(sessions, a, params)
    except SQLAlchemyError as exc:
        print(f"xianliao retrain: database error: {database_error_line(exc)}", file=sys.stderr)
        return 1
    except RunInProgress as exc:
        print(f"xianliao retrain: {exc}", file=sys.stderr)
        return 1

    def finish(status: str, **kw) -> None:
        with sessions() as session:
            TrainingRunRepository(session).finish(run_id, status=status, **kw)
            session.commit()

    # /retrain cancel sends SIGTERM: stop like Ctrl+C (training saves last.pt and returns).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    progress_file = a.progress_jsonl

    def on_progress(info: dict) -> None:
        print(
            f"step {info['step']}/{info['steps']} loss {info['loss']:.3f} eta {info['eta_s']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        if progress_file:
            with open(progress_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"run_id": run_id, **info}) + "\n")

    try:
        blocklist = _read_blocklist(a.blocklist) if a.blocklist else []
    except ValueError as exc:
        finish("failed", log=str(exc))
        print(f"xianliao retrain: {exc}", file=sys.stderr)
        return 1
    cfg = RetrainConfig(
        database_url=db_url,
        model_path=model_path,
        base_data=base,
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
    )
    try:
        report = retrain(cfg, on_progress=on_progress)
    except KeyboardInterrupt:
        finish("cancelled", log="cancelled before the end; the live model is unchanged")
        print("xianliao retrain: cancelled; the live model is unchanged", file=sys.stderr)
        return 130
    except (RetrainError, OSError, ValueError) as exc:
        finish("failed", log=str(exc))
        print(f"xianliao retrain: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # record any other failure, then let it show its traceback
        finish("failed", log=f"{type(exc).__name__}: {exc}")
        raise
    if report["train"]["interrupted"]:
        finish("cancelled", log="cancelled during training; the live model is unchanged")
        print("xianliao retrain: cancelled; the live model is unchanged", file=sys.stderr)
        return 130
    comparison = report["comparison"]
    summary = {
        "live": comparison["live"],
        "new": comparison["new"],
        "not_worse": comparison["not_worse"],
        "reasons": comparison["reasons"],
        "train": report["train"],
        "export": report["export"],
    }
    promoted = None
    if a.promote == "force" or (a.promote == "auto" and comparison["not_worse"]):
        try:
            promoted = promote(
                report["candidate"],
                model_path,
                db_url,
                promoted_by=a.by,
                run_id=run_id,
                forced=a.promote == "force",
                metrics=summary,
            )
        except PromotionError as exc:
            finish("failed", metrics=summary, checkpoint_path=report["candidate"], log=str(exc))
            print(f"xianliao retrain: {exc}", file=sys.stderr)
            return 1
    summary["promoted"] = promoted
    finish("succeeded", metrics=summary, checkpoint_path=report["candidate"])
    for row in comparison["side_by_side"]:
        print(f"{row['question']}\n   live: {row['live']}\n   new:  {row['new']}", file=sys.stderr)
    verdict = (
        "promoted"
        if promoted
        else "not promoted: " + ("; ".join(comparison["reasons"]) or "--promote never")
    )
    print(f"run {run_id}: {verdict}", file=sys.stderr)
    print(
        json.dumps(
            {
                "run_id": run_id,
                "candidate": report["candidate"],
                "not_worse": comparison["not_worse"],
                "promoted": promoted is not None,
                "reasons": comparison["reasons"],
            },
            ensure_ascii=False,
        )
    )
    return 0


def _start_run(sessions, a: argparse.Namespace, params: dict) -> int:  # noqa: ANN001
    """Mark this process's training run as running (creating it unless the bot made it with
    ``--run-id``); ``RunInProgress`` while another run is alive."""
    from xianliao.bot.retrain import live_run_or_fail_stale
    from xianliao.storage.repositories import TrainingRunRepository

    with sessions() as session:
        runs = TrainingRunRepository(session)
        other = live_run_or_fail_stale(session, skip=a.run_id)
        if other is not None:
            raise RunInProgress(_busy_message(session, other))
        run = runs.get(a.run_id) if a.run_id else None
        if run is None:
            run = runs.create(started_by=a.by, params=params, status="running")
        else:
            run.status = "running"
            run.params = json.dumps({**json.loads(run.params or "{}"), "pid": os.getpid()})
        session.commit()
        return run.id


def promote_main(argv: list[str]) -> int:
    from xianliao.bot.promotion import PromotionError, promote
    from xianliao.training.cli import OneLineParser

    p = OneLineParser(
        prog="xianliao promote",
        description="Put a checkpoint live at MODEL_PATH (an admin's "
        "forced promotion; the running bot picks it up).",
    )
    p.add_argument("checkpoint")
    _common(p)
    a = p.parse_args(argv)
    s = _settings(a.env_file, "xianliao promote")
    if s is None:
        return 2
    try:
        info = promote(
            a.checkpoint,
            a.model or s.model_path,
            a.database_url or s.database_url,
            promoted_by=a.by,
            forced=True,
        )
    except (PromotionError, OSError) as exc:
        print(f"xianliao promote: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, ensure_ascii=False))
    return 0


def rollback_main(argv: list[str]) -> int:
    from xianliao.bot.promotion import PromotionError, rollback
    from xianliao.training.cli import OneLineParser

    p = OneLineParser(
        prog="xianliao rollback",
        description="Put back the model that the latest promotion replaced.",
    )
    _common(p)
    a = p.parse_args(argv)
    s = _settings(a.env_file, "xianliao rollback")
    if s is None:
        return 2
    try:
        info = rollback(a.model or s.model_path, a.database_url or s.database_url, promoted_by=a.by)
    except (PromotionError, OSError) as exc:
        print(f"xianliao rollback: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, ensure_ascii=False))
    return 0
