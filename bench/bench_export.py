"""torch.export of the inference core (``model/inference.py``) against the TorchScript core the
bot serves: how long the export takes, and one decoding step's time (p50 of 300, batch 2, one
thread) for TorchScript, the exported program and the eager core. Checks that the exported step
gives the same tensors.

    .venv/bin/python bench/bench_export.py /work/main/runs/qs/best.pt
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xianliao.model.chatbot import ChatBot  # noqa: E402
from xianliao.model.inference import _InferenceCore  # noqa: E402


def step_us(step, args: tuple, n: int = 300) -> float:
    with torch.no_grad():  # not inference_mode: exported programs refuse inference tensors
        for _ in range(20):
            step(*args)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            step(*args)
            times.append(time.perf_counter() - t)
    return round(sorted(times)[n // 2] * 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--quantize", action="store_true", help="int8 (torch.ao) before exporting")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    bot = ChatBot.load(a.checkpoint, threads=1, quantize=a.quantize)
    core = _InferenceCore(bot.model, bot.model._fast)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])  # batch 2: a batch of 1 specialises
    with torch.no_grad():
        memory, keys, hidden = core.encode(src)
    args = (torch.tensor([1, 1]), hidden, memory, keys, torch.ones(2, 4, dtype=torch.bool))
    B = torch.export.Dim("B", min=1, max=512)
    S = torch.export.Dim("S", min=1, max=64)
    t = time.perf_counter()
    program = torch.export.export(
        core,
        args,
        dynamic_shapes=({0: B}, {1: B}, {0: B, 1: S}, {0: B, 1: S}, {0: B, 1: S}),
    )
    export_s = time.perf_counter() - t
    exported = program.module()
    with torch.no_grad():
        same = all(
            torch.allclose(x, y, atol=1e-5)
            for x, y in zip(bot.model._fast.core(*args), exported(*args), strict=True)
        )
    print(f"export: {export_s:.1f} s; same step tensors: {same}")
    print(
        "one step, us (p50):",
        f"torchscript {step_us(bot.model._fast.core, args)},",
        f"torch.export {step_us(exported, args)},",
        f"eager {step_us(core, args)}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
