"""The everyday exchanges shipped with xianliao (``xianliao:everyday``): every line one
sendable exchange, each message once."""

from __future__ import annotations

from xianliao.model.reply_filter import ReplyFilter, has_content
from xianliao.model.text import Tokenizer, normalise
from xianliao.training.corpus import EVERYDAY_CORPUS


def test_every_shipped_exchange_is_a_message_and_a_reply_the_bot_may_send():
    lines = EVERYDAY_CORPUS.read_text("utf-8").splitlines()
    assert len(lines) > 1000
    reply_filter, tokenizer = ReplyFilter.default(), Tokenizer()
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        assert len(parts) == 2 and all(p.strip() == p and p for p in parts), f"line {n}: {line!r}"
        message, reply = parts
        assert has_content(message) and reply_filter.blocked_word(message) is None, f"line {n}"
        why = reply_filter.blocked(reply, tokenizer.tokenize(reply))
        assert why is None, f"line {n}: {reply} ({why})"
        assert normalise(message) not in seen, f"line {n} repeats line {seen[normalise(message)]}"
        seen[normalise(message)] = n
