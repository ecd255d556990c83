"""The reply index: answers that people gave to questions like this one.

A SQLite FTS5 table over segmented questions (the standard library's sqlite3, no server, no
extra package): on disk, memory-mapped by SQLite, so its memory does not grow with the corpus;
a search is one BM25-ranked full-text query. The same class serves the corpus index (a file
built by ``xianliao index``) and the small in-memory index of exchanges an admin approved or
edited (``ReplyIndex.memory``), which is rebuilt when the review state changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from xianliao.model.polarity import answers_other_mood, polarity
from xianliao.model.reply_filter import has_content
from xianliao.model.text import normalise

logger = logging.getLogger(__name__)

INDEX_FORMAT = 2
INDEX_NAME = "replies.sqlite"  # the default index file, beside the served checkpoint
# A query word in more than this share of all questions (了, 你, 吗, 好) is left out of the
# full-text search: it barely ranks and costs a long posting list. A message of such words only
# is looked up by its exact words instead (an indexed column), which is what finds 你好吗.
COMMON_SHARE = 0.005
CHEAP_DOCS = 1000  # a word in fewer questions than this is never too common to search for
MAX_QUERY_WORDS = 4  # the message's rarest words searched for (the search's cost is bounded)
# A question of the opposite polarity (bad news for good, model/polarity.py) counts as this much
# less alike: its answer fits the other mood.
OPPOSITE_MOOD = 0.5
SAME_QUESTION = 0.999  # the similarity of a question with exactly the message's words


class ReplyIndexError(Exception):
    """A reply index that cannot be opened or is not one (one-line message)."""


@dataclass(frozen=True)
class Hit:
    question: str  # the indexed question, its tokens joined by spaces
    answer: str  # the answer as it was written
    bm25: float  # FTS5's BM25 score (lower is better)
    source: str  # which corpus or "approved"
    similarity: float = 0.0  # how alike the two questions are, 0..1 (``similarity``)
    offset: float = 0.0  # added to the answer's score: how much its corpus is trusted


def default_index_path(checkpoint: str | os.PathLike) -> Path:
    """Where the index served with ``checkpoint`` lives: ``replies.sqlite`` in its folder."""
    return Path(checkpoint).parent / INDEX_NAME


def similarity(weights: dict[str, float], other: list[str]) -> float:
    """How alike a message (its words with idf ``weights``) and an indexed question are, 0..1:
    the harmonic mean of the share of the message's weight the question covers and the share
    of the question's words that are in the message. 1 for the same words."""
    total = sum(weights.values())
    words = set(other)
    if not total or not words:
        return 0.0
    recall = sum(w for t, w in weights.items() if t in words) / total
    precision = sum(1 for t in words if t in weights) / len(words)
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


def _fts_query(words: Iterable[str]) -> str:
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


