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
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xianliao.model.reply_filter import ReplyFilter
from xianliao.model.text import Tokenizer
from xianliao.model.vocab import SPECIALS, Vocab
from xianliao.training.corpus import Bad, check_specs, is_tsv, iter_corpus, resolve
from xianliao.training.counting import BoundedCounter, pack_words, word_hashes
from xianliao.training.segment import (
    close_unit_file,
    held_out,
    init_mapper,
    init_segmenter,
    map_unit,
    segment_and_store,
    segment_chunk,
    segment_tsv_block,
)

# held_out, pack_words and word_hashes belong to this module's interface: the reply index and
# retraining hold out the same pairs; the tests check the hashing.
__all__ = [
    "BoundedCounter",
    "PrepareConfig",
    "PrepareStats",
    "held_out",
    "pack_words",
    "prepare",
    "word_hashes",
]

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
    # max(100,000, 4 x max_vocab), enough to keep nearly every word a far larger cap keeps
    # (bench/RESULTS.md)
    counter_cap: int = 0
    fast: bool = True  # use rjieba when installed (the same segmentation, much faster)
    # drop pairs whose answer is only punctuation/an emoticon or holds a blocklisted word (the
    # shipped list plus the file ``blocklist``, if given), so the model never learns them
    clean: bool = True
    blocklist: str | None = None

    def effective_counter_cap(self) -> int:
        return self.counter_cap or max(100_000, 4 * self.max_vocab)


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
                yield segment_and_store, (segment_tsv_block, *args)
        else:
            for chunk in _chunks(_pairs_and_bad(spec, stats), cfg.chunk_size):
                args = (chunk, cfg.max_len, cfg.valid_permille)
                yield segment_and_store, (segment_chunk, *args)


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
    specs = [resolve(s) for s in specs]  # a shipped corpus's name -> its file
    check_specs(specs)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = PrepareStats()
    workers = cfg.workers or os.cpu_count() or 1
    for stale in out.glob("units.*.tmp"):  # left by a run that was killed
        stale.unlink()
    try:
        counter, units = _count_pass(specs, cfg, out, workers, stats, progress)
        stats.distinct_words_seen = len(counter)
        stats.counter_prunes = counter.prunes
        if vocab is None:  # else: a given vocabulary (fine-tuning a checkpoint keeps its ids)
            # Only the candidates go to the sort (+ the specials, which Vocab.build skips).
            top = counter.top(cfg.max_vocab + len(SPECIALS), min_count=cfg.min_freq)
            vocab = Vocab.build(top, min_freq=cfg.min_freq, max_size=cfg.max_vocab)
        del counter
        (out / "vocab.txt").write_text("\n".join(vocab.itos) + "\n", encoding="utf-8")
        dtype = "uint16" if len(vocab) <= 65535 else "int32"
        stats.tokens = _write_pass(units, vocab, dtype, out, workers, stats)
    finally:
        close_unit_file()
        for path in out.glob("units.*.tmp"):
            path.unlink(missing_ok=True)
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


def _count_pass(
    specs: list[str],
    cfg: PrepareConfig,
    out: Path,
    workers: int,
    stats: PrepareStats,
    progress: bool,
) -> tuple[BoundedCounter, list[tuple[str, int]]]:
    """Pass 1: segment once, count words -> (counter, (file, offset) of each unit in corpus
    order). The workers keep each unit's local ids in files of their own (out/units.PID.tmp)
    for pass 2; the held-out pairs go straight to valid.tsv (as text, for 'xianliao eval')."""
    from tqdm import tqdm

    reply_filter = ReplyFilter.default(cfg.blocklist) if cfg.clean else None
    counter = BoundedCounter(cfg.effective_counter_cap())
    units: list[tuple[str, int]] = []
    with (
        _pool(workers, init_segmenter, (cfg.fast, str(out), reply_filter)) as pool,
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
    close_unit_file()  # workers=1: this process was the worker
    return counter, units


def _write_pass(
    units: list[tuple[str, int]],
    vocab: Vocab,
    dtype: str,
    out: Path,
    workers: int,
    stats: PrepareStats,
) -> int:
    """Pass 2, in the workers: each unit's words -> vocabulary ids once, then its tokens by
    numpy indexing; the parent appends the results to the split arrays in order. Returns the
    tokens written."""
    totals = {(s, side): 0 for s in SPLITS for side in ("src", "tgt")}
    with contextlib.ExitStack() as stack:
        files, offsets = {}, {}
        for key in totals:
            s, side = key
            files[key] = stack.enter_context(open(out / f"{s}.{side}.bin", "wb"))
            offsets[key] = stack.enter_context(open(out / f"{s}.{side}.off", "wb"))
            offsets[key].write(np.zeros(1, dtype=np.int64).tobytes())
        pool = stack.enter_context(_pool(workers, init_mapper, (vocab.itos,)))
        tasks = ((map_unit, (path, pos, dtype)) for path, pos in units)
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
    return sum(totals.values())
