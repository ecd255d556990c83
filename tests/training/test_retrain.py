"""Retraining from logged exchanges, promotion and rollback, at tiny scale."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_PAIRS

from xianliao.model.chatbot import UNKNOWN_REPLIES, ChatBot
from xianliao.model.checkpoint import file_digest
from xianliao.model.decode_options import DecodeOptions
from xianliao.ops import models
from xianliao.ops.models import PromotionError
from xianliao.quickstart import QUICKSTART_SERVING
from xianliao.storage.database import Database
from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.repositories import (
    ChatRepository,
    ExchangeRepository,
    PromotionRepository,
    TrainingRunRepository,
    UserRepository,
)
from xianliao.training.retrain import RetrainConfig, RetrainError, export_logged_pairs, retrain

EDITED = "我喜欢聊天"  # words the tiny vocabulary knows


def promote(candidate, live, db_url, **kwargs):
    """ops.models.promote on the database at ``db_url``, opened for this one call."""
    with Database.open(db_url) as db:
        return models.promote(candidate, live, db, **kwargs)


def do_rollback(live, db_url, **kwargs):
    with Database.open(db_url) as db:
        return models.rollback(live, db, **kwargs)


def _log(db_url, rows):
    """rows: (question, reply, status, edited) -> exchange ids."""
    engine = make_engine(db_url)
    init_schema(engine)
    ids = []
    with session_factory(engine)() as s:
        UserRepository(s).touch(42, username="u", first_name="U")
        ChatRepository(s).touch(42, type="private")
        repo = ExchangeRepository(s)
        for i, (q, r, status, edited) in enumerate(rows):
            ex, _ = repo.add(
                user_id=42,
                chat_id=42,
                message_id=i + 1,
                user_text=q,
                reply_text=r,
                latency_ms=5.0,
                model_version="s1-x",
            )
            s.flush()
            if status != "pending":
                repo.set_review_status(ex.id, status, reviewer=1)
            if edited:
                repo.set_edited_reply(ex.id, edited, reviewer=1)
            ids.append(ex.id)
        s.commit()
    engine.dispose()
    return ids


@pytest.fixture
def live(tmp_path, tiny_checkpoint):
    path = tmp_path / "model" / "live.pt"
    path.parent.mkdir()
    shutil.copy(tiny_checkpoint, path)
    return path


def test_export_streams_approved_deduplicated_and_filtered(tmp_path, database_url):
    db = database_url
    _log(
        db,
        [
            ("你好", "嗯", "approved", EDITED),
            ("你好", "嗯", "approved", EDITED),  # duplicate pair
            ("再见", "拜拜", "rejected", None),
            ("晚安", "好梦", "pending", None),
            ("坏词在这里", "不好", "approved", None),
            ("长" * 300, "太长", "approved", None),
            ("你好\ufffd\ufffd", "你说什么", "approved", None),  # bytes that were not UTF-8
            ("你说什么", "我说\ufffd", "approved", None),
        ],
    )
    out = tmp_path / "logged.tsv"
    stats = export_logged_pairs(db, out, blocklist=["坏词"])
    assert out.read_text(encoding="utf-8").splitlines() == [f"你好\t{EDITED}"]
    assert stats == {
        "rows": 5,
        "written": 1,
        "too_short": 0,
        "too_long": 1,
        "blocked": 3,
        "held_out": 0,
    }
    export_logged_pairs(db, out, statuses=["approved", "pending"], blocklist=["坏词"])
    assert sorted(out.read_text(encoding="utf-8").splitlines()) == [f"你好\t{EDITED}", "晚安\t好梦"]


def test_the_gate_compares_on_logged_pairs_the_candidate_never_trained_on(tmp_path, database_url):
    db = database_url
    rows = [(f"问题{i}", f"回答{i}", "approved", None) for i in range(80)]
    _log(db, rows)
    train_tsv, held_tsv = tmp_path / "logged.tsv", tmp_path / "held.tsv"
    stats = export_logged_pairs(db, train_tsv, heldout_tsv=held_tsv, heldout_permille=100)
    trained = set(train_tsv.read_text("utf-8").splitlines())
    held = set(held_tsv.read_text("utf-8").splitlines())
    assert held and not held & trained
    assert len(held) + len(trained) == 80 == stats["written"] + stats["held_out"]
    # the same pairs are held out every time (a hash, not a random draw)
    export_logged_pairs(db, train_tsv, heldout_tsv=held_tsv, heldout_permille=100)
    assert set(held_tsv.read_text("utf-8").splitlines()) == held


def test_the_gate_judges_the_precision_that_is_served(live, tiny_tsv, monkeypatch):
    """Both models are loaded as the bot serves them: int8 on CPU by default, fp32 when
    MODEL_QUANTIZE=false reaches the retraining (RetrainConfig.quantize)."""
    from xianliao.training.retrain import compare

    real, seen = ChatBot.load, []

    def spy(path, **kw):  # noqa: ANN001, ANN202 - records what each loaded model runs
        bot = real(path, **kw)
        seen.append("int8" if "quantized" in type(bot.model.encoder).__module__ else "fp32")
        return bot

    monkeypatch.setattr(ChatBot, "load", spy)
    for quantize, want in [(None, "int8"), (False, "fp32")]:
        seen.clear()
        out = compare(str(live), str(live), {"base": str(tiny_tsv)}, limit=5, quantize=quantize)
        assert seen == [want, want] and "base" in out["live"]


def test_the_gate_judges_the_candidate_with_the_live_models_reply_index(
    live, tiny_tsv, tmp_path, monkeypatch
):
    """Promoted, the candidate is served with the index beside MODEL_PATH: the gate judges it
    with that index too (none beside the candidate's own file), and without one when the live
    model has none."""
    from xianliao.model.reply_index import default_index_path
    from xianliao.training.cli import index_main
    from xianliao.training.retrain import compare

    candidate = tmp_path / "elsewhere" / "candidate.pt"
    candidate.parent.mkdir()
    candidate.write_bytes(live.read_bytes())
    real, seen = ChatBot.load, []

    def spy(path, **kw):  # noqa: ANN001, ANN202 - records the index each model is judged with
        bot = real(path, **kw)
        seen.append(bot.index.path if bot.index is not None else None)
        return bot

    monkeypatch.setattr(ChatBot, "load", spy)
    compare(str(live), str(candidate), {"base": str(tiny_tsv)}, limit=5)
    assert seen == [None, None]
    index = default_index_path(live)
    assert index_main([str(tiny_tsv), "--out", str(index), "--valid-permille", "0"]) == 0
    seen.clear()
    compare(str(live), str(candidate), {"base": str(tiny_tsv)}, limit=5)
    assert seen == [str(index), str(index)]
    # a bot served with REPLY_INDEX=none or another file: both are judged so
    for served, want in [("none", None), (str(index), str(index))]:
        seen.clear()
        compare(str(live), str(candidate), {"base": str(tiny_tsv)}, limit=5, index_path=served)
        assert seen == [want, want]


def test_the_gate_judges_with_the_served_blocklist(live, tiny_tsv, tmp_path, monkeypatch):
    """REPLY_BLOCKLIST reaches the gate: both models are judged with the words the bot never
    sends (RetrainConfig.reply_blocklist, from the bot's settings)."""
    from xianliao.bot.config import Settings
    from xianliao.retrain_cli import _gate_reply_settings
    from xianliao.training.retrain import compare

    words = tmp_path / "more.txt"
    words.write_text("煮面\n", encoding="utf-8")
    real, seen = ChatBot.load, []

    def spy(path, **kw):  # noqa: ANN001, ANN202
        bot = real(path, **kw)
        seen.append(bot.filter.blocked_word("我只会煮面"))
        return bot

    monkeypatch.setattr(ChatBot, "load", spy)
    compare(str(live), str(live), {"base": str(tiny_tsv)}, limit=5, blocklist=str(words))
    assert seen == ["煮面", "煮面"]
    s = Settings(_env_file=None, reply_blocklist=words, reply_index="none")
    assert _gate_reply_settings(s) == {"reply_index": "none", "reply_blocklist": str(words)}
    assert _gate_reply_settings(Settings(_env_file=None)) == {
        "reply_index": None,
        "reply_blocklist": None,
    }


def test_the_gates_precision_follows_the_bots_settings():
    """The gate judges on CPU: MODEL_QUANTIZE unset means int8 there (as the bot on CPU), but
    fp32 for a bot that serves on a GPU; a set MODEL_QUANTIZE is passed on as it is."""
    from xianliao.bot.config import Settings
    from xianliao.retrain_cli import _gate_precision

    for env, want in [
        ({}, None),
        ({"model_device": "cuda"}, False),
        ({"model_quantize": False}, False),
        ({"model_device": "cuda:1", "model_quantize": True}, True),
    ]:
        assert _gate_precision(Settings(_env_file=None, **env)) is want, env


def test_retrain_learns_the_edited_answer_then_promote_and_rollback(
    tmp_path, live, tiny_data, database_url
):
    db = database_url
    _log(db, [("你好", "随便说的", "approved", EDITED), ("晚安", "嗯", "rejected", None)])
    live_digest = file_digest(live)
    cfg = RetrainConfig(
        database_url=db,
        model_path=str(live),
        base_data=str(tiny_data),
        out_dir=str(tmp_path / "rt"),
        log_weight=1.0,
        steps=150,
        batch_size=8,
        lr=1e-2,
    )
    report = retrain(cfg)
    assert report["export"]["written"] == 1
    assert file_digest(live) == live_digest  # nothing goes live before promotion
    candidate = ChatBot.load(report["candidate"])
    assert candidate.reply("你好", strategy="greedy") == EDITED
    cmp_ = report["comparison"]
    # tiny_data has no valid split, and one logged pair is too few to hold any out
    assert report["export"]["held_out"] == 0 and "version" in cmp_["live"]
    assert len(cmp_["side_by_side"]) >= 10 and isinstance(cmp_["not_worse"], bool)
    assert ChatBot.load(live).reply("你好", strategy="greedy") == TINY_PAIRS[0][1]

    info = promote(report["candidate"], live, db, promoted_by=1, forced=True)
    assert ChatBot.load(live).reply("你好", strategy="greedy") == EDITED
    assert file_digest(info["previous"]) == live_digest
    back = do_rollback(live, db, promoted_by=1)
    assert file_digest(live) == live_digest
    assert back["checkpoint"] == info["previous"]
    engine = make_engine(db)
    with session_factory(engine)() as s:
        rows = PromotionRepository(s).recent()
        assert [r.forced for r in rows] == [True, True] and rows[1].promoted_by == 1
    engine.dispose()


def test_retrain_keeps_training_both_ways_and_serving_alike(
    tmp_path, live, tiny_data, database_url
):
    """A live model trained with --both-directions is retrained the same way, so it can still
    rerank replies read backwards (decoding option bidi_weight); the candidate is served as the
    live model is (its checkpoint's serving entry: decoding and precision), so the gate judges
    both alike and a promotion keeps them (the quickstart's model records its own)."""
    from xianliao.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(live)
    ckpt["serving"] = dict(QUICKSTART_SERVING)
    ckpt["train"]["config"]["both_directions"] = True
    del ckpt["format_version"]
    save_checkpoint(live, ckpt)
    db = database_url
    _log(db, [("你好", "随便说的", "approved", EDITED)])
    cfg = RetrainConfig(
        database_url=db,
        model_path=str(live),
        base_data=str(tiny_data),
        out_dir=str(tmp_path / "rt"),
        steps=10,
        batch_size=8,
    )
    report = retrain(cfg)
    candidate = load_checkpoint(report["candidate"])
    assert candidate["train"]["config"]["both_directions"] is True
    assert candidate["serving"] == ckpt["serving"]


def test_corrupt_candidate_is_never_promoted(tmp_path, live, database_url):
    db = database_url
    bad = tmp_path / "bad.pt"
    bad.write_bytes(live.read_bytes()[:1000])
    digest = file_digest(live)
    with pytest.raises(PromotionError, match="not promoted"):
        promote(bad, live, db, promoted_by=1, forced=True)
    assert file_digest(live) == digest
    with pytest.raises(PromotionError, match="nothing to roll back"):
        do_rollback(live, db, promoted_by=1)


def test_nothing_approved_is_a_clear_error(tmp_path, live, tiny_data, database_url):
    db = database_url
    _log(db, [("你好", "嗯", "pending", None)])
    cfg = RetrainConfig(
        database_url=db,
        model_path=str(live),
        base_data=str(tiny_data),
        out_dir=str(tmp_path / "rt"),
        steps=5,
    )
    with pytest.raises(RetrainError, match="approve"):
        retrain(cfg)


def _cli(tmp_path, live, tiny_data, db, *extra):
    return [
        sys.executable,
        "-m",
        "xianliao",
        "retrain",
        "--env-file",
        "/dev/null",
        "--database-url",
        db,
        "--model",
        str(live),
        "--base",
        str(tiny_data),
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--threads",
        "1",
        *extra,
    ]


def test_killed_run_leaves_the_live_model_and_is_marked_failed(tmp_path, live, tiny_data):
    db = f"sqlite:///{tmp_path}/chat.db"
    _log(db, [("你好", "随便", "approved", EDITED)])
    env = {**os.environ, "RETRAIN_LEASE_S": "4"}  # a dead run stops blocking after 4 s
    digest = file_digest(live)
    progress = tmp_path / "progress.jsonl"
    proc = subprocess.Popen(
        _cli(
            tmp_path,
            live,
            tiny_data,
            db,
            "--steps",
            "100000",
            "--out",
            str(tmp_path / "k"),
            "--progress-jsonl",
            str(progress),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # A second run while the first is alive is refused.
    second = subprocess.run(
        _cli(tmp_path, live, tiny_data, db, "--steps", "5"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert second.returncode == 1 and "one run at a time" in second.stderr
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert file_digest(live) == digest
    time.sleep(4.5)  # its lease expires
    # The next run notices the dead one, marks it failed, and runs (promotion forced).
    ok = subprocess.run(
        _cli(
            tmp_path,
            live,
            tiny_data,
            db,
            "--steps",
            "120",
            "--weight",
            "1",
            "--promote",
            "force",
            "--out",
            str(tmp_path / "ok"),
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout.strip().splitlines()[-1])
    assert result["promoted"] is True
    assert ChatBot.load(live).reply("你好", strategy="greedy") == EDITED
    engine = make_engine(db)
    with session_factory(engine)() as s:
        runs = {r.id: r for r in TrainingRunRepository(s).recent()}
        assert runs[1].status == "failed" and "no heartbeat" in runs[1].log
        assert len(runs) == 2  # the refused run left no row
        assert runs[2].status == "succeeded" and json.loads(runs[2].metrics)["promoted"]
    engine.dispose()


def test_quickstart_trains_and_serves_the_final_weights(tmp_path, monkeypatch):
    pytest.importorskip("chatterbot_corpus")
    from xianliao.cli import main
    from xianliao.model.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "runs" / "model.pt"))
    assert (
        main(
            [
                "quickstart",
                "--env-file",
                "/dev/null",
                "--steps",
                "30",
                "--minutes",
                "1",
                "--train-only",
            ]
        )
        == 0
    )
    served = load_checkpoint(tmp_path / "runs" / "model.pt")
    assert served["train"]["step"] == 30  # the last step, whatever validation preferred
    assert "optimizer" not in served
    assert (tmp_path / "data" / "quickstart" / "vocab.txt").is_file()
    # ... and the reply index over the same corpus, beside the model, which the bot serves
    from xianliao.model.chatbot import ChatBot

    bot = ChatBot.load(tmp_path / "runs" / "model.pt")
    assert bot.index is not None and bot.index.size > 500  # the ~550 chatterbot pairs
    hits = bot.index.search(bot.tokenizer.tokenize("你是什么语言编写的"), 3)
    assert hits and hits[0].answer == "Python"
    # served in fp32 on CPU, with its own decoding, as its checkpoint records
    assert "quantized" not in type(bot.model.encoder).__module__
    defaults = DecodeOptions()  # the rest as the release serves any model
    assert bot.options.mmi_weight == defaults.mmi_weight
    assert bot.options.similarity_weight == defaults.similarity_weight
    assert (bot.options.trust_from, bot.options.trust_full) == (
        defaults.trust_from,
        defaults.trust_full,
    )
    assert not bot.options.generate and bot.options.min_similarity == 0.3  # judges the index's
    assert bot.reply("量子纠缠的贝尔不等式实验") in UNKNOWN_REPLIES  # nothing close


def test_rollback_steps_back_through_the_history_like_a_stack(tmp_path, live, database_url):
    """promote A, promote B; rollback -> A, rollback -> the first model, rollback -> refused."""
    from xianliao.model.checkpoint import load_checkpoint, save_checkpoint

    db = database_url
    base = file_digest(live)
    versions = []
    for step in (111, 222):  # two different checkpoints (same weights, another step)
        ckpt = load_checkpoint(live)
        ckpt["train"]["step"] = step
        del ckpt["format_version"]
        path = tmp_path / f"cand{step}.pt"
        save_checkpoint(path, ckpt)
        versions.append(file_digest(path))
        promote(path, live, db, promoted_by=1, forced=True)
    assert file_digest(live) == versions[1]
    do_rollback(live, db, promoted_by=1)
    assert file_digest(live) == versions[0]
    do_rollback(live, db, promoted_by=1)
    assert file_digest(live) == base
    with pytest.raises(PromotionError, match="nothing to roll back"):
        do_rollback(live, db, promoted_by=1)
    assert file_digest(live) == base


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_background_retrain_stops_on_sigint_and_sigterm_without_promoting(
    tmp_path, live, tiny_data, sig
):
    """Started as a shell starts a background job (SIGINT ignored), it still cancels."""
    db = f"sqlite:///{tmp_path}/chat.db"
    _log(db, [("你好", "随便", "approved", EDITED)])
    digest = file_digest(live)
    progress = tmp_path / "progress.jsonl"
    args = ("--steps", "100000", "--out", str(tmp_path / "k"), "--progress-jsonl", str(progress))
    proc = subprocess.Popen(
        _cli(tmp_path, live, tiny_data, db, *args, "--promote", "force"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "cancelled; the live model is unchanged" in err.decode()
    assert file_digest(live) == digest
    engine = make_engine(db)
    with session_factory(engine)() as s:
        assert [r.status for r in TrainingRunRepository(s).recent()] == ["cancelled"]
    engine.dispose()
