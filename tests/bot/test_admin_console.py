"""/console in Telegram (a one-time login link to the web console, for admins in a private
chat) and /retrain cancel of a run started elsewhere, through the real PTB Application and the
fake Bot API."""

from __future__ import annotations

import re
from datetime import timedelta

from bot_helpers import ADMIN_ID, db_rows, db_url

from xianliao.bot.admin import CONSOLE_NOT_SET, CONSOLE_PRIVATE_ONLY
from xianliao.bot.handlers import NOT_ADMIN_TEXT
from xianliao.ops.console_links import LinkTokens
from xianliao.storage.database import Database
from xianliao.storage.repositories import TrainingRunRepository

pytest_plugins = ["bot_fixtures"]
KEY = "a-console-secret-key-of-some-length"
USER = 5001
LINK = re.compile(r"https://admin\.example\.com/login/link\?t=(\S+)")


def test_an_admin_gets_a_one_time_login_link(fake_api, start_bot, db_path):
    start_bot(console_public_url="https://admin.example.com/", console_secret_key=KEY)
    fake_api.private_text(ADMIN_ID, "/console")
    text = fake_api.wait_sent(ADMIN_ID, 1)[0]["text"]
    token = LINK.search(text).group(1)
    assert "5" in text  # says how long it is valid
    links = LinkTokens(KEY, frozenset({ADMIN_ID}))  # what the console checks it with
    assert links.admin_for(token) == ADMIN_ID
    assert links.admin_for(token) is None  # once only
    assert LinkTokens("another key", frozenset({ADMIN_ID})).admin_for(token) is None

    fake_api.private_text(USER, "/console")  # not an admin: the usual refusal, no link
    assert fake_api.wait_sent(USER, 1)[0]["text"] == NOT_ADMIN_TEXT
    fake_api.group_text(-100, ADMIN_ID, "/console")  # a group: anyone there could click it
    group = fake_api.wait_sent(-100, 1)[0]["text"]
    assert group == CONSOLE_PRIVATE_ONLY and "login/link" not in group
    audit = db_rows(db_path, "SELECT user_id, allowed FROM admin_actions WHERE action='console'")
    assert sorted(audit) == sorted([(ADMIN_ID, True), (USER, False), (ADMIN_ID, True)])


def test_without_the_settings_it_says_how_to_set_them(fake_api, start_bot):
    start_bot()
    fake_api.private_text(ADMIN_ID, "/console")
    text = fake_api.wait_sent(ADMIN_ID, 1)[0]["text"]
    assert text == CONSOLE_NOT_SET and "CONSOLE_PUBLIC_URL" in text


def test_retrain_cancel_reaches_a_run_started_elsewhere(fake_api, start_bot, db_path):
    start_bot()
    db = Database.open(db_url(db_path))
    try:
        with db.begin() as s:
            runs = TrainingRunRepository(s)
            run_id = runs.create(started_by=0, params={}, status="running").id
            runs.acquire(run_id, owner="other-host:77:ab", ttl=timedelta(minutes=1))
            runs.get(run_id).params = '{"host": "other-host"}'  # as begin_run records it
        fake_api.private_text(ADMIN_ID, "/retrain status")  # shows a run of another host
        status = fake_api.wait_sent(ADMIN_ID, 1)[0]["text"]
        assert f"run {run_id}: running" in status and "other-host" in status
        fake_api.private_text(ADMIN_ID, f"/retrain cancel {run_id}")
        assert f"run {run_id}" in fake_api.wait_sent(ADMIN_ID, 2)[1]["text"]
        with db.read() as s:
            run = TrainingRunRepository(s).get(run_id)
            assert run.cancel_requested_at is not None and run.finished_at is None
        fake_api.private_text(ADMIN_ID, "/retrain cancel x")
        assert "usage" in fake_api.wait_sent(ADMIN_ID, 3)[2]["text"]
    finally:
        db.dispose()
