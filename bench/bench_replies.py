"""What users meet: the served decoding's replies to the 50 everyday messages, dev-set reply
statistics, and files for a blind judgement against people's replies.

    .venv/bin/python bench/bench_replies.py runs/mix/best.pt --dev data/turns/valid.tsv \
        --limit 120 --out bench/out/replies

Prints the 50 replies (Markdown) and the statistics (generic share, distinct-2, replies with
<unk>, blocked replies, where the replies came from, ms per reply). Writes, under --out:
``everyday.md``; ``judge.tsv`` (id, message, reply: the bot's replies, under each decoding of
``--compare``, and the people's replies to the same dev messages, shuffled, nothing saying
which is which) for a judge; ``key.tsv`` (id, source) to score the judgement with
``--score JUDGED.tsv`` (id<TAB>1 or 0 per line).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EVERYDAY_FILE = Path(__file__).with_name("everyday50.txt")


def everyday(path: Path = EVERYDAY_FILE) -> list[str]:
    lines = Path(path).read_text("utf-8").splitlines()
    return [x for x in lines if x and not x.startswith("#")]


def dev_pairs(paths: list[str], limit: int, seed: int) -> list[tuple[str, str]]:
    pairs = []
    for path in paths:
        for line in Path(path).read_text("utf-8").splitlines():
            q, _, a = line.partition("\t")
            if q and a:
                pairs.append((q, a))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def reply_stats(bot, replies: list[str]) -> dict:
    from xianliao.training.evaluate import is_generic

    tokens = [bot.tokenizer.tokenize(r) for r in replies]
    bigrams = [tuple(t[i : i + 2]) for t in tokens for i in range(len(t) - 1)]
    return {
        "replies": len(replies),
        "generic_share": round(sum(is_generic(r) for r in replies) / len(replies), 4),
        "distinct_2": round(len(set(bigrams)) / max(len(bigrams), 1), 4),
        "with_unk": round(sum("<unk>" in r for r in replies) / len(replies), 4),
        "blocked": sum(
            bot.filter.blocked(r, t) is not None for r, t in zip(replies, tokens, strict=True)
        ),
    }


def latency(bot, questions: list[str], opts: dict, warm: bool = False) -> dict:
    """Milliseconds per reply, one message at a time (as a lone user sees it). ``warm``: after
    one untimed pass over the same messages, so every answer's neutral-question score is
    remembered, as in a bot that has run a while (else 10 messages of warm-up: a cold cache,
    which also favours the decodings timed later in one run)."""
    for q in questions if warm else questions[:10]:
        bot.reply(q, **opts)
    times = []
    for q in questions:
        t0 = time.perf_counter()
        bot.reply(q, **opts)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    pick = lambda p: round(times[min(len(times) - 1, int(len(times) * p))], 1)  # noqa: E731
    return {"replies": len(times), "p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99)}


def score(judged: Path, key: Path) -> dict:
    source = dict(line.split("\t") for line in key.read_text("utf-8").splitlines())
    marks: dict[str, list[int]] = {}
    for line in judged.read_text("utf-8").splitlines():
        item, _, mark = line.partition("\t")
        if item in source and mark.strip() in {"0", "1"}:
            marks.setdefault(source[item], []).append(int(mark))
    return {s: f"{sum(m)} of {len(m)} ({sum(m) / len(m):.0%})" for s, m in sorted(marks.items())}


def main() -> int:
    from xianliao.model.chatbot import ChatBot

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--dev", nargs="*", default=[], help="held-out question<TAB>answer files")
    p.add_argument("--limit", type=int, default=120, help="dev messages to judge")
    p.add_argument("--stats-limit", type=int, default=1000, help="dev messages for statistics")
    p.add_argument("--options", default="{}", help="decoding options (JSON) over the served ones")
    p.add_argument("--index", default=None, help="reply index (default: beside the checkpoint)")
    p.add_argument(
        "--everyday",
        default=str(EVERYDAY_FILE),
        help="everyday messages, one per line (default bench/everyday50.txt; "
        "bench/everyday50_fresh.txt, _third.txt, _fourth.txt to _eleventh.txt: 50 "
        "more each, written apart from the shipped exchanges)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="bench/out/replies")
    p.add_argument("--score", metavar="JUDGED", help="score a judged file against OUT/key.tsv")
    p.add_argument(
        "--latency", type=int, default=0, help="time this many dev replies, one at a time"
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="time each decoding after an untimed pass over the same messages",
    )
    p.add_argument(
        "--fp32", action="store_true", help="the fp32 model (MODEL_QUANTIZE=false); default int8"
    )
    p.add_argument(
        "--compare",
        default="{}",
        help='more decodings for the same dev messages, JSON {"name": {options}}; all go into '
        "one shuffled file to judge",
    )
    a = p.parse_args()
    out = Path(a.out)
    if a.score:
        print(json.dumps(score(Path(a.score), out / "key.tsv"), ensure_ascii=False))
        return 0
    bot = ChatBot.load(
        a.checkpoint, threads=a.threads, index_path=a.index, quantize=False if a.fp32 else None
    )
    opts = {"seed": 0, **json.loads(a.options)}
    out.mkdir(parents=True, exist_ok=True)
    msgs = everyday(a.everyday)
    t0 = time.perf_counter()
    replies = [bot.reply(m, **opts) for m in msgs]
    ms = (time.perf_counter() - t0) * 1000 / len(msgs)
    table = "| message | reply |\n|---|---|\n" + "".join(
        f"| {m} | {r} |\n" for m, r in zip(msgs, replies, strict=True)
    )
    (out / "everyday.md").write_text(table, "utf-8")
    print(table)
    print(f"{ms:.1f} ms per reply (one at a time, {a.threads} thread(s))")
    if not a.dev:
        return 0
    pairs = dev_pairs(a.dev, max(a.limit, a.stats_limit, a.latency), a.seed)
    questions = [q for q, _ in pairs]
    configs = {"served": {}, **json.loads(a.compare)}
    items = [(q, r, "people") for q, r in pairs[: a.limit]]
    all_stats = {"people": reply_stats(bot, [r for _, r in pairs])}
    for name, over in configs.items():
        cfg = {**opts, **over}
        if a.latency:
            print(name, json.dumps(latency(bot, questions[: a.latency], cfg, a.warm)), flush=True)
        replies = [
            r
            for i in range(0, len(questions), 32)
            for r in bot.reply_many(questions[i : i + 32], **cfg)
        ]
        all_stats[name] = reply_stats(bot, replies)
        print(name, json.dumps(all_stats[name], ensure_ascii=False), flush=True)
        items += [(q, r, name) for q, r in zip(questions[: a.limit], replies, strict=False)]
    (out / "stats.json").write_text(json.dumps(all_stats, ensure_ascii=False, indent=2), "utf-8")
    random.Random(a.seed + 1).shuffle(items)
    with (
        open(out / "judge.tsv", "w", encoding="utf-8") as judge,
        open(out / "key.tsv", "w", encoding="utf-8") as key,
    ):
        for n, (q, r, src) in enumerate(items, 1):
            judge.write(f"{n}\t{q}\t{r}\n")
            key.write(f"{n}\t{src}\n")
    print(f"{len(items)} replies to judge in {out / 'judge.tsv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
