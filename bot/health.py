"""The bot process's health and metrics over HTTP: ``/healthz`` (Telegram reached, model loaded,
database reachable) and ``/metrics`` for Prometheus (messages, replies, reply latency, errors,
model version).

A small threaded HTTP server beside the bot's event loop: scrapes and probes never wait for the
loop, and a stalled loop still answers (with the stale Telegram state it last recorded, which
the probe shows). The bot records events through :class:`BotMetrics`, which is thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

# Seconds from receiving a message to its reply being ready: the bot answers in 0.01-3 s.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Telegram counts as reached if the last successful Bot API call is this recent (polling
# returns at least every poll timeout, 10 s by default in PTB).
TELEGRAM_FRESH_S = 120.0


class BotMetrics:
    """The bot's Prometheus metrics, in their own registry (so tests and two bots in one
    process never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.messages = Counter(
            "xianliao_messages", "Text messages received", registry=self.registry
        )
        self.replies = Counter("xianliao_replies", "Replies sent", registry=self.registry)
        self.errors = Counter(
            "xianliao_errors", "Errors, by where they happened", ["kind"], registry=self.registry
        )
        self.latency = Histogram(
            "xianliao_reply_latency_seconds",
            "Time from receiving a message to its reply",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model = Gauge(
            "xianliao_model_info",
            "The model being served (value 1, its version as a label)",
            ["version"],
            registry=self.registry,
        )
        self._version: str | None = None
        self._lock = threading.Lock()

    def message(self) -> None:
        self.messages.inc()

    def reply(self, latency_s: float) -> None:
        self.replies.inc()
        self.latency.observe(latency_s)

    def error(self, kind: str) -> None:
        """``kind``: a short fixed word (``model``, ``database``, ``telegram``, ``handler``)."""
        self.errors.labels(kind=kind).inc()

    def model_version(self, version: str) -> None:
        """The served model changed (startup, /reload, a promotion)."""
        with self._lock:
            if self._version is not None:
                self.model.remove(self._version)
            self.model.labels(version=version).set(1)
            self._version = version

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class HealthState:
    """What ``/healthz`` reports. The bot sets ``telegram_ok_at`` after each successful Bot API
    call (or poll) and ``model_loaded`` when a model is ready; the database is checked on each
    probe by ``database_check`` (a callable that raises when it is unreachable)."""

    database_check: Callable[[], object] | None = None
    model_loaded: bool = False
    telegram_ok_at: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic)

    def telegram_seen(self) -> None:
        self.telegram_ok_at = self.clock()

    def report(self) -> dict[str, bool]:
        telegram = (
            self.telegram_ok_at is not None
            and self.clock() - self.telegram_ok_at <= TELEGRAM_FRESH_S
        )
        database = False
        if self.database_check is not None:
            try:
                self.database_check()
                database = True
            except Exception as exc:  # any failure means unreachable; the probe says so
                logger.warning("health: database check failed: %s", type(exc).__name__)
        return {"telegram": telegram, "model": self.model_loaded, "database": database}


def _handler(
    state: HealthState, metrics: BotMetrics, refresh: Callable[[], None] | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if refresh is not None:
                try:
                    refresh()
                except Exception as exc:  # a probe must answer even if the bot is half down
                    logger.warning("health: refresh failed: %s", type(exc).__name__)
            if self.path == "/healthz":
                report = state.report()
                ok = all(report.values())
                self._send(200 if ok else 503, "application/json", json.dumps(report).encode())
            elif self.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.exposition())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes every few seconds would flood the bot's log

    return Handler


class HealthServer:
    """``/healthz`` and ``/metrics`` on ``host:port`` in a daemon thread. ``refresh`` is called
    before each answer (to read values the bot keeps elsewhere, e.g. the model version)."""

    def __init__(
        self,
        state: HealthState,
        metrics: BotMetrics,
        host: str,
        port: int,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.server = ThreadingHTTPServer((host, port), _handler(state, metrics, refresh))
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        logger.info("health and metrics on http://%s:%d/healthz", *self.server.server_address[:2])
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
