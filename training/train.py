"""The training loop: AdamW, gradient clipping, plateau (or the seed's, or linear) learning-rate
decay, held-out validation, atomic ``best``/``last`` checkpoints, exact resume, the metrics log
and its plot; on one process, or on several under torchrun (see ``distributed``).

The parts (model, optimizer, sampler, checkpoints) live in ``trainer.Trainer``; this module is the
loop that drives them and the settings that shape it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from xianliao.training.distributed import Dist, weights_digest
from xianliao.training.metrics import plot_quietly
from xianliao.training.trainer import Trainer, evaluate_loss, peak_rss_mb, read_vocab

__all__ = ["TrainConfig", "TrainResult", "evaluate_loss", "read_vocab", "result_json", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 20000  # optimisation steps (the run also stops after ``minutes``)
    minutes: float | None = None  # wall-clock budget; None = no limit
    batch_size: int = 128  # pairs per batch (over all processes together when distributed)
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    clip: float = 1.0  # max gradient norm
    lr_rule: str = "plateau"  # "plateau": x0.5 after 2 evals without a better validation loss;
    # "seed": x0.9 whenever the loss is above the max of the previous 5 measurements;
    # "linear": fall linearly from ``lr`` to 0 at the end of the run (by steps, or by the
    # ``minutes`` budget when that ends first), for a fixed budget (bench/RESULTS.md section 21)
    eval_every: int = 500  # steps between validations (and ``last`` checkpoints)
    eval_pairs: int = 2000  # validation pairs used for perplexity
    log_every: int = 50  # steps between loss measurements (progress, metrics.jsonl, seed rule)
    seed: int = 1234  # one seed for weights, dropout and batch sampling (plus the rank)
    pool_batches: int = 50  # batches drawn at once then grouped by length
    device: str = "auto"  # "auto" (cuda if available), "cpu" or "cuda"
    amp: bool | None = None  # bf16 autocast; None = on for CUDA only
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning)
    both_directions: bool = False  # also train on every pair read backwards (answer -> question),
    # same weight: one model then also scores log p(question | reply) for MMI-bidi reranking
    model: dict = field(default_factory=dict)  # Seq2SeqConfig fields (sizes, dropout)


@dataclass
class TrainResult:
    steps: int
    target_tokens_per_s: float  # over all processes
    peak_rss_mb: float  # of rank 0's process
    last_loss: float
    valid_ppl: float | None
    best_valid_ppl: float | None
    checkpoint: str
    last_checkpoint: str
    seconds: float
    interrupted: bool = False
    world_size: int = 1
    # distributed runs: the SHA-256 of every rank's final weights (all equal: no divergence)
    rank_weights: list[str] | None = None


@dataclass
class _Window:
    """Training losses since the last progress report."""

    loss: float = 0.0
    n: int = 0
    last: float = float("nan")  # the mean at the last report


def train(
    data: list[tuple[str, float]],
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_progress: Callable[[dict], None] | None = None,
    tokenizer_desc: dict | None = None,
    dist: Dist | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train on prepared data dirs ``[(dir, weight), ...]`` (same vocabulary) into ``out_dir``.

    ``out_dir/best.pt`` is the best validation checkpoint; ``out_dir/last.pt`` is resumable;
    ``out_dir/metrics.jsonl`` and ``curves.png`` record the curves. ``dist`` makes this process
    one rank of a distributed run; ``should_stop`` is polled after every step (a signal flag).
    """
    dist = dist or Dist()
    try:
        t = Trainer(data, out_dir, cfg, resume=resume, dist=dist, tokenizer_desc=tokenizer_desc)
        t0 = time.perf_counter()
        interrupted, last_loss = _loop(t, progress, on_progress, should_stop or (lambda: False))
        seconds = time.perf_counter() - t0
        (tokens,) = dist.all_sum([float(t.tokens)])
        digests = dist.gather(weights_digest(t.model.state_dict())) if dist.enabled else None
        dist.barrier()
    finally:
        dist.stop()
    if dist.is_main:
        plot_quietly(t.out)
    m = t.metrics
    return TrainResult(
        steps=t.step,
        target_tokens_per_s=round(tokens / max(seconds, 1e-9), 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
        last_loss=round(last_loss, 4) if not math.isnan(last_loss) else last_loss,
        valid_ppl=round(m["valid_ppl"], 3) if "valid_ppl" in m else None,
        best_valid_ppl=round(m["best_valid_ppl"], 3) if "best_valid_ppl" in m else None,
        checkpoint=str(t.best_path),
        last_checkpoint=str(t.last_path),
        seconds=round(seconds, 2),
        interrupted=interrupted,
        world_size=dist.world_size,
        rank_weights=digests,
    )


def _loop(
    t: Trainer,
    progress: bool,
    on_progress: Callable[[dict], None] | None,
    should_stop: Callable[[], bool],
) -> tuple[bool, float]:
    """Train until the step count, the time budget or a stop; (interrupted, last loss)."""
    from tqdm import tqdm

    cfg, dist = t.cfg, t.dist
    t.model.train()
    t.t0 = t0 = time.perf_counter()
    budget = cfg.minutes * 60 if cfg.minutes else math.inf
    # With a time budget the step total says nothing about when training ends: no ETA then,
    # the budget in the description instead.
    bar = tqdm(
        total=None if cfg.minutes else cfg.steps,
        initial=t.step,
        desc=f"training (at most {cfg.minutes:g} min)" if cfg.minutes else "training",
        unit="step",
        disable=not (progress and dist.is_main),
        mininterval=1.0,
    )
    window, start_step, elapsed = _Window(), t.step, 0.0
    stop = [False]  # a KeyboardInterrupt from on_progress, under DDP, as a stop request
    interrupted, done = False, t.step >= cfg.steps
    try:
        while not done:
            window.loss += t.train_step(elapsed)
            window.n += 1
            bar.update(1)
            interrupted, elapsed = dist.agree(should_stop() or stop[0], time.perf_counter() - t0)
            done = interrupted or t.step >= cfg.steps or elapsed >= budget
            lr, reported = t.optimizer.param_groups[0]["lr"], False
            if t.step % cfg.log_every == 0 or done:
                lr = _report(t, window, bar, elapsed, start_step, budget, on_progress, stop)
                reported = True
            validated = t.step % cfg.eval_every == 0 or (done and not interrupted)
            if validated:
                t.validate()
            if reported or validated:
                t.record(window.last, lr, validated)
    except KeyboardInterrupt:
        interrupted = True
    bar.close()
    if window.n:  # interrupted in the middle of a window
        window.last = window.loss / window.n
    t.metrics["last_loss"] = window.last
    if interrupted:
        if dist.is_main:
            logger.warning("interrupted at step %d: saving %s", t.step, t.last_path)
        t.save_last()
        if not t.best_path.exists():
            t.save_best()
    elif t.validated_step != t.step:  # no step to take (a run resumed at its end)
        t.validate()
    return interrupted, window.last


def _report(
    t: Trainer,
    window: _Window,
    bar,  # noqa: ANN001 - tqdm
    elapsed: float,
    start_step: int,
    budget: float,
    on_progress: Callable[[dict], None] | None,
    stop: list[bool],
) -> float:
    """Close the loss window (averaged over the ranks), apply the seed rule, show and send the
    progress; returns the learning rate."""
    cfg = t.cfg
    loss, n, tokens = t.dist.all_sum([window.loss, float(window.n), float(t.tokens)])
    window.last, window.loss, window.n = loss / n, 0.0, 0
    if cfg.lr_rule == "seed":
        t.seed_rule(window.last)
    tps = tokens / max(elapsed, 1e-9)
    lr = t.optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{window.last:.3f}", tok_s=f"{tps:.0f}", lr=f"{lr:.2g}")
    if on_progress is None or not t.dist.is_main:
        return lr
    left = min((cfg.steps - t.step) * elapsed / max(t.step - start_step, 1), budget - elapsed)
    info = {
        "step": t.step,
        "steps": cfg.steps,
        "loss": window.last,
        "lr": lr,
        "tokens_per_s": tps,
        "eta_s": max(0.0, left),
    }
    try:
        on_progress(info)
    except KeyboardInterrupt:
        if not t.dist.enabled:
            raise
        stop[0] = True  # the other ranks learn of it at the next step
    return lr


def result_json(result: TrainResult) -> str:
    return json.dumps(asdict(result), ensure_ascii=False)
