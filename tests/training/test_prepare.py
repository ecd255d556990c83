import json

import numpy as np
import pytest
from conftest import TINY_PAIRS, write_tsv

from xianliao.model.vocab import UNK_ID, Vocab
from xianliao.training.corpus import Bad, CorpusError, iter_corpus
from xianliao.training.data import PairArrays
from xianliao.training.prepare import BoundedCounter, PrepareConfig, prepare


def _cfg(**kw):
    return PrepareConfig(**{"min_freq": 1, "workers": 1, "valid_permille": 0, **kw})


def test_broken_lines_are_counted_not_fatal(tmp_path):
    corpus = tmp_path / "broken.tsv"
    corpus.write_bytes(
        "你好\t你好啊\nonly one field\na\tb\tc\n\n".encode()
        + b"\xff\xfe bad utf8\tx\n"
        + "   \t空问题\n".encode()
        + "今天\t天气不错\n".encode()
        + ("长\t" + "很" * 50 + "\n").encode()
    )
    out = tmp_path / "data"
    stats = prepare([str(corpus)], out, _cfg(max_len=20), progress=False)
    assert stats.pairs_read == 8
    assert stats.pairs_written == {"train": 2, "valid": 0}
    assert stats.bad == {
        "1 fields instead of 2": 1,
        "3 fields instead of 2": 1,
        "blank line": 1,
        "not UTF-8": 1,
        "empty question or answer after normalising": 1,
        "answer longer than 20 tokens": 1,
    }
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stats"]["bad"] == stats.bad


def test_arrays_round_trip_to_the_segmented_text(tmp_path, tiny_tsv):
    out = tmp_path / "d"
    prepare([str(tiny_tsv)], out, _cfg(workers=2), progress=False)  # real worker processes
    vocab = Vocab((out / "vocab.txt").read_text().rstrip("\n").split("\n"))
    arrays = PairArrays(out, "train")
    assert len(arrays) == len(TINY_PAIRS)
    got = sorted("".join(vocab.decode(arrays.pair(i)[1])) for i in range(len(arrays)))
    assert got == sorted(a.replace(",", ",") for _, a in TINY_PAIRS)


def test_min_freq_maps_rare_words_to_unk_and_valid_split(tmp_path):
    pairs = [("你好", "你好")] * 50 + [(f"罕见词{i}号", "嗯嗯") for i in range(50)]
    corpus = write_tsv(tmp_path / "c.tsv", pairs)
    out = tmp_path / "d"
    stats = prepare([str(corpus)], out, _cfg(min_freq=3, valid_permille=200), progress=False)
    vocab = (out / "vocab.txt").read_text().split("\n")
    assert "你好" in vocab and "罕见词3号" not in vocab
    assert stats.unk_tokens > 0
    assert stats.pairs_written["valid"] > 0 and stats.pairs_written["train"] > 0
    valid = PairArrays(out, "valid")
    assert len(valid) == stats.pairs_written["valid"]
    assert len((out / "valid.tsv").read_text().splitlines()) == len(valid)
    ids = np.concatenate([valid.pair(i)[0] for i in range(len(valid))])
    train = PairArrays(out, "train")
    ids = np.concatenate([ids] + [train.pair(i)[0] for i in range(len(train))])
    assert UNK_ID in ids  # rare words became <unk>, they did not vanish


def test_two_file_and_yaml_formats(tmp_path):
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "question").write_text("你好\n吃了吗\n", encoding="utf-8")
    (tmp_path / "seed" / "answer").write_text("你好呀\n吃过了\n多余的一行\n", encoding="utf-8")
    items = list(iter_corpus(str(tmp_path / "seed")))
    assert items[:2] == [("你好", "你好呀"), ("吃了吗", "吃过了")]
    assert isinstance(items[2], Bad)
    plus = list(iter_corpus(f"{tmp_path}/seed/question+{tmp_path}/seed/answer"))
    assert plus == items
    yml = tmp_path / "c.yml"
    yml.write_text(
        "categories: [x]\nconversations:\n- - 你好\n  - 嗨\n  - 最近如何\n- - 孤单\n",
        encoding="utf-8",
    )
    items = list(iter_corpus(str(yml)))
    assert items[:2] == [("你好", "嗨"), ("嗨", "最近如何")]
    assert isinstance(items[2], Bad)


