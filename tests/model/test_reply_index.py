"""The reply index: built from a real small corpus, searched, updated, opened read-only."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from tests.conftest import TINY_PAIRS, write_tsv
from xianliao.model.reply_index import ReplyIndex, ReplyIndexError, default_index_path, similarity
from xianliao.model.text import Tokenizer

TOK = Tokenizer()


@pytest.fixture
def built(tmp_path):
    from xianliao.training.index import build

    more = [("你吃饭了吗", "吃过了,你呢"), ("你吃饭了吗", "还没有"), ("我们去吃饭吧", "好啊")]
    corpus = write_tsv(tmp_path / "c.tsv", [*TINY_PAIRS, *more, ("你好", "傻逼"), ("嗨", "=。=")])
    path = tmp_path / "replies.sqlite"
    stats = build([str(corpus)], path, valid_permille=0)
    return path, stats


def test_build_skips_blocked_and_wordless_answers(built):
    path, stats = built
    assert stats.pairs_read == len(TINY_PAIRS) + 5
    assert stats.skipped == {"answer on the blocklist": 1, "empty, or answer without words": 1}
    assert stats.pairs_indexed == len(TINY_PAIRS) + 3
    assert ReplyIndex.open(path).size == stats.pairs_indexed


def test_search_ranks_the_same_question_first(built):
    index = ReplyIndex.open(built[0])
    hits = index.search(TOK.tokenize("你吃饭了吗?"), k=5)
    assert {h.answer for h in hits[:2]} == {"吃过了,你呢", "还没有"}
    assert hits[0].similarity == pytest.approx(1.0)
    assert hits[-1].similarity < 1.0  # 我们去吃饭吧 shares only some words
    assert index.search(TOK.tokenize("量子力学"), k=5) == []
    assert index.search([], k=5) == []


def test_index_is_read_only_once_built(built):
    index = ReplyIndex.open(built[0])
    with pytest.raises(sqlite3.OperationalError):
        index.add([(["新"], "问题", "x")])


def test_a_question_of_one_repeated_common_word_is_found_by_its_exact_words():
    # 谢谢 is in every question here, so only the exact-words lookup can find 谢谢谢谢.
    pairs = [(["谢谢", "谢谢"], "不客气", "a")] + [
        (["谢谢", f"词{i}"], "嗯", "a") for i in range(1200)
    ]
    index = ReplyIndex.memory(pairs)
    assert index.query_words(["谢谢", "谢谢"]) == []  # too common for the full-text search
    assert [h.answer for h in index.search(["谢谢", "谢谢"], k=1)] == ["不客气"]


def test_add_updates_search_at_once():
    index = ReplyIndex.memory([(TOK.tokenize("你好"), "你好呀", "a")])
    assert [h.answer for h in index.search(TOK.tokenize("今天星期几"))] == []
    assert index.add([(TOK.tokenize("今天星期几"), "星期三", "approved")]) == 1
    hit = index.search(TOK.tokenize("今天星期几"))[0]
    assert (hit.answer, hit.source, index.size) == ("星期三", "approved", 2)


@pytest.mark.parametrize(
    ("content", "match"), [(None, "does not exist"), (b"not a database" * 100, "not a reply index")]
)
def test_bad_index_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "replies.sqlite"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ReplyIndexError, match=match) as err:
        ReplyIndex.open(path)
    assert "\n" not in str(err.value)


def test_a_broken_index_beside_the_model_leaves_generation(tmp_path, tiny_checkpoint, caplog):
    import shutil

    from xianliao.model.chatbot import ChatBot

    ckpt = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    default_index_path(ckpt).write_bytes(b"garbage" * 1000)
    with caplog.at_level(logging.WARNING):
        bot = ChatBot.load(ckpt)
    assert bot.index is None
    assert [r.message for r in caplog.records if "generation only" in r.message]
    assert bot.reply("你好", strategy="greedy") == "你好,很高兴认识你"


def test_similarity():
    w = {"你": 1.0, "吃饭": 5.0}
    assert similarity(w, ["你", "吃饭"]) == pytest.approx(1.0)
    assert 0 < similarity(w, ["吃饭", "好"]) < 1
    assert similarity(w, ["他"]) == 0.0


def test_the_shipped_exchanges_are_never_held_out(tmp_path):
    """A user's corpus loses its validation share to the index; the shipped exchanges, written
    as this bot's answers, lose nothing (valid_permille 1000 holds out every other pair)."""
    from xianliao.training.corpus import EVERYDAY_CORPUS
    from xianliao.training.index import build

    corpus = write_tsv(tmp_path / "c.tsv", TINY_PAIRS)
    stats = build([str(corpus), "xianliao:everyday"], tmp_path / "r.sqlite", valid_permille=1000)
    shipped = sum(1 for line in EVERYDAY_CORPUS.read_text("utf-8").splitlines() if line.strip())
    assert stats.skipped["held out for validation"] == len(TINY_PAIRS)
    assert stats.pairs_indexed == shipped


def test_answers_with_broken_text_are_not_indexed(tmp_path):
    """What the bot never sends is not indexed either (ReplyFilter.unusable)."""
    from xianliao.training.index import build

    corpus = write_tsv(tmp_path / "c.tsv", [*TINY_PAIRS, ("你好吗", "我很好\ufffd")])
    stats = build([str(corpus)], tmp_path / "r.sqlite", valid_permille=0)
    assert stats.skipped == {"answer with broken text (U+FFFD)": 1}
    assert stats.pairs_indexed == len(TINY_PAIRS)
