"""``xianliao index``: build the reply index from the same corpora ``prepare`` reads.

The pairs ``prepare`` holds out for validation (the same hash) are left out, so dev-set
measurements never find their own answer in the index; so are the answers ``prepare`` cleans
away, so retrieval never offers what training refused to learn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xianliao.model.reply_filter import BROKEN_TEXT, ReplyFilter, has_content
from xianliao.model.reply_index import build_index
from xianliao.model.text import Tokenizer, normalise
from xianliao.training.corpus import (
    Bad,
    check_specs,
    is_shipped,
    iter_corpus,
    resolve,
    shipped_offsets,
)
from xianliao.training.prepare import held_out


@dataclass
class IndexStats:
    pairs_read: int = 0
    pairs_indexed: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0
    bytes: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _kept_pairs(
    specs: list[str], stats: IndexStats, reply_filter: ReplyFilter, valid_permille: int
) -> Iterator[tuple[str, str, str]]:
    """(normalised question, answer as written, source name) of every pair worth indexing.
    A shipped corpus's pairs are never held out: they were written as this bot's answers and
    are no one's validation set (holding out 1% had left out 你是谁 and 你多大了)."""
    for spec in specs:
        source = Path(spec).stem if not spec.startswith("chatterbot:") else spec
        permille = 0 if is_shipped(spec) else valid_permille
        for item in iter_corpus(spec):
            stats.pairs_read += 1
            if isinstance(item, Bad):
                stats.skip(item.reason)
                continue
            question, answer = normalise(item[0]), item[1].strip()
            if not question or not has_content(normalise(answer)):
                stats.skip("empty, or answer without words")
            elif held_out(question, normalise(answer), permille):
                stats.skip("held out for validation")
            elif (why := reply_filter.unusable(answer)) is not None:
                broken = why == BROKEN_TEXT
                stats.skip(
                    "answer with broken text (U+FFFD)" if broken else "answer on the blocklist"
                )
            else:
                yield question, answer, source


def _segmented(
    pairs: Iterator[tuple[str, str, str]], tokenizer: Tokenizer, stats: IndexStats
) -> Iterator[tuple[list[str], str, str]]:
    """Segment questions a block at a time (one segmenter call per 5,000 questions)."""
    block: list[tuple[str, str, str]] = []

    def flush() -> Iterator[tuple[list[str], str, str]]:
        words, ids, lengths = tokenizer.tokenize_block([q for q, _, _ in block], normalised=True)
        pos = 0
        for (_, answer, source), n in zip(block, lengths.tolist(), strict=True):
            yield [words[i] for i in ids[pos : pos + n].tolist()], answer, source
            pos += n
        stats.pairs_indexed += len(block)
        block.clear()

    for pair in pairs:
        block.append(pair)
        if len(block) >= 5000:
            yield from flush()
    if block:
        yield from flush()


def build(
    specs: list[str],
    out: str | Path,
    *,
    valid_permille: int = 10,
    blocklist: str | None = None,
    fast: bool = True,
    offsets: dict[str, float] | None = None,
) -> IndexStats:
    """Index the question/answer pairs of ``specs`` into the file ``out`` (atomically).
    ``offsets``: corpus name (a file's stem) -> a number added to its answers' scores, over
    the shipped corpora's own (``SHIPPED_OFFSETS``)."""
    specs = [resolve(s) for s in specs]  # a shipped corpus's name -> its file
    check_specs(specs)
    offsets = {**shipped_offsets(specs), **(offsets or {})}
    t0 = time.perf_counter()
    stats = IndexStats()
    pairs = _kept_pairs(specs, stats, ReplyFilter.default(blocklist), valid_permille)
    index = build_index(_segmented(pairs, Tokenizer(fast=fast), stats), out, offsets)
    stats.pairs_indexed = index.size  # pairs whose question held a word
    index.close()
    stats.seconds = round(time.perf_counter() - t0, 3)
    stats.bytes = Path(out).stat().st_size
    return stats
