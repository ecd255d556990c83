"""The fake Bot API answers like Telegram, so the end-to-end tests mean something."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from bot_helpers import TOKEN, FakeBotAPI

pytest_plugins = ["bot_fixtures"]


@pytest.fixture
def api():
    with FakeBotAPI() as fake:
        yield fake


def call(api: FakeBotAPI, method: str, token: str = TOKEN, **params):
    """POST form-encoded parameters with JSON values, as python-telegram-bot does."""
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    request = urllib.request.Request(
        f"{api.base_url}{token}/{method}",
        data=urllib.parse.urlencode(data).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_wrong_token_and_unknown_method(api):
    assert call(api, "getMe", token="1:bad") == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    assert call(api, "noSuchMethod")[0] == 404
    status, body = call(api, "getMe")
    assert status == 200 and body["result"]["is_bot"]


def test_send_message_is_validated_like_telegram(api):
    api.private_text(7, "hi")  # the chat exists once the user wrote
    assert call(api, "sendMessage", text="x")[1]["description"] == "Bad Request: chat_id is empty"
    assert call(api, "sendMessage", chat_id=8, text="x")[1]["description"].endswith("not found")
    assert call(api, "sendMessage", chat_id=7, text="  ")[1]["description"].endswith("is empty")
    assert call(api, "sendMessage", chat_id=7, text="好" * 4097)[1]["description"].endswith(
        "too long"
    )
    assert call(api, "sendMessage", chat_id=7, text="😀" * 2049)[0] == 400  # UTF-16 units
    assert call(api, "sendMessage", chat_id=7, text="好" * 4096)[0] == 200
    status, body = call(api, "sendMessage", chat_id=7, text="x", parse_mode="BBCode")
    assert (status, body["error_code"]) == (400, 400) and "parse_mode" in body["description"]
    assert (
        "can't parse entities"
        in call(api, "sendMessage", chat_id=7, text="<b>x", parse_mode="HTML")[1]["description"]
    )
    assert call(api, "sendMessage", chat_id=7, text="*x", parse_mode="Markdown")[0] == 400
    assert call(api, "sendMessage", chat_id=7, text="<b>x</b>", parse_mode="HTML")[0] == 200
    markup = {"inline_keyboard": [[{"text": "a", "callback_data": "x" * 65}]]}
    assert (
        "BUTTON_DATA_INVALID"
        in call(api, "sendMessage", chat_id=7, text="x", reply_markup=markup)[1]["description"]
    )


def test_long_polling_honours_offsets(api):
    first = api.private_text(1, "a")["update_id"]
    second = api.private_text(1, "b")["update_id"]
    _, body = call(api, "getUpdates", offset=0, timeout=0)
    assert [u["update_id"] for u in body["result"]] == [first, second]
    _, body = call(api, "getUpdates", offset=second, timeout=0)  # confirms the first
    assert [u["update_id"] for u in body["result"]] == [second]
    _, body = call(api, "getUpdates", offset=0, timeout=0)
    assert [u["update_id"] for u in body["result"]] == [second]
    _, body = call(api, "getUpdates", offset=second + 1, timeout=0)
    assert body["result"] == []
    # A long poll returns as soon as an update arrives.
    threading.Timer(0.2, lambda: api.private_text(1, "c")).start()
    t0 = time.monotonic()
    _, body = call(api, "getUpdates", offset=second + 1, timeout=5)
    assert [u["message"]["text"] for u in body["result"]] == ["c"]
    assert time.monotonic() - t0 < 1.0  # (long_poll_cap is 1 s; the update came at 0.2 s)


def test_faults_are_injected_per_method(api):
    api.fail("getMe", "429", retry_after=3)
    api.fail("getMe", "500")
    status, body = call(api, "getMe")
    assert status == 429 and body["parameters"] == {"retry_after": 3}
    assert call(api, "getMe")[0] == 500
    api.fail("getMe", "drop")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(api, "getMe")
    assert call(api, "getMe")[0] == 200


def test_webhook_blocks_get_updates(api):
    assert call(api, "setWebhook", url="http://127.0.0.1:9/hook", secret_token="s")[0] == 200
    assert call(api, "getUpdates")[0] == 409
    assert call(api, "getWebhookInfo")[1]["result"]["url"] == "http://127.0.0.1:9/hook"
    assert call(api, "deleteWebhook")[0] == 200
    assert call(api, "getUpdates", timeout=0)[0] == 200
