"""Bench the Telegram bot end to end: simulated users -> fake Bot API -> ``xianliao bot``.

Runs the real bot as a subprocess (``python -m xianliao bot``) pointed at the fake Bot API
server from the tests (``TELEGRAM_BASE_URL``), with a fresh SQLite file. Each simulated user
sends a message, waits for the reply, thinks for a random time (``--think``), and sends the
next, until every user has sent ``--messages``. Reports replies/s, reply latency p50/p95
(measured by the fake server: update handed to the bot -> its sendMessage arrives; and message
pushed -> reply, which adds the long-poll pick-up), the exact number of stored exchanges, and
the bot process's peak memory (RssAnon and total RSS from /proc).

    .venv/bin/python bench/bench_bot.py --checkpoint runs/best.pt
    .venv/bin/python bench/bench_bot.py --checkpoint runs/best.pt --think 0   # saturate

Run by hand (not by pytest).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import _cpu_s as proc_cpu_s  # noqa: E402
from common import tree  # noqa: E402

from tests.fake_bot_api import TOKEN, FakeBotAPI  # noqa: E402

QUESTIONS = [
    "你好",
    "你叫什么名字",
    "今天天气怎么样",
    "我喜欢你",
    "再见",
    "你是谁",
    "你会做什么",
    "讲个笑话吧",
    "你吃饭了吗",
    "晚安",
    "你几岁了",
    "你喜欢什么颜色",
    "我有点累",
    "你在干嘛",
    "周末去哪里玩",
    "你是机器人吗",
    "谢谢你",
    "早上好",
    "你相信爱情吗",
    "什么是人工智能",
]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it (the model workers and
    multiprocessing's resource tracker)."""
    return sum(proc_cpu_s(p) for p in tree(pid))


