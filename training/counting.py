"""Word counting for ``prepare`` in bounded memory: words packed into one buffer, hashed in
numpy, counted by a counter that prunes the rarest words beyond a cap."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_HASH_SEED = 20261127
_HASH_KEYS = np.random.Generator(np.random.PCG64(_HASH_SEED)).integers(
    0, np.iinfo(np.uint64).max, size=4096, dtype=np.uint64, endpoint=True
)


def pack_words(words: list[str]) -> tuple[bytes, np.ndarray]:
    """Words as one UTF-8 buffer and each word's length in bytes: cheap to send between
    processes, and what ``word_hashes`` and ``BoundedCounter`` work on."""
    encoded = [w.encode() for w in words]
    return b"".join(encoded), np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))


def word_hashes(data: bytes, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each packed word, in numpy over the whole buffer (no Python loop per
    word): a sum of byte x random position key (mod 2^64), then a mixing step. The same in
    every process and run (fixed keys)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    h = np.zeros(len(lengths), dtype=np.uint64)
    u8 = np.frombuffer(data, dtype=np.uint8)
    if len(u8):
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(len(u8)) - np.repeat(starts, lengths)
        keys = _HASH_KEYS[pos % len(_HASH_KEYS)] + (pos // len(_HASH_KEYS)).astype(np.uint64)
        with np.errstate(over="ignore"):
            contrib = (u8.astype(np.uint64) + np.uint64(1)) * keys
            nonempty = np.flatnonzero(lengths > 0)
            h[nonempty] = np.add.reduceat(contrib, starts[nonempty])
    with np.errstate(over="ignore"):
        h += lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _gather(u8: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> bytes:
    """The byte ranges [starts[i], starts[i] + lengths[i]) of ``u8``, concatenated."""
    offsets = np.cumsum(lengths) - lengths
    return u8[np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))].tobytes()


class BoundedCounter:
    """Word counts in bounded memory: when more than ``cap`` distinct words are held, the rarest
    (count <= a rising threshold) are dropped, as word2vec does. Frequent words, the ones the
    vocabulary keeps, are counted exactly unless they were pruned while still rare.

    Words are kept by a 64-bit hash (``word_hashes``) in sorted numpy arrays, their text in one
    byte buffer: about 40 bytes per word instead of ~150 for a dict of str, and a block's counts
    merge in a few numpy passes (the workers send packed words and their hashes). Two words
    would share a count only if their hashes collided (odds ~1e-10 for 100k words)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._keys = np.zeros(0, dtype=np.uint64)  # sorted hashes
        self._counts = np.zeros(0, dtype=np.int64)
        self._starts = np.zeros(0, dtype=np.int64)  # each word's bytes in _text
        self._lengths = np.zeros(0, dtype=np.int64)
        self._text = b""
        self.threshold = 1
        self.prunes = 0

    def __len__(self) -> int:
        return len(self._keys)

    def update(self, words: Mapping[str, int] | list[str], counts=None) -> None:
        """Add ``counts[i]`` occurrences of ``words[i]`` (or a word -> count mapping)."""
        if counts is None:
            words, counts = list(words), list(words.values())
        data, lengths = pack_words(words)
        self.update_packed(data, lengths, np.asarray(counts, dtype=np.int64))

    def update_packed(
        self,
        data: bytes,
        lengths: np.ndarray,
        counts: np.ndarray,
        hashes: np.ndarray | None = None,
    ) -> None:
        """``update`` for packed words (``pack_words``), with their hashes when known."""
        if hashes is None:
            hashes = word_hashes(data, lengths)
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        h = hashes[order]
        first = np.flatnonzero(np.concatenate(([True], h[1:] != h[:-1])))
        h, rep = h[first], order[first]  # one entry per distinct hash
        c = np.add.reduceat(np.asarray(counts, dtype=np.int64)[order], first)
        pos = np.searchsorted(self._keys, h)
        found = pos < len(self._keys)
        found[found] = self._keys[pos[found]] == h[found]
        self._counts[pos[found]] += c[found]
        new = ~found
        if new.any():
            starts = np.cumsum(lengths) - lengths
            nl = np.asarray(lengths)[rep[new]]
            text = _gather(np.frombuffer(data, dtype=np.uint8), starts[rep[new]], nl)
            at = pos[new]
            self._keys = np.insert(self._keys, at, h[new])
            self._counts = np.insert(self._counts, at, c[new])
            self._starts = np.insert(self._starts, at, len(self._text) + np.cumsum(nl) - nl)
            self._lengths = np.insert(self._lengths, at, nl)
            self._text += text
        if len(self._keys) > self.cap:
            self._prune()

    def _prune(self) -> None:
        t = self.threshold
        while True:  # drop counts <= t, raising t, until at most cap/2 words are left
            keep = self._counts > t
            t += 1
            if np.count_nonzero(keep) <= self.cap // 2:
                break
        self.threshold = t
        lengths = self._lengths[keep]
        text = _gather(np.frombuffer(self._text, dtype=np.uint8), self._starts[keep], lengths)
        self._text = text
        self._keys, self._counts, self._lengths = self._keys[keep], self._counts[keep], lengths
        self._starts = np.cumsum(lengths) - lengths
        self.prunes += 1

    def _word(self, i: int) -> str:
        start = int(self._starts[i])
        return self._text[start : start + int(self._lengths[i])].decode()

    @property
    def counts(self) -> dict[str, int]:
        """All counts as a dict (tests, small corpora)."""
        return {self._word(i): int(c) for i, c in enumerate(self._counts.tolist())}

    def top(self, n: int, min_count: int = 1) -> dict[str, int]:
        """The words that can be among the ``n`` most frequent with at least ``min_count``
        occurrences: every word counted at least as often as the n-th (ties included, so a
        tie-breaking sort over the result gives the same top n as one over all words)."""
        counts = self._counts
        eligible = np.flatnonzero(counts >= min_count)
        if len(eligible) > n > 0:
            nth = np.partition(counts[eligible], len(eligible) - n)[len(eligible) - n]
            eligible = eligible[counts[eligible] >= nth]
        return {self._word(i): int(counts[i]) for i in eligible.tolist()}
