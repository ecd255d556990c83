"""An admin's edited answer is served at once, without retraining: by a running service (the
bot's) and by a new ``xianliao chat`` on the same database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from bot_helpers import db_rows

from xianliao.bot.review_cli import main as review_main
from xianliao.bot.service import DialogueService, Incoming
from xianliao.storage.db import init_schema, make_engine, session_factory

ROOT = Path(__file__).resolve().parents[2]
EDITED = "我只会煮面"  # words the tiny vocabulary knows, not what it answers to the question


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path}/chat.db"
    init_schema(make_engine(url))
    return url


def _respond(service: DialogueService, text: str, message_id: int) -> str:
    async def go() -> str:
        try:
            reply = await service.respond(
                Incoming(text=text, user_id=7, chat_id=7, message_id=message_id)
            )
            return reply.text
        finally:
            await service.aclose()

    return asyncio.run(go())


def test_a_running_service_serves_an_edit_at_once(db_url, tiny_checkpoint, capsys):
    from xianliao.model.chatbot import ChatBot

    engine = make_engine(db_url)
    service = DialogueService(
        ChatBot.load(tiny_checkpoint, threads=1),
        sessions=session_factory(engine),
        decode_options={"strategy": "greedy"},
    )
    first = _respond(service, "你叫什么名字", 1)
    assert first == "我叫闲聊" != EDITED
    assert review_main(["edit", "1", EDITED, "--database-url", db_url]) == 0
    service.approved.refresh_s = 0  # the bot checks once a second; the test need not wait
    assert _respond(service, "你叫什么名字?", 2) == EDITED  # the same words, other punctuation
    assert _respond(service, "你好", 3) == "你好,很高兴认识你"  # other questions: unchanged
    # Back to pending: no longer served.
    assert review_main(["pending", "1", "--database-url", db_url]) == 0
    assert _respond(service, "你叫什么名字", 4) == "我叫闲聊"
    service.close()
    engine.dispose()


def _chat(tmp_path, checkpoint, db_url, text):
    result = subprocess.run(
        [sys.executable, "-m", "xianliao", "chat", str(checkpoint)],
        input=text + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": db_url,
            "DECODE_OPTIONS": '{"strategy": "greedy"}',
            "OMP_NUM_THREADS": "1",
        },
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.slow  # two fresh interpreters loading torch
def test_xianliao_chat_serves_an_edit_made_with_xianliao_review(tmp_path, tiny_checkpoint, db_url):
    assert _chat(tmp_path, tiny_checkpoint, db_url, "你叫什么名字") == "我叫闲聊"
    (exchange_id,) = db_rows(Path(db_url.removeprefix("sqlite:///")), "SELECT id FROM exchanges")[0]
    assert review_main(["edit", str(exchange_id), EDITED, "--database-url", db_url]) == 0
    assert _chat(tmp_path, tiny_checkpoint, db_url, "你叫什么名字") == EDITED
