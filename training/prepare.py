"""``xianliao prepare``: corpus -> vocabulary + flat binary token-id arrays, in bounded memory.

Pass 1 streams the corpus in chunks (1 MB byte ranges of a TSV file, which the workers read
themselves) to worker processes that normalise and segment each line once (the slow step). Each
worker keeps its chunks' tokens as ids into the chunk's own word list, in a temporary file of its
own; the parent only merges the chunks' word counts into a bounded counter. Pass 2 maps each
chunk's words to vocabulary ids once and its tokens by numpy indexing (in the workers too); the
parent appends the results to ``{train,valid}.{src,tgt}.bin`` with ``.off`` offset arrays.
Nothing grows with the corpus except the output files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import signal
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xianliao.model.reply_filter import ReplyFilter, has_content
from xianliao.model.text import Tokenizer, detokenize, normalise
from xianliao.model.vocab import SPECIALS, UNK_ID, Vocab
from xianliao.training.corpus import Bad, check_specs, is_tsv, iter_corpus, parse_tsv_line

logger = logging.getLogger(__name__)

DATA_FORMAT = 1
SPLITS = ("train", "valid")


@dataclass
class PrepareConfig:
    min_freq: int = 2  # the seed's min_freq: rarer words become <unk>
    max_vocab: int = 30000  # vocabulary size cap, specials included
    max_len: int = 40  # questions keep their last max_len tokens; longer answers are skipped
    valid_permille: int = 10  # share of pairs held out for validation, per thousand (by hash)
    workers: int = 0  # segmenting processes; 0 = one per CPU core
    chunk_size: int = 2000  # pairs per work unit (YAML and two-file corpora)
    block_bytes: int = 1 << 20  # bytes of a TSV file per work unit: workers read the file
    # themselves, so the parent process only hands out byte ranges
    # most distinct words counted at once, the rarest pruned beyond it; 0 = automatic:
    # max(100,000, 4 x max_vocab), which kept 29,988 of the 30,000 words a 300k cap kept on
    # 10M generated pairs (bench/RESULTS.md)
    counter_cap: int = 0

    def effective_counter_cap(self) -> int:
        return self.counter_cap or max(100_000, 4 * self.max_vocab)

    fast: bool = True  # use rjieba when installed (identical segmentation, ~13x faster)
    # drop pairs whose answer is only punctuation/an emoticon or holds a blocklisted word (the
    # shipped list plus the file ``blocklist``, if given), so the model never learns them
    clean: bool = True
    blocklist: str | None = None


@dataclass
class PrepareStats:
    pairs_read: int = 0
    pairs_written: dict = field(default_factory=lambda: {s: 0 for s in SPLITS})
    bad: dict = field(default_factory=dict)  # reason -> count
    questions_truncated: int = 0
    tokens: int = 0
    unk_tokens: int = 0
    distinct_words_seen: int = 0
    counter_prunes: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def add_bad(self, reason: str, n: int = 1) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + n


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


# ---- worker side ----------------------------------------------------------------------------
_tokenizer: Tokenizer | None = None
_stoi: dict[str, int] | None = None
_unit_dir: str | None = None  # where pass 1 keeps its units for pass 2
_unit_file = None  # this process's unit file, opened on first use
_reply_filter: ReplyFilter | None = None  # cleaning: which answers to drop (None: keep all)


def _init_segmenter(
    fast: bool, unit_dir: str | None = None, reply_filter: ReplyFilter | None = None
) -> None:
    global _tokenizer, _unit_dir, _reply_filter
    _tokenizer = Tokenizer(fast=fast)
    _unit_dir = unit_dir
    _reply_filter = reply_filter


def _close_unit_file() -> None:
    global _unit_file
    if _unit_file is not None:
        _unit_file.close()
        _unit_file = None


@dataclass
class _Counted:
    """What the parent gets back from pass 1 for a unit: counts and statistics; the unit itself
    stays on disk (``unit``: file and offset) until pass 2 maps it."""

    word_data: bytes  # the unit's words, packed (pack_words)
    word_lengths: np.ndarray
    word_hashes: np.ndarray
    counts: np.ndarray
    valid_lines: list[str]
    bad: dict[str, int]
    truncated: int
    n_read: int
    pairs: int
    unit: tuple[str, int]


def _stored(seg: _Segmented) -> _Counted:
    """In a worker: append what pass 2 needs to this process's unit file (the parent never
    handles token ids) and return the rest."""
    global _unit_file
    assert _unit_dir is not None
    if _unit_file is None:
        # Open for the life of the worker process; flushed after every unit.
        _unit_file = open(Path(_unit_dir) / f"units.{os.getpid()}.tmp", "wb")  # noqa: SIM115
    pos = _unit_file.tell()
    unit = (seg.words, seg.ids, seg.src_len, seg.tgt_len, seg.valid)
    pickle.dump(unit, _unit_file, protocol=pickle.HIGHEST_PROTOCOL)
    _unit_file.flush()  # a pool worker may end with os._exit: nothing may stay buffered
    data, lengths = pack_words(seg.words)
    return _Counted(
        word_data=data,
        word_lengths=lengths,
        word_hashes=word_hashes(data, lengths),
        counts=seg.counts,
        valid_lines=seg.valid_lines,
        bad=seg.bad,
        truncated=seg.truncated,
        n_read=seg.n_read,
        pairs=len(seg.src_len),
        unit=(_unit_file.name, pos),
    )


def _segment_and_store(func: Callable[..., _Segmented], *args) -> _Counted:
    return _stored(func(*args))


@dataclass
class _Segmented:
    """Pass 1's result for one work unit: its kept pairs as ids into the unit's own word list
    (so pass 2 maps each distinct word once, not each token), plus what pass 2 needs."""

    words: list[str]  # the unit's words, in order of first use: local id i is words[i]
    ids: np.ndarray  # int32 local ids of every kept token, pair by pair: question, then answer
    src_len: np.ndarray  # int64 question tokens per kept pair
    tgt_len: np.ndarray  # int64 answer tokens per kept pair
    valid: np.ndarray  # bool per kept pair: held out (by a hash of the normalised pair)
    valid_lines: list[str]  # the held-out pairs as text, for valid.tsv
    counts: np.ndarray  # int64 occurrences of each local word
    bad: dict[str, int]
    truncated: int
    n_read: int  # pairs read by the worker (TSV blocks); 0 when the parent counted them


def _segment_chunk(pairs: list[tuple[str, str]], max_len: int, valid_permille: int) -> _Segmented:
    """Segment pairs (one segmenter call for the whole chunk), drop and count bad ones, decide
    each pair's split, and encode the tokens as local ids. Per pair, only the split's hash runs
    in Python; the rest is numpy over the chunk's tokens."""
    assert _tokenizer is not None
    norm = [normalise(t) for pair in pairs for t in pair]
    words, ids, lengths = _tokenizer.tokenize_block(norm, normalised=True)
    q_len, a_len = lengths[0::2], lengths[1::2]
    empty = (q_len == 0) | (a_len == 0)
    too_long = ~empty & (a_len > max_len)
    no_words, blocked = _unclean_answers(norm[1::2], ~empty & ~too_long)
    kept = ~empty & ~too_long & ~no_words & ~blocked
    bad: dict[str, int] = {}
    for reason, mask in (
        ("empty question or answer after normalising", empty),
        (f"answer longer than {max_len} tokens", too_long),
        ("answer is only punctuation or an emoticon", no_words),
        ("answer on the blocklist", blocked),
    ):
        if n := int(np.count_nonzero(mask)):
            bad[reason] = n
    # Each token's text (question 2i, answer 2i+1) and position in it. A kept pair keeps its
    # answer and the last max_len tokens of its question.
    text_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(ids)) - (np.cumsum(lengths) - lengths)[text_of]
    pair_of = text_of // 2
    cut_before = np.where(text_of % 2 == 0, np.maximum(q_len - max_len, 0)[pair_of], 0)
    ids = ids[kept[pair_of] & (pos >= cut_before)]
    src_len = np.minimum(q_len, max_len)[kept]
    tgt_len = a_len[kept]
    # The split: a hash of the normalised pair, so equal pairs always land on the same side.
    kept_rows = np.flatnonzero(kept).tolist()
    valid = np.array(
        [held_out(norm[2 * i], norm[2 * i + 1], valid_permille) for i in kept_rows], dtype=bool
    ).reshape(-1)
    # Words no kept token uses (the newline, spaces, dropped or cut tokens) are left out.
    counts = np.bincount(ids, minlength=len(words))
    used = counts > 0
    if not used.all():
        ids = (np.cumsum(used) - 1)[ids].astype(np.int32)
        words = [w for w, u in zip(words, used.tolist(), strict=True) if u]
        counts = counts[used]
    valid_lines = []
    if valid.any():
        ends = np.cumsum(src_len + tgt_len)
        for k in np.flatnonzero(valid).tolist():
            start = int(ends[k] - src_len[k] - tgt_len[k])
            toks = [words[i] for i in ids[start : int(ends[k])].tolist()]
            q, a = toks[: src_len[k]], toks[src_len[k] :]
            valid_lines.append(detokenize(q) + "\t" + detokenize(a))
    return _Segmented(
        words=words,
        ids=ids.astype(np.int32, copy=False),
        src_len=src_len,
        tgt_len=tgt_len,
        valid=valid,
        valid_lines=valid_lines,
        counts=counts,
        bad=bad,
        truncated=int(np.count_nonzero(kept & (q_len > max_len))),
        n_read=0,
    )


