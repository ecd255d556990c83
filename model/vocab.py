"""Vocabulary: tokens <-> ids, with the special tokens at fixed ids."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

PAD, GO, EOS, UNK = "<pad>", "<go>", "<eos>", "<unk>"
SPECIALS = (PAD, GO, EOS, UNK)
PAD_ID, GO_ID, EOS_ID, UNK_ID = range(4)


class Vocab:
    """Index == id; the four specials come first. Unknown words map to UNK, never vanish."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos: list[str] = list(tokens)
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")

    @classmethod
    def build(cls, counts: Mapping[str, int], *, min_freq: int = 2, max_size: int = 30000) -> Vocab:
        """Keep words seen at least ``min_freq`` times, the most frequent first, up to ``max_size``
        entries in all (specials included). Ties break by the word itself, so builds are stable."""
        kept = [(w, c) for w, c in counts.items() if c >= min_freq and w not in SPECIALS]
        kept.sort(key=lambda wc: (-wc[1], wc[0]))
        room = max(0, max_size - len(SPECIALS))
        return cls([*SPECIALS, *(w for w, _ in kept[:room])])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self.stoi.get
        return [get(tok, UNK_ID) for tok in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens, stopping at EOS and skipping PAD/GO."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, GO_ID):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return out
