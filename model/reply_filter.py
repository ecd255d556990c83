"""What the bot never sends: blocklisted words, empty replies, replies that stutter, and
broken text.

One filter serves every path (generated and retrieved replies, the bot, the terminal chat,
evaluation), and its text checks (``unusable``) serve ``prepare``, ``xianliao index`` and the
retraining's export, so what the bot never sends it never learns or indexes either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from xianliao.model.text import alternation, normalise

DEFAULT_BLOCKLIST = Path(__file__).with_name("data") / "blocklist.txt"
# Text with no letter, digit or CJK character: punctuation, emoticons such as "=。=" or "==".
_CONTENT = re.compile(r"[^\W_]", re.UNICODE)
BROKEN = "\ufffd"  # the replacement character: what is left of bytes that were not UTF-8
BROKEN_TEXT = "broken text"  # the reason ``unusable`` gives for it


def read_blocklist(path: str | Path | None = None) -> tuple[str, ...]:
    """The entries of a blocklist file (one per line, '#' comments), normalised; the default
    list shipped with the package when ``path`` is None."""
    text = DEFAULT_BLOCKLIST.read_text("utf-8") if path is None else Path(path).read_text("utf-8")
    entries = (normalise(line) for line in text.splitlines() if not line.startswith("#"))
    return tuple(dict.fromkeys(e for e in entries if e))


def has_content(text: str) -> bool:
    """Whether ``text`` holds a word at all (not only punctuation or an emoticon)."""
    return _CONTENT.search(text) is not None


def is_broken(text: str) -> bool:
    """Whether ``text`` holds what is left of bytes that were not UTF-8 (U+FFFD)."""
    return BROKEN in text


def repeats_run(tokens: Sequence[str], times: int = 3, max_run: int = 4) -> bool:
    """Whether some run of 1..max_run tokens with a word in it occurs ``times`` times in a row
    ("吃了吃了吃了"; not an ellipsis, which normalises to a row of dots)."""
    n = len(tokens)
    for size in range(1, max_run + 1):
        for start in range(n - size * times + 1):
            run = tokens[start : start + size]
            if all(
                tokens[start + k * size : start + (k + 1) * size] == run for k in range(1, times)
            ) and any(has_content(t) for t in run):
                return True
    return False


def _alternation(phrases: Sequence[str]) -> re.Pattern | None:
    """One regex matching any of ``phrases``, longest first; None for none."""
    return re.compile(alternation(phrases)) if phrases else None


class ReplyFilter:
    """Decides whether a reply may be sent. ``blocked`` returns the reason, or None."""

    def __init__(self, blocklist: Iterable[str] = ()) -> None:
        entries = [normalise(w) for w in blocklist]
        # "!phrase": an innocent phrase that holds a blocked word (妈妈的 holds 妈的): a blocked
        # word wholly inside it is let through, its other uses are not.
        self.allowed = tuple(dict.fromkeys(e[1:] for e in entries if e.startswith("!") and e[1:]))
        self.blocklist = tuple(dict.fromkeys(e for e in entries if e and not e.startswith("!")))
        # One alternation: a single regex scan per reply, whatever the list's length.
        self._pattern = _alternation(self.blocklist)
        self._allowed = _alternation(self.allowed)

    @classmethod
    def default(cls, extra_path: str | Path | None = None) -> ReplyFilter:
        """The shipped blocklist, plus the entries of ``extra_path`` when given."""
        words = read_blocklist()
        if extra_path:
            words += read_blocklist(extra_path)
        return cls(words)

    def blocked_word(self, text: str) -> str | None:
        """The first blocked word in ``text`` that does not lie wholly inside an allowed
        phrase (去你妈妈的 is still blocked for 去你妈, though 妈妈的 is allowed)."""
        if self._pattern is None:
            return None
        text = normalise(text)
        first = self._pattern.search(text)  # one scan for almost every text: no match
        if first is None or self._allowed is None:
            return first.group(0) if first else None
        spans = [a.span() for a in self._allowed.finditer(text)]
        for start in range(first.start(), len(text)):
            m = self._pattern.match(text, start)
            if m and not any(a <= m.start() and m.end() <= b for a, b in spans):
                return m.group(0)
        return None

    def unusable(self, text: str) -> str | None:
        """Why ``text`` is no answer to send or learn, whatever its segmentation: a blocked
        word, or broken text. One check for the reply path, ``prepare``, ``index`` and the
        retraining's export, so what the bot never sends it never learns or indexes either."""
        if (word := self.blocked_word(text)) is not None:
            return f"blocklisted word {word!r}"
        if is_broken(text):  # a corpus line decoded from broken bytes (some in xiaohuangji)
            return BROKEN_TEXT
        return None

    def blocked(self, text: str, tokens: Sequence[str] | None = None) -> str | None:
        """Why ``text`` must not be sent (``tokens``: its segmentation, for the repeat rule)."""
        if not text.strip() or not has_content(text):
            return "empty"
        if (why := self.unusable(text)) is not None:
            return why
        if tokens is not None and repeats_run(list(tokens)):
            return "repeats itself"
        return None
