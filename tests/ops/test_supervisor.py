"""RunSupervisor without Telegram: a killed training process is reported as failed and
leaves the live model untouched; cancel stops a run cleanly."""

from __future__ import annotations

import asyncio
import shutil
import signal

import pytest

from xianliao.model.checkpoint import file_digest
from xianliao.ops.runs import RunInProgress
from xianliao.ops.supervisor import RunSupervisor
from xianliao.storage.database import Database
from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.repositories import (
    ChatRepository,
    ExchangeRepository,
    TrainingRunRepository,
    UserRepository,
)


@pytest.fixture
def setup(tmp_path, tiny_checkpoint, tiny_data):
    live = tmp_path / "models" / "live.pt"
    live.parent.mkdir()
    shutil.copy(tiny_checkpoint, live)
    db = f"sqlite:///{tmp_path}/chat.db"
    engine = make_engine(db)
    init_schema(engine)
    with session_factory(engine)() as s:
        UserRepository(s).touch(7, username="u", first_name="U")
        ChatRepository(s).touch(7, type="private")
        ex, _ = ExchangeRepository(s).add(
            user_id=7,
            chat_id=7,
            message_id=1,
            user_text="你好",
            reply_text="嗯",
            latency_ms=1.0,
            model_version="v",
        )
        s.flush()
        ExchangeRepository(s).set_review_status(ex.id, "approved", reviewer=1)
        s.commit()
    engine.dispose()
    return live, db, tiny_data


def _runs(db):
    engine = make_engine(db)
    with session_factory(engine)() as s:
        rows = [(r.id, r.status, r.log) for r in TrainingRunRepository(s).recent()]
    engine.dispose()
    return rows


async def _until_progress(sup, timeout=120.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not sup.active.last_progress:
        assert loop.time() < deadline, "no training progress"
        await asyncio.sleep(0.2)


def _collect(messages: list[str]):  # noqa: ANN202 - an async notify callback
    async def notify(text: str) -> None:
        messages.append(text)

    return notify


def _endless_run_supervisor(setup, **kwargs) -> RunSupervisor:
    """A supervisor whose runs would train for a million steps (stopped by the test)."""
    live, db, base = setup
    return RunSupervisor(
        Database.open(db),
        model_path=live,
        base_data=base,
        env_file="/dev/null",
        extra_args=["--steps", "1000000"],
        poll_s=0.2,
        **kwargs,
    )


def test_killed_process_is_reported_failed_and_live_model_untouched(setup):
    live, db, base = setup
    digest = file_digest(live)
    messages: list[str] = []
    notify = _collect(messages)

    async def scenario():
        sup = _endless_run_supervisor(setup, progress_every_s=0.5)
        run_id = await sup.start(1, notify)
        with pytest.raises(RunInProgress):
            await sup.start(1, notify)
        await _until_progress(sup)
        assert "step" in sup.status_text()
        sup.active.process.send_signal(signal.SIGKILL)
        await sup.wait()
        await sup.aclose()
        sup.db.dispose()
        return run_id

    run_id = asyncio.run(scenario())
    assert file_digest(live) == digest
    assert _runs(db) == [(run_id, "failed", "process exited with code -9")]
    assert "failed" in messages[-1] and "unchanged" in messages[-1]
    assert any("step" in m for m in messages[:-1])  # progress messages came first


def test_cancel_stops_the_run_and_records_it(setup):
    live, db, base = setup
    digest = file_digest(live)
    messages: list[str] = []
    notify = _collect(messages)

    async def scenario():
        sup = _endless_run_supervisor(setup)
        await sup.start(1, notify)
        await _until_progress(sup)
        assert await sup.cancel() is not None
        await sup.wait()
        assert sup.active is None and await sup.cancel() is None
        await sup.aclose()
        sup.db.dispose()

    asyncio.run(scenario())
    assert file_digest(live) == digest
    [(_, status, log)] = _runs(db)
    assert status == "cancelled" and "unchanged" in log
    assert "cancelled" in messages[-1]
