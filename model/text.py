"""Text normalisation and word segmentation, shared by training and serving.

The one rule: every piece of text the model sees, in ``prepare`` and in ``chat``/the bot, goes
through ``Tokenizer.tokenize`` with the same settings, and those settings are stored in the
checkpoint (``Tokenizer.describe``) so a model is always served with the tokenizer it was trained
with.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable

import numpy as np

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "jieba"
TOKENIZER_VERSION = 1
NORMALISATION = "nfkc-lower-cjkspace-v1"

_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\ufeff]")
_CJK = r"\u3400-\u9fff\uf900-\ufaff"
# A single space between two CJK characters is a pause in subtitle corpora: make it a comma.
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}]) (?=[{_CJK}])")
_ASCII_WORD = re.compile(r"[0-9A-Za-z]")


def normalise(text: str) -> str:
    """NFKC (full-width -> half-width), lower-case, no control characters, one space at most."""
    # Each pass runs only when it can change something: most text needs few of them, and the
    # output is the same.
    text = unicodedata.normalize("NFKC", text)
    if not text.isprintable():  # every character _CONTROL removes is non-printable
        text = _CONTROL.sub("", text)
    text = " ".join(text.lower().split())
    return _CJK_SPACE.sub(",", text) if " " in text else text


def alternation(phrases: Iterable[str]) -> str:
    """One regex alternation of ``phrases``, escaped, longest first: where two start at the
    same place the longer one matches (他妈的 before 妈的, 痛快 before 痛)."""
    return "|".join(map(re.escape, sorted(phrases, key=len, reverse=True)))


def detokenize(tokens: Iterable[str]) -> str:
    """Join tokens the way Chinese is written: no spaces, except between two Latin words."""
    out: list[str] = []
    prev = ""
    for tok in tokens:
        if prev and _ASCII_WORD.match(prev[-1]) and _ASCII_WORD.match(tok[0]):
            out.append(" ")
        out.append(tok)
        prev = tok
    return "".join(out)


class Tokenizer:
    """Normalise + segment with jieba (HMM off), or its Rust port rjieba when installed.

    With HMM off both libraries give identical segmentations (tested), so ``fast=True`` is a pure
    speed-up (bench/RESULTS.md). Words never vanish: whitespace tokens are the only ones
    dropped.
    """

    def __init__(self, *, fast: bool = True, hmm: bool = False) -> None:
        self.hmm = hmm
        self._cut = None
        self.backend = "jieba"
        if fast:
            try:
                import rjieba

                self._cut = lambda text: rjieba.cut(text, hmm=hmm)
                self.backend = "rjieba"
            except ImportError:
                pass
        if self._cut is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            self._cut = lambda text: jieba.lcut(text, HMM=hmm)

    def describe(self) -> dict:
        """What a checkpoint records so serving segments exactly as training did."""
        return {
            "name": TOKENIZER_NAME,
            "version": TOKENIZER_VERSION,
            "normalisation": NORMALISATION,
            "hmm": self.hmm,
        }

    @classmethod
    def from_description(cls, desc: dict, *, fast: bool = True) -> Tokenizer:
        if desc.get("name") != TOKENIZER_NAME or desc.get("version") != TOKENIZER_VERSION:
            raise ValueError(f"unsupported tokenizer {desc.get('name')!r} v{desc.get('version')}")
        if desc.get("normalisation") != NORMALISATION:
            raise ValueError(f"unsupported normalisation {desc.get('normalisation')!r}")
        return cls(fast=fast, hmm=bool(desc.get("hmm", False)))

    def tokenize(self, text: str) -> list[str]:
        text = normalise(text)
        return self._segment(text) if text else []

    def _segment(self, normalised: str) -> list[str]:
        """Segment normalised text; whitespace tokens are not tokens."""
        return [tok for tok in self._cut(normalised) if not tok.isspace()]

    def tokenize_block(
        self, texts: list[str], *, normalised: bool = False
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The tokens of many texts from one segmenter call (words never span the newlines
        put between the texts), as ``(words, ids, lengths)``: ``ids`` (int32) indexes ``words``
        for every token of every text in order, ``lengths`` (int64) counts each text's tokens
        (0 for an empty text). The same tokens as :meth:`tokenize` text by text. ``words`` may
        hold entries no id points to. ``normalised=True``: the texts went through
        ``normalise`` already. For ``prepare``'s many short lines."""
        norm = texts if normalised else [normalise(t) for t in texts]
        keep = [i for i, t in enumerate(norm) if t]
        lengths = np.zeros(len(texts), dtype=np.int64)
        if not keep:
            return [], np.zeros(0, dtype=np.int32), lengths
        toks = self._cut("\n".join(norm[i] for i in keep))
        words = list(dict.fromkeys(toks))
        index = dict(zip(words, range(len(words)), strict=True))
        ids = np.array(list(map(index.__getitem__, toks)), dtype=np.int32)
        is_newline = ids == index.get("\n", -1)
        if int(np.count_nonzero(is_newline)) != len(keep) - 1:
            # A segmenter that glued a newline to a word: text by text instead.
            return self._tokenize_each(norm, keep, lengths)
        text_of = np.cumsum(is_newline)  # each token's position in ``keep``
        space = np.fromiter((w.isspace() for w in words), dtype=bool, count=len(words))
        real = ~space[ids]  # whitespace tokens (and the newlines) are not tokens
        lengths[keep] = np.bincount(text_of[real], minlength=len(keep))
        return words, ids[real], lengths

    def _tokenize_each(
        self, norm: list[str], keep: list[int], lengths: np.ndarray
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        index: dict[str, int] = {}
        ids: list[int] = []
        for i in keep:
            toks = self._segment(norm[i])
            ids.extend(index.setdefault(tok, len(index)) for tok in toks)
            lengths[i] = len(toks)
        return list(index), np.array(ids, dtype=np.int32), lengths