class ReplyIndex:
    """Search questions by their words; ``add`` pairs. Not thread-safe: one per thread."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        self._df = lru_cache(maxsize=50_000)(self._doc_freq)
        row = conn.execute("SELECT value FROM meta WHERE key = 'pairs'").fetchone()
        self.size = int(row[0]) if row else 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'source_offsets'").fetchone()
        # corpus name -> score offset of its answers (xianliao index --offset NAME=VALUE)
        self.offsets: dict[str, float] = json.loads(row[0]) if row else {}

    @classmethod
    def open(cls, path: str | os.PathLike) -> ReplyIndex:
        """Open an index file read-only. Raises ``ReplyIndexError`` when it is missing or not one."""
        p = Path(path)
        if not p.is_file():
            raise ReplyIndexError(
                f"reply index {p} does not exist (build one with 'xianliao index')"
            )
        try:
            conn = sqlite3.connect(
                f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ReplyIndexError(f"{p} is not a reply index ({exc})") from None
        if not fmt or int(fmt[0]) != INDEX_FORMAT:
            conn.close()
            raise ReplyIndexError(f"{p} is a reply index of another format; rebuild it")
        return cls(conn, str(p))

    @classmethod
    def create(cls, path: str | os.PathLike | None = None) -> ReplyIndex:
        """A new, empty index in ``path`` (replaced if it exists) or in memory (None)."""
        target = ":memory:" if path is None else str(path)
        if path is not None:
            Path(path).unlink(missing_ok=True)
        conn = sqlite3.connect(target, check_same_thread=False)
        conn.executescript(
            """
            CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE VIRTUAL TABLE pairs USING fts5(
                question, answer UNINDEXED, source UNINDEXED,
                tokenize = 'unicode61 remove_diacritics 0');
            CREATE VIRTUAL TABLE words USING fts5vocab(pairs, 'row');
            CREATE TABLE questions(rid INTEGER PRIMARY KEY, q TEXT NOT NULL);
            CREATE INDEX questions_q ON questions(q);
            """
        )
        conn.execute("INSERT INTO meta VALUES ('format', ?)", (str(INDEX_FORMAT),))
        conn.execute("INSERT INTO meta VALUES ('pairs', '0')")
        conn.commit()
        return cls(conn, target)

    @classmethod
    def memory(cls, pairs: Iterable[tuple[list[str], str, str]] = ()) -> ReplyIndex:
        index = cls.create(None)
        index.add(pairs)
        return index

    def add(self, pairs: Iterable[tuple[list[str], str, str]], batch: int = 10_000) -> int:
        """Index ``(question tokens, answer, source)`` triples; returns how many were added.
        Questions without a word (only punctuation) cannot be found and are skipped."""
        n = 0
        rows: list[tuple[str, str, str]] = []
        with self._conn:  # one transaction: readers see all of it or none
            for tokens, answer, source in pairs:
                words = [t for t in tokens if has_content(t)]
                if not words:
                    continue
                rows.append((" ".join(words), answer, source))
                if len(rows) >= batch:
                    n += self._insert(rows)
            n += self._insert(rows)
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'pairs'", (str(self.size),))
        self._df.cache_clear()
        return n

    def _insert(self, rows: list[tuple[str, str, str]]) -> int:
        start = self.size + 1  # rowids 1..size are taken (rows are never deleted)
        numbered = [(start + i, *row) for i, row in enumerate(rows)]
        self._conn.executemany(
            "INSERT INTO pairs(rowid, question, answer, source) VALUES (?, ?, ?, ?)", numbered
        )
        self._conn.executemany(
            "INSERT INTO questions(rid, q) VALUES (?, ?)", [(r[0], r[1]) for r in numbered]
        )
        self.size += len(rows)
        n = len(rows)
        rows.clear()
        return n

    def set_offsets(self, offsets: dict[str, float]) -> None:
        """Record how much each corpus's answers are trusted (added to their scores)."""
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('source_offsets', ?)", (json.dumps(offsets),)
            )
        self.offsets = dict(offsets)

    def optimize(self) -> None:
        """Merge the index's segments (after a bulk build: faster searches, smaller file)."""
        with self._conn:
            self._conn.execute("INSERT INTO pairs(pairs) VALUES ('optimize')")

    def _doc_freq(self, word: str) -> int:
        row = self._conn.execute("SELECT doc FROM words WHERE term = ?", (word,)).fetchone()
        return int(row[0]) if row else 0

    def query_words(self, tokens: list[str]) -> list[str]:
        """The words of a message worth a full-text search: its ``MAX_QUERY_WORDS`` rarest
        known words, none of the very common ones (see ``COMMON_SHARE``)."""
        words = {t for t in tokens if has_content(t)}
        limit = max(COMMON_SHARE * self.size, CHEAP_DOCS)
        rare = sorted((self._df(w), w) for w in words if 0 < self._df(w) <= limit)
        return [w for _, w in rare[:MAX_QUERY_WORDS]]

    def search(self, tokens: list[str], k: int | None = 20, pool: int = 200) -> list[Hit]:
        """The ``k`` (None: all) indexed questions most like ``tokens``, best first: those
        with exactly the message's words, and the ``pool`` best by BM25 over its rarer words,
        ranked by ``similarity`` over all of its words."""
        words_in_order = [t for t in tokens if has_content(t)]  # as ``add`` stores questions
        mine = list(dict.fromkeys(words_in_order))
        if not mine or (k is not None and k <= 0):
            return []
        rows = self._conn.execute(
            "SELECT p.question, p.answer, 0.0, p.source FROM questions AS q "
            "JOIN pairs AS p ON p.rowid = q.rid WHERE q.q = ? LIMIT ?",
            (" ".join(words_in_order), pool),
        ).fetchall()
        words = self.query_words(mine)
        if words:
            rows += self._conn.execute(
                "SELECT question, answer, bm25(pairs), source FROM pairs WHERE pairs MATCH ? "
                "ORDER BY rank LIMIT ?",
                (_fts_query(words), max(k or 0, pool)),
            ).fetchall()
        weights = {w: self.idf(w) for w in mine}
        mood = polarity("".join(tokens))  # with its punctuation: 好 ends a phrase before ，
        hits = {
            (q, a): Hit(
                q, a, float(s), src, self._alike(weights, mood, q, a), self.offsets.get(src, 0.0)
            )
            for q, a, s, src in rows
        }
        # Equally alike questions: a trusted corpus's answer first. The bot orders the hits by
        # lead, but below trust_from a trusted answer leads no more than the others, and this
        # order decides which of many equal ones are kept (你好！第一次用这个 needs it).
        return sorted(hits.values(), key=lambda h: (-h.similarity, -h.offset, h.bm25))[:k]

    @staticmethod
    def _alike(weights: dict[str, float], mood: int, question: str, answer: str) -> float:
        """``similarity`` of the message (``weights``, its polarity ``mood``) and an indexed
        question, less (``OPPOSITE_MOOD``) for a question of the opposite polarity or an
        answer that fits the other kind of news (model/polarity.py)."""
        sim = similarity(weights, question.split(" "))
        # The very same words: the answer was given to this message (or approved for it).
        if (
            mood
            and sim < SAME_QUESTION
            and (
                polarity(question.replace(" ", "")) == -mood
                or answers_other_mood(mood, normalise(answer))
            )
        ):
            sim *= OPPOSITE_MOOD
        return sim

    def idf(self, word: str) -> float:
        """log(N / df): how much a shared word says about two questions being alike."""
        return math.log((self.size + 1) / (self._df(word) + 1)) + 1.0

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def build_index(
    pairs: Iterator[tuple[list[str], str, str]],
    path: str | os.PathLike,
    offsets: dict[str, float] | None = None,
) -> ReplyIndex:
    """Build an index file atomically: written beside ``path``, then moved into place."""
    tmp = Path(f"{path}.tmp")
    index = ReplyIndex.create(tmp)
    index.add(pairs)
    if offsets:
        index.set_offsets(offsets)
    index.optimize()
    index.close()
    os.replace(tmp, path)
    return ReplyIndex.open(path)
