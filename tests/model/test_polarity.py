"""Polarity: good news and bad news told apart, and the reply index keeping them apart."""

from __future__ import annotations

import pytest

from xianliao.model.polarity import answers_other_mood, polarity, read_polarity
from xianliao.model.reply_index import ReplyIndex
from xianliao.model.text import Tokenizer, normalise

TOK = Tokenizer()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("今天心情特别好", 1),  # 好 at the end of a phrase
        ("今天心情好差", -1),  # 好 before another word only makes it stronger
        ("我好累", -1),
        ("好开心！", 1),
        ("今天心情不错", 1),  # 不错 is one entry: its 不 turns nothing round
        ("不开心", -1),  # a negator turns the word round
        ("心情不太好", -1),
        ("我不累", 1),
        ("你会不会累啊", -1),  # 会不会: a question, not a negation
        ("是不是很累", -1),
        ("今天特别开心", 1),  # the 别 of 特别 turns nothing round
        ("好不容易考上了", 1),
        ("一周没休息，累得不想说话", -1),  # 没 negates 休息, not 累
        ("不是很好", -1),
        ("气死我了哈哈", -1),  # laughing about it is not good news
        ("中午吃啥好呢", 0),  # a question, not a verdict
        ("你有没有开心的事", 1),
        ("我明天出差", 0),  # 出差 is not 差
        ("不好意思", 0),
        ("你吃饭了吗", 0),
        ("开心又难过", 0),  # both: neither
    ],
)
def test_polarity(text, expected):
    assert polarity(normalise(text)) == expected


def test_the_shipped_list_parses():
    words, cheers = read_polarity()
    assert words["开心"] == 1 and words["难过"] == -1 and words["出差"] == 0
    assert "恭喜" in cheers and words["恭喜"] == 1 and "开心" not in cheers
    assert all(w == w.strip() and w for w in words)


def test_good_news_is_not_answered_as_bad_news():
    """The bad-news question shares more words with the message, the good-news one means the
    same: the index ranks the good-news answer first."""
    pairs = [("今天心情好差", "这么糟糕啊"), ("今天心情不错", "真好呀"), ("今天吃什么", "面条")]
    index = ReplyIndex.memory((TOK.tokenize(q), a, "c") for q, a in pairs)
    hits = index.search(TOK.tokenize("今天心情特别好"), k=3)
    assert hits[0].answer == "真好呀"
    bad = next(h for h in hits if h.answer == "这么糟糕啊")
    assert bad.similarity < hits[0].similarity
    # and the other way round: bad news still finds the bad-news answer first
    assert index.search(TOK.tokenize("今天心情好差啊"), k=1)[0].answer == "这么糟糕啊"


@pytest.mark.parametrize(
    "message, answer, other",
    [
        ("今天考试通过了", "这么糟糕啊", True),  # pity after good news
        ("今天考试通过了", "太好了，恭喜", False),
        ("我们吵架了", "恭喜！快去看看吧", True),  # cheering after bad news
        ("我们吵架了", "别难过，会好的", False),  # comfort holds good words: not counted
        ("我们吵架了", "不羡慕", False),
        ("你吃饭了吗", "这么糟糕啊", False),  # a message without polarity keeps every answer
    ],
)
def test_answers_of_the_other_mood(message, answer, other):
    mood = polarity(normalise(message))
    assert answers_other_mood(mood, normalise(answer)) is other


def test_an_answer_that_cheers_bad_news_ranks_below_comfort():
    pairs = [("最好的朋友生孩子了", "恭喜！快去看看小宝宝吧"), ("跟朋友闹别扭", "主动聊聊吧")]
    index = ReplyIndex.memory((TOK.tokenize(q), a, "c") for q, a in pairs)
    hits = index.search(TOK.tokenize("跟最好的朋友吵架了"), k=2)
    assert hits[0].answer == "主动聊聊吧"


def test_the_same_question_keeps_its_answer_whatever_its_mood():
    """An answer given (or approved) for the very words of the message is not lowered, even
    where it would fit the other kind of news."""
    index = ReplyIndex.memory(
        [(TOK.tokenize("终于放假了好开心"), "累了一学期，好好休息", "approved")]
    )
    hit = index.search(TOK.tokenize("终于放假了好开心"))[0]
    assert hit.similarity == pytest.approx(1.0)
