"""``xianliao eval``: held-out perplexity and reply quality of a checkpoint on a TSV file."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from xianliao.model.chatbot import UNKNOWN_REPLIES, ChatBot
from xianliao.model.decode import DecodeOptions
from xianliao.model.vocab import UNK_ID
from xianliao.training.corpus import Bad, iter_corpus
from xianliao.training.data import collate

# Replies that fit any question. A reply counts as generic when, without punctuation and
# spaces, it is one of these. The list is fixed so numbers compare across runs and models.
GENERIC_REPLIES = frozenset(
    [
        "我不知道",
        "不知道",
        "我也不知道",
        "我不知道你在说什么",
        "我不知道该怎么办",
        "我不确定",
        "不确定",
        "我知道",
        "知道",
        "你知道吗",
        "你知道",
        "我明白",
        "明白",
        "我懂",
        "懂了",
        "是的",
        "是",
        "是吗",
        "不是",
        "不是的",
        "对",
        "对的",
        "没错",
        "好的",
        "好",
        "好吧",
        "行",
        "可以",
        "没有",
        "没事",
        "没关系",
        "不",
        "不要",
        "不行",
        "嗯",
        "哦",
        "啊",
        "呃",
        "嘿",
        "什么",
        "为什么",
        "怎么了",
        "怎么",
        "谁",
        "那是什么",
        "你说什么",
        "真的吗",
        "真的",
        "谢谢",
        "谢谢你",
        "对不起",
        "抱歉",
        "我很抱歉",
        "当然",
        "当然了",
        "我也是",
        "我没有",
        "我不是",
        "你呢",
        "然后呢",
        "再见",
        "你好",
        "拜拜",
        "我不会",
        "我想是的",
        "也许",
        "也许吧",
        "可能",
        "我不这么认为",
        "我不想",
        "我不能",
        "算了",
        "走吧",
        "快点",
        "等等",
        "等一下",
        "听着",
        "天啊",
    ]
)
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def is_generic(reply: str) -> bool:
    """A reply that would do for any message: one of ``GENERIC_REPLIES``, or a line saying
    the bot cannot answer yet (``UNKNOWN_REPLIES``, of a bot that does not generate)."""
    return _PUNCT.sub("", reply) in GENERIC_REPLIES or reply in UNKNOWN_REPLIES


def distinct_n(seqs: Iterable[list[str]], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of replies (Li et al., 2016)."""
    total, seen = 0, set()
    for seq in seqs:
        grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


@dataclass
class EvalReport:
    pairs: int
    perplexity: float
    distinct_1: float  # over words of the replies
    distinct_2: float
    char_distinct_1: float  # over characters of the replies
    char_distinct_2: float
    generic_share: float  # share of replies in GENERIC_REPLIES
    unk_rate: float  # share of question+answer words that are not in the vocabulary
    replies_with_unk: float  # share of replies containing <unk>
    mean_reply_chars: float
    strategy: str
    bad_lines: int


def evaluate(
    bot: ChatBot,
    tsv: str,
    *,
    limit: int = 1000,
    options: DecodeOptions | None = None,
    batch_size: int = 64,
    samples: int = 0,
) -> tuple[EvalReport, list[tuple[str, str, str]]]:
    """Returns the report and up to ``samples`` (question, reference, reply) triples."""
    opts = options or bot.options  # the decoding the bot serves
    pairs, bad = [], 0
    for item in iter_corpus(tsv):
        if isinstance(item, Bad):
            bad += 1
            continue
        q, a = bot.encode_text(item[0]), bot.vocab.encode(bot.tokenizer.tokenize(item[1]))
        if q and a:
            pairs.append((item, q, a[:60]))
        if len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"{tsv} has no usable question/answer pairs")
    model = bot.model
    total_loss, total_tok, unk, words = 0.0, 0, 0, 0
    replies: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            b = collate([(np.asarray(q), np.asarray(a)) for _, q, a in chunk])
            loss = model(b.src, b.src_len, b.tgt_in, b.tgt_out)
            total_loss += loss.item() * b.n_tokens
            total_tok += b.n_tokens
            replies += bot.reply_many([p[0][0] for p in chunk], **opts.to_dict())
        for _, q, a in pairs:
            unk += q.count(UNK_ID) + a.count(UNK_ID)
            words += len(q) + len(a)
    toks = [bot.tokenizer.tokenize(r) for r in replies]
    chars = [list(_PUNCT.sub("", r)) for r in replies]
    report = EvalReport(
        pairs=len(pairs),
        perplexity=round(math.exp(min(total_loss / total_tok, 50.0)), 3),
        distinct_1=round(distinct_n(toks, 1), 4),
        distinct_2=round(distinct_n(toks, 2), 4),
        char_distinct_1=round(distinct_n(chars, 1), 4),
        char_distinct_2=round(distinct_n(chars, 2), 4),
        generic_share=round(sum(map(is_generic, replies)) / len(replies), 4),
        unk_rate=round(unk / max(words, 1), 4),
        replies_with_unk=round(sum("<unk>" in r for r in replies) / len(replies), 4),
        mean_reply_chars=round(sum(map(len, replies)) / len(replies), 2),
        strategy=opts.strategy if bot.generates(opts) else "index only (generate false)",
        bad_lines=bad,
    )
    triples = [(p[0][0], p[0][1], r) for p, r in zip(pairs[:samples], replies, strict=False)]
    return report, triples


def report_dict(report: EvalReport) -> dict:
    return asdict(report)
