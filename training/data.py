"""Batches from prepared data: memory-mapped arrays, random pairs, grouped by length.

Memory is O(pool): a pool of ``batch_size * pool_batches`` random pair indices is drawn (with
replacement, from the whole corpus), sorted by length, cut into batches, and the batches are
shuffled. Only the token ids of the pairs in the current batch are read from the memory map.
The sampler's state (RNG state at the start of the pool + batches used) is plain data, so a
resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xianliao.model.vocab import EOS_ID, GO_ID, PAD_ID


class DataError(Exception):
    """Prepared data that is missing or inconsistent; one line a user can act on."""


class PairArrays:
    """One split of prepared data (``{split}.{src,tgt}.{bin,off}``), memory-mapped."""

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        d = Path(data_dir)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{d} is not prepared data (no meta.json): run 'xianliao prepare'")
        self.meta = json.loads(meta_path.read_text("utf-8"))
        dtype = np.dtype(self.meta["dtype"])
        self.src, self.src_off = self._open(d, split, "src", dtype)
        self.tgt, self.tgt_off = self._open(d, split, "tgt", dtype)
        if len(self.src_off) != len(self.tgt_off):
            raise DataError(f"{d}: {split} question and answer offsets differ in length")
        self.lengths = None

    @staticmethod
    def _open(d: Path, split: str, side: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        bin_path, off_path = d / f"{split}.{side}.bin", d / f"{split}.{side}.off"
        if not bin_path.is_file() or not off_path.is_file():
            raise DataError(f"{d}: missing {bin_path.name} or {off_path.name}: run prepare again")
        off = np.memmap(off_path, dtype=np.int64, mode="r")
        ids = (
            np.memmap(bin_path, dtype=dtype, mode="r")
            if bin_path.stat().st_size
            else np.zeros(0, dtype=dtype)
        )
        if len(off) == 0 or off[-1] != len(ids):
            raise DataError(f"{d}: {bin_path.name} does not match {off_path.name} (truncated?)")
        return ids, off

    def __len__(self) -> int:
        return len(self.src_off) - 1

    def reversed(self) -> PairArrays:
        """The same pairs read backwards (answer -> question), sharing the memory maps: for a
        model of the line before as well as the line after (MMI-bidi reranking)."""
        rev = copy.copy(self)
        rev.src, rev.src_off, rev.tgt, rev.tgt_off = self.tgt, self.tgt_off, self.src, self.src_off
        return rev

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.src[self.src_off[i] : self.src_off[i + 1]],
            self.tgt[self.tgt_off[i] : self.tgt_off[i + 1]],
        )

    def tgt_lengths(self, idx: np.ndarray) -> np.ndarray:
        return self.tgt_off[idx + 1] - self.tgt_off[idx]

    def src_lengths(self, idx: np.ndarray) -> np.ndarray:
        return self.src_off[idx + 1] - self.src_off[idx]


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) question ids, PAD-filled
    src_len: torch.Tensor  # (B,)
    tgt_in: torch.Tensor  # (B, T) GO + answer
    tgt_out: torch.Tensor  # (B, T) answer + EOS
    n_tokens: int  # real target tokens (EOS included)


def collate(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    B = len(pairs)
    S = max(len(q) for q, _ in pairs)
    T = max(len(a) for _, a in pairs) + 1
    src = np.full((B, S), PAD_ID, dtype=np.int64)
    tgt_in = np.full((B, T), PAD_ID, dtype=np.int64)
    tgt_out = np.full((B, T), PAD_ID, dtype=np.int64)
    src_len = np.empty(B, dtype=np.int64)
    n = 0
    for i, (q, a) in enumerate(pairs):
        src[i, : len(q)] = q
        src_len[i] = len(q)
        tgt_in[i, 0] = GO_ID
        tgt_in[i, 1 : len(a) + 1] = a
        tgt_out[i, : len(a)] = a
        tgt_out[i, len(a)] = EOS_ID
        n += len(a) + 1
    return Batch(
        torch.from_numpy(src),
        torch.from_numpy(src_len),
        torch.from_numpy(tgt_in),
        torch.from_numpy(tgt_out),
        n,
    )


class Source:
    """A named PairArrays with a sampling weight (base corpus, logged dialogues, ...)."""

    def __init__(self, arrays: PairArrays, weight: float = 1.0, name: str = "") -> None:
        if len(arrays) == 0:
            raise DataError(f"source {name or '?'} has no training pairs")
        self.arrays, self.weight, self.name = arrays, weight, name


class BatchSampler:
    """Infinite stream of length-grouped batches of random pairs from weighted sources."""

    def __init__(
        self,
        sources: list[Source],
        batch_size: int,
        *,
        seed: int = 0,
        pool_batches: int = 50,
    ) -> None:
        self.sources = sources
        self.batch_size = batch_size
        self.pool_batches = pool_batches
        w = np.array([s.weight for s in sources], dtype=np.float64)
        if (w <= 0).any():
            raise ValueError("source weights must be positive")
        self.probs = w / w.sum()
        self.rng = np.random.default_rng(seed)
        self._pool_state = self.rng.bit_generator.state
        self._batches: list[tuple[np.ndarray, np.ndarray]] = []
        self._used = 0

    def _new_pool(self) -> None:
        self._pool_state = self.rng.bit_generator.state
        n = self.batch_size * self.pool_batches
        which = self.rng.choice(len(self.sources), size=n, p=self.probs)
        idx = np.empty(n, dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        for k, src in enumerate(self.sources):
            sel = which == k
            m = int(sel.sum())
            if m:
                idx[sel] = self.rng.integers(0, len(src.arrays), size=m)
                lengths[sel] = src.arrays.tgt_lengths(idx[sel]) * 64 + src.arrays.src_lengths(
                    idx[sel]
                ).clip(max=63)
        order = np.argsort(lengths, kind="stable")  # group similar lengths: little padding
        batches = [
            (which[order[i : i + self.batch_size]], idx[order[i : i + self.batch_size]])
            for i in range(0, n, self.batch_size)
        ]
        perm = self.rng.permutation(len(batches))
        self._batches = [batches[i] for i in perm]
        self._used = 0

    def next_batch(self) -> Batch:
        if self._used >= len(self._batches):
            self._new_pool()
        which, idx = self._batches[self._used]
        self._used += 1
        return collate(
            [self.sources[w].arrays.pair(int(i)) for w, i in zip(which, idx, strict=True)]
        )

    def state_dict(self) -> dict:
        """Plain data: the RNG state at the start of the current pool and batches used."""
        return {"pool_state": self._pool_state, "used": self._used, "has_pool": bool(self._batches)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["pool_state"]
        self._batches, self._used = [], 0
        if state["has_pool"]:
            self._new_pool()
            self._used = state["used"]


def iter_eval_batches(arrays: PairArrays, batch_size: int, limit: int, shard=(0, 1)):
    """Fixed, ordered batches over the first ``limit`` pairs (validation perplexity); with
    ``shard=(rank, world_size)`` only every world_size-th pair from the rank-th on, so that the
    ranks of a distributed run share the work."""
    rank, world = shard
    idx = range(rank, min(len(arrays), limit), world)
    for start in range(0, len(idx), batch_size):
        yield collate([arrays.pair(i) for i in idx[start : start + batch_size]])
