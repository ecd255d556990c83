"""Retraining from the bot: one ``xianliao retrain`` subprocess at a time, watched from the event
loop, with progress and a final report sent to the admin who started it.

No python-telegram-bot import here: the supervisor talks through a ``notify`` coroutine, so it
is testable without Telegram and reusable from other front ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.repositories import TrainingRunRepository

logger = logging.getLogger(__name__)

Notify = Callable[[str], Awaitable[None]]


class RetrainBusy(Exception):
    """A retraining run is already in progress."""


def process_alive(params_json: str | None) -> bool:
    """Whether the process recorded in a training run's params (``pid``) still exists."""
    try:
        pid = int(json.loads(params_json or "{}").get("pid", 0))
    except (ValueError, TypeError, AttributeError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_run_or_fail_stale(session, *, skip: int | None = None) -> int | None:
    """The id of an unfinished training run whose process is alive (one run at a time), after
    marking unfinished runs whose process is gone as failed. ``skip``: the caller's own run."""
    runs = TrainingRunRepository(session)
    for run in runs.active():
        if run.id == skip:
            continue
        if process_alive(run.params):
            return run.id
        runs.finish(run.id, status="failed", log="its process ended without a report")
    return None


@dataclass
class _Active:
    run_id: int
    process: asyncio.subprocess.Process
    started_by: int
    started: float
    progress_file: Path
    out_dir: Path
    last_progress: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task | None = None


class RetrainSupervisor:
    """Starts, watches, cancels retraining runs; promotes and rolls back models."""

    def __init__(
        self,
        *,
        database_url: str,
        model_path: Path,
        base_data: Path,
        env_file: str = ".env",
        extra_args: Sequence[str] = (),
        on_model_changed: Callable[[], Awaitable[str]] | None = None,
        progress_every_s: float = 30.0,
        poll_s: float = 1.0,
        python: str = sys.executable,
    ) -> None:
        self.database_url = database_url
        self.model_path = Path(model_path)
        self.base_data = Path(base_data)
        self.env_file = env_file
        self.extra_args = list(extra_args)
        self.on_model_changed = on_model_changed
        self.progress_every_s = progress_every_s
        self.poll_s = poll_s
        self.python = python
        self.active: _Active | None = None
        self._engine = make_engine(database_url)
        init_schema(self._engine)
        self._sessions = session_factory(self._engine)

    # ----- database helpers (run in a thread) -------------------------------------------------
    async def _db(self, fn: Callable[[Any], Any]) -> Any:
        def work() -> Any:
            with self._sessions() as session:
                result = fn(session)
                session.commit()
                return result

        return await asyncio.to_thread(work)

    async def _other_active_run(self) -> int | None:
        """A run started elsewhere (e.g. the CLI) whose process is alive; stale ones are failed."""

        return await self._db(live_run_or_fail_stale)

    # ----- start / status / cancel ------------------------------------------------------------
    async def start(
        self, admin_id: int, notify: Notify, *, mode: str = "finetune", extra: Sequence[str] = ()
    ) -> int:
        """Start a run; raises ``RetrainBusy`` if one is in progress. Returns the run id."""
        if self.active is not None:
            raise RetrainBusy(f"run {self.active.run_id} is in progress")
        other = await self._other_active_run()
        if other is not None:
            raise RetrainBusy(f"run {other} is in progress")
        params = {"mode": mode, "started_from": "telegram", "extra": [*self.extra_args, *extra]}

        def create(session) -> int:
            return TrainingRunRepository(session).create(started_by=admin_id, params=params).id

        run_id = await self._db(create)
        out_dir = self.model_path.parent / f"retrain-{run_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        progress = out_dir / "progress.jsonl"
        cmd = [
            self.python,
            "-m",
            "xianliao",
            "retrain",
            "--run-id",
            str(run_id),
            "--env-file",
            self.env_file,
            "--database-url",
            self.database_url,
            "--model",
            str(self.model_path),
            "--base",
            str(self.base_data),
            "--out",
            str(out_dir),
            "--progress-jsonl",
            str(progress),
            "--by",
            str(admin_id),
            "--mode",
            mode,
            *self.extra_args,
            *extra,
        ]
        if "--threads" not in cmd:  # leave the other core(s) to the bot that keeps serving
            cmd += ["--threads", "1"]
        log = open(out_dir / "retrain.log", "wb")  # noqa: SIM115 (closed by the watcher)
        try:
            process = await asyncio.create_subprocess_exec(
                *cmd, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            log.close()
            error = str(exc)

            def fail(session) -> None:
                TrainingRunRepository(session).finish(run_id, status="failed", log=error)

            await self._db(fail)
            raise
        self.active = _Active(run_id, process, admin_id, time.monotonic(), progress, out_dir)
        self.active.task = asyncio.create_task(self._watch(self.active, notify, log))
        logger.info("retraining run %d started by %d (pid %d)", run_id, admin_id, process.pid)
        return run_id

    def status_text(self) -> str:
        a = self.active
        if a is None:
            return "没有正在进行的训练。No retraining in progress."
        p = a.last_progress
        elapsed = time.monotonic() - a.started
        if not p:
            return f"训练 run {a.run_id}: 准备中 preparing ({elapsed:.0f}s)"
        return (
            f"训练 run {a.run_id}: step {p['step']}/{p['steps']}, loss {p['loss']:.3f}, "
            f"ETA {p['eta_s']:.0f}s ({elapsed:.0f}s elapsed)"
        )

    async def cancel(self) -> int | None:
        """Stop the run in progress (SIGTERM: it saves and records itself as cancelled)."""
        a = self.active
        if a is None or a.process.returncode is not None:
            return None
        with contextlib.suppress(ProcessLookupError):
            a.process.send_signal(signal.SIGTERM)
        return a.run_id

    async def wait(self) -> None:
        """Wait for the run in progress (if any) to be fully reported."""
        if self.active is not None and self.active.task is not None:
            await asyncio.shield(self.active.task)

    # ----- watching ---------------------------------------------------------------------------
    def _read_progress(self, a: _Active, offset: int) -> int:
        try:
            with open(a.progress_file, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n")
        if end < 0:
            return offset
        for line in data[: end + 1].splitlines():
            with contextlib.suppress(ValueError):
                a.last_progress = json.loads(line)
        return offset + end + 1

    async def _watch(self, a: _Active, notify: Notify, log) -> None:
        offset, last_sent = 0, time.monotonic()
        try:
            while a.process.returncode is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(a.process.wait(), self.poll_s)
                offset = self._read_progress(a, offset)
                if a.last_progress and time.monotonic() - last_sent >= self.progress_every_s:
                    last_sent = time.monotonic()
                    await self._safe_notify(notify, self.status_text())
            offset = self._read_progress(a, offset)
            log.close()
            await self._report(a, notify)
        except Exception:
            logger.exception("watching retraining run %d failed", a.run_id)
        finally:
            if not log.closed:
                log.close()
            self.active = None

    async def _safe_notify(self, notify: Notify, text: str) -> None:
        try:
            await notify(text)
        except Exception as exc:  # a failed progress message must not stop the watcher
            logger.warning("could not send retraining progress: %s", exc)

    async def _report(self, a: _Active, notify: Notify) -> None:
        code = a.process.returncode

        def finish_if_open(session):
            runs = TrainingRunRepository(session)
            run = runs.get(a.run_id)
            if run is not None and run.finished_at is None:
                runs.finish(a.run_id, status="failed", log=f"process exited with code {code}")
            return (
                run.status if run else "missing",
                run.metrics if run else None,
                (run.log if run else None),
            )

        status, metrics_json, run_log = await self._db(finish_if_open)
        if status != "succeeded":
            tail = ""
            with contextlib.suppress(OSError):
                lines = (a.out_dir / "retrain.log").read_text("utf-8", "replace").splitlines()
                tail = "\n".join(line for line in lines[-3:] if "Traceback" not in line)
            await self._safe_notify(
                notify,
                f"训练 run {a.run_id} {status}（模型未改变 live model unchanged）: "
                f"{run_log or ''}\n{tail}".strip(),
            )
            return
        m = json.loads(metrics_json or "{}")
        lines = [f"训练 run {a.run_id} 完成 finished in {time.monotonic() - a.started:.0f}s"]
        for name in ("base", "logged (held out)"):
            if name in m.get("live", {}) and name in m.get("new", {}):
                lv, nv = m["live"][name], m["new"][name]
                lines.append(
                    f"{name}: ppl {lv['perplexity']:.1f} → {nv['perplexity']:.1f}, "
                    f"distinct-2 {lv['distinct_2']:.2f} → {nv['distinct_2']:.2f}, "
                    f"generic {lv['generic_share']:.0%} → {nv['generic_share']:.0%}"
                )
        with contextlib.suppress(OSError, ValueError, KeyError):
            report = json.loads((a.out_dir / "report.json").read_text("utf-8"))
            for row in report["comparison"]["side_by_side"][:6]:
                lines.append(f"❓{row['question']}  旧 {row['live']}  新 {row['new']}")
        if m.get("promoted"):
            version = await self._model_changed()
            lines.append(f"✅ 已上线 promoted: {version}")
        else:
            why = "; ".join(m.get("reasons", [])) or "--promote never"
            lines.append(f"未上线 not promoted ({why}). /promote {a.run_id} 强制上线 forces it.")
        await self._safe_notify(notify, "\n".join(lines))

    async def _model_changed(self) -> str:
        if self.on_model_changed is None:
            return str(self.model_path)
        try:
            return await self.on_model_changed()
        except Exception as exc:
            logger.warning("the promoted model did not load: %s", exc)
            return f"reload failed: {exc}"

    # ----- promote / rollback ------------------------------------------------------------------
    async def promote(self, admin_id: int, run_id: int | None = None) -> str:
        """Force a run's candidate live (the latest succeeded run by default)."""
        from xianliao.bot.promotion import PromotionError, promote

        def find(session) -> tuple[int, str] | None:
            runs = TrainingRunRepository(session)
            if run_id is not None:
                run = runs.get(run_id)
                candidates = [run] if run is not None else []
            else:
                candidates = runs.recent(50)
            for run in candidates:
                if run.status == "succeeded" and run.checkpoint_path:
                    return run.id, run.checkpoint_path
            return None

        found = await self._db(find)
        if found is None:
            raise PromotionError(
                f"run {run_id} has no finished candidate"
                if run_id is not None
                else "no finished retraining run to promote"
            )
        rid, candidate = found
        await asyncio.to_thread(
            promote,
            candidate,
            self.model_path,
            self.database_url,
            promoted_by=admin_id,
            run_id=rid,
            forced=True,
        )
        return await self._model_changed()

    async def rollback(self, admin_id: int) -> str:
        from xianliao.bot.promotion import rollback

        await asyncio.to_thread(rollback, self.model_path, self.database_url, promoted_by=admin_id)
        return await self._model_changed()

    async def aclose(self) -> None:
        await self.cancel()
        if self.active is not None and self.active.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.active.task), 30)
        self._engine.dispose()
