"""Whether a message says something went well or badly (its polarity), from a word list.

Two questions that share most of their words can still mean opposite things: 今天心情特别好 and
今天心情好差 share 今天, 心情 and 好. The reply index's similarity counts words, so without this
the bot answered good news with the reply to bad news. A word list is enough for that one
distinction, and it is a plain file to extend (model/data/polarity.txt).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from xianliao.model.text import alternation

DEFAULT_POLARITY = Path(__file__).with_name("data") / "polarity.txt"
# A 不/没/别 right before a word turns it round (不开心, 别难过), also across a softening word
# (不太开心, 没那么累, 不是很好); one further away negates something else (没休息，累得很).
_NEGATED = re.compile("[不没别]有?(?:太|很|怎么|那么|这么|是很|是太|算|大|够|是)?$")
NEGATION_REACH = 4  # characters before a word that may hold a negation (不是很)
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
    pattern = re.compile("|".join(p for p in (alternation(words), _PLAIN_GOOD) if p))
    return pattern, {**words, "好": 1}, cheers


def _negated(text: str, start: int, masked: int) -> bool:
    """Whether a negation stands right before ``text[start]``: not one inside a span an "="
    entry took (特别, 好不容易, 差不多: text before ``masked``), nor the 不 of a question that
    offers both answers (会不会累, 是不是很累)."""
    before = text[max(masked, start - NEGATION_REACH) : start]
    m = _NEGATED.search(before)
    if m is None:
        return False
    j = start - len(before) + m.start()  # where the negator is in ``text``
    return not (0 < j < len(text) - 1 and text[j - 1] == text[j + 1])


@lru_cache(maxsize=65536)
def polarity(text: str) -> int:
    """+1 when ``text`` (normalised, lower case) says on balance that something is good, -1
    when bad, 0 when neither or both."""
    total = sum(sign for _, sign in _signed(text))
    return (total > 0) - (total < 0)


def _signed(text: str) -> list[tuple[str, int]]:
    """The word-list entries found in ``text``, leftmost first, each with its sign in place
    (turned round where negated; 0 for an "=" entry)."""
    pattern, words, _ = _default()
    out: list[tuple[str, int]] = []
    masked = 0  # the end of the last "=" span: a negator inside one does not count
    for m in pattern.finditer(text):
        sign = words[m.group()]
        if sign and _negated(text, m.start(), masked):
            sign = -sign
        elif not sign:
            masked = m.end()
        out.append((m.group(), sign))
    return out


@lru_cache(maxsize=65536)
def cheers(text: str) -> bool:
    """Whether ``text`` (normalised) cheers good news (恭喜, 太好了; not 不羡慕)."""
    cheering = _default()[2]
    return any(word in cheering and sign > 0 for word, sign in _signed(text))


def answers_other_mood(mood: int, answer: str) -> bool:
    """Whether a reply (normalised) fits news of the other kind than a message of polarity
    ``mood``: pity or bad news after good news (这么糟糕啊 to 我考过了), cheering after bad news
    (恭喜 to 我们吵架了). Comfort after bad news often holds good words (会好的), so only
    cheering counts there."""
    if mood > 0:
        return polarity(answer) < 0
    return mood < 0 and cheers(answer)
