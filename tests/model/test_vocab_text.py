from collections import Counter

import numpy as np
import pytest

from xianliao.model.text import Tokenizer, detokenize, normalise
from xianliao.model.vocab import EOS_ID, GO_ID, PAD_ID, SPECIALS, UNK_ID, Vocab


def test_specials_have_fixed_ids():
    v = Vocab.build(Counter({"你": 5, "好": 3}), min_freq=1)
    assert v.itos[:4] == list(SPECIALS)
    assert (v.stoi["<pad>"], v.stoi["<go>"], v.stoi["<eos>"], v.stoi["<unk>"]) == (
        PAD_ID,
        GO_ID,
        EOS_ID,
        UNK_ID,
    )


def test_min_freq_and_max_size_and_unk():
    counts = Counter({"的": 10, "我": 8, "你": 8, "罕见": 1})
    v = Vocab.build(counts, min_freq=2)
    assert "罕见" not in v.stoi
    assert v.encode(["我", "罕见", "的"]) == [v.stoi["我"], UNK_ID, v.stoi["的"]]
    small = Vocab.build(counts, min_freq=1, max_size=6)
    assert len(small) == 6
    assert small.itos[4:] == ["的", "你"]  # most frequent first, ties broken by the word


def test_decode_stops_at_eos_and_skips_pad_go():
    v = Vocab([*SPECIALS, "你", "好"])
    assert v.decode([GO_ID, 4, PAD_ID, 5, EOS_ID, 4]) == ["你", "好"]


def test_vocab_rejects_bad_lists():
    with pytest.raises(ValueError):
        Vocab(["a", "b"])
    with pytest.raises(ValueError):
        Vocab([*SPECIALS, "a", "a"])


def test_normalise():
    assert normalise("  ＨＥＬＬＯ，世界！ ") == "hello,世界!"
    assert normalise("你确定吗 我请客") == "你确定吗,我请客"
    assert normalise("a\u200bb\x00c\n\nd") == "abc d"
    assert normalise("") == ""


def test_detokenize_joins_chinese_without_spaces():
    assert detokenize(["我", "喜欢", "python", "和", "c", "++"]) == "我喜欢python和c++"
    assert detokenize(["i", "love", "你"]) == "i love你"


def test_tokenize_keeps_unknown_words_and_emoji():
    tok = Tokenizer(fast=False)
    assert tok.tokenize("   ") == []
    toks = tok.tokenize("我爱😀吃🍜")
    assert "😀" in toks and "🍜" in toks
    assert "".join(toks) == "我爱😀吃🍜"


def corpus_texts(name: str, pairs: int) -> list[str]:
    """Both sides of the first ``pairs`` lines of a shared corpus file, or [] where the shared
    corpora are absent (a user's fresh clone): the tests then run on their own texts only."""
    from conftest import SHARED_CORPUS

    path = SHARED_CORPUS / name
    if not path.is_file():
        return []
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for _, line in zip(range(pairs), f, strict=False):
            texts.extend(line.rstrip("\n").split("\t"))
    return texts


def test_rjieba_agrees_with_jieba(request):
    pytest.importorskip("rjieba")
    from conftest import TINY_PAIRS

    slow, fast = Tokenizer(fast=False), Tokenizer(fast=True)
    assert fast.backend == "rjieba"
    lines = [q for q, _ in TINY_PAIRS] + [a for _, a in TINY_PAIRS]
    lines += ["自然语言处理是人工智能的一个分支", "他来到了网易杭研大厦", "Lyle 外套带了没?"]
    lines += corpus_texts("dgk_subtitle.tsv", 3000)
    assert [slow.tokenize(x) for x in lines] == [fast.tokenize(x) for x in lines]


def test_tokenizer_description_round_trip():
    desc = Tokenizer(fast=False).describe()
    assert Tokenizer.from_description(desc).describe() == desc
    with pytest.raises(ValueError):
        Tokenizer.from_description({**desc, "version": 99})


def _reference_normalise(text: str) -> str:
    """The normaliser as first written (three regex passes): the fast one must match it."""
    import re
    import unicodedata

    from xianliao.model.text import _CJK_SPACE, _CONTROL

    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text).lower()
    text = re.sub(r"\s+", " ", text).strip()
    return _CJK_SPACE.sub(",", text)


def test_fast_normalise_matches_the_reference():
    texts = [
        "",
        " ",
        "你好 世界",
        "a\u200bb\x00c\n\nd",
        "\ufeff你 好\u2028吗",
        "ＡＢＣ　ｄｅｆ",
        "\x1c\x1d 你 \t 好 ",
        "Lyle 外套带了没?",
        "你确定吗  我请客",
        "😀 😀",
        "a\u3000b",
    ]
    texts += corpus_texts("dgk_subtitle_srt_extra.tsv", 20000)
    assert [normalise(t) for t in texts] == [_reference_normalise(t) for t in texts]


def _block_tokens(words, ids, lengths) -> list[list[str]]:
    toks = [words[i] for i in ids.tolist()]
    ends = np.cumsum(lengths).tolist()
    return [toks[e - n : e] for e, n in zip(ends, lengths.tolist(), strict=True)]


@pytest.mark.parametrize("fast", [False, True])
def test_tokenize_block_matches_tokenize(fast):
    """prepare segments a whole block in one call: every text must get the tokens it gets
    alone, empty texts included, whichever segmenter runs."""
    tok = Tokenizer(fast=fast)
    texts = [
        "你好",
        "",
        "   ",
        "hello world 你好 吗",
        "你确定吗 我请客",
        "😀😀😀",
        "a\u200bb",
        "ＡＢＣ　ｄｅｆ",
        "3.14% C++ c# a&b x-y",
        "line\nbreak\tand tab",
        "\u1680空\u2003格",
        "全是<b>标记</b>*和*_下划线_",
    ]
    texts += corpus_texts("dgk_subtitle_srt_extra.tsv", 5000 if fast else 1500)
    assert _block_tokens(*tok.tokenize_block(texts)) == [tok.tokenize(t) for t in texts]
    normalised = [normalise(t) for t in texts]
    assert _block_tokens(*tok.tokenize_block(normalised, normalised=True)) == [
        tok.tokenize(t) for t in texts
    ]
    words, ids, lengths = tok.tokenize_block(["", " "])
    assert len(ids) == 0 and lengths.tolist() == [0, 0]


def test_tokenize_block_falls_back_when_a_word_spans_the_newline():
    tok = Tokenizer(fast=False)
    tok._cut = lambda text: [text[i : i + 2] for i in range(0, len(text), 2)]  # glues "好\n"
    texts = ["你好", "我很好", "谢谢你啊", "", "嗯"]
    assert _block_tokens(*tok.tokenize_block(texts)) == [tok.tokenize(t) for t in texts]
