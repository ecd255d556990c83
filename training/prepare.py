"""``xianliao prepare``: corpus -> vocabulary + flat binary token-id arrays, in bounded memory.

Pass 1 streams the corpus in chunks to worker processes that normalise and segment each line
once (the slow step), writes the segmented text to a temporary file and counts words in a
bounded counter. Pass 2 maps the segmented text to ids (in the workers too) and appends them to
``{train,valid}.{src,tgt}.bin`` with ``.off`` offset arrays. Nothing grows with the corpus except
the output files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model.text import Tokenizer, detokenize
from model.vocab import Vocab
from training.corpus import Bad, check_specs, is_tsv, iter_corpus, parse_tsv_line

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


class BoundedCounter:
    """Word counts in bounded memory: when more than ``cap`` distinct words are held, the rarest
    (count <= a rising threshold) are dropped, as word2vec does. Frequent words, the ones the
    vocabulary keeps, are counted exactly unless they were pruned while still rare."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: Counter[str] = Counter()
        self.threshold = 1
        self.prunes = 0

    def update(self, other: Counter[str]) -> None:
        self.counts.update(other)
        if len(self.counts) > self.cap:
            while len(self.counts) > self.cap // 2:
                t = self.threshold
                self.counts = Counter({w: c for w, c in self.counts.items() if c > t})
                self.threshold += 1
            self.prunes += 1


# ---- worker side ----------------------------------------------------------------------------
_tokenizer: Tokenizer | None = None
_stoi: dict[str, int] | None = None


def _init_segmenter(fast: bool) -> None:
    global _tokenizer
    _tokenizer = Tokenizer(fast=fast)


def _segment_chunk(
    pairs: list[tuple[str, str]], max_len: int
) -> tuple[str, Counter[str], dict[str, int], int, int]:
    """-> the kept pairs as lines "q tokens<TAB>a tokens" joined by newlines, their word
    counts, bad-line reasons, truncated questions, and 0 (the pairs read were counted by the
    parent). The whole chunk goes through the segmenter in one call."""
    assert _tokenizer is not None
    joined = _tokenizer.tokenize_joined([t for pair in pairs for t in pair])
    lines: list[str] = []
    bad: dict[str, int] = {}
    truncated = 0
    too_long = f"answer longer than {max_len} tokens"
    for i in range(0, len(joined), 2):
        q, a = joined[i], joined[i + 1]
        if not q or not a:
            reason = "empty question or answer after normalising"
            bad[reason] = bad.get(reason, 0) + 1
            continue
        if a.count(" ") >= max_len:
            bad[too_long] = bad.get(too_long, 0) + 1
            continue
        if q.count(" ") >= max_len:
            q = " ".join(q.split(" ")[-max_len:])
            truncated += 1
        lines.append(q + "\t" + a)
    text = "\n".join(lines)
    return text, Counter(text.split()), bad, truncated, 0


