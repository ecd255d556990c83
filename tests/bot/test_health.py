"""bot/health.py: /healthz and /metrics over real HTTP, with a real SQLite database check."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from bot_helpers import ADMIN_ID, EchoModel, free_port
from sqlalchemy.exc import OperationalError
from telegram.error import NetworkError

from xianliao.bot.health import BotMetrics, HealthServer, HealthState
from xianliao.storage.database import Database
from xianliao.storage.db import schema_revision

pytest_plugins = ["bot_fixtures"]
USER = 5001


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served(tmp_path):
    db = Database.open(f"sqlite:///{tmp_path}/h.db")
    now = [1000.0]
    state = HealthState(database_check=lambda: schema_revision(db.engine), clock=lambda: now[0])
    metrics = BotMetrics()
    server = HealthServer(state, metrics, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{server.port}", state, metrics, now, db
    server.stop()
    db.dispose()


def test_healthz_reports_each_part(served):
    url, state, _, now, db = served
    code, body = get(url + "/healthz")
    assert code == 503
    assert json.loads(body) == {"telegram": False, "model": False, "database": True}
    state.model_loaded = True
    state.telegram_seen()
    code, body = get(url + "/healthz")
    assert code == 200 and json.loads(body) == {"telegram": True, "model": True, "database": True}
    now[0] += 121  # no Bot API success for two minutes: Telegram counts as lost
    assert json.loads(get(url + "/healthz")[1])["telegram"] is False
    state.telegram_seen()
    db.dispose()
    state.database_check = lambda: (_ for _ in ()).throw(OSError("gone"))
    code, body = get(url + "/healthz")
    assert code == 503 and json.loads(body)["database"] is False


def test_metrics_count_messages_replies_errors_latency_and_model(served):
    url, _, metrics, _, _ = served
    for _ in range(3):
        metrics.message()
    metrics.reply(0.2)
    metrics.reply(3.0)
    metrics.error("model")
    metrics.model_version("abc123")
    metrics.model_version("def456")
    code, text = get(url + "/metrics")
    assert code == 200
    assert "xianliao_messages_total 3.0" in text
    assert "xianliao_replies_total 2.0" in text
    assert 'xianliao_errors_total{kind="model"} 1.0' in text
    assert 'xianliao_reply_latency_seconds_bucket{le="0.25"} 1.0' in text
    assert 'xianliao_reply_latency_seconds_bucket{le="5.0"} 2.0' in text
    assert 'xianliao_model_info{version="def456"} 1.0' in text
    assert "abc123" not in text  # the old version is gone
    assert get(url + "/other")[0] == 404


def metric(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_the_running_bot_serves_health_and_counts_its_messages(fake_api, start_bot):
    port = free_port()
    versions = iter(["echo-v2"])
    start_bot(health_port=port, loader=lambda path: EchoModel(next(versions)))
    url = f"http://127.0.0.1:{port}"
    code, body = get(url + "/healthz")
    assert code == 200, body
    assert json.loads(body) == {"telegram": True, "model": True, "database": True}
    text = get(url + "/metrics")[1]
    assert 'xianliao_model_info{version="echo-v1"} 1.0' in text
    before = metric(text, "xianliao_messages_total")

    fake_api.private_text(USER, "你好")
    fake_api.wait_sent(USER, 1)
    fake_api.private_text(USER, "/help")  # a command is not a message to the model
    fake_api.wait_sent(USER, 2)
    fake_api.wait_for(
        lambda: metric(get(url + "/metrics")[1], "xianliao_replies_total") >= 1, what="a reply"
    )
    text = get(url + "/metrics")[1]
    assert metric(text, "xianliao_messages_total") == before + 1
    assert metric(text, "xianliao_replies_total") == 1
    assert metric(text, "xianliao_reply_latency_seconds_count") == 1
    assert 0 < metric(text, "xianliao_reply_latency_seconds_sum") < 10

    fake_api.private_text(ADMIN_ID, "/reload")  # the new version shows on the next scrape
    fake_api.wait_sent(ADMIN_ID, 1)
    text = get(url + "/metrics")[1]
    assert 'xianliao_model_info{version="echo-v2"} 1.0' in text and "echo-v1" not in text


def test_health_is_off_by_default(fake_api, start_bot):
    bot = start_bot()
    observer = bot.application.bot_data["observer"]
    assert observer.server is None and observer.state.model_loaded


def test_errors_are_counted_by_kind():
    from xianliao.bot.observe import error_kind

    assert error_kind(NetworkError("down")) == "telegram"
    assert error_kind(OperationalError("select 1", {}, Exception("gone"))) == "database"
    assert error_kind(ValueError("bug")) == "handler"
