import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, TINY_PAIRS

from xianliao.training.data import BatchSampler, DataError, PairArrays, Source
from xianliao.training.train import TrainConfig, train

SMALL = {"emb_size": 16, "hidden_size": 24, "dropout": 0.1}


def test_sampler_batches_are_length_grouped_and_resumable(tiny_data):
    arrays = PairArrays(tiny_data, "train")
    s = BatchSampler([Source(arrays)], batch_size=4, seed=3, pool_batches=5)
    for _ in range(7):
        s.next_batch()
    state = s.state_dict()
    expected = [s.next_batch() for _ in range(6)]
    s2 = BatchSampler([Source(arrays)], batch_size=4, seed=999, pool_batches=5)
    s2.load_state_dict(state)
    for a, b in zip(expected, [s2.next_batch() for _ in range(6)], strict=True):
        assert torch.equal(a.src, b.src) and torch.equal(a.tgt_out, b.tgt_out)
    b = expected[0]
    assert b.tgt_in[:, 0].eq(1).all()  # GO first
    assert b.n_tokens == int((b.tgt_out != 0).sum())


def test_sampler_draws_from_the_whole_corpus_by_weight(tiny_data):
    arrays = PairArrays(tiny_data, "train")
    s = BatchSampler([Source(arrays, 3.0), Source(arrays, 1.0)], batch_size=8, seed=0)
    s.next_batch()
    which = np.concatenate([w for w, _ in s._batches])
    idx = np.concatenate([i for _, i in s._batches])
    assert 0.65 < (which == 0).mean() < 0.85
    assert set(idx.tolist()) == set(range(len(arrays)))


def test_reversed_pairs_share_the_arrays(tiny_data):
    arrays = PairArrays(tiny_data, "train")
    rev = arrays.reversed()
    assert len(rev) == len(arrays)
    for i in range(len(arrays)):
        q, a = arrays.pair(i)
        rq, ra = rev.pair(i)
        assert np.array_equal(rq, a) and np.array_equal(ra, q)


def test_both_directions_learns_the_reply_and_the_way_back(tiny_data, tmp_path):
    """--both-directions: one model answers the question and, read backwards, gives the
    question back from the answer; validation stays on the forward direction."""
    from xianliao.model.chatbot import ChatBot
    from xianliao.model.checkpoint import load_checkpoint

    cfg = TrainConfig(
        steps=600,
        batch_size=16,
        lr=1e-2,
        eval_every=600,
        model=TINY_MODEL,
        seed=7,
        both_directions=True,
    )
    res = train([(str(tiny_data), 1.0)], tmp_path, cfg, progress=False)
    assert load_checkpoint(res.checkpoint)["train"]["config"]["both_directions"] is True
    bot = ChatBot.load(res.checkpoint, decode_options={"strategy": "greedy"})
    forward = {q: bot.reply(q) for q, _ in TINY_PAIRS}
    backward = {a: bot.reply(a) for _, a in TINY_PAIRS}
    assert [q for q, a in TINY_PAIRS if forward[q] != a] == []
    assert [a for q, a in TINY_PAIRS if backward[a] != q] == []
    # Read backwards, it reranks sampled replies by how well they lead back to the question.
    replies = bot.reply_many(
        [q for q, _ in TINY_PAIRS], strategy="sample_rank", num_samples=8, bidi_weight=1.0, seed=0
    )
    assert replies == [a for _, a in TINY_PAIRS]


@pytest.mark.parametrize("lr_rule", ["plateau", "linear"])
def test_resume_continues_the_same_loss_curve(tiny_data, tmp_path, lr_rule):
    base = dict(
        batch_size=4, eval_every=10, log_every=1, model=SMALL, seed=5, lr=3e-3, lr_rule=lr_rule
    )
    full, split = [], []
    train(
        [(str(tiny_data), 1.0)],
        tmp_path / "full",
        TrainConfig(steps=20, **base),
        progress=False,
        on_progress=lambda i: full.append((i["loss"], i["lr"])),
    )
    # plateau: a finished 10-step run is continued to 20. linear: the schedule belongs to a
    # 20-step run, so the first part is one stopped at step 10 by Ctrl+C's stand-in
    first = TrainConfig(steps=10 if lr_rule == "plateau" else 20, **base)
    train(
        [(str(tiny_data), 1.0)],
        tmp_path / "split",
        first,
        progress=False,
        on_progress=lambda i: _stop_after(split, i, 10),
    )
    r = train(
        [(str(tiny_data), 1.0)],
        tmp_path / "split",
        TrainConfig(steps=20, **base),
        resume=True,
        progress=False,
        on_progress=lambda i: split.append((i["loss"], i["lr"])),
    )
    assert r.steps == 20
    assert [x for x, _ in split] == pytest.approx([x for x, _ in full], rel=1e-5, abs=1e-6)
    assert [lr for _, lr in split] == pytest.approx([lr for _, lr in full])
    assert full[0][0] != full[-1][0]
    if lr_rule == "linear":  # step s ran at lr * (1 - (s - 1) / steps)
        assert [lr for _, lr in full] == pytest.approx([3e-3 * (1 - s / 20) for s in range(20)])


def _stop_after(seen: list, info: dict, steps: int) -> None:
    seen.append((info["loss"], info["lr"]))
    if info["step"] == steps < info["steps"]:
        raise KeyboardInterrupt  # train saves last.pt at this step, as after Ctrl+C