def _read_block(path: str, start: int, end: int) -> list[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read(end - start).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _segment_tsv_block(
    path: str, start: int, end: int, max_len: int
) -> tuple[str, Counter[str], dict[str, int], int, int]:
    """Read, parse and segment bytes [start, end) of a TSV file (whole lines)."""
    pairs: list[tuple[str, str]] = []
    bad: dict[str, int] = {}
    raws = _read_block(path, start, end)
    try:  # the fast way: decode the block at once; lines with exactly one tab are pairs
        lines = b"\n".join(raws).decode("utf-8").split("\n")
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
    text, counts, seg_bad, truncated, _ = _segment_chunk(pairs, max_len)
    for reason, n in seg_bad.items():
        bad[reason] = bad.get(reason, 0) + n
    return text, counts, bad, truncated, len(raws)


def _map_block(path: str, start: int, end: int, valid_permille: int, dtype: str) -> dict:
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode("utf-8")
    return _map_chunk(text.rstrip("\n"), valid_permille, dtype)


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


def _init_mapper(itos: list[str]) -> None:
    global _stoi
    _stoi = {tok: i for i, tok in enumerate(itos)}


def _map_chunk(text: str, valid_permille: int, dtype: str) -> dict[str, tuple]:
    """Segmented lines (joined by newlines) -> per split: (src ids, src lengths, tgt ids,
    tgt lengths), the unknown-word count, and the validation pairs as text. One dictionary
    lookup per token over the whole chunk; the split is by a hash of each line."""
    assert _stoi is not None
    unk = _stoi["<unk>"]
    lines = text.split("\n") if text else []
    n = len(lines)
    src_len = np.empty(n, dtype=np.int64)
    tgt_len = np.empty(n, dtype=np.int64)
    is_valid = np.zeros(n, dtype=bool)
    valid_lines = []
    for i, line in enumerate(lines):
        tab = line.index("\t")
        src_len[i] = line.count(" ", 0, tab) + 1
        tgt_len[i] = line.count(" ", tab + 1) + 1
        if zlib.crc32(line.encode()) % 1000 < valid_permille:
            is_valid[i] = True
            q, a = line[:tab], line[tab + 1 :]
            valid_lines.append(detokenize(q.split(" ")) + "\t" + detokenize(a.split(" ")))
    get = _stoi.get
    ids = np.array([get(t, unk) for t in text.split()], dtype=dtype)
    # Token i belongs to line line_of[i]; the first src_len tokens of a line are its question.
    pair_len = src_len + tgt_len
    line_of = np.repeat(np.arange(n), pair_len)
    starts = np.cumsum(pair_len) - pair_len
    is_src = (np.arange(len(ids)) - starts[line_of]) < src_len[line_of]
    tok_valid = is_valid[line_of]
    out: dict[str, tuple] = {}
    for split, tok_mask, line_mask in (
        ("train", ~tok_valid, ~is_valid),
        ("valid", tok_valid, is_valid),
    ):
        out[split] = (
            ids[tok_mask & is_src].tobytes(),
            src_len[line_mask],
            ids[tok_mask & ~is_src].tobytes(),
            tgt_len[line_mask],
        )
    out["unk"] = int(np.count_nonzero(ids == unk))
    out["valid_lines"] = valid_lines
    return out


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
    return ctx.Pool(workers, initializer=initializer, initargs=initargs)


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
                yield _segment_tsv_block, (spec, start, end, cfg.max_len)
        else:
            for chunk in _chunks(_pairs_and_bad(spec, stats), cfg.chunk_size):
                yield _segment_chunk, (chunk, cfg.max_len)


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
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = PrepareStats()
    workers = cfg.workers or os.cpu_count() or 1
    tmp = out / "segmented.tmp"
    counter = BoundedCounter(cfg.effective_counter_cap())

    # Pass 1: segment once, count words.
    with (
        _pool(workers, _init_segmenter, (cfg.fast,)) as pool,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        bar = tqdm(desc="segmenting", unit=" pairs", disable=not progress, mininterval=1.0)
        tasks = _segment_tasks(specs, cfg, stats)
        # Two blocks per worker in flight: one being worked on, one waiting (each result holds
        # a block's text and its word counts, so this bounds the parent's memory).
        for text, counts, bad, truncated, n_read in _bounded_map(pool, tasks, 2 * workers):
            stats.pairs_read += n_read
            if text:
                f.write(text)
                f.write("\n")
            counter.update(counts)
            for reason, n in bad.items():
                stats.add_bad(reason, n)
            stats.questions_truncated += truncated
            bar.update(text.count("\n") + bool(text) + sum(bad.values()))
        bar.close()
    stats.distinct_words_seen = len(counter.counts)
    stats.counter_prunes = counter.prunes
    if vocab is None:  # else: a given vocabulary (fine-tuning a checkpoint keeps its ids)
        vocab = Vocab.build(counter.counts, min_freq=cfg.min_freq, max_size=cfg.max_vocab)
    del counter
    (out / "vocab.txt").write_text("\n".join(vocab.itos) + "\n", encoding="utf-8")
    dtype = "uint16" if len(vocab) <= 65535 else "int32"

    # Pass 2: map to ids, append to the split arrays; the validation pairs also go to
    # valid.tsv (as text) for 'xianliao eval'.
    totals = {(s, side): 0 for s in SPLITS for side in ("src", "tgt")}
    try:
        with contextlib.ExitStack() as stack:
            files, offsets = {}, {}
            for key in totals:
                s, side = key
                files[key] = stack.enter_context(open(out / f"{s}.{side}.bin", "wb"))
                offsets[key] = stack.enter_context(open(out / f"{s}.{side}.off", "wb"))
                offsets[key].write(np.zeros(1, dtype=np.int64).tobytes())
            valid_tsv = stack.enter_context(open(out / "valid.tsv", "w", encoding="utf-8"))
            pool = stack.enter_context(_pool(workers, _init_mapper, (vocab.itos,)))
            tasks = (
                (_map_block, (str(tmp), start, end, cfg.valid_permille, dtype))
                for start, end in _byte_blocks(tmp, cfg.block_bytes)
            )
            for part in _bounded_map(pool, tasks, 2 * workers):
                stats.unk_tokens += part.pop("unk")
                for line in part.pop("valid_lines"):
                    valid_tsv.write(line + "\n")
                for s, (src, src_len, tgt, tgt_len) in part.items():
                    for side, data, lens in (("src", src, src_len), ("tgt", tgt, tgt_len)):
                        files[s, side].write(data)
                        ends = totals[s, side] + np.cumsum(lens)
                        offsets[s, side].write(ends.astype(np.int64).tobytes())
                        if len(ends):
                            totals[s, side] = int(ends[-1])
                    stats.pairs_written[s] += len(src_len)
    finally:
        tmp.unlink(missing_ok=True)
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