def tree_memory(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (kB) summed over ``pid`` and its descendants."""
    total = {"VmRSS": 0, "RssAnon": 0}
    for p in tree(pid):
        mem = proc_memory(p)
        for k in total:
            total[k] += mem.get(k, 0)
    return total


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM (kB) of a process."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class Users:
    """Closed-loop users: the next message goes out ``think`` seconds after the reply."""

    def __init__(self, fake: FakeBotAPI, n_users: int, n_messages: int, think: float, seed: int):
        self.fake = fake
        self.n_messages = n_messages
        self.think = think
        self.rng = random.Random(seed)
        self.user_ids = [10_000 + i for i in range(n_users)]
        self.sent_count = dict.fromkeys(self.user_ids, 0)
        self.outstanding: dict[int, tuple[int, float]] = {}  # chat -> (update_id, pushed_at)
        self.latency_bot: list[float] = []  # update handed to the bot -> sendMessage
        self.latency_user: list[float] = []  # message pushed -> sendMessage
        self.replies = 0
        self.unexpected = 0
        self.first_push: float | None = None
        self.last_reply: float | None = None
        self.lock = threading.Lock()
        self.heap: list[tuple[float, int]] = []
        self.cond = threading.Condition(self.lock)
        self.done = threading.Event()

    def _push(self, user_id: int) -> None:
        i = self.sent_count[user_id]
        text = f"{QUESTIONS[(user_id + i) % len(QUESTIONS)]}"
        now = time.monotonic()
        update = self.fake.private_text(user_id, text)
        with self.lock:
            self.sent_count[user_id] = i + 1
            self.outstanding[user_id] = (update["update_id"], now)
            if self.first_push is None:
                self.first_push = now

    def on_send(self, message: dict) -> None:
        received = time.monotonic()
        chat = message["chat"]["id"]
        with self.lock:
            pending = self.outstanding.pop(chat, None)
            if pending is None:
                self.unexpected += 1
                return
            update_id, pushed = pending
            delivered = self.fake.delivered_at.get(update_id, pushed)
            self.latency_bot.append((received - delivered) * 1000)
            self.latency_user.append((received - pushed) * 1000)
            self.replies += 1
            self.last_reply = received
            if self.sent_count[chat] < self.n_messages:
                due = received + (self.rng.uniform(0.5, 1.5) * self.think if self.think else 0)
                heapq.heappush(self.heap, (due, chat))
                self.cond.notify()
            elif self.replies == len(self.user_ids) * self.n_messages:
                self.done.set()

    def run_scheduler(self) -> None:
        while not self.done.is_set():
            with self.cond:
                if not self.heap:
                    self.cond.wait(0.05)
                    continue
                due, chat = self.heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.cond.wait(min(wait, 0.05))
                    continue
                heapq.heappop(self.heap)
            self._push(chat)

    def start(self) -> None:
        threading.Thread(target=self.run_scheduler, daemon=True).start()
        # Users arrive spread over one think time, as they would.
        with self.cond:
            for uid in self.user_ids:
                heapq.heappush(self.heap, (time.monotonic() + self.rng.random() * self.think, uid))
            self.cond.notify()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "runs" / "best.pt"))
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--messages", type=int, default=20, help="messages per user")
    p.add_argument(
        "--think",
        type=float,
        default=0.8,
        help="mean seconds between a reply and the user's next message (uniform 0.5x..1.5x; "
        "100 users x 0.8 s offer up to 125 messages/s); 0 = answer-and-send at once",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="MODEL_WORKERS of the bot (0 = model in-process)"
    )
    p.add_argument("--threads", type=int, default=1, help="TORCH_THREADS of the bot")
    p.add_argument("--max-batch", type=int, default=8, help="MODEL_MAX_BATCH of the bot")
    p.add_argument(
        "--send-max-rate",
        type=float,
        default=0,
        help="SEND_MAX_RATE of the bot (Telegram's ~30/s; 0 = measure the bot alone)",
    )
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = p.parse_args(argv)
    if not Path(a.checkpoint).exists():
        print(
            f"no checkpoint at {a.checkpoint}: train one first (xianliao quickstart / train)",
            file=sys.stderr,
        )
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench_bot_"))
    db = workdir / "bench.db"
    with FakeBotAPI(long_poll_cap=10) as fake:
        users = Users(fake, a.users, a.messages, a.think, a.seed)
        fake.on_send = users.on_send
        env = {
            **os.environ,
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_BASE_URL": fake.base_url,
            "DATABASE_URL": f"sqlite:///{db}",
            "MODEL_PATH": str(a.checkpoint),
            "ADMIN_USER_IDS": "",
            "TORCH_THREADS": str(a.threads),
            "MODEL_MAX_BATCH": str(a.max_batch),
            "MODEL_WORKERS": str(a.workers),
            "RATE_LIMIT_MESSAGES": "0",
            "SEND_MAX_RATE": str(a.send_max_rate),
            "LOG_LEVEL": "WARNING",
            "WEBHOOK_URL": "",
        }
        bot = subprocess.Popen(
            [sys.executable, "-m", "xianliao", "bot", "--env-file", os.devnull],
            cwd=workdir,
            env={
                **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Messages the users have sent and not yet had answered, every 0.1 s: the queue a user
        # stands in (above Telegram's send limit it grows until the rate limit holds it).
        waiting: list[int] = []
        peak = {"RssAnon": 0, "VmRSS": 0, "VmHWM": 0}
        peak_tree = {"RssAnon": 0, "VmRSS": 0}
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                for k, v in proc_memory(bot.pid).items():
                    peak[k] = max(peak[k], v)
                for k, v in tree_memory(bot.pid).items():
                    peak_tree[k] = max(peak_tree[k], v)
                if users.first_push is not None and not users.done.is_set():
                    with users.lock:
                        waiting.append(len(users.outstanding))
                stop_sampling.wait(0.1)

        threading.Thread(target=sample, daemon=True).start()
        try:
            fake.wait_for(
                lambda: fake.calls_of("getUpdates") or bot.poll() is not None,
                timeout=120,
                what="the bot to start polling",
            )
            if bot.poll() is not None:
                print(bot.stdout.read(), file=sys.stderr)
                return 1
            idle = proc_memory(bot.pid)
            idle_tree = tree_memory(bot.pid)
            cpu0 = proc_cpu_s(bot.pid)
            tree_cpu0 = tree_cpu_s(bot.pid)
            bench_cpu0 = time.process_time()
            users.start()
            finished = users.done.wait(a.timeout)
            bot_cpu = proc_cpu_s(bot.pid) - cpu0
            all_cpu = tree_cpu_s(bot.pid) - tree_cpu0
            bench_cpu = time.process_time() - bench_cpu0
        finally:
            bot.send_signal(signal.SIGINT)
            try:
                out, _ = bot.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                bot.kill()
                out, _ = bot.communicate()
            stop_sampling.set()

    expected = a.users * a.messages
    conn = sqlite3.connect(db)
    stored, distinct, versions = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT chat_id || ':' || message_id),"
        " GROUP_CONCAT(DISTINCT model_version) FROM exchanges"
    ).fetchone()
    db_p50 = conn.execute(
        "SELECT latency_ms FROM exchanges ORDER BY latency_ms LIMIT 1 OFFSET ?",
        (max(0, math.ceil(0.5 * stored) - 1),),
    ).fetchone()
    conn.close()
    elapsed = (users.last_reply or 0) - (users.first_push or 0)
    results = {
        "checkpoint": str(a.checkpoint),
        "model_version": versions,
        "users": a.users,
        "messages_per_user": a.messages,
        "think_s": a.think,
        "torch_threads": a.threads,
        "model_workers": a.workers,
        "max_batch": a.max_batch,
        "send_max_rate": a.send_max_rate,
        "finished": finished,
        "replies": users.replies,
        "expected": expected,
        "unexpected_sends": users.unexpected,
        "seconds": round(elapsed, 2),
        "replies_per_s": round(users.replies / elapsed, 1) if elapsed > 0 else None,
        "latency_bot_p50_ms": round(percentile(users.latency_bot, 0.50), 1),
        "latency_bot_p95_ms": round(percentile(users.latency_bot, 0.95), 1),
        "latency_user_p50_ms": round(percentile(users.latency_user, 0.50), 1),
        "latency_user_p95_ms": round(percentile(users.latency_user, 0.95), 1),
        "db_latency_p50_ms": round(db_p50[0], 1) if db_p50 else None,
        "waiting_messages_p50": percentile(waiting, 0.50) if waiting else None,
        "waiting_messages_p95": percentile(waiting, 0.95) if waiting else None,
        "waiting_messages_max": max(waiting) if waiting else None,
        "stored_exchanges": stored,
        "distinct_messages_stored": distinct,
        "lost_rows": expected - stored,
        "bot_cpu_s": round(bot_cpu, 2),
        "bot_cpu_ms_per_reply": round(bot_cpu * 1000 / max(users.replies, 1), 2),
        "bot_and_workers_cpu_s": round(all_cpu, 2),
        "bot_and_workers_cpu_ms_per_reply": round(all_cpu * 1000 / max(users.replies, 1), 2),
        "bench_process_cpu_s": round(bench_cpu, 2),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "idle_rss_kb": idle.get("VmRSS"),
        "idle_rss_anon_kb": idle.get("RssAnon"),
        "peak_rss_kb": max(peak["VmRSS"], peak["VmHWM"]),
        "peak_rss_anon_kb": peak["RssAnon"],
        "idle_all_processes_rss_kb": idle_tree["VmRSS"],
        "idle_all_processes_rss_anon_kb": idle_tree["RssAnon"],
        "peak_all_processes_rss_kb": peak_tree["VmRSS"],
        "peak_all_processes_rss_anon_kb": peak_tree["RssAnon"],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    errors = [line for line in (out or "").splitlines() if "ERROR" in line or "Traceback" in line]
    if errors:
        print("bot errors:\n" + "\n".join(errors[:20]), file=sys.stderr)
    return 0 if finished and stored == expected and distinct == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