def test_linear_rule_runs_down_to_zero_by_the_time_budget(tiny_data, tmp_path):
    lrs = []
    r = train(
        [(str(tiny_data), 1.0)],
        tmp_path / "run",
        TrainConfig(
            steps=10**6,
            minutes=0.04,
            batch_size=4,
            log_every=1,
            eval_every=10**6,
            model=SMALL,
            lr=1e-3,
            lr_rule="linear",
        ),
        progress=False,
        on_progress=lambda i: lrs.append(i["lr"]),
    )
    assert r.steps == len(lrs) > 10  # stopped by the 2.4 s budget, far from its steps
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[0] > 0.9e-3 and lrs[-1] < 0.5e-3  # by time: the step count alone says ~1e-3


def test_bad_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="prepare"):
        train([(str(tmp_path), 1.0)], tmp_path / "run", TrainConfig(steps=1), progress=False)


def _xianliao(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "xianliao", *args], capture_output=True, text=True, timeout=300, **kw
    )


def test_cli_prepare_train_eval(tmp_path, tiny_tsv):
    data = tmp_path / "d"
    p = _xianliao(
        "prepare", str(tiny_tsv), "--out", str(data), "--min-freq", "1", "--workers", "1", "--quiet"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["pairs_written"]["train"] == 8
    p = _xianliao(
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "12",
        "--eval-every",
        "5",
        "--hidden-size",
        "24",
        "--emb-size",
        "16",
        "--word-dropout",
        "0.2",
        "--lr-rule",
        "linear",
        "--quiet",
        "--threads",
        "1",
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["steps"] == 12
    saved = torch.load(result["checkpoint"], weights_only=True)
    assert saved["train"]["config"]["lr_rule"] == "linear"
    saved = saved["model_config"]
    assert saved["word_dropout"] == 0.2 and saved["hidden_size"] == 24
    for key in ("target_tokens_per_s", "peak_rss_mb", "last_loss", "valid_ppl", "checkpoint"):
        assert result[key] is not None and result[key] != 0, key
    p = _xianliao("eval", result["checkpoint"], str(tiny_tsv), "--json", "--threads", "1")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["pairs"] == 8 and report["perplexity"] > 1
    for key in ("distinct_1", "distinct_2", "generic_share", "unk_rate"):
        assert 0.0 <= report[key] <= 1.0
    guided = ("eval", result["checkpoint"], str(tiny_tsv), "--strategy", "sample", "--json")
    p = _xianliao(*guided, "--options", '{"guidance": 2}')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["strategy"] == "sample"
    p = _xianliao(*guided, "--options", '{"guidance": 0.5}')
    assert p.returncode == 1 and "guidance must be >= 1" in p.stderr
    p = _xianliao("eval", str(tmp_path / "nope.pt"), str(tiny_tsv))
    assert p.returncode == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = _xianliao("prepare", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "d2"))
    assert p.returncode == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr


def test_eval_metrics(tiny_checkpoint, tiny_tsv):
    from xianliao.model.chatbot import ChatBot
    from xianliao.training.evaluate import distinct_n, evaluate, is_generic

    assert is_generic("我不知道。") and is_generic(" 是的! ") and not is_generic("我喜欢聊天")
    assert distinct_n([["a", "b"], ["a", "b"]], 1) == 0.5
    assert distinct_n([["a", "b", "c"]], 2) == 1.0
    report, triples = evaluate(ChatBot.load(tiny_checkpoint), str(tiny_tsv), samples=3)
    assert report.perplexity < 2.0  # it learned these pairs by heart
    assert report.generic_share == 0.0 and report.unk_rate == 0.0
    assert len(triples) == 3 and triples[0][1] == triples[0][2]
    # a bot that does not generate: its "cannot answer yet" lines count as generic, and the
    # report says it judged the index's answers only
    from xianliao.model.chatbot import UNKNOWN_REPLIES
    from xianliao.model.reply_index import ReplyIndex

    assert all(is_generic(line) for line in UNKNOWN_REPLIES)
    bot = ChatBot.load(tiny_checkpoint)
    bot.index = ReplyIndex.memory([(["量子", "力学"], "很难", "corpus")])
    opts = bot.options.from_dict({**bot.options.to_dict(), "generate": False})
    report, _ = evaluate(bot, str(tiny_tsv), options=opts)
    assert report.generic_share == 1.0 and report.strategy == "index only (generate false)"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])  # Ctrl+C; what service managers send
def test_ctrl_c_saves_last_and_exits_cleanly(tmp_path, tiny_data, sig):
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xianliao",
            "train",
            str(tiny_data),
            "--out",
            str(run),
            "--steps",
            "1000000",
            "--eval-every",
            "1000000",
            "--hidden-size",
            "24",
            "--emb-size",
            "16",
            "--threads",
            "1",
            "--progress-jsonl",
            str(tmp_path / "p.jsonl"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "p.jsonl").exists():  # training has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"] is True and result["steps"] >= 50
    from xianliao.model.checkpoint import load_checkpoint

    last = load_checkpoint(run / "last.pt")
    assert last["resume"]["step"] == result["steps"]
    assert (run / "best.pt").is_file()


def test_resume_says_it_keeps_the_checkpoints_model_sizes(tmp_path, tiny_data, capsys):
    from xianliao.training.cli import train_main

    base = [str(tiny_data), "--out", str(tmp_path / "r"), "--quiet", "--threads", "1"]
    assert train_main([*base, "--steps", "2", "--hidden-size", "16", "--emb-size", "8"]) == 0
    capsys.readouterr()
    assert train_main([*base, "--steps", "3", "--resume", "--hidden-size", "99"]) == 0
    err = capsys.readouterr().err
    assert "--resume keeps the checkpoint's model; ignoring --hidden-size" in err
    saved = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert saved["model_config"]["hidden_size"] == 16 and saved["train"]["step"] == 3
