"""Reply quality of a checkpoint: eval metrics for each decoding strategy on held-out pairs, and
replies to 20 everyday questions (the default decoding, as the bot answers).

    .venv/bin/python bench/bench_quality.py runs/dgk/best.pt data/dgk/valid.tsv --limit 1000

Prints a Markdown table and the replies; also writes bench/out/quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EVERYDAY = [
    "你好",
    "你叫什么名字",
    "今天天气怎么样",
    "我好累",
    "你吃饭了吗",
    "你喜欢什么",
    "晚安",
    "早上好",
    "你在干什么",
    "我很无聊",
    "你是谁",
    "我们去看电影吧",
    "你多大了",
    "你有女朋友吗",
    "我今天很开心",
    "明天见",
    "你住在哪里",
    "我饿了",
    "你喜欢音乐吗",
    "周末有什么打算",
]


def main() -> int:
    from xianliao.model.chatbot import ChatBot
    from xianliao.model.decode import DecodeOptions
    from xianliao.training.evaluate import evaluate

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("tsv", help="held-out question<TAB>answer pairs (DATA_DIR/valid.tsv)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--extra",
        default="{}",
        help='more decodings as JSON, e.g. \'{"mmi": {"strategy": "sample_rank", "mmi_weight": 1}}\'',
    )
    p.add_argument("--out-name", default="quality.json", help="file name in bench/out")
    a = p.parse_args()
    bot = ChatBot.load(a.checkpoint, threads=a.threads)
    default = bot.options.to_dict()
    configs = {
        "greedy": {"strategy": "greedy"},
        "beam 5": {"strategy": "beam", "beam_size": 5},
        f"default ({default['strategy']}, T={default['temperature']}, k={default['top_k']}, "
        f"p={default['top_p']})": {},
        **json.loads(a.extra),
    }
    rows = {}
    everyday = {}
    for name, over in configs.items():
        opts = DecodeOptions(**{**default, **over, "seed": 0})
        report, _ = evaluate(bot, a.tsv, limit=a.limit, options=opts)
        rows[name] = asdict(report)
        print(name, json.dumps(rows[name], ensure_ascii=False), flush=True)
        everyday[name] = dict(
            zip(EVERYDAY, bot.reply_many(EVERYDAY, **{**over, "seed": 0}), strict=True)
        )
        print(" | ".join(f"{q} -> {r}" for q, r in everyday[name].items()), flush=True)
    replies = bot.reply_many(EVERYDAY, seed=0)
    out = {
        "checkpoint": a.checkpoint,
        "version": bot.version,
        "metrics": rows,
        "everyday": dict(zip(EVERYDAY, replies, strict=True)),
        "everyday_by_decoding": everyday,
    }
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out", a.out_name).write_text(json.dumps(out, ensure_ascii=False, indent=2))
    print(
        "\n| decoding | perplexity | generic share | distinct-1 | distinct-2 | char distinct-2 "
        "| replies with UNK | mean reply chars |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name, r in rows.items():
        print(
            f"| {name} | {r['perplexity']} | {r['generic_share']:.1%} | {r['distinct_1']} | "
            f"{r['distinct_2']} | {r['char_distinct_2']} | {r['replies_with_unk']:.1%} | "
            f"{r['mean_reply_chars']} |"
        )
    print("\n| question | reply |\n|---|---|")
    for q, r in out["everyday"].items():
        print(f"| {q} | {r} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
