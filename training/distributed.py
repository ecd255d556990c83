"""Data-parallel training across processes: torchrun starts one process per rank, each trains a
replica on its own share of every batch, and DistributedDataParallel averages the gradients.

The ranks must take the same decisions at the same step (stop, learning rate, validate), or one
waits forever in a collective the others never reach. So every decision that depends on
something local (a signal, the clock) goes through :meth:`Dist.agree` before anyone acts on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as tdist

logger = logging.getLogger(__name__)
_JOINED = False  # this process joined a process group (Dist.start): see Dist.exit


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the ranks; the default is a run on its own."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and the plot, and prints the result."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Dist:
        """The ranks torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (absent: one process)."""
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
        )

    def device_for(self, device: torch.device) -> torch.device:
        """Each rank on its own GPU of the host; CPU ranks share the CPU."""
        if device.type == "cuda" and self.enabled:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (torchrun's MASTER_ADDR/PORT): NCCL for GPUs, gloo on CPU."""
        global _JOINED
        if self.enabled and not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            _JOINED = True

    def barrier(self) -> None:
        """Wait for every rank: a rank that tears its process group down while another still
        talks to it can make that one abort (gloo) at exit."""
        if self.enabled and tdist.is_initialized():
            tdist.barrier()

    def stop(self) -> None:
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()

    def exit(self, code: int) -> int:
        """A rank's last step: end the process at once with ``code``, after flushing what it
        wrote. The process group's C++ threads can outlive ``stop`` (DDP still holds the group)
        and abort the interpreter's shutdown ("terminate called without an active exception",
        SIGABRT, seen in CI), which turns a finished run into a failed one. In a process that
        never joined a group (alone, or a caller that merely inherited WORLD_SIZE): returns
        ``code``."""
        if not (self.enabled and _JOINED):
            return code
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)

    def _comm_device(self) -> torch.device:
        # NCCL reduces only CUDA tensors; gloo only CPU ones.
        if tdist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (the values themselves on one process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.tolist()

    def agree(self, stop: bool, elapsed: float) -> tuple[bool, float]:
        """(any rank wants to stop, the longest elapsed time): the same answer on every rank."""
        if not self.enabled:
            return stop, elapsed
        t = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=self._comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t[0].item()), float(t[1].item())

    def gather(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out


class StopRequest:
    """SIGINT/SIGTERM ask for a stop at the end of the current step instead of raising
    KeyboardInterrupt in the middle of it: a rank interrupted inside a gradient all-reduce would
    leave the other ranks waiting forever, so the request goes through :meth:`Dist.agree`."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:  # noqa: ANN001 - a signal handler
        if not self.requested:
            logger.warning("%s: stopping after this step", signal.Signals(signum).name)
        self.requested = True

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)


def weights_digest(state_dict: dict) -> str:
    """SHA-256 over a state dict's tensors (names and bytes, in order): equal digests on every
    rank show that the replicas did not drift apart."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    nproc: int,
    argv: list[str],
    grace_s: float = 30.0,
    *,
    command: tuple[str, ...] = ("xianliao", "train"),
    poll: Callable[[], bool] | None = None,
) -> int:
    """``xianliao train --nproc N ...``: start N ranks of ``xianliao train ...`` on this machine
    with the environment ``torchrun --standalone`` gives them, and return the worst exit status.

    Not torchrun itself: its agent answers Ctrl+C with a traceback and status 1 even when every
    rank stopped cleanly. Here a stop is passed to every rank (they agree on a step, save
    ``last.pt`` and exit 0); a rank that fails takes the others down after ``grace_s``, since
    they would otherwise wait for it in a collective.

    ``command``: what each rank runs, ``python -m COMMAND... ARGV``. ``poll`` is called between checks of the ranks; True asks them once to stop, as
    Ctrl+C does (a retraining's cancel request reaches its ranks so).
    """
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
    }
    env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N processes share the cores
    cmd = [sys.executable, "-m", *command, *argv]
    procs = [
        subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(nproc)
    ]

    def forward(signum, frame) -> None:  # noqa: ANN001 - a signal handler
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    before = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failed_at, asked = None, False
    try:
        while any(proc.poll() is None for proc in procs):
            if failed_at is None and any(proc.poll() not in (None, 0) for proc in procs):
                failed_at = time.monotonic()
                forward(signal.SIGTERM, None)
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            if poll is not None and poll() and not asked:
                asked = True
                forward(signal.SIGINT, None)
            time.sleep(0.2)
        if poll is not None:
            poll()  # what the ranks wrote last
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    # The first failure; a rank ended by a signal (a negative returncode) reads as a shell
    # would show it, 128 + the signal, not as 0 beside a rank that exited cleanly.
    codes = [proc.returncode if proc.returncode >= 0 else 128 - proc.returncode for proc in procs]
    return next((c for c in codes if c != 0), 0)