def held_out(question: str, answer: str, valid_permille: int) -> bool:
    """Whether a normalised pair belongs to the validation split: a hash of the pair, so equal
    pairs always land on the same side (and the reply index can leave the same pairs out)."""
    return zlib.crc32(f"{question}\t{answer}".encode()) % 1000 < valid_permille


def _unclean_answers(answers: list[str], candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the ``candidates`` answers that hold no word, and of those the reply filter
    blocks (both all False when cleaning is off)."""
    no_words = np.zeros(len(answers), dtype=bool)
    blocked = np.zeros(len(answers), dtype=bool)
    if _reply_filter is not None:
        for i in np.flatnonzero(candidates).tolist():
            if not has_content(answers[i]):
                no_words[i] = True
            elif _reply_filter.blocked_word(answers[i]) is not None:
                blocked[i] = True
    return no_words, blocked


def _read_block(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file, without the final newline."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return data[:-1] if data.endswith(b"\n") else data


def _segment_tsv_block(
    path: str, start: int, end: int, max_len: int, valid_permille: int
) -> _Segmented:
    """Read, parse and segment bytes [start, end) of a TSV file (whole lines)."""
    pairs: list[tuple[str, str]] = []
    bad: dict[str, int] = {}
    data = _read_block(path, start, end)
    raws = data.split(b"\n") if data else []
    try:  # the fast way: decode the block at once; lines with exactly one tab are pairs
        lines = data.decode("utf-8").split("\n") if data else []
    except UnicodeDecodeError:
        lines = None
    for i, raw in enumerate(raws):
        if lines is not None:
            fields = lines[i].split("\t")
            if len(fields) == 2 and fields[0].strip() and not fields[1].endswith("\r"):
                pairs.append((fields[0], fields[1]))
                continue
        item = parse_tsv_line(raw)  # anything unusual: the one careful parser decides
        if isinstance(item, Bad):
            bad[item.reason] = bad.get(item.reason, 0) + 1
        else:
            pairs.append(item)
    seg = _segment_chunk(pairs, max_len, valid_permille)
    for reason, n in bad.items():
        seg.bad[reason] = seg.bad.get(reason, 0) + n
    seg.n_read = len(raws)
    return seg


def _byte_blocks(path: Path, size: int) -> Iterator[tuple[int, int]]:
    """Cut a file into ranges of about ``size`` bytes that end at a newline."""
    total = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        while start < total:
            f.seek(min(start + size, total))
            f.readline()  # to the end of the line
            end = min(f.tell(), total)
            yield start, end
            start = end


def _split_arrays(
    local_ids: np.ndarray,
    src_len: np.ndarray,
    tgt_len: np.ndarray,
    valid: np.ndarray,
    table: np.ndarray,
    dtype: str,
) -> tuple[dict, int]:
    """Pass 2 for one unit: local ids -> vocabulary ids (``table``), cut into the train and
    valid splits -> ({split: (src ids, src lengths, tgt ids, tgt lengths)}, UNK tokens)."""
    ids = table[local_ids].astype(dtype)
    n = len(src_len)
    # Token i belongs to pair pair_of[i]; the first src_len tokens of a pair are its question.
    pair_len = src_len + tgt_len
    pair_of = np.repeat(np.arange(n), pair_len)
    starts = np.cumsum(pair_len) - pair_len
    is_src = (np.arange(len(ids)) - starts[pair_of]) < src_len[pair_of]
    tok_valid = valid[pair_of]
    out = {}
    for split, tok_mask, pair_mask in (
        ("train", ~tok_valid, ~valid),
        ("valid", tok_valid, valid),
    ):
        out[split] = (
            ids[tok_mask & is_src].tobytes(),
            src_len[pair_mask],
            ids[tok_mask & ~is_src].tobytes(),
            tgt_len[pair_mask],
        )
    return out, int(np.count_nonzero(ids == UNK_ID))


def _init_mapper(itos: list[str]) -> None:
    global _stoi
    _stoi = {tok: i for i, tok in enumerate(itos)}


def _map_unit(path: str, offset: int, dtype: str) -> tuple[dict, int]:
    """Pass 2 in a worker: read the unit pass 1 stored at ``offset`` of ``path``, map it."""
    assert _stoi is not None
    with open(path, "rb") as f:
        f.seek(offset)
        words, ids, src_len, tgt_len, valid = pickle.load(f)
    table = np.array(list(map(_stoi.get, words, [UNK_ID] * len(words))), dtype=np.int64)
    return _split_arrays(ids, src_len, tgt_len, valid, table, dtype)


# ---- parent side ----------------------------------------------------------------------------
def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bounded_map(pool, tasks: Iterable[tuple[Callable, tuple]], window: int) -> Iterator:
    """Run ``(func, args)`` tasks like ``pool.imap``, but with at most ``window`` in flight, so
    a fast reader never queues the whole corpus in memory. Results come back in order."""
    pending: deque = deque()
    for func, args in tasks:
        pending.append(pool.apply_async(func, args))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class _InProcessPool:
    """The Pool surface we use, run in this process (workers=1: no fork, easy to debug)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def apply_async(self, func, args):
        return self._Done(func(*args))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _pool(workers: int, initializer: Callable, initargs: tuple):
    if workers <= 1:
        initializer(*initargs)
        return _InProcessPool()
    ctx = mp.get_context("spawn" if os.name != "posix" else "fork")
    return ctx.Pool(workers, initializer=_worker_init, initargs=(initializer, initargs))


def _worker_init(initializer: Callable, initargs: tuple) -> None:
    """In a pool worker: the pool stops its workers with SIGTERM, which must end them quietly
    (a forked worker inherits the parent's handler, which turns SIGTERM into an interrupt)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    initializer(*initargs)


def _pairs_and_bad(spec: str, stats: PrepareStats) -> Iterator[tuple[str, str]]:
    for item in iter_corpus(spec):
        stats.pairs_read += 1
        if isinstance(item, Bad):
            stats.add_bad(item.reason)
        else:
            yield item


def _segment_tasks(specs: list[str], cfg: PrepareConfig, stats: PrepareStats) -> Iterator:
    """Pass-1 work units: byte ranges of TSV files, chunks of pairs for the other formats."""
    for spec in specs:
        if Path(spec).is_file():
            stats.bytes_read += Path(spec).stat().st_size
        if is_tsv(spec):
            for start, end in _byte_blocks(Path(spec), cfg.block_bytes):
                args = (spec, start, end, cfg.max_len, cfg.valid_permille)
                yield _segment_and_store, (_segment_tsv_block, *args)
        else:
            for chunk in _chunks(_pairs_and_bad(spec, stats), cfg.chunk_size):
                args = (chunk, cfg.max_len, cfg.valid_permille)
                yield _segment_and_store, (_segment_chunk, *args)


def prepare(
    specs: list[str],
    out_dir: str | os.PathLike,
    cfg: PrepareConfig,
    *,
    progress: bool = True,
    vocab: Vocab | None = None,
) -> PrepareStats:
    """Prepare ``specs`` (see training.corpus) into ``out_dir``. Returns the statistics that are
    also written to ``out_dir/meta.json``."""
    from tqdm import tqdm

    check_specs(specs)
    reply_filter = ReplyFilter.default(cfg.blocklist) if cfg.clean else None
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = PrepareStats()
    workers = cfg.workers or os.cpu_count() or 1
    counter = BoundedCounter(cfg.effective_counter_cap())
    for stale in out.glob("units.*.tmp"):  # left by a run that was killed
        stale.unlink()

    # Pass 1: segment once, count words. The workers keep each unit's local ids in files of
    # their own (out/units.PID.tmp) for pass 2; the held-out pairs go straight to valid.tsv
    # (as text, for 'xianliao eval').
    units: list[tuple[str, int]] = []  # (file, offset) of each unit, in corpus order
    try:
        with (
            _pool(workers, _init_segmenter, (cfg.fast, str(out), reply_filter)) as pool,
            open(out / "valid.tsv", "w", encoding="utf-8") as valid_tsv,
        ):
            bar = tqdm(desc="segmenting", unit=" pairs", disable=not progress, mininterval=1.0)
            tasks = _segment_tasks(specs, cfg, stats)
            # Two units per worker in flight: one being worked on, one waiting (this bounds the
            # parent's memory).
            for seg in _bounded_map(pool, tasks, 2 * workers):
                stats.pairs_read += seg.n_read
                counter.update_packed(seg.word_data, seg.word_lengths, seg.counts, seg.word_hashes)
                for line in seg.valid_lines:
                    valid_tsv.write(line + "\n")
                for reason, n in seg.bad.items():
                    stats.add_bad(reason, n)
                stats.questions_truncated += seg.truncated
                units.append(seg.unit)
                bar.update(seg.pairs + sum(seg.bad.values()))
            bar.close()
        _close_unit_file()  # workers=1: this process was the worker
        stats.distinct_words_seen = len(counter)
        stats.counter_prunes = counter.prunes
        if vocab is None:  # else: a given vocabulary (fine-tuning a checkpoint keeps its ids)
            # Only the candidates go to the sort (+ the specials, which Vocab.build skips).
            top = counter.top(cfg.max_vocab + len(SPECIALS), min_count=cfg.min_freq)
            vocab = Vocab.build(top, min_freq=cfg.min_freq, max_size=cfg.max_vocab)
        del counter
        (out / "vocab.txt").write_text("\n".join(vocab.itos) + "\n", encoding="utf-8")
        dtype = "uint16" if len(vocab) <= 65535 else "int32"

        # Pass 2, in the workers: each unit's words -> vocabulary ids once, then its tokens by
        # numpy indexing; the parent appends the results to the split arrays in order.
        totals = {(s, side): 0 for s in SPLITS for side in ("src", "tgt")}
        with contextlib.ExitStack() as stack:
            files, offsets = {}, {}
            for key in totals:
                s, side = key
                files[key] = stack.enter_context(open(out / f"{s}.{side}.bin", "wb"))
                offsets[key] = stack.enter_context(open(out / f"{s}.{side}.off", "wb"))
                offsets[key].write(np.zeros(1, dtype=np.int64).tobytes())
            pool = stack.enter_context(_pool(workers, _init_mapper, (vocab.itos,)))
            tasks = ((_map_unit, (path, pos, dtype)) for path, pos in units)
            for part, unk in _bounded_map(pool, tasks, 2 * workers):
                stats.unk_tokens += unk
                for s, (src, src_len, tgt, tgt_len) in part.items():
                    for side, data, lens in (("src", src, src_len), ("tgt", tgt, tgt_len)):
                        files[s, side].write(data)
                        ends = totals[s, side] + np.cumsum(lens)
                        offsets[s, side].write(ends.astype(np.int64).tobytes())
                        if len(ends):
                            totals[s, side] = int(ends[-1])
                    stats.pairs_written[s] += len(src_len)
    finally:
        _close_unit_file()
        for path in out.glob("units.*.tmp"):
            path.unlink(missing_ok=True)
    stats.tokens = sum(totals.values())
    stats.seconds = round(time.perf_counter() - t0, 3)
    meta = {
        "format": DATA_FORMAT,
        "dtype": dtype,
        "vocab_size": len(vocab),
        "tokenizer": Tokenizer(fast=False).describe(),
        "config": asdict(cfg),
        "sources": specs,
        "stats": asdict(stats),
    }
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), "utf-8")
    return stats
