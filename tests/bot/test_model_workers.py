"""The model in worker processes (bot.model_workers): same replies as in-process, bad files
fail with the checkpoint's one-line error, a dead worker is replaced, close() stops them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from xianliao.bot.model_workers import ModelClosed, ModelWorkerPool
from xianliao.model.checkpoint import CheckpointError

GREEDY = {"strategy": "greedy"}


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child that was not reaped yet counts as gone too
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_workers_answer_like_the_model_in_process(tiny_checkpoint):
    from xianliao.model.chatbot import ChatBot

    local = ChatBot.load(tiny_checkpoint, threads=1)
    pool = ModelWorkerPool(tiny_checkpoint, workers=2, threads=1)
    try:
        pids = pool.worker_pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert pool.version == local.version
        assert pool.decode_options == local.decode_options
        texts = ["你好", "你叫什么名字", "😀😀", "qwxzv 未知词", "x" * 10_000]
        assert pool.reply_many(texts, **GREEDY) == local.reply_many(texts, **GREEDY)
        assert pool.reply("你好", **GREEDY) == local.reply("你好", **GREEDY)
    finally:
        pool.close()
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(ModelClosed):
        pool.reply("你好")


def test_a_bad_checkpoint_fails_with_the_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as info:
        ModelWorkerPool(bad, workers=1)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_a_killed_worker_is_replaced(tiny_checkpoint):
    pool = ModelWorkerPool(tiny_checkpoint, workers=1, threads=1)
    try:
        first = pool.reply("你好", **GREEDY)
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        assert pool.reply("你好", **GREEDY) == first
        (new_pid,) = pool.worker_pids()
        assert new_pid != pid
    finally:
        pool.close()


def test_the_bot_process_does_not_load_torch_when_workers_hold_the_model(tiny_checkpoint, tmp_path):
    """The point of the workers: torch (~100 MB) and the model live in them, not in the bot."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from xianliao.bot.config import Settings\n"
        "from xianliao.bot.runtime import StartupError, load_model\n"
        "s = Settings(_env_file=None, model_path=sys.argv[1], torch_threads=1)\n"
        "pool = load_model(s, workers=1)\n"
        "print(pool.reply('你好', strategy='greedy') != '')\n"
        "try:\n"
        "    load_model(s, path=sys.argv[2], workers=1)\n"
        "except StartupError as exc:\n"
        "    print('cannot use the checkpoint' in str(exc))\n"
        "pool.close()\n"
        "print('torch' in sys.modules)\n"
    )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"]


def test_the_model_is_served_int8_on_cpu_unless_model_quantize_is_false(tiny_checkpoint):
    """The default precision (MODEL_QUANTIZE unset) is int8 on CPU, in process and in the
    workers alike; MODEL_QUANTIZE=false serves fp32."""
    import torch

    from xianliao.bot.config import Settings
    from xianliao.bot.runtime import load_model

    fp32 = Settings(
        _env_file=None, model_path=tiny_checkpoint, torch_threads=1, model_quantize=False
    )
    assert type(load_model(fp32).model.encoder) is torch.nn.GRU
    s = Settings(_env_file=None, model_path=tiny_checkpoint, torch_threads=1)
    assert s.model_quantize is None
    local = load_model(s)
    assert "quantized" in type(local.model.encoder).__module__
    pool = load_model(s, workers=1)
    try:
        texts = ["你好", "你叫什么名字", "😀😀", "qwxzv 未知词"]
        assert pool.reply_many(texts, **GREEDY) == local.reply_many(texts, **GREEDY)
    finally:
        pool.close()


def test_served_int8_is_int8_on_cpu_only_unless_told():
    from xianliao.model.chatbot import served_int8

    assert served_int8("cpu", None) is True and served_int8("cpu:0", None) is True
    assert served_int8("cuda", None) is False and served_int8("cuda:1", None) is False
    assert served_int8("cpu", False) is False and served_int8("cuda", True) is True


def test_workers_die_with_a_killed_parent(tiny_checkpoint, tmp_path):
    """kill -9 of the bot leaves no model worker behind (they would each hold a model)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, time\n"
        "from xianliao.bot.model_workers import ModelWorkerPool\n"
        f"pool = ModelWorkerPool({str(tiny_checkpoint)!r}, workers=2)\n"
        "print(*pool.worker_pids(), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(not _gone(p, 0.1) for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert all(_gone(p) for p in pids)
