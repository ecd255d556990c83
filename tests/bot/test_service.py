"""The dialogue service on its own: canned input, trimming, batching, dedup, reload, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from bot_helpers import EchoModel

from xianliao.bot.service import (
    EMPTY_INPUT_REPLY,
    TOO_LONG_REPLY,
    DialogueService,
    Incoming,
    RateDecision,
    RateLimiter,
    fit_message,
    utf16_len,
)
from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.repositories import ExchangeRepository

pytest_plugins = ["bot_fixtures"]


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    init_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def make_service(sessions, model=None, **kwargs) -> DialogueService:
    return DialogueService(model or EchoModel(), sessions=sessions, **kwargs)


def msg(text: str, user_id: int = 1, message_id: int | None = 1) -> Incoming:
    return Incoming(text=text, user_id=user_id, chat_id=user_id, message_id=message_id)


def test_fit_message_never_empty_and_within_telegram_limit():
    assert fit_message("   ") and fit_message("") == fit_message("\n")
    assert fit_message(" 你好 ") == "你好"
    long = fit_message("好" * 5000)
    assert len(long) == 4096 and long.endswith("…")
    emoji = fit_message("😀" * 3000)  # 2 UTF-16 units each
    assert utf16_len(emoji) <= 4096


def test_rate_limiter_sliding_window():
    now = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: now[0])
    assert [limiter.check(1) for _ in range(4)] == [
        RateDecision.ALLOW,
        RateDecision.ALLOW,
        RateDecision.NOTIFY,
        RateDecision.DROP,
    ]
    assert limiter.check(2) is RateDecision.ALLOW
    now[0] = 10.5
    assert limiter.check(1) is RateDecision.ALLOW
    assert RateLimiter(0, 1).check(1) is RateDecision.ALLOW  # 0 disables


def test_rate_limiter_forgets_idle_users():
    now = [0.0]
    limiter = RateLimiter(5, 10.0, clock=lambda: now[0])
    limiter.MAX_TRACKED = 100
    for uid in range(150):
        limiter.check(uid)
    now[0] = 20.0
    limiter.check(1000)
    assert len(limiter._hits) == 1


def test_canned_replies_are_not_logged(sessions):
    service = make_service(sessions, max_input_chars=10)
    assert service.respond_sync(msg("  ")).text == EMPTY_INPUT_REPLY
    reply = service.respond_sync(msg("长" * 11))
    assert reply.text == TOO_LONG_REPLY.format(limit=10) and reply.exchange_id is None
    with sessions() as s:
        assert ExchangeRepository(s).count() == 0
    service.close()


def test_respond_logs_once_per_message(sessions):
    service = make_service(sessions)

    async def scenario():
        first = await service.respond(msg("你好", message_id=7))
        again = await service.respond(msg("你好", message_id=7))
        await service.aclose()
        return first, again

    first, again = asyncio.run(scenario())
    service.close()
    assert first.exchange_id == again.exchange_id and again.duplicate and not first.duplicate
    with sessions() as s:
        assert ExchangeRepository(s).count() == 1


def test_concurrent_messages_are_batched(sessions):
    model = EchoModel(delay=0.05)
    service = make_service(sessions, model, max_batch=8)

    async def scenario():
        replies = await asyncio.gather(
            *(service.respond(msg(f"问{i}", user_id=i, message_id=i)) for i in range(1, 21))
        )
        await service.aclose()
        return replies

    replies = asyncio.run(scenario())
    service.close()
    assert [r.text for r in replies] == [f"你说：问{i}" for i in range(1, 21)]
    assert max(model.batches) <= 8 and len(model.batches) < 20
    with sessions() as s:
        assert ExchangeRepository(s).count() == 20


def test_model_failure_reaches_the_caller_and_the_service_keeps_working(sessions):
    class Flaky(EchoModel):
        def reply_many(self, texts, **options):
            if any("炸" in t for t in texts):
                raise RuntimeError("boom")
            return super().reply_many(texts, **options)

    service = make_service(sessions, Flaky())

    async def scenario():
        with pytest.raises(RuntimeError):
            await service.respond(msg("炸", message_id=1))
        ok = await service.respond(msg("好", message_id=2))
        # In one batch, only the message the model fails on fails.
        together = await asyncio.gather(
            service.respond(msg("炸", user_id=2, message_id=3)),
            service.respond(msg("行", user_id=3, message_id=4)),
            return_exceptions=True,
        )
        await service.aclose()
        return ok, together

    ok, together = asyncio.run(scenario())
    assert ok.text == "你说：好"
    assert isinstance(together[0], RuntimeError) and together[1].text == "你说：行"
    service.close()


def test_reload_swaps_atomically_and_keeps_the_old_model_on_error(sessions, tmp_path):
    loaded = []

    def loader(path):
        if path.name == "bad.pt":
            raise ValueError("bad checkpoint")
        loaded.append(path)
        return EchoModel(version="v2")

    service = make_service(sessions, load_model=loader, model_path=tmp_path / "good.pt")
    assert service.reload_sync() == "v2" and loaded == [tmp_path / "good.pt"]
    with pytest.raises(ValueError):
        service.reload_sync(tmp_path / "bad.pt")
    assert service.model_version == "v2"
    service.close()


def test_no_log_mode_answers_without_a_database():
    service = DialogueService(EchoModel(), sessions=None)
    reply = service.respond_sync(msg("你好"))
    assert reply.text == "你说：你好" and reply.exchange_id is None
    service.close()


def test_decode_options_are_passed_and_logged(sessions):
    seen = {}

    class Recording(EchoModel):
        def reply_many(self, texts, **options):
            seen.update(options)
            return super().reply_many(texts, **options)

    service = make_service(sessions, Recording(), decode_options={"beam_size": 3})
    service.respond_sync(msg("你好"))
    service.close()
    assert seen == {"beam_size": 3}
    with sessions() as s:
        [row] = ExchangeRepository(s).search()
        assert '"beam_size": 3' in row.decode_options and '"strategy": "echo"' in row.decode_options


class ParallelEcho(EchoModel):
    """An EchoModel that says it answers ``parallelism`` batches at once (like the worker
    pool) and records how many calls overlapped and in which order texts were answered."""

    def __init__(self, parallelism: int, delay: float) -> None:
        super().__init__(delay=0)
        self.parallelism = parallelism
        self.pause = delay
        self.running = 0
        self.max_running = 0
        self.order: list[str] = []
        self.closed = False
        self._count = threading.Lock()

    def reply_many(self, texts, **options):
        with self._count:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.order.extend(texts)
        time.sleep(self.pause)
        with self._count:
            self.running -= 1
        return [f"你说：{t}" for t in texts]

    def close(self):
        self.closed = True


def test_a_parallel_model_answers_several_batches_at_once_in_chat_order(sessions):
    model = ParallelEcho(parallelism=3, delay=0.1)
    service = make_service(sessions, model, max_batch=2)

    async def scenario():
        # chats 1-6 send one message each; chat 7 sends five in a row
        coros = [service.respond(msg(f"问{i}", user_id=i, message_id=i)) for i in range(1, 7)]
        coros += [service.respond(msg(f"七{j}", user_id=7, message_id=100 + j)) for j in range(5)]
        done_order: list[str] = []

        async def track(coro):
            reply = await coro
            done_order.append(reply.text)
            return reply

        replies = await asyncio.gather(*(track(c) for c in coros))
        await service.aclose()
        return replies, done_order

    replies, done_order = asyncio.run(scenario())
    service.close()
    assert [r.text for r in replies[:6]] == [f"你说：问{i}" for i in range(1, 7)]
    assert model.max_running == 3  # never more than the model's parallelism, and that many
    chat7 = [t for t in done_order if t.startswith("你说：七")]
    assert chat7 == [f"你说：七{j}" for j in range(5)]  # answered in the order sent
    assert [t for t in model.order if t.startswith("七")] == [f"七{j}" for j in range(5)]
    assert model.closed  # close() also closes the model (its worker processes)
    with sessions() as s:
        assert ExchangeRepository(s).count() == 11


def test_reload_closes_the_replaced_model(sessions, tmp_path):
    old = ParallelEcho(parallelism=2, delay=0)
    service = make_service(
        sessions, old, load_model=lambda p: EchoModel(version="v2"), model_path=tmp_path / "m.pt"
    )
    assert service.reload_sync() == "v2"
    assert old.closed
    service.close()


def test_rows_written_recently_are_not_rewritten_but_deletions_are_survived(sessions):
    from xianliao.storage.models import User
    from xianliao.storage.repositories import UserRepository

    service = make_service(sessions)

    def named(text, message_id, first_name):
        return Incoming(
            text=text, user_id=5, chat_id=5, message_id=message_id, first_name=first_name
        )

    assert service.respond_sync(named("一", 1, "阿明")).exchange_id is not None
    assert service.respond_sync(named("二", 2, "阿明")).exchange_id is not None
    # a changed name is written at once, not after the remembered row expires
    service.respond_sync(named("三", 3, "小明"))
    with sessions() as s:
        assert s.get(User, 5).first_name == "小明"
    # another process deletes the user (e.g. xianliao review): the next message still lands
    with sessions.begin() as s:
        UserRepository(s).delete_user_data(5)
    reply = service.respond_sync(named("四", 4, "小明"))
    assert reply.exchange_id is not None
    with sessions() as s:
        assert s.get(User, 5).first_name == "小明"
        assert [e.user_text for e in ExchangeRepository(s).search()] == ["四"]
    service.close()


def test_a_message_in_flight_when_its_user_forgets_is_answered_but_never_stored(sessions):
    service = make_service(sessions, EchoModel(delay=0.3))

    async def scenario():
        in_flight = asyncio.ensure_future(service.respond(msg("还在路上", user_id=5)))
        await asyncio.sleep(0.1)  # the model is answering it
        removed = await service.forget(5)
        reply = await in_flight
        later = await service.respond(msg("我又来了", user_id=5, message_id=2))
        await service.aclose()
        return removed, reply, later

    removed, reply, later = asyncio.run(scenario())
    assert reply.text == "你说：还在路上" and reply.exchange_id is None
    with sessions() as s:
        texts = [e.user_text for e in ExchangeRepository(s).search()]
    assert texts == ["我又来了"]  # a message sent after /forget is stored as usual
    assert later.exchange_id is not None and removed["exchanges"] == 0


def test_forgotten_text_is_gone_from_the_database_files(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/chat.db")
    init_schema(engine)
    service = make_service(session_factory(engine))
    secret = "我的秘密是紫色的长颈鹿"

    async def scenario():
        await service.respond(msg(secret, user_id=9))
        await service.forget(9)
        await service.aclose()

    asyncio.run(scenario())
    service.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("chat.db")]
    assert files and all(secret.encode() not in p.read_bytes() for p in files)
    engine.dispose()


def test_a_database_that_cannot_be_written_still_gets_replies(tmp_path, caplog):
    import logging

    path = tmp_path / "chat.db"
    init_schema(make_engine(f"sqlite:///{path}"))
    engine = make_engine(f"sqlite:///file:{path}?mode=ro&uri=true")  # every write fails
    service = make_service(session_factory(engine))

    async def scenario():
        replies = [await service.respond(msg(f"第{i}条", message_id=i)) for i in range(3)]
        await service.aclose()
        return replies

    with caplog.at_level(logging.ERROR):
        replies = asyncio.run(scenario())
    service.close()
    assert [r.text for r in replies] == [f"你说：第{i}条" for i in range(3)]
    assert all(r.exchange_id is None for r in replies)
    assert service.log_failures == 3
    errors = [r for r in caplog.records if "cannot store exchanges" in r.getMessage()]
    assert len(errors) == 1  # once per outage, not per message
    # the terminal chat's path too: the reply is printed, the failure counted
    assert service.respond_sync(msg("终端", message_id=9)).text == "你说：终端"
    assert service.log_failures == 4
    engine.dispose()


def test_a_database_file_deleted_under_the_bot_is_reported(tmp_path, caplog, monkeypatch):
    import logging

    import xianliao.bot.reply_log as reply_log_module

    monkeypatch.setattr(reply_log_module, "DB_CHECK_S", 0.0)
    engine = make_engine(f"sqlite:///{tmp_path}/chat.db")
    init_schema(engine)
    service = make_service(session_factory(engine))
    assert service.log.db_file == f"{tmp_path}/chat.db"

    async def scenario():
        await service.respond(msg("一", message_id=1))
        for p in tmp_path.iterdir():  # as `rm -r data/` would
            p.unlink()
        await service.respond(msg("二", message_id=2))
        await service.respond(msg("三", message_id=3))
        await service.aclose()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    service.close()
    said = [r for r in caplog.records if "was deleted or replaced" in r.getMessage()]
    assert len(said) == 1
    engine.dispose()


def test_a_chat_waits_for_its_earlier_reply_to_be_delivered_other_chats_do_not(sessions):
    service = make_service(sessions)
    delivered: list[str] = []

    def deliver_after(delay: float):
        async def deliver(reply):
            await asyncio.sleep(delay)
            delivered.append(reply.text)

        return deliver

    async def scenario():
        await asyncio.gather(
            service.respond(msg("慢的", user_id=1, message_id=1), deliver_after(0.3)),
            service.respond(msg("快的", user_id=1, message_id=2), deliver_after(0)),
            service.respond(msg("别的聊天", user_id=2, message_id=3), deliver_after(0)),
        )
        await service.aclose()

    asyncio.run(scenario())
    service.close()
    # chat 1's second reply waits for its first to be delivered; chat 2 does not wait
    assert delivered == ["你说：别的聊天", "你说：慢的", "你说：快的"]


def test_a_model_without_parallelism_or_close_is_served_as_one_in_process():
    from xianliao.bot.model_holder import ReplyModel, serving

    class Plain:  # what model.chatbot.ChatBot offers
        version = "plain"
        decode_options = {"strategy": "echo"}

        def reply(self, text, **options):
            return f"你说：{text}"

        def reply_many(self, texts, **options):
            return [f"你说：{t}" for t in texts]

    model = serving(Plain())
    assert isinstance(model, ReplyModel) and model.parallelism == 1
    model.close()  # nothing to stop, and no error
    pool_like = ParallelEcho(parallelism=2, delay=0)
    assert serving(pool_like) is pool_like  # a full ReplyModel is served as it is
    service = DialogueService(Plain(), sessions=None)
    assert service.respond_sync(msg("你好")).text == "你说：你好"
    assert service.model_version == "plain"
    service.close()
