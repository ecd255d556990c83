"""The bot and the terminal chat with the real ChatBot on the tiny trained checkpoint."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from bot_helpers import ADMIN_ID, db_rows

pytest_plugins = ["bot_fixtures"]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint(request) -> Path:
    try:
        return Path(request.getfixturevalue("tiny_checkpoint"))
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_checkpoint fixture (tests/conftest.py) is not available yet")


def test_bot_answers_with_the_real_model_and_reloads(fake_api, start_bot, db_path, checkpoint):
    from xianliao.model.chatbot import ChatBot

    chatbot = ChatBot.load(checkpoint, threads=1)
    start_bot(chatbot, loader=lambda path: ChatBot.load(path, threads=1), model_path=checkpoint)
    for text in ("你好", "😀😀😀", "<b>hi</b> *x* _y_"):
        fake_api.private_text(1001, text)
    replies = fake_api.wait_sent(1001, 3, timeout=30)
    assert all(m["text"].strip() for m in replies)
    rows = db_rows(
        db_path, "SELECT user_text, reply_text, model_version, decode_options FROM exchanges"
    )
    assert len(rows) == 3
    assert {r[2] for r in rows} == {chatbot.version}
    assert all(r[1] for r in rows) and all('"beam_size"' in r[3] for r in rows)
    fake_api.private_text(ADMIN_ID, "/reload")
    assert chatbot.version in fake_api.wait_sent(ADMIN_ID, 1, timeout=30)[0]["text"]


@pytest.mark.slow  # a fresh interpreter loading torch: ~5 s
def test_terminal_chat_pipes_one_reply_per_line(tmp_path, checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "xianliao", "chat", str(checkpoint)],
        input="你好\n\n😀\n你叫什么名字\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "", "PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path}/t.db"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.strip() for line in lines)
    assert db_rows(tmp_path / "t.db", "SELECT COUNT(*) FROM exchanges WHERE source='terminal'") == [
        (3,)
    ]


def _bot_process(fake_api, tmp_path, checkpoint, token):
    env = {
        "PATH": "",
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_BOT_TOKEN": token,
        "TELEGRAM_BASE_URL": fake_api.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/bot.db",
        "MODEL_PATH": str(checkpoint),
        "LOG_LEVEL": "DEBUG",
        "TORCH_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "xianliao", "bot", "--env-file", "/dev/null"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_xianliao_bot_process_runs_and_never_logs_the_token(fake_api, tmp_path, checkpoint):
    import signal

    from bot_helpers import TOKEN

    proc = _bot_process(fake_api, tmp_path, checkpoint, TOKEN)
    try:
        fake_api.wait_for(lambda: fake_api.calls_of("getUpdates"), timeout=60, what="polling")
        fake_api.private_text(1001, "你好")
        assert fake_api.wait_sent(1001, 1, timeout=30)[0]["text"].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert TOKEN not in out and TOKEN.split(":")[1] not in out
    assert db_rows(tmp_path / "bot.db", "SELECT COUNT(*) FROM exchanges") == [(1,)]
    # the defaults: the model in one worker process, the event loop on uvloop when installed
    assert "loaded in 1 worker process" in out
    if importlib.util.find_spec("uvloop") is not None:
        assert "event loop: uvloop" in out


@pytest.mark.slow  # a fresh interpreter loading torch: ~5 s
def test_a_rejected_token_is_one_line(fake_api, tmp_path, checkpoint):
    proc = _bot_process(fake_api, tmp_path, checkpoint, "999:wrong-token")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    last = out.strip().splitlines()[-1]
    assert "rejected TELEGRAM_BOT_TOKEN" in last and "wrong-token" not in out
    assert "Traceback" not in out


def test_a_bot_killed_by_sqlite_says_why_and_its_restart_answers(fake_api, tmp_path, checkpoint):
    """SQLite maps its -shm file into memory: truncated under a running bot (a clean-up script,
    a full disk) the next database access is a SIGBUS, which no Python code can catch. The bot
    must say so in its log, and, restarted (systemd's Restart=on-failure), lose nothing."""
    import os
    import signal

    from bot_helpers import TOKEN

    proc = _bot_process(fake_api, tmp_path, checkpoint, TOKEN)
    try:
        fake_api.wait_for(lambda: fake_api.calls_of("getUpdates"), timeout=60, what="polling")
        fake_api.private_text(1001, "你好")
        fake_api.wait_sent(1001, 1, timeout=30)
        os.truncate(tmp_path / "bot.db-shm", 0)
        fake_api.private_text(1001, "晚安")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # SIGBUS; or SIGSEGV when a second thread faults while faulthandler writes the first
    # fault's stack, which may then be cut short after its first words (about 1 run in 10)
    assert proc.returncode in (-signal.SIGBUS, -signal.SIGSEGV), out
    assert "Fatal Python error" in out, out[-4000:]
    proc = _bot_process(fake_api, tmp_path, checkpoint, TOKEN)
    try:
        assert len(fake_api.wait_sent(1001, 2, timeout=60)) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert db_rows(tmp_path / "bot.db", "SELECT user_text FROM exchanges ORDER BY id") == [
        ("你好",),
        ("晚安",),
    ]
