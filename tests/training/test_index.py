"""``xianliao index``: what it builds, and bad input as one line."""

from __future__ import annotations

import json
import os

import pytest
from conftest import TINY_PAIRS, write_tsv

from xianliao.model.reply_index import ReplyIndex
from xianliao.training.cli import index_main


def test_index_command_builds_an_index_without_the_held_out_pairs(tmp_path, capsys):
    corpus = write_tsv(tmp_path / "c.tsv", TINY_PAIRS * 3)
    out = tmp_path / "replies.sqlite"
    assert index_main([str(corpus), "--out", str(out), "--valid-permille", "500"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    held = stats["skipped"].get("held out for validation", 0)
    assert 0 < held < len(TINY_PAIRS) * 3  # a hash of the pair decides, as in prepare
    assert ReplyIndex.open(out).size == stats["pairs_indexed"] == len(TINY_PAIRS) * 3 - held


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["{tmp}/nope.tsv", "--out", "{tmp}/i.sqlite"], "does not exist"),
        (["{tmp}/c.tsv", "--out", "{tmp}/c.tsv/i.sqlite"], "c.tsv"),
        (["{tmp}/c.tsv", "--out", "{tmp}/i.sqlite", "--blocklist", "{tmp}/nope"], "nope"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, says):
    write_tsv(tmp_path / "c.tsv", TINY_PAIRS)
    assert index_main([a.format(tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and err.startswith("xianliao index:")


def test_out_of_range_permille_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        index_main(
            [
                str(write_tsv(tmp_path / "c.tsv", TINY_PAIRS)),
                "--out",
                "x",
                "--valid-permille",
                "2000",
            ]
        )
    assert "--valid-permille" in capsys.readouterr().err


def test_offsets_are_stored_with_the_index_and_reach_the_hits(tmp_path):
    a = write_tsv(tmp_path / "good.tsv", [("你吃饭了吗", "吃过了")])
    b = write_tsv(tmp_path / "noisy.tsv", [("你吃饭了吗", "我是探员")])
    out = tmp_path / "i.sqlite"
    args = [str(a), str(b), "--out", str(out), "--valid-permille", "0"]
    assert index_main([*args, "--offset", "noisy=-1.5"]) == 0
    index = ReplyIndex.open(out)
    assert index.offsets == {"noisy": -1.5}
    from xianliao.model.text import Tokenizer

    hits = {h.answer: h.offset for h in index.search(Tokenizer().tokenize("你吃饭了吗"))}
    assert hits == {"吃过了": 0.0, "我是探员": -1.5}


def test_a_bad_offset_is_refused(tmp_path, capsys):
    corpus = str(write_tsv(tmp_path / "c.tsv", TINY_PAIRS))
    with pytest.raises(SystemExit):
        index_main([corpus, "--out", str(tmp_path / "i"), "--offset", "dgk"])
    assert "--offset wants NAME=NUMBER" in capsys.readouterr().err


def test_the_shipped_everyday_exchanges_are_a_corpus_by_name(tmp_path, capsys):
    """``xianliao:everyday`` works wherever xianliao is installed, for index and prepare."""
    from xianliao.model.text import Tokenizer
    from xianliao.training.cli import prepare_main

    out = tmp_path / "replies.sqlite"
    assert index_main(["xianliao:everyday", "--out", str(out), "--valid-permille", "0"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["pairs_indexed"] > 100
    hits = ReplyIndex.open(out).search(Tokenizer().tokenize("你好"), 3)
    assert hits and hits[0].source == "everyday_zh"
    data = tmp_path / "data"
    assert prepare_main(["xianliao:everyday", "--out", str(data), "--quiet"]) == 0
    assert (data / "vocab.txt").is_file()


def test_the_shipped_exchanges_are_trusted_by_default_and_offset_overrides_it(
    tmp_path, monkeypatch
):
    """Written as answers for the bot, the shipped exchanges get SHIPPED_OFFSETS in any index
    that takes them (by name or by path); the user's --offset wins; other corpora get none."""
    from xianliao.model.text import Tokenizer
    from xianliao.training.corpus import EVERYDAY_CORPUS, SHIPPED_OFFSETS

    trusted = SHIPPED_OFFSETS[EVERYDAY_CORPUS.resolve()]
    assert trusted > 0
    other = str(write_tsv(tmp_path / "people.tsv", [("你好", "你好啊朋友")]))
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(EVERYDAY_CORPUS, tmp_path)  # (another spelling of the path)
    for spec, extra, want in [
        ("xianliao:everyday", [], trusted),
        (str(EVERYDAY_CORPUS), [], trusted),
        (relative, [], trusted),
        ("xianliao:everyday", ["--offset", "everyday_zh=0.5"], 0.5),
    ]:
        out = tmp_path / f"{len(extra)}-{len(spec)}.sqlite"
        assert index_main([spec, other, "--out", str(out), "--valid-permille", "0", *extra]) == 0
        index = ReplyIndex.open(out)
        hits = index.search(Tokenizer().tokenize("你好"), 20)
        assert {h.source: h.offset for h in hits} == {"everyday_zh": want, "people": 0.0}
        index.close()
