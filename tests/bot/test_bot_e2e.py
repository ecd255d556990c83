"""End to end: the real PTB Application talking HTTP to the fake Bot API, a real SQLite file."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

from bot_helpers import ADMIN_ID, EchoModel, db_rows

from xianliao.bot.handlers import (
    FORGET_ASK_TEXT,
    HELP_TEXT,
    NON_TEXT_TEXT,
    NOT_ADMIN_TEXT,
    RATE_LIMITED_TEXT,
    START_TEXT,
)
from xianliao.bot.service import TOO_LONG_REPLY

pytest_plugins = ["bot_fixtures"]

USER = 1001
GROUP = -100777


def count_exchanges(db_path, where: str = "1=1", *args) -> int:
    return db_rows(db_path, f"SELECT COUNT(*) FROM exchanges WHERE {where}", *args)[0][0]


def test_start_help_and_command_menus(fake_api, start_bot):
    start_bot()
    fake_api.private_text(USER, "/start")
    assert fake_api.wait_sent(USER, 1)[0]["text"] == START_TEXT
    fake_api.private_text(USER, "/help")
    help_msg = fake_api.wait_sent(USER, 2)[1]
    assert help_msg["text"] == HELP_TEXT and "Help" in help_msg["text"]
    menus = {json.loads(scope)["type"]: cmds for scope, cmds in fake_api.commands.items()}
    assert [c["command"] for c in menus["default"]] == ["start", "help", "forget"]
    assert {"stats", "review", "reload"} <= {c["command"] for c in menus["chat"]}
    chat_scope = next(json.loads(s) for s in fake_api.commands if '"chat"' in s)
    assert chat_scope["chat_id"] == ADMIN_ID


def test_reply_and_its_row_in_sqlite(fake_api, start_bot, db_path):
    start_bot()
    update = fake_api.private_text(USER, "你好")
    [msg] = fake_api.wait_sent(USER, 1)
    assert msg["text"] == "你说：你好"
    assert "parse_mode" not in msg["params"]
    buttons = msg["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["👍", "👎"]
    rows = db_rows(
        db_path,
        "SELECT user_id, chat_id, message_id, user_text, reply_text, latency_ms, model_version,"
        " decode_options, review_status, source FROM exchanges",
    )
    assert len(rows) == 1
    user_id, chat_id, message_id, q, a, latency, version, options, status, source = rows[0]
    assert (user_id, chat_id, message_id) == (USER, USER, update["message"]["message_id"])
    assert (q, a, version, status, source) == (
        "你好",
        "你说：你好",
        "echo-v1",
        "pending",
        "telegram",
    )
    assert latency > 0
    assert json.loads(options)["strategy"] == "echo"
    assert db_rows(db_path, "SELECT id, username FROM users") == [(USER, f"user{USER}")]


def test_groups_answer_only_when_addressed(fake_api, start_bot, db_path):
    start_bot()
    fake_api.group_text(GROUP, USER, "大家好")  # not for the bot
    mention = fake_api.group_text(GROUP, USER, "你好吗", mention=True)
    [first] = fake_api.wait_sent(GROUP, 1)
    assert first["text"] == "你说：你好吗"  # the @mention is not given to the model
    assert first["reply_to_message_id"] == mention["message"]["message_id"]
    fake_api.group_text(GROUP, 2002, "那你呢", reply_to=first)
    second = fake_api.wait_sent(GROUP, 2)[1]
    assert second["text"] == "你说：那你呢"
    fake_api.group_text(GROUP, USER, "/help@" + "xianliao_test_bot")
    assert fake_api.wait_sent(GROUP, 3)[2]["text"] == HELP_TEXT
    fake_api.sticker(USER)  # a private sticker, as a marker that everything before is done
    fake_api.wait_sent(USER, 1)
    assert len(fake_api.sent_to(GROUP)) == 3
    assert count_exchanges(db_path, "chat_id = ?", GROUP) == 2
    assert db_rows(db_path, "SELECT type, title FROM chats WHERE id = ?", GROUP) == [
        ("supergroup", f"群{GROUP}")
    ]


def test_non_text_gets_a_friendly_reply_and_edits_do_not_crash(fake_api, start_bot, caplog):
    start_bot()
    fake_api.sticker(USER)
    fake_api.photo(USER)
    fake_api.voice(USER)
    assert [m["text"] for m in fake_api.wait_sent(USER, 3)] == [NON_TEXT_TEXT] * 3
    update = fake_api.private_text(USER, "原来的话")
    fake_api.wait_sent(USER, 4)
    fake_api.edited_text(update, "改过的话")
    fake_api.private_text(USER, "还在吗")
    msgs = fake_api.wait_sent(USER, 5)
    assert msgs[4]["text"] == "你说：还在吗"
    assert len(fake_api.sent_to(USER)) == 5  # the edit got no answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_awkward_texts(fake_api, start_bot, db_path):
    start_bot(max_input_chars=1000)
    fake_api.private_text(USER, "长" * 5000)
    [too_long] = fake_api.wait_sent(USER, 1)
    assert too_long["text"] == TOO_LONG_REPLY.format(limit=1000)
    fake_api.private_text(USER, "😀😂👍")
    assert fake_api.wait_sent(USER, 2)[1]["text"] == "你说：😀😂👍"
    tricky = "<b>粗体</b> *星号* _下划线_ [link](http://x) &amp; <i>"
    fake_api.private_text(USER, tricky)
    echoed = fake_api.wait_sent(USER, 3)[2]
    assert echoed["text"] == "你说：" + tricky
    assert "parse_mode" not in echoed["params"]
    fake_api.private_text(USER, "REPEAT")  # the model answers with 5000 characters
    long_reply = fake_api.wait_sent(USER, 4)[3]["text"]
    assert 0 < len(long_reply) <= 4096
    fake_api.private_text(USER, "   ")
    assert fake_api.wait_sent(USER, 5)[4]["text"].strip()
    # The long input and the blank one were not given to the model, so not logged.
    assert count_exchanges(db_path) == 3


def test_rate_limit_per_user(fake_api, start_bot, db_path):
    start_bot(rate_limit_messages=3, rate_limit_window_s=3600)
    for i in range(6):
        fake_api.private_text(USER, f"第{i}条")
    fake_api.private_text(2002, "别人不受影响")
    fake_api.wait_sent(2002, 1)
    msgs = fake_api.wait_sent(USER, 4)
    fake_api.sticker(2002)
    fake_api.wait_sent(2002, 2)  # everything before it has been handled
    texts = [m["text"] for m in fake_api.sent_to(USER)]
    assert texts.count(RATE_LIMITED_TEXT) == 1 and len(texts) == 4
    assert sorted(t for t in texts if t != RATE_LIMITED_TEXT) == sorted(
        f"你说：第{i}条" for i in range(6) if f"你说：第{i}条" in texts
    )
    assert msgs and count_exchanges(db_path, "user_id = ?", USER) == 3


def test_commands_count_against_the_rate_limit_too(fake_api, start_bot):
    start_bot(rate_limit_messages=3, rate_limit_window_s=3600)
    for _ in range(20):
        fake_api.private_text(USER, "/help")
    fake_api.private_text(USER, "你好")
    fake_api.private_text(2002, "/help")
    fake_api.wait_sent(2002, 1)
    fake_api.sticker(USER)
    fake_api.sticker(2002)
    fake_api.wait_sent(2002, 2)  # everything before it has been handled
    texts = [m["text"] for m in fake_api.sent_to(USER)]
    assert len(texts) == 4 and texts.count(RATE_LIMITED_TEXT) == 1


def test_admin_commands_and_refusals(fake_api, start_bot, db_path):
    start_bot()
    for text in ("你好", "早上好", "晚安"):
        fake_api.private_text(USER, text)
    fake_api.wait_sent(USER, 3)
    # A non-admin is refused, and the attempt is audited.
    for command in ("/stats", "/review", "/reload"):
        fake_api.private_text(USER, command)
    assert [m["text"] for m in fake_api.wait_sent(USER, 6)[3:]] == [NOT_ADMIN_TEXT] * 3
    audit = db_rows(db_path, "SELECT user_id, action, allowed FROM admin_actions ORDER BY id")
    assert audit == [(USER, "stats", 0), (USER, "review", 0), (USER, "reload", 0)]

    fake_api.private_text(ADMIN_ID, "/stats")
    stats = fake_api.wait_sent(ADMIN_ID, 1)[0]["text"]
    assert "users: 1" in stats and "total: 3" in stats and "echo-v1" in stats
    assert "p50" in stats and "👍 0" in stats

    fake_api.private_text(ADMIN_ID, "/review 2")
    reviews = fake_api.wait_sent(ADMIN_ID, 3)[1:]
    assert "晚安" in reviews[0]["text"] and "早上好" in reviews[1]["text"]
    approve = reviews[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    reject = reviews[1]["reply_markup"]["inline_keyboard"][0][1]["callback_data"]
    fake_api.callback(USER, reviews[1], approve)  # a non-admin presses the button
    fake_api.wait_for(lambda: fake_api.callback_answers, what="refusal")
    assert fake_api.callback_answers[0]["text"] == NOT_ADMIN_TEXT
    fake_api.callback(ADMIN_ID, reviews[0], approve)
    fake_api.callback(ADMIN_ID, reviews[1], reject)
    fake_api.wait_for(lambda: len(fake_api.edits) >= 2, what="review edits")
    rows = db_rows(db_path, "SELECT user_text, review_status, reviewed_by FROM exchanges")
    assert sorted(rows) == [
        ("你好", "pending", None),
        ("早上好", "rejected", ADMIN_ID),
        ("晚安", "approved", ADMIN_ID),
    ]
    refused = db_rows(db_path, "SELECT COUNT(*) FROM admin_actions WHERE NOT allowed")[0][0]
    assert refused == 4


def test_feedback_buttons(fake_api, start_bot, db_path):
    start_bot()
    fake_api.private_text(USER, "讲个笑话")
    [reply] = fake_api.wait_sent(USER, 1)
    up, down = (b["callback_data"] for b in reply["reply_markup"]["inline_keyboard"][0])
    fake_api.callback(USER, reply, up)
    fake_api.wait_for(lambda: len(fake_api.callback_answers) >= 1)
    assert db_rows(db_path, "SELECT user_id, value FROM feedback") == [(USER, 1)]
    fake_api.callback(USER, reply, down)
    fake_api.wait_for(lambda: len(fake_api.callback_answers) >= 2)
    assert db_rows(db_path, "SELECT user_id, value FROM feedback") == [(USER, -1)]
    fake_api.wait_for(lambda: len(fake_api.edits) >= 2, what="markup edits")
    marked = fake_api.edits[-1]["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in marked] == ["👍", "👎 ✓"]


def test_forged_and_garbage_callbacks_change_nothing_and_are_answered(fake_api, start_bot, db_path):
    start_bot()
    fake_api.private_text(USER, "讲个笑话")
    fake_api.private_text(2002, "你好")
    [mine] = fake_api.wait_sent(USER, 1)
    [theirs] = fake_api.wait_sent(2002, 1)
    their_up = theirs["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    fake_api.callback(USER, mine, their_up)  # another chat's exchange, on my message
    fake_api.callback(2002, theirs, "fb:999:u")  # no such button on that message
    fake_api.callback(USER, mine, "fb:1:zzz")
    fake_api.callback(USER, mine, "garbage")
    fake_api.callback(ADMIN_ID, mine, "rv:1:zzz")  # even an admin: not a choice
    fake_api.wait_for(lambda: len(fake_api.callback_answers) >= 5, what="every answer")
    assert db_rows(db_path, "SELECT COUNT(*) FROM feedback") == [(0,)]
    assert db_rows(db_path, "SELECT DISTINCT review_status FROM exchanges") == [("pending",)]
    assert not fake_api.edits  # no keyboard rewritten


def test_an_update_ptb_cannot_parse_is_skipped_and_polling_goes_on(fake_api, start_bot, caplog):
    start_bot()
    bad = fake_api.push_update({"poll": {"id": "p1", "question": "?"}})  # no options, no ...
    fake_api.private_text(USER, "你好")
    assert fake_api.wait_sent(USER, 1)[0]["text"]
    calls = len(fake_api.calls_of("getUpdates"))
    fake_api.private_text(USER, "还在吗")
    fake_api.wait_sent(USER, 2)
    assert len(fake_api.calls_of("getUpdates")) - calls < 10  # not a tight loop on one update
    skipped = [r.getMessage() for r in caplog.records if "skipped update" in r.getMessage()]
    assert skipped == [
        f"skipped update {bad['update_id']}: python-telegram-bot cannot read it (TypeError)"
    ]


def test_an_anonymous_group_admin_is_not_stored_as_the_group(fake_api, start_bot, db_path):
    from xianliao.bot.handlers import ANONYMOUS_SENDER_ID

    start_bot()
    group = -100777
    from fake_bot_api import BOT_USERNAME

    chat = {"id": group, "type": "supergroup", "title": "群"}
    handle = "@" + BOT_USERNAME
    mention = [{"type": "mention", "offset": 0, "length": len(handle)}]
    message = fake_api._message(chat, USER, **fake_api._text_content(f"{handle} 大家好", mention))
    del message["from"]  # as a self-hosted server may send it: sender_chat, no from
    message["sender_chat"] = chat
    fake_api.push_update({"message": message})
    fake_api.wait_sent(group, 1)
    assert db_rows(db_path, "SELECT user_id FROM exchanges") == [(ANONYMOUS_SENDER_ID,)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM users WHERE id = ?", group) == [(0,)]


def test_forget_deletes_everything_after_confirmation(fake_api, start_bot, db_path):
    start_bot()
    for text in ("记住我", "我叫小明"):
        fake_api.private_text(USER, text)
    replies = fake_api.wait_sent(USER, 2)
    fake_api.callback(
        USER, replies[0], replies[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    )
    fake_api.private_text(2002, "我是别人")
    fake_api.wait_sent(2002, 1)
    fake_api.private_text(USER, "/forget")
    ask = fake_api.wait_sent(USER, 3)[2]
    assert ask["text"] == FORGET_ASK_TEXT
    yes, no = (b["callback_data"] for b in ask["reply_markup"]["inline_keyboard"][0])
    fake_api.callback(USER, ask, no)
    fake_api.wait_for(lambda: any("已取消" in e["text"] for e in fake_api.edits), what="cancel")
    assert count_exchanges(db_path, "user_id = ?", USER) == 2
    fake_api.callback(USER, ask, yes)
    done = fake_api.wait_for(
        lambda: [e for e in fake_api.edits if "已删除" in e["text"]], what="forget edit"
    )
    assert "2 条对话" in done[0]["text"]
    assert count_exchanges(db_path, "user_id = ?", USER) == 0
    assert db_rows(db_path, "SELECT COUNT(*) FROM users WHERE id = ?", USER) == [(0,)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM feedback") == [(0,)]
    assert count_exchanges(db_path) == 1  # the other user's exchange stays


def test_reload_swaps_the_model_and_survives_a_bad_checkpoint(fake_api, start_bot):
    from xianliao.model.checkpoint import CheckpointError

    outcomes = [EchoModel(version="echo-v2"), CheckpointError("runs/best.pt is not a checkpoint")]

    def loader(path):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    bot = start_bot(loader=loader)
    fake_api.private_text(ADMIN_ID, "/reload")
    assert "echo-v1 → echo-v2" in fake_api.wait_sent(ADMIN_ID, 1)[0]["text"]
    assert bot.service.model_version == "echo-v2"
    fake_api.private_text(ADMIN_ID, "/reload")
    failed = fake_api.wait_sent(ADMIN_ID, 2)[1]["text"]
    assert "重新加载失败" in failed and "not a checkpoint" in failed and "echo-v2" in failed
    fake_api.private_text(USER, "还好吗")
    assert fake_api.wait_sent(USER, 1)[0]["text"] == "你说：还好吗"
    assert bot.service.model_version == "echo-v2"


def test_typing_action_while_the_model_works(fake_api, start_bot):
    start_bot(EchoModel(delay=0.3), typing_delay_s=0.05)
    fake_api.private_text(USER, "慢慢想")
    fake_api.wait_sent(USER, 1)
    assert {"chat_id": USER, "action": "typing"} in fake_api.actions


def test_bot_api_failures_lose_nothing_and_log_nothing_twice(fake_api, start_bot, db_path):
    start_bot(send_max_retries=2)
    fake_api.fail("getUpdates", "500")
    fake_api.fail("getUpdates", "drop")
    fake_api.fail("sendMessage", "429", retry_after=1)
    fake_api.fail("sendMessage", "500")
    fake_api.fail("sendMessage", "drop")
    fake_api.fail("sendMessage", "slow", delay=0.5)
    users = list(range(3001, 3009))
    sent_updates = [fake_api.private_text(u, f"用户{u}说话") for u in users]
    for u in users:
        [msg] = fake_api.wait_sent(u, 1, timeout=30)
        assert msg["text"] == f"你说：用户{u}说话"
    # A redelivered message is answered again from the log but not logged twice.
    fake_api.redeliver(sent_updates[0])
    assert fake_api.wait_sent(users[0], 2, timeout=10)[1]["text"] == f"你说：用户{users[0]}说话"
    assert count_exchanges(db_path) == len(users)
    assert db_rows(db_path, "SELECT COUNT(DISTINCT chat_id || ':' || message_id) FROM exchanges")[
        0
    ][0] == len(users)
    faults = {c.method for c in fake_api.calls if ":" in c.method}
    assert faults == {
        "getUpdates:500",
        "getUpdates:dropped",
        "sendMessage:429",
        "sendMessage:500",
        "sendMessage:dropped",
    }
    for u in users:  # exactly one reply each, nothing duplicated by retries
        assert len(fake_api.sent_to(u)) == (2 if u == users[0] else 1)


def test_a_send_failing_for_seconds_is_retried_not_lost(fake_api, start_bot, caplog):
    start_bot(send_retry_s=20)
    fake_api.fail("sendMessage", "500", times=5)  # ~6 s of failures (0.2 s doubling)
    fake_api.private_text(USER, "坚持住")
    assert fake_api.wait_sent(USER, 1, timeout=30)[0]["text"] == "你说：坚持住"
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 5


def test_webhook_mode(fake_api, start_bot, db_path):
    bot = start_bot(mode="webhook")
    assert fake_api.webhook["secret_token"] == "s3cret-token"
    fake_api.private_text(USER, "网钩你好")
    assert fake_api.wait_sent(USER, 1)[0]["text"] == "你说：网钩你好"
    assert count_exchanges(db_path) == 1
    # Without the secret header the bot refuses the update.
    url = fake_api.webhook["url"]
    body = json.dumps({"update_id": 999, "message": {}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("the webhook accepted an update without the secret")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    assert not fake_api.calls_of("getUpdates")
    assert bot.application.updater is not None


def test_many_users_are_answered_concurrently(fake_api, start_bot, db_path):
    model = EchoModel(delay=0.05)
    start_bot(model, send_max_rate=0)
    t0 = time.monotonic()
    for u in range(5000, 5040):
        fake_api.private_text(u, "一起来")
    for u in range(5000, 5040):
        fake_api.wait_sent(u, 1, timeout=30)
    # 40 messages with a 50 ms model: batched, far fewer than 40 model calls were needed.
    assert len(model.batches) < 40 and max(model.batches) > 1
    assert count_exchanges(db_path) == 40
    assert time.monotonic() - t0 < 30


def test_a_failing_model_gets_an_apology_and_the_bot_keeps_going(fake_api, start_bot, caplog):
    from xianliao.bot.handlers import ERROR_TEXT

    class Moody(EchoModel):
        def reply_many(self, texts, **options):
            if any("坏" in t for t in texts):
                raise RuntimeError("the model broke")
            return super().reply_many(texts, **options)

    start_bot(Moody())
    fake_api.private_text(USER, "坏")
    assert fake_api.wait_sent(USER, 1)[0]["text"] == ERROR_TEXT
    fake_api.private_text(USER, "好")
    assert fake_api.wait_sent(USER, 2)[1]["text"] == "你说：好"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert errors and "the model broke" in str(errors[0].exc_info[1])


def test_an_admin_who_never_opened_the_chat_does_not_stop_the_start(fake_api, start_bot):
    start_bot(admin_user_ids=frozenset({ADMIN_ID, 55555}))
    fake_api.private_text(USER, "/start")
    fake_api.wait_sent(USER, 1)
    scopes = [json.loads(s) for s in fake_api.commands]
    assert {"type": "chat", "chat_id": ADMIN_ID} in scopes
    assert {"type": "chat", "chat_id": 55555} not in scopes


def test_replies_in_a_chat_keep_the_order_of_its_messages(fake_api, start_bot):
    start_bot(EchoModel(delay=0.02), send_max_rate=0)
    for i in range(8):
        fake_api.private_text(USER, f"第{i}句")
        fake_api.private_text(USER + 1, f"第{i}句")
    for chat in (USER, USER + 1):
        texts = [m["text"] for m in fake_api.wait_sent(chat, 8)]
        assert texts == [f"你说：第{i}句" for i in range(8)]


def test_no_typing_actions_while_more_replies_wait_than_the_flood_limit_sends(fake_api, start_bot):
    """Chat actions count against the same flood limit as replies: with 12 replies waiting for
    a limit of 2 a second, showing "typing..." to each waiting user would take the replies'
    places. None is sent until the queue is down to what one second of the limit sends."""
    start_bot(EchoModel(delay=0.3), typing_delay_s=0.05, send_max_rate=2)
    users = list(range(5001, 5013))
    for u in users:
        fake_api.private_text(u, f"{u}来了")
    for u in users:
        assert fake_api.wait_sent(u, 1, timeout=60)[0]["text"] == f"你说：{u}来了"
    assert len(fake_api.actions) <= 2, fake_api.actions