def test_packaged_chatterbot_chinese_corpus():
    pytest.importorskip("chatterbot_corpus")
    pairs = [x for x in iter_corpus("chatterbot:chinese") if not isinstance(x, Bad)]
    assert len(pairs) > 300
    assert ("你好", "嗨") in pairs


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        prepare([str(tmp_path / "nope.tsv")], tmp_path / "d", _cfg(), progress=False)
    bad_yaml = tmp_path / "x.yml"
    bad_yaml.write_text("just: a mapping\n")
    with pytest.raises(CorpusError, match="conversations"):
        list(iter_corpus(str(bad_yaml)))


def test_bounded_counter_keeps_frequent_words_and_stays_bounded():
    from collections import Counter

    c = BoundedCounter(cap=100)
    for i in range(50):
        c.update(Counter({"常见": 3, **{f"rare{i}_{j}": 1 for j in range(20)}}))
        assert len(c.counts) <= 100
    assert c.counts["常见"] == 150
    assert c.prunes > 0


def test_bounded_counter_matches_a_plain_counter_with_the_same_pruning_rule():
    """The numpy-backed counter against the rule written with a plain Counter: same counts,
    same pruning threshold, same words kept, over blocks that repeat, add and prune words."""
    import random
    from collections import Counter

    rng = random.Random(7)
    cap = 300
    c = BoundedCounter(cap)
    ref, threshold, prunes = Counter(), 1, 0
    for block in range(60):
        words = [f"w{rng.randint(0, 40)}" for _ in range(50)]  # frequent ones
        words += [f"r{block}_{rng.randint(0, 400)}" for _ in range(120)]  # mostly rare ones
        block_counts = Counter(words)
        c.update(list(block_counts), np.array(list(block_counts.values())))
        ref.update(block_counts)
        if len(ref) > cap:
            while len(ref) > cap // 2:
                ref = Counter({w: n for w, n in ref.items() if n > threshold})
                threshold += 1
            prunes += 1
        assert c.counts == dict(ref)
        assert len(c) <= cap
    assert (c.prunes, c.threshold) == (prunes, threshold) and prunes > 3


def test_word_hashes_are_stable_and_tell_words_apart():
    from xianliao.training.prepare import pack_words, word_hashes

    words = [f"词{i}" for i in range(100_000)] + [str(i) for i in range(100_000)]
    words += ["", "a", "aa", "a" * 5000, "a" * 5001, "ab", "ba", "\0", "\0\0", "你好", "好你"]
    h = word_hashes(*pack_words(words))
    assert len(np.unique(h)) == len(words)  # no collision among 200k close words
    # a word's hash does not depend on its neighbours or its place in the buffer
    again = word_hashes(*pack_words(["x", "你好", "a" * 5000, "词7"]))
    assert again[1:].tolist() == [h[words.index(w)] for w in ("你好", "a" * 5000, "词7")]


def test_counter_top_gives_the_same_vocabulary_as_all_counts():
    c = BoundedCounter(cap=10_000)
    counts = {f"词{i}": (i * 7919) % 13 + 1 for i in range(500)}  # many ties
    counts["<unk>"] = 99  # a special in the text is never a vocabulary entry
    c.update(counts)
    for max_size, min_freq in ((30, 2), (100, 1), (400, 5), (10_000, 2)):
        full = Vocab.build(c.counts, min_freq=min_freq, max_size=max_size)
        top = c.top(max_size + 4, min_count=min_freq)
        assert len(top) < len(counts) or max_size >= 400
        assert Vocab.build(top, min_freq=min_freq, max_size=max_size).itos == full.itos


