"""The retraining supervisor: one ``xianliao retrain`` process at a time, watched from an
asyncio event loop, with progress and a final report sent through a ``notify`` coroutine.

Free of any front end: the Telegram commands and the web console both drive it. The texts it
sends are short bilingual reports meant for an admin, whatever the front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xianliao.ops import models, runs
from xianliao.ops.models import PromotionError
from xianliao.ops.runs import RunInProgress
from xianliao.storage.database import Database

logger = logging.getLogger(__name__)

Notify = Callable[[str], Awaitable[None]]


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


class RunSupervisor:
    """Starts, watches, cancels retraining runs; promotes and rolls back models. ``db`` is the
    process's database (its owner disposes of it); the runs learn its URL from their
    environment."""

    def __init__(
        self,
        db: Database,
        *,
        model_path: Path,
        base_data: Path,
        env_file: str = ".env",
        extra_args: Sequence[str] = (),
        on_model_changed: Callable[[], Awaitable[str]] | None = None,
        progress_every_s: float = 30.0,
        poll_s: float = 1.0,
        python: str = sys.executable,
        started_from: str = "telegram",
        lease_s: float = runs.DEFAULT_LEASE_S,
    ) -> None:
        self.db = db
        self.model_path = Path(model_path)
        self.base_data = Path(base_data)
        self.env_file = env_file
        self.extra_args = list(extra_args)
        self.on_model_changed = on_model_changed
        self.progress_every_s = progress_every_s
        self.poll_s = poll_s
        self.python = python
        self.started_from = started_from
        self.lease_s = lease_s
        self.active: _Active | None = None

    # ----- start / status / cancel ------------------------------------------------------------
    async def start(
        self, admin_id: int, notify: Notify, *, mode: str = "finetune", extra: Sequence[str] = ()
    ) -> int:
        """Start a run; raises ``RunInProgress`` if one is in progress (here, or started
        elsewhere, on any host, and alive). Returns the run id."""
        if self.active is not None:
            raise RunInProgress(self.active.run_id)
        params = {
            "mode": mode,
            "started_from": self.started_from,
            "extra": [*self.extra_args, *extra],
        }
        run_id = await asyncio.to_thread(
            functools.partial(
                runs.create_run, self.db, started_by=admin_id, params=params, lease_s=self.lease_s
            )
        )
        out_dir = self.model_path.parent / f"retrain-{run_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        progress = out_dir / "progress.jsonl"
        cmd = self._command(run_id, admin_id, mode, out_dir, progress, extra)
        log = open(out_dir / "retrain.log", "wb")  # noqa: SIM115 (closed by the watcher)
        try:
            process = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=runs.child_environment(self.db),
            )
        except OSError as exc:
            log.close()
            await asyncio.to_thread(runs.finish_run, self.db, run_id, "failed", log=str(exc))
            raise
        self.active = _Active(run_id, process, admin_id, time.monotonic(), progress, out_dir)
        self.active.task = asyncio.create_task(self._watch(self.active, notify, log))
        logger.info("retraining run %d started by %d (pid %d)", run_id, admin_id, process.pid)
        return run_id

    def _command(
        self,
        run_id: int,
        admin_id: int,
        mode: str,
        out_dir: Path,
        progress: Path,
        extra: Sequence[str],
    ) -> list[str]:
        """The retraining process's command line: no database URL (it is in the environment)."""
        cmd = [
            self.python,
            "-m",
            "xianliao",
            "retrain",
            "--run-id",
            str(run_id),
            "--env-file",
            self.env_file,
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
        return cmd

    def progress(self) -> dict[str, Any] | None:
        """The run in progress in this process, or None: ``run_id``, ``started_by``,
        ``elapsed_s`` and, once training reports, ``step``, ``steps``, ``loss``, ``eta_s``."""
        a = self.active
        if a is None:
            return None
        return {
            "run_id": a.run_id,
            "started_by": a.started_by,
            "elapsed_s": time.monotonic() - a.started,
            **{
                k: a.last_progress[k]
                for k in ("step", "steps", "loss", "eta_s")
                if k in a.last_progress
            },
        }

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

    async def status_anywhere(self) -> str:
        """:meth:`status_text` for this process's run; else a line on the run in progress
        elsewhere (the CLI, the console, another host), if any."""
        if self.active is not None:
            return self.status_text()
        run_id = await asyncio.to_thread(runs.live_run, self.db, self.lease_s)
        run = await asyncio.to_thread(runs.get_run, self.db, run_id) if run_id else None
        if run is None:
            return self.status_text()
        host = run["params"].get("host") if isinstance(run["params"], dict) else None
        return (
            f"训练 run {run_id}: {run['status']}, started {run['started_at'][:19]} UTC "
            f"{'on ' + host if host else 'elsewhere'}. /retrain cancel {run_id}"
        )

    async def cancel(self, run_id: int | None = None) -> int | None:
        """Stop run ``run_id`` (default: the one in progress, here or elsewhere): this
        process's own run by SIGTERM, any other through the database (its process sees the
        request with its next heartbeat, on whatever host). Either way it saves and records
        itself as cancelled. Returns the run's id, None when no such run is in progress."""
        own = self._cancel_own(run_id)
        if own is not None:
            return own
        if run_id is None:
            run_id = await asyncio.to_thread(runs.live_run, self.db, self.lease_s)
            if run_id is None:
                return None
        done = await asyncio.to_thread(runs.request_cancel, self.db, run_id)
        return run_id if done else None

    def _cancel_own(self, run_id: int | None = None) -> int | None:
        a = self.active
        if a is None or a.process.returncode is not None or run_id not in (None, a.run_id):
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

        status, metrics_json, run_log = await asyncio.to_thread(
            runs.fail_if_open, self.db, a.run_id, f"process exited with code {code}"
        )
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
        found = await asyncio.to_thread(runs.finished_candidate, self.db, run_id)
        if found is None:
            raise PromotionError(
                f"run {run_id} has no finished candidate"
                if run_id is not None
                else "no finished retraining run to promote"
            )
        rid, candidate = found
        await asyncio.to_thread(
            models.promote,
            candidate,
            self.model_path,
            self.db,
            promoted_by=admin_id,
            run_id=rid,
            forced=True,
        )
        return await self._model_changed()

    async def rollback(self, admin_id: int) -> str:
        await asyncio.to_thread(models.rollback, self.model_path, self.db, promoted_by=admin_id)
        return await self._model_changed()

    async def aclose(self) -> None:
        self._cancel_own()  # runs started elsewhere go on
        if self.active is not None and self.active.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.active.task), 30)
