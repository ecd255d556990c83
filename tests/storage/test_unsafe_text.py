"""Input that SQLite takes and PostgreSQL refuses (NUL characters, names longer than their
column) and that neither can encode (lone surrogates) is stored, never lost, on both: SQLite
keeps what it can as it was, PostgreSQL gets U+FFFD for NUL and names cut to their column."""

from __future__ import annotations

import pytest

from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.models import clean_text
from xianliao.storage.repositories import (
    AuditRepository,
    ChatRepository,
    ExchangeRepository,
    UserRepository,
)

NUL_TEXT = "你\x00好\x00"
LONE_SURROGATE = "hi \ud83d there"  # half of an emoji, as a broken client may send
PAIR = "\ud83d\ude00"  # both halves of 😀 as separate code points


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    init_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine):
    return session_factory(engine)


def _row(message_id: int, text: str) -> dict:
    return {
        "user_id": 1,
        "chat_id": -100,
        "message_id": message_id,
        "user_text": text,
        "reply_text": text + " back",
        "latency_ms": 1.0,
        "model_version": "v" * 100,  # longer than its column
        "decode_options": {"note": text},
    }


def test_clean_text():
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("a\x00b", keep_nul=True) == "a\x00b"
    assert clean_text(LONE_SURROGATE) == "hi \ufffd there"
    assert clean_text(PAIR) == "😀"
    assert clean_text("x" * 10, 4) == "xxx…" and clean_text("xxxx", 4) == "xxxx"
    assert clean_text("普通的话") == "普通的话"


def test_messages_with_nul_long_names_and_surrogates_are_all_stored(engine, factory):
    sqlite = engine.dialect.name == "sqlite"
    nul = "\x00" if sqlite else "\ufffd"
    with factory.begin() as s:
        UserRepository(s).touch(
            1, username="u\x00" * 50, first_name="名" * 500, language_code="zh-hans-" * 10
        )
        ChatRepository(s).touch(-100, type="supergroup", title="很长的群名" * 100 + "\x00")
        repo = ExchangeRepository(s)
        repo.add(**_row(1, NUL_TEXT))
        repo.add_many([_row(2, LONE_SURROGATE), _row(3, PAIR)])
        repo.insert_new([_row(4, "\x00" * 3)])
        AuditRepository(s).record(1, "x" * 40, allowed=False, detail=NUL_TEXT)
    with factory() as s:
        repo = ExchangeRepository(s)
        texts = [e.user_text for e in repo.search(newest_first=False)]
        assert texts == [f"你{nul}好{nul}", "hi \ufffd there", "😀", nul * 3]
        first = repo.get_by_message(-100, 1)
        assert first.reply_text == f"你{nul}好{nul} back"
        user = UserRepository(s).get(1)
        title = ChatRepository(s).load([-100])[-100].title
        action = AuditRepository(s).recent()[0].action
        if sqlite:  # SQLite ignores VARCHAR lengths: everything is kept whole
            assert first.model_version == "v" * 100 and user.username == "u\x00" * 50
            assert user.first_name == "名" * 500 and title == "很长的群名" * 100 + "\x00"
            assert action == "x" * 40
        else:
            assert first.model_version == "v" * 63 + "…"
            assert len(user.username) == 64 and "\x00" not in user.username
            assert user.first_name == "名" * 127 + "…" and len(user.language_code) == 16
            assert len(title) == 256 and title.startswith("很长的群名")
            assert action == "x" * 31 + "…"


def test_a_redelivered_message_with_nul_is_still_logged_once(factory):
    with factory.begin() as s:
        UserRepository(s).touch(1)
        ChatRepository(s).touch(-100, type="group")
        assert ExchangeRepository(s).add(**_row(7, NUL_TEXT))[1]
    with factory.begin() as s:
        assert not ExchangeRepository(s).add(**_row(7, NUL_TEXT))[1]
    with factory() as s:
        assert ExchangeRepository(s).count() == 1
