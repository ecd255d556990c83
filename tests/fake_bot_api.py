"""A fake Telegram Bot API server on 127.0.0.1 for end-to-end tests and the bench.

A real HTTP server (stdlib ``ThreadingHTTPServer`` in a thread) answering
``/bot<TOKEN>/<method>`` like Telegram: form-encoded parameters with JSON values (or a JSON
body), ``{"ok": ..., "result"|"description", "error_code", "parameters"}`` answers, long polling
with offsets, webhooks (POSTed with ``X-Telegram-Bot-Api-Secret-Token``) and ``sendMessage``
validated as Telegram does. Faults can be injected per method: 429 with ``retry_after``, 500, a
dropped connection, or a slow answer.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

TOKEN = "123456:TEST-token-do-not-log"
BOT_ID = 123456
BOT_USERNAME = "xianliao_test_bot"

# Parameters whose form values are JSON (the rest are plain strings or numbers).
_JSON_PARAMS = {
    "reply_markup",
    "entities",
    "caption_entities",
    "commands",
    "scope",
    "allowed_updates",
    "reply_parameters",
    "link_preview_options",
}
_INT_PARAMS = {"offset", "limit", "message_id", "reply_to_message_id", "cache_time"}
_FLOAT_PARAMS = {"timeout"}
_BOOL_PARAMS = {"drop_pending_updates", "show_alert", "disable_notification", "protect_content"}
_HTML_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "span",
    "tg-spoiler",
    "tg-emoji",
    "blockquote",
}


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass
class Fault:
    kind: str  # "429", "500", "drop" or "slow"
    retry_after: int = 1
    delay: float = 0.5


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _strip_html(text: str) -> str:
    stack: list[str] = []
    for m in re.finditer(r"<(/?)([a-zA-Z-]+)[^>]*>", text):
        closing, tag = m.group(1) == "/", m.group(2).lower()
        if tag not in _HTML_TAGS:
            raise ApiError(
                400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"'
            )
        if closing:
            if not stack or stack.pop() != tag:
                raise ApiError(
                    400, f'Bad Request: can\'t parse entities: Unmatched end tag "{tag}"'
                )
        else:
            stack.append(tag)
    if stack:
        raise ApiError(
            400,
            f"Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"{stack[-1]}\"",
        )
    plain = re.sub(r"<[^>]+>", "", text)
    return (
        plain.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )


def _strip_markdown(text: str) -> str:
    for marker in ("*", "_", "`"):
        if text.count(marker) % 2:
            raise ApiError(
                400,
                "Bad Request: can't parse entities: Can't find end of the entity starting at "
                f"byte offset {text.index(marker)}",
            )
        text = text.replace(marker, "")
    return text


class FakeBotAPI:
    """The server and its state; use as a context manager or call start()/stop()."""

    def __init__(self, token: str = TOKEN, *, long_poll_cap: float = 1.0) -> None:
        self.token = token
        self.bot = {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "闲聊",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.long_poll_cap = long_poll_cap  # never hold a getUpdates longer than this
        self.cond = threading.Condition()
        self.updates: deque[dict] = deque()
        self.delivered_at: dict[int, float] = {}  # update_id -> first time handed to the bot
        self.calls: list[Call] = []
        self.sent: list[dict] = []  # every message the bot sent, in order
        self.actions: list[dict] = []
        self.callback_answers: list[dict] = []
        self.edits: list[dict] = []
        self.commands: dict[str, list[dict]] = {}
        self.known_chats: dict[int, dict] = {}
        self.messages: dict[tuple[int, int], dict] = {}
        self.webhook: dict[str, Any] = {"url": "", "secret_token": None}
        self.faults: dict[str, deque[Fault]] = {}
        self.on_send: Callable[[dict], None] | None = None
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._callback_ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._webhook_queue: deque[dict] = deque()
        self._webhook_thread: threading.Thread | None = None
        self._stopping = False
        # A reverse proxy in front of bot replicas: webhook updates go to these URLs in turn
        # (instead of setWebhook's), to the next one when a replica does not answer; with
        # ``webhook_twice`` = N every Nth update is also POSTed to the next replica (a retry
        # after a lost answer).
        self.webhook_targets: list[str] = []
        self.webhook_twice = 0
        self.webhook_posts: list[tuple[str, int]] = []  # (url, update_id) of each 2xx POST
        self._target = itertools.count()

    # ----- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeBotAPI:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with self.cond:
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._webhook_thread is not None:
            self._webhook_thread.join(timeout=5)

    def __enter__(self) -> FakeBotAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """What TELEGRAM_BASE_URL should be (the token is appended)."""
        return f"http://127.0.0.1:{self.port}/bot"

    # ----- faults -----------------------------------------------------------------------------------

    def fail(self, method: str, kind: str, times: int = 1, **kwargs: Any) -> None:
        """The next ``times`` calls of ``method`` answer with the fault ``kind``."""
        with self.cond:
            queue = self.faults.setdefault(method, deque())
            for _ in range(times):
                queue.append(Fault(kind, **kwargs))

    def _take_fault(self, method: str) -> Fault | None:
        with self.cond:
            queue = self.faults.get(method)
            return queue.popleft() if queue else None

    # ----- updates the tests push -----------------------------------------------------------------

    @staticmethod
    def user(user_id: int, first_name: str | None = None, username: str | None = None) -> dict:
        return {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name or f"用户{user_id}",
            "username": username or f"user{user_id}",
            "language_code": "zh-hans",
        }

    def _chat_private(self, user_id: int) -> dict:
        return {"id": user_id, "type": "private", "first_name": f"用户{user_id}"}

    def _message(self, chat: dict, user_id: int, **content: Any) -> dict:
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": self.user(user_id),
            **content,
        }
        with self.cond:
            self.known_chats[chat["id"]] = chat
            self.messages[(chat["id"], message["message_id"])] = message
        return message

    @staticmethod
    def _text_content(text: str, entities: list[dict] | None = None) -> dict:
        content: dict[str, Any] = {"text": text}
        entities = list(entities or [])
        m = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
        if m:
            entities.insert(
                0, {"type": "bot_command", "offset": 0, "length": utf16_len(m.group(0))}
            )
        if entities:
            content["entities"] = entities
        return content

    def push_update(self, update: dict) -> dict:
        """Queue an update (or POST it to the webhook when one is set); returns it."""
        with self.cond:
            update.setdefault("update_id", next(self._update_ids))
            if self.webhook["url"]:
                self._webhook_queue.append(update)
                self._ensure_webhook_thread()
            else:
                self.updates.append(update)
            self.cond.notify_all()
        return update

    def private_text(self, user_id: int, text: str) -> dict:
        chat = self._chat_private(user_id)
        message = self._message(chat, user_id, **self._text_content(text))
        return self.push_update({"message": message})

    def group_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        mention: bool = False,
        reply_to: dict | None = None,
    ) -> dict:
        """A group message; ``mention`` prefixes @bot, ``reply_to`` is a message it replies to."""
        chat = {"id": chat_id, "type": "supergroup", "title": f"群{chat_id}"}
        entities = []
        if mention:
            handle = "@" + BOT_USERNAME
            text = f"{handle} {text}"
            entities.append({"type": "mention", "offset": 0, "length": utf16_len(handle)})
        content = self._text_content(text, entities)
        if reply_to is not None:
            content["reply_to_message"] = reply_to
        return self.push_update({"message": self._message(chat, user_id, **content)})

    def sticker(self, user_id: int) -> dict:
        sticker = {
            "file_id": "CAACAgIAAxkBAAE",
            "file_unique_id": "AgADx",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "😀",
        }
        chat = self._chat_private(user_id)
        return self.push_update({"message": self._message(chat, user_id, sticker=sticker)})

    def photo(self, user_id: int) -> dict:
        photo = [
            {
                "file_id": "AgACAgIAAxkBAAE",
                "file_unique_id": "AQADx",
                "width": 90,
                "height": 90,
                "file_size": 1000,
            }
        ]
        chat = self._chat_private(user_id)
        return self.push_update({"message": self._message(chat, user_id, photo=photo)})

    def voice(self, user_id: int) -> dict:
        voice = {
            "file_id": "AwACAgIAAxkBAAE",
            "file_unique_id": "AgADv",
            "duration": 2,
            "mime_type": "audio/ogg",
        }
        chat = self._chat_private(user_id)
        return self.push_update({"message": self._message(chat, user_id, voice=voice)})

    def edited_text(self, update: dict, new_text: str) -> dict:
        """An ``edited_message`` update for the message in ``update``."""
        message = dict(update["message"])
        message.update(self._text_content(new_text), edit_date=int(time.time()))
        return self.push_update({"edited_message": message})

    def redeliver(self, update: dict) -> dict:
        """Deliver the same message again under a new update id (as after a lost offset)."""
        copy = {k: v for k, v in update.items() if k != "update_id"}
        return self.push_update(copy)

    def callback(self, user_id: int, message: dict, data: str) -> dict:
        """A button press on ``message`` (a message the bot sent)."""
        query = {
            "id": str(next(self._callback_ids)),
            "from": self.user(user_id),
            "chat_instance": "ci-1",
            "message": message,
            "data": data,
        }
        return self.push_update({"callback_query": query})

    # ----- waiting --------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Block until ``predicate()`` is truthy (checked on every server event)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what or predicate}; "
                        f"sent so far: {[m['text'][:40] for m in self.sent]}"
                    )
                self.cond.wait(min(left, 0.1))

    def sent_to(self, chat_id: int) -> list[dict]:
        with self.cond:
            return [m for m in self.sent if m["chat"]["id"] == chat_id]

    def wait_sent(self, chat_id: int, n: int = 1, timeout: float = 10.0) -> list[dict]:
        """Wait until at least ``n`` messages were sent to ``chat_id``; returns them all."""
        return self.wait_for(
            lambda: (lambda ms: ms if len(ms) >= n else None)(self.sent_to(chat_id)),
            timeout,
            f"{n} message(s) to chat {chat_id}",
        )

    def calls_of(self, method: str) -> list[Call]:
        with self.cond:
            return [c for c in self.calls if c.method == method]

    def pending_updates(self) -> int:
        with self.cond:
            return len(self.updates) + len(self._webhook_queue)

    # ----- webhook delivery -----------------------------------------------------------------------

    def _ensure_webhook_thread(self) -> None:
        if self._webhook_thread is None or not self._webhook_thread.is_alive():
            self._webhook_thread = threading.Thread(target=self._deliver_webhooks, daemon=True)
            self._webhook_thread.start()

    def _post_webhook(self, url: str, secret: str | None, update: dict) -> bool:
        request = urllib.request.Request(
            url,
            data=json.dumps(update).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if secret:
            request.add_header("X-Telegram-Bot-Api-Secret-Token", secret)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                ok = 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            return False
        if ok:
            with self.cond:
                self.webhook_posts.append((url, update["update_id"]))
        return ok

    def _webhook_url(self) -> str:
        targets = self.webhook_targets
        return targets[next(self._target) % len(targets)] if targets else self.webhook["url"]

    def _deliver_webhooks(self) -> None:
        while not self._stopping:
            with self.cond:
                if not self._webhook_queue:
                    self.cond.wait(0.1)
                    continue
                update = self._webhook_queue[0]
                secret = self.webhook["secret_token"]
            url = self._webhook_url()
            ok = self._post_webhook(url, secret, update)
            twice = self.webhook_twice and update["update_id"] % self.webhook_twice == 0
            if ok and twice and len(self.webhook_targets) > 1:
                self._post_webhook(self._webhook_url(), secret, update)
            with self.cond:
                if ok:
                    self._webhook_queue.popleft()
                    self.delivered_at.setdefault(update["update_id"], time.monotonic())
                    self.cond.notify_all()
            if not ok:
                time.sleep(0.05 if self.webhook_targets else 0.1)  # Telegram retries later too

    # ----- the Bot API methods --------------------------------------------------------------------

    def handle(self, method: str, params: dict[str, Any]) -> Any:
        with self.cond:
            self.calls.append(Call(method, params))
            self.cond.notify_all()
        func = getattr(self, "api_" + method.lower(), None)
        if func is None:
            raise ApiError(404, "Not Found")
        return func(params)

    def api_getme(self, p: dict) -> dict:
        return self.bot

    def api_logout(self, p: dict) -> bool:
        return True

    def api_close(self, p: dict) -> bool:
        return True

    def api_getupdates(self, p: dict) -> list[dict]:
        offset = int(p.get("offset") or 0)
        limit = max(1, min(100, int(p.get("limit") or 100)))
        timeout = min(float(p.get("timeout") or 0), self.long_poll_cap)
        deadline = time.monotonic() + timeout
        with self.cond:
            if self.webhook["url"]:
                raise ApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is "
                    "active; use deleteWebhook to delete the webhook first",
                )
            while self.updates and self.updates[0]["update_id"] < offset:
                self.updates.popleft()  # confirmed
            while not self.updates and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
                while self.updates and self.updates[0]["update_id"] < offset:
                    self.updates.popleft()
            batch = list(itertools.islice(self.updates, limit))
            now = time.monotonic()
            for u in batch:
                self.delivered_at.setdefault(u["update_id"], now)
            return batch

    def _chat(self, p: dict) -> dict:
        raw = p.get("chat_id")
        if raw is None or raw == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        try:
            chat_id = int(raw)
        except (TypeError, ValueError):
            raise ApiError(400, "Bad Request: chat not found") from None
        chat = self.known_chats.get(chat_id)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    @staticmethod
    def _check_markup(markup: Any) -> None:
        if markup is None:
            return
        if not isinstance(markup, dict):
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= 64:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
                if not button.get("text"):
                    raise ApiError(
                        400, "Bad Request: text buttons are unallowed in the inline keyboard"
                    )

    @staticmethod
    def _visible_text(p: dict) -> str:
        text = p.get("text")
        if text is None or not str(text).strip():
            raise ApiError(400, "Bad Request: message text is empty")
        text = str(text)
        mode = p.get("parse_mode")
        if mode:
            kind = str(mode).lower()
            if kind == "html":
                text = _strip_html(text)
            elif kind in ("markdown", "markdownv2"):
                text = _strip_markdown(text)
            else:
                raise ApiError(400, f'Bad Request: unsupported parse_mode "{mode}"')
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return text

    def api_sendmessage(self, p: dict) -> dict:
        chat = self._chat(p)
        text = self._visible_text(p)
        self._check_markup(p.get("reply_markup"))
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot,
            "text": text,
        }
        if p.get("reply_markup"):
            message["reply_markup"] = p["reply_markup"]
        if p.get("reply_parameters"):
            message["reply_to_message_id"] = p["reply_parameters"].get("message_id")
        with self.cond:
            self.messages[(chat["id"], message["message_id"])] = message
            self.sent.append({**message, "received_at": time.monotonic(), "params": p})
            self.cond.notify_all()
        if self.on_send is not None:
            self.on_send(message)
        return message

    def api_sendchataction(self, p: dict) -> bool:
        chat = self._chat(p)
        if not p.get("action"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        with self.cond:
            self.actions.append({"chat_id": chat["id"], "action": p["action"]})
            self.cond.notify_all()
        return True

    def api_answercallbackquery(self, p: dict) -> bool:
        if not p.get("callback_query_id"):
            raise ApiError(400, "Bad Request: query_id is empty")
        with self.cond:
            self.callback_answers.append(p)
            self.cond.notify_all()
        return True

    def _edit(self, p: dict, new: dict) -> dict:
        chat = self._chat(p)
        key = (chat["id"], int(p.get("message_id") or 0))
        with self.cond:
            message = self.messages.get(key)
            if message is None:
                raise ApiError(400, "Bad Request: message to edit not found")
            if all(message.get(k) == v for k, v in new.items()):
                raise ApiError(
                    400,
                    "Bad Request: message is not modified: specified new message "
                    "content and reply markup are exactly the same as a current "
                    "content and reply markup of the message",
                )
            message = {**message, **{k: v for k, v in new.items() if v is not None}}
            if new.get("reply_markup") is None:
                message.pop("reply_markup", None)
            self.messages[key] = message
            self.edits.append(message)
            self.cond.notify_all()
            return message

    def api_editmessagetext(self, p: dict) -> dict:
        text = self._visible_text(p)
        self._check_markup(p.get("reply_markup"))
        return self._edit(p, {"text": text, "reply_markup": p.get("reply_markup")})

    def api_editmessagereplymarkup(self, p: dict) -> dict:
        self._check_markup(p.get("reply_markup"))
        return self._edit(p, {"reply_markup": p.get("reply_markup")})

    def api_setmycommands(self, p: dict) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        for c in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", c.get("command", "")):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(c.get("description", "")) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        scope = p.get("scope") or {"type": "default"}
        if scope.get("type") == "chat" and int(scope.get("chat_id", 0)) not in self.known_chats:
            raise ApiError(400, "Bad Request: chat not found")
        with self.cond:
            self.commands[json.dumps(scope, sort_keys=True)] = commands
        return True

    def api_deletemycommands(self, p: dict) -> bool:
        scope = p.get("scope") or {"type": "default"}
        with self.cond:
            self.commands.pop(json.dumps(scope, sort_keys=True), None)
        return True

    def api_getmycommands(self, p: dict) -> list[dict]:
        scope = p.get("scope") or {"type": "default"}
        return self.commands.get(json.dumps(scope, sort_keys=True), [])

    def api_setwebhook(self, p: dict) -> bool:
        url = p.get("url") or ""
        if url and not url.startswith(("http://", "https://")):
            raise ApiError(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        with self.cond:
            self.webhook = {"url": url, "secret_token": p.get("secret_token")}
            if url and self.updates:  # pending updates now go to the webhook
                self._webhook_queue.extend(self.updates)
                self.updates.clear()
                self._ensure_webhook_thread()
            self.cond.notify_all()
        return True

    def api_deletewebhook(self, p: dict) -> bool:
        with self.cond:
            self.webhook = {"url": "", "secret_token": None}
            if p.get("drop_pending_updates"):
                self.updates.clear()
        return True

    def api_getwebhookinfo(self, p: dict) -> dict:
        with self.cond:
            return {
                "url": self.webhook["url"],
                "has_custom_certificate": False,
                "pending_update_count": len(self.updates) + len(self._webhook_queue),
            }


def _decode_params(raw: dict[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _JSON_PARAMS:
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                raise ApiError(400, f"Bad Request: can't parse {key} JSON object") from None
        elif key in _INT_PARAMS:
            params[key] = int(value)
        elif key in _FLOAT_PARAMS:
            params[key] = float(value)
        elif key in _BOOL_PARAMS:
            params[key] = value in ("true", "True", "1")
        else:
            params[key] = value
    return params


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBotAPI
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK would add ~40 ms to every answer (Telegram has no such delay).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length) if length else b"")

    def _serve(self, body: bytes) -> None:
        fake = self.fake
        m = re.fullmatch(r"/bot([^/]+)/(\w+)", self.path.split("?")[0])
        if m is None:
            self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return
        token, method = m.groups()
        if token != fake.token:
            self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return
        try:
            params = self._params(body)
        except ApiError as exc:
            self._answer(
                exc.code, {"ok": False, "error_code": exc.code, "description": exc.description}
            )
            return
        fault = fake._take_fault(method)
        if fault is not None:
            if fault.kind == "drop":
                with fake.cond:
                    fake.calls.append(Call(method + ":dropped", params))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.kind == "429":
                with fake.cond:
                    fake.calls.append(Call(method + ":429", params))
                self._answer(
                    429,
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {fault.retry_after}",
                        "parameters": {"retry_after": fault.retry_after},
                    },
                )
                return
            if fault.kind == "500":
                with fake.cond:
                    fake.calls.append(Call(method + ":500", params))
                self._answer(
                    500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}
                )
                return
            if fault.kind == "slow":
                time.sleep(fault.delay)
        try:
            result = fake.handle(method, params)
        except ApiError as exc:
            payload = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters:
                payload["parameters"] = exc.parameters
            self._answer(exc.code, payload)
            return
        self._answer(200, {"ok": True, "result": result})

    def _params(self, body: bytes) -> dict[str, Any]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        raw: dict[str, str] = dict(parse_qsl(query, keep_blank_values=True))
        if ctype == "application/json" and body:
            data = json.loads(body)
            return {**_decode_params(raw), **data}
        if ctype == "application/x-www-form-urlencoded" or not ctype:
            raw.update(parse_qsl(body.decode(), keep_blank_values=True))
            return _decode_params(raw)
        raise ApiError(400, "Bad Request: unsupported content type in this fake (no files)")