def test_small_blocks_give_the_same_data_as_one_block(tmp_path):
    """TSV files are cut into byte ranges that workers read themselves: the cut must not change
    anything (no line lost, doubled or split, same order, same bad-line counts)."""
    pairs = [(f"问题{i}号", f"回答{i % 7}") for i in range(300)]
    corpus = write_tsv(tmp_path / "c.tsv", pairs)
    with open(corpus, "ab") as f:
        f.write(b"broken line\n\xff\xfe\tx\n\n" + "最后\t没有换行".encode())
    outs = {}
    for name, block in (("one", 1 << 20), ("small", 97)):
        out = tmp_path / name
        stats = prepare(
            [str(corpus)],
            out,
            _cfg(workers=2, block_bytes=block, valid_permille=100),
            progress=False,
        )
        assert not list(out.glob("*.tmp"))  # the workers' unit files are gone
        outs[name] = (
            stats.pairs_read,
            stats.pairs_written,
            stats.bad,
            *(
                (out / f).read_bytes()
                for f in ("vocab.txt", "train.src.bin", "train.tgt.off", "valid.tsv")
            ),
        )
    assert outs["one"] == outs["small"]
    assert outs["one"][0] == 304 and sum(outs["one"][1].values()) == 301
    assert outs["one"][2] == {"1 fields instead of 2": 1, "not UTF-8": 1, "blank line": 1}


def test_counter_cap_option_is_checked_and_used(tmp_path, capsys):
    from xianliao.training.cli import prepare_main

    with pytest.raises(SystemExit) as info:
        prepare_main(["x.tsv", "--out", str(tmp_path / "d"), "--counter-cap", "100"])
    assert info.value.code == 2
    assert "--counter-cap must be at least twice --max-vocab" in capsys.readouterr().err
    corpus = tmp_path / "c.tsv"
    corpus.write_text("".join(f"问题{i} 词{i}\t回答{i} 字{i % 7}\n" for i in range(300)), "utf-8")
    out = tmp_path / "d"
    argv = [str(corpus), "--out", str(out), "--max-vocab", "50", "--counter-cap", "100"]
    assert prepare_main([*argv, "--workers", "1", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["counter_cap"] == 100
    assert meta["stats"]["counter_prunes"] > 0  # hundreds of distinct words, cap 100


@pytest.mark.parametrize("workers", [1, 2])
def test_cleaning_drops_wordless_and_blocklisted_answers_and_counts_them(tmp_path, workers):
    pairs = [
        *TINY_PAIRS,
        ("呵呵", "=。="),
        ("你好", "~~~"),
        ("你是谁", "你个白痴"),
        ("好", "我不吃香菜"),
        ("你好吗", "我很好\ufffd"),  # a line decoded from broken bytes
        ("在吗\ufffd", "在的"),  # learnt as a reply too with --both-directions
    ]
    tsv = write_tsv(tmp_path / "c.tsv", pairs)
    extra = tmp_path / "more.txt"
    extra.write_text("香菜\n", encoding="utf-8")
    cfg = PrepareConfig(min_freq=1, workers=workers, valid_permille=0, blocklist=str(extra))
    stats = prepare([str(tsv)], tmp_path / "clean", cfg, progress=False)
    assert stats.bad == {
        "answer is only punctuation or an emoticon": 2,
        "answer on the blocklist": 2,
        "question or answer with broken text (U+FFFD)": 2,
    }
    assert stats.pairs_written["train"] == len(TINY_PAIRS)
    kept = prepare(
        [str(tsv)],
        tmp_path / "all",
        PrepareConfig(min_freq=1, workers=workers, valid_permille=0, clean=False),
        progress=False,
    )
    assert kept.bad == {} and kept.pairs_written["train"] == len(pairs)


def test_vocab_from_a_data_dir_gives_mixable_data(tmp_path, tiny_data):
    from xianliao.training.cli import prepare_main

    tsv = write_tsv(tmp_path / "more.tsv", [("你好", "早点休息吧"), ("新词", "没见过")])
    out = tmp_path / "more"
    assert (
        prepare_main([str(tsv), "--out", str(out), "--vocab-from", str(tiny_data), "--quiet"]) == 0
    )
    assert (out / "vocab.txt").read_text("utf-8") == (tiny_data / "vocab.txt").read_text("utf-8")
    assert UNK_ID in np.fromfile(out / "train.src.bin", dtype=np.uint16)  # 新词 is not in it
