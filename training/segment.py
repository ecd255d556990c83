"""The worker side of ``prepare``: pass 1 segments a work unit and stores its tokens as ids
into the unit's own word list; pass 2 maps a stored unit to vocabulary ids.

Workers are pool processes; what each needs for the whole run (the tokenizer, the vocabulary,
the unit file) lives in this module's globals, set by the pool's initializer.
"""

from __future__ import annotations

import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xianliao.model.reply_filter import BROKEN_TEXT, ReplyFilter, has_content, is_broken
from xianliao.model.text import Tokenizer, detokenize, normalise
from xianliao.model.vocab import UNK_ID
from xianliao.training.corpus import Bad, parse_tsv_line
from xianliao.training.counting import pack_words, word_hashes

_tokenizer: Tokenizer | None = None
_stoi: dict[str, int] | None = None
_unit_dir: str | None = None  # where pass 1 keeps its units for pass 2
_unit_file = None  # this process's unit file, opened on first use
_reply_filter: ReplyFilter | None = None  # cleaning: which answers to drop (None: keep all)


def init_segmenter(
    fast: bool, unit_dir: str | None = None, reply_filter: ReplyFilter | None = None
) -> None:
    global _tokenizer, _unit_dir, _reply_filter
    _tokenizer = Tokenizer(fast=fast)
    _unit_dir = unit_dir
    _reply_filter = reply_filter


def close_unit_file() -> None:
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


def segment_and_store(func: Callable[..., _Segmented], *args) -> _Counted:
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


def segment_chunk(pairs: list[tuple[str, str]], max_len: int, valid_permille: int) -> _Segmented:
    """Segment pairs (one segmenter call for the whole chunk), drop and count bad ones, decide
    each pair's split, and encode the tokens as local ids. Per pair, only the split's hash runs
    in Python; the rest is numpy over the chunk's tokens."""
    assert _tokenizer is not None
    norm = [normalise(t) for pair in pairs for t in pair]
    words, ids, lengths = _tokenizer.tokenize_block(norm, normalised=True)
    q_len, a_len = lengths[0::2], lengths[1::2]
    empty = (q_len == 0) | (a_len == 0)
    too_long = ~empty & (a_len > max_len)
    no_words, blocked, broken = _unclean_answers(norm[1::2], ~empty & ~too_long)
    if _reply_filter is not None:  # a question is learnt as a reply too (--both-directions)
        broken |= ~empty & ~too_long & ~no_words & ~blocked & _has_broken(norm[0::2])
    kept = ~empty & ~too_long & ~no_words & ~blocked & ~broken
    bad: dict[str, int] = {}
    for reason, mask in (
        ("empty question or answer after normalising", empty),
        (f"answer longer than {max_len} tokens", too_long),
        ("answer is only punctuation or an emoticon", no_words),
        ("answer on the blocklist", blocked),
        ("question or answer with broken text (U+FFFD)", broken),
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


def _unclean_answers(
    answers: list[str], candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the ``candidates`` answers that hold no word, of those with a blocked word
    and of those with broken text (``ReplyFilter.unusable``; all False when cleaning is off)."""
    no_words = np.zeros(len(answers), dtype=bool)
    blocked = np.zeros(len(answers), dtype=bool)
    broken = np.zeros(len(answers), dtype=bool)
    if _reply_filter is not None:
        for i in np.flatnonzero(candidates).tolist():
            if not has_content(answers[i]):
                no_words[i] = True
            elif (why := _reply_filter.unusable(answers[i])) is not None:
                (broken if why == BROKEN_TEXT else blocked)[i] = True
    return no_words, blocked, broken


def _has_broken(texts: list[str]) -> np.ndarray:
    """Which of ``texts`` hold broken text (U+FFFD)."""
    return np.fromiter(map(is_broken, texts), dtype=bool, count=len(texts))


def _read_block(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file, without the final newline."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return data[:-1] if data.endswith(b"\n") else data


def segment_tsv_block(
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
    seg = segment_chunk(pairs, max_len, valid_permille)
    for reason, n in bad.items():
        seg.bad[reason] = seg.bad.get(reason, 0) + n
    seg.n_read = len(raws)
    return seg


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


def init_mapper(itos: list[str]) -> None:
    global _stoi
    _stoi = {tok: i for i, tok in enumerate(itos)}


def map_unit(path: str, offset: int, dtype: str) -> tuple[dict, int]:
    """Pass 2 in a worker: read the unit pass 1 stored at ``offset`` of ``path``, map it."""
    assert _stoi is not None
    with open(path, "rb") as f:
        f.seek(offset)
        words, ids, src_len, tgt_len, valid = pickle.load(f)
    table = np.array(list(map(_stoi.get, words, [UNK_ID] * len(words))), dtype=np.int64)
    return _split_arrays(ids, src_len, tgt_len, valid, table, dtype)
