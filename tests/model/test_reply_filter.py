"""The reply filter: blocklisted words, empty replies, replies that stutter, broken text."""

from __future__ import annotations

import pytest

from xianliao.model.reply_filter import ReplyFilter, has_content, read_blocklist, repeats_run


@pytest.mark.parametrize(
    ("text", "tokens", "reason"),
    [
        ("你是个白痴", None, "blocklisted word '白痴'"),
        ("ＳＢ吧你", None, "blocklisted word 'sb'"),  # full-width and upper case normalised
        ("你有病", None, "blocklisted word '你有病'"),  # the recipe's model once said this
        ("你是神经病吗", None, "blocklisted word '神经病'"),
        ("闭嘴吧", None, "blocklisted word '闭嘴'"),
        ("你家猫没有病吧？", None, None),  # caring, not an insult
        ("", None, "empty"),
        ("   ", None, "empty"),
        ("=。=", None, "empty"),
        ("...!!", None, "empty"),
        ("吃了吃了吃了", ["吃", "了", "吃", "了", "吃", "了"], "repeats itself"),
        ("好的好的好的", ["好", "的", "好", "的", "好", "的"], "repeats itself"),
        ("哈哈", ["哈哈"], None),
        ("吃了吃了", ["吃", "了", "吃", "了"], None),  # twice is fine
        ("祝你生日快乐", ["祝", "你", "生日", "快乐"], None),
        ("我要上床睡觉了", None, None),
        ("\ufffd怎么办", None, "broken text"),  # a corpus answer decoded from broken bytes
        ("让我猜猜……", ["让", "我", "猜猜", *"......"], None),  # an ellipsis, normalised
        ("妈的，烦死了", None, "blocklisted word '妈的'"),
        ("这就是妈妈的爱", None, None),  # "!妈妈的": the phrase is allowed, the curse is not
        ("爸妈的心意，他妈的谁懂", None, "blocklisted word '他妈的'"),
        ("去你妈妈的", None, "blocklisted word '去你妈'"),  # overlaps the allowed 妈妈的
        ("去你大妈的", None, "blocklisted word '妈的'"),  # 大妈的 is not allowed
    ],
)
def test_default_filter(text, tokens, reason):
    assert ReplyFilter.default().blocked(text, tokens) == reason


def test_extra_blocklist_file_extends_the_shipped_one(tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("# comment\n香菜\n\n", encoding="utf-8")
    f = ReplyFilter.default(extra)
    assert f.blocked_word("我不吃香菜") == "香菜"
    assert f.blocked_word("你这个白痴") == "白痴"
    assert ReplyFilter.default().blocked_word("我不吃香菜") is None
    assert "香菜" in read_blocklist(extra) and "# comment" not in read_blocklist(extra)


def test_missing_blocklist_file_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        ReplyFilter.default(tmp_path / "nope.txt")


def test_helpers():
    assert has_content("a") and has_content("好") and has_content("3")
    assert not has_content("～～") and not has_content("(^_^)")
    assert repeats_run(["a", "b", "c", "a", "b", "c", "a", "b", "c"])
    assert not repeats_run(["a", "b", "a", "c", "a"])
    assert ReplyFilter([]).blocked("随便说", None) is None
