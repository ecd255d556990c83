"""Replies to many held-out messages under the served decoding: how many the reply filter would
block (it runs on every reply, so the count must be 0), the generic share, distinct-2 and
``<unk>``.

    .venv/bin/python bench/bench_blocklist.py runs/mix/best.pt data/all/valid.tsv \
        data/turns/valid.tsv --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_replies import dev_pairs, reply_stats  # noqa: E402


def main() -> int:
    from xianliao.model.chatbot import ChatBot

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("dev", nargs="+", help="held-out question<TAB>answer files")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    bot = ChatBot.load(a.checkpoint, threads=a.threads)
    questions = [q for q, _ in dev_pairs(a.dev, 10**9, 3)]
    t0 = time.time()
    replies = [
        r
        for seed in a.seeds
        for i in range(0, len(questions), 32)
        for r in bot.reply_many(questions[i : i + 32], seed=seed)
    ]
    stats = {**reply_stats(bot, replies), "seconds": round(time.time() - t0)}
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
