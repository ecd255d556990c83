"""Whether a message says something went well or badly (its polarity), from a word list.

Two questions that share most of their words can still mean opposite things: 今天心情特别好 and
今天心情好差 share 今天, 心情 and 好. The reply index's similarity counts words, so without this
the bot answered good news with the reply to bad news. A word list is enough for that one
distinction, costs microseconds and is a plain file to extend (model/data/polarity.txt).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

DEFAULT_POLARITY = Path(__file__).with_name("data") / "polarity.txt"
NEGATORS = "不没别"  # one of these just before a word turns it round: 不开心, 没那么累, 别难过
NEGATION_REACH = 3  # characters before the word that may hold the negator (不太开心)
# 好 on its own at the end of a phrase is good (今天心情特别好, 好的); before another word it
# only makes that word stronger (好累, 好开心), and the other word decides.
_PLAIN_GOOD = "好(?=$|[了啊呀的哦吧呢啦嘛!！。~～，,?？\\s])"


def read_polarity(path: str | Path = DEFAULT_POLARITY) -> tuple[dict[str, int], frozenset[str]]:
    """The word list: each entry with +1 (good), -1 (bad) or 0 (neither, see the file), and
    the entries that cheer good news ("^")."""
    signs = {"+": 1, "-": -1, "=": 0, "^": 1}
    words: dict[str, int] = {}
    cheers: set[str] = set()
    for line in Path(path).read_text("utf-8").splitlines():
        line = line.strip()
        if line and line[0] in signs and len(line) > 1:
            words[line[1:].lower()] = signs[line[0]]
            if line[0] == "^":
                cheers.add(line[1:].lower())
    return words, frozenset(cheers)


@lru_cache(maxsize=1)
def _default() -> tuple[re.Pattern, dict[str, int], frozenset[str]]:
    words, cheers = read_polarity()
    alts = sorted(words, key=len, reverse=True)
    pattern = re.compile("|".join([*map(re.escape, alts), _PLAIN_GOOD]))
    return pattern, {**words, "好": 1}, cheers


def _negated(text: str, start: int) -> bool:
    """Whether a negator stands just before ``text[start]``; not the one of a question that
    offers both answers (会不会累, 有没有喜欢的歌: neither yes nor no)."""
    for j in range(max(0, start - NEGATION_REACH), start):
        if text[j] in NEGATORS and not (0 < j < len(text) - 1 and text[j - 1] == text[j + 1]):
            return True
    return False


@lru_cache(maxsize=65536)
def polarity(text: str) -> int:
    """+1 when ``text`` (normalised, lower case) says on balance that something is good, -1
    when bad, 0 when neither or both."""
    pattern, words, _ = _default()
    total = 0
    for m in pattern.finditer(text):
        sign = words[m.group()]
        if sign and _negated(text, m.start()):
            sign = -sign
        total += sign
    return (total > 0) - (total < 0)


@lru_cache(maxsize=65536)
def cheers(text: str) -> bool:
    """Whether ``text`` (normalised) cheers good news (恭喜, 太好了; not 不羡慕)."""
    pattern, _, cheering = _default()
    return any(
        m.group() in cheering and not _negated(text, m.start()) for m in pattern.finditer(text)
    )


def answers_other_mood(mood: int, answer: str) -> bool:
    """Whether a reply (normalised) fits news of the other kind than a message of polarity
    ``mood``: pity or bad news after good news (这么糟糕啊 to 我考过了), cheering after bad news
    (恭喜 to 我们吵架了). Comfort after bad news often holds good words (会好的), so only
    cheering counts there."""
    if mood > 0:
        return polarity(answer) < 0
    return mood < 0 and cheers(answer)
