"""The training loop: AdamW, gradient clipping, plateau (or the seed's) learning-rate decay,
held-out validation, atomic ``best``/``last`` checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from xianliao.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xianliao.model.seq2seq import Seq2Seq, Seq2SeqConfig, default_cutoffs
from xianliao.model.vocab import Vocab
from xianliao.training.data import BatchSampler, DataError, PairArrays, Source, iter_eval_batches

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 20000  # optimisation steps (the run also stops after ``minutes``)
    minutes: float | None = None  # wall-clock budget; None = no limit
    batch_size: int = 128  # pairs per batch
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    clip: float = 1.0  # max gradient norm
    lr_rule: str = "plateau"  # "plateau": x0.5 after 2 evals without a better validation loss;
    # "seed": x0.9 whenever the loss is above the max of the previous 5 measurements;
    # "linear": fall linearly from ``lr`` to 0 at the end of the run (by steps, or by the
    # ``minutes`` budget when that ends first), for a fixed budget (0.3% lower perplexity than
    # plateau in an hour on DGK, bench/RESULTS.md section 21)
    eval_every: int = 500  # steps between validations (and ``last`` checkpoints)
    eval_pairs: int = 2000  # validation pairs used for perplexity
    log_every: int = 50  # steps between loss measurements (progress, seed lr rule)
    seed: int = 1234  # one seed for weights, dropout and batch sampling
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
    target_tokens_per_s: float
    peak_rss_mb: float
    last_loss: float
    valid_ppl: float | None
    best_valid_ppl: float | None
    checkpoint: str
    last_checkpoint: str
    seconds: float
    interrupted: bool = False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_vocab(data_dir: str | Path) -> Vocab:
    path = Path(data_dir) / "vocab.txt"
    if not path.is_file():
        raise DataError(f"{data_dir} has no vocab.txt: run 'xianliao prepare' first")
    return Vocab(path.read_text("utf-8").rstrip("\n").split("\n"))


@torch.no_grad()
def evaluate_loss(model: Seq2Seq, arrays: PairArrays, batch_size: int, limit: int, device) -> float:
    """Token-weighted mean cross-entropy over the first ``limit`` pairs."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for b in iter_eval_batches(arrays, batch_size, limit):
        loss = model(b.src.to(device), b.src_len, b.tgt_in.to(device), b.tgt_out.to(device))
        total += loss.item() * b.n_tokens
        n += b.n_tokens
    model.train(was_training)
    return total / max(n, 1)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _make_optimizer(model: Seq2Seq, cfg: TrainConfig):
    try:
        return torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(
    data: list[tuple[str, float]],
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_progress: Callable[[dict], None] | None = None,
    tokenizer_desc: dict | None = None,
) -> TrainResult:
    """Train on prepared data dirs ``[(dir, weight), ...]`` (same vocabulary) into ``out_dir``.

    ``out_dir/best.pt`` is the best validation checkpoint; ``out_dir/last.pt`` is resumable.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = read_vocab(data[0][0])
    for d, _ in data[1:]:
        if read_vocab(d).itos != vocab.itos:
            raise DataError(f"{d} was prepared with another vocabulary than {data[0][0]}")
    sources = [Source(PairArrays(d, "train"), w, name=str(d)) for d, w in data]
    valid = PairArrays(data[0][0], "valid")
    valid_split = "valid"
    if len(valid) == 0:  # tiny corpora: validate on training pairs, and say so
        valid, valid_split = sources[0].arrays, "train"
    tokenizer_desc = (
        tokenizer_desc or valid.meta.get("tokenizer") or sources[0].arrays.meta["tokenizer"]
    )

    device = _pick_device(cfg.device)
    use_amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    torch.manual_seed(cfg.seed)
    last_path, best_path = out / "last.pt", out / "best.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise CheckpointError(f"cannot resume: {last_path} does not exist")
        state = load_checkpoint(last_path)
        if "optimizer" not in state or "resume" not in state:
            raise CheckpointError(f"cannot resume: {last_path} has no optimizer/sampler state")
        if state["vocab"] != vocab.itos:
            raise CheckpointError(f"cannot resume: {last_path} has another vocabulary")
        cfg = TrainConfig(
            **{**state["train"]["config"], "steps": cfg.steps, "minutes": cfg.minutes}
        )
    mcfg = Seq2SeqConfig(
        vocab_size=len(vocab), **{"adaptive_cutoffs": default_cutoffs(len(vocab)), **cfg.model}
    )
    init = None
    if state is None and cfg.init_from:
        init = load_checkpoint(cfg.init_from)
        if init["vocab"] != vocab.itos:
            raise CheckpointError(
                f"{cfg.init_from} has another vocabulary: prepare the data with "
                f"--vocab-from {cfg.init_from}"
            )
        mcfg = Seq2SeqConfig.from_dict(init["model_config"])
    model = Seq2Seq(mcfg).to(device)
    if init is not None:
        model.load_state_dict(init["state_dict"])
    optimizer = _make_optimizer(model, cfg)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    if cfg.both_directions:  # (after a resume restored cfg) validation stays forward
        sources += [
            Source(s.arrays.reversed(), s.weight, name=f"{s.name} (reversed)") for s in sources
        ]
    sampler = BatchSampler(sources, cfg.batch_size, seed=cfg.seed, pool_batches=cfg.pool_batches)
    step, best_loss, loss_history = 0, math.inf, []
    metrics: dict = {}
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        r = state["resume"]
        plateau.load_state_dict(r["plateau"])
        sampler.load_state_dict(r["sampler"])
        torch.set_rng_state(r["torch_rng"])
        step, best_loss, loss_history = r["step"], r["best_loss"], list(r["loss_history"])
        metrics = dict(state["train"].get("metrics", {}))

    def payload(with_optimizer: bool) -> dict:
        p = {
            "model_config": mcfg.to_dict(),
            "vocab": vocab.itos,
            "tokenizer": tokenizer_desc,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "train": {
                "step": step,
                "metrics": metrics,
                "config": asdict(cfg),
                "data": [[str(d), w] for d, w in data],
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        if with_optimizer:
            p["optimizer"] = optimizer.state_dict()
            p["resume"] = {
                "step": step,
                "best_loss": best_loss,
                "loss_history": loss_history,
                "plateau": plateau.state_dict(),
                "sampler": sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
        return p

    def validate() -> None:
        nonlocal best_loss
        vloss = evaluate_loss(model, valid, cfg.batch_size, cfg.eval_pairs, device)
        metrics.update(
            valid_loss=vloss,
            valid_ppl=math.exp(min(vloss, 50.0)),
            valid_split=valid_split,
            step=step,
        )
        if cfg.lr_rule == "plateau":
            plateau.step(vloss)
        if vloss < best_loss:
            best_loss = vloss
            metrics["best_valid_ppl"] = metrics["valid_ppl"]
            save_checkpoint(best_path, payload(False))
        save_checkpoint(last_path, payload(True))

    model.train()
    t0 = time.perf_counter()
    deadline = t0 + cfg.minutes * 60 if cfg.minutes else math.inf
    tokens, window_loss, window_n, last_loss = 0, 0.0, 0, float("nan")
    interrupted = False
    start_step = step
    # With a time budget the step total says nothing about when training ends: no ETA then,
    # the budget in the description instead.
    bar = tqdm(
        total=None if cfg.minutes else cfg.steps,
        initial=step,
        desc=f"training (at most {cfg.minutes:g} min)" if cfg.minutes else "training",
        unit="step",
        disable=not progress,
        mininterval=1.0,
    )
    try:
        while step < cfg.steps and time.perf_counter() < deadline:
            batch = sampler.next_batch()
            if cfg.lr_rule == "linear":
                done = step / cfg.steps
                if cfg.minutes:
                    done = max(done, (time.perf_counter() - t0) / (cfg.minutes * 60))
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * max(0.0, 1.0 - done)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model(
                    batch.src.to(device),
                    batch.src_len,
                    batch.tgt_in.to(device),
                    batch.tgt_out.to(device),
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            step += 1
            tokens += batch.n_tokens
            window_loss += loss.item()
            window_n += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_loss = window_loss / window_n
                window_loss, window_n = 0.0, 0
                if cfg.lr_rule == "seed":
                    if len(loss_history) > 5 and last_loss > max(loss_history[-5:]):
                        for g in optimizer.param_groups:
                            g["lr"] *= 0.9
                    loss_history.append(last_loss)
                    loss_history = loss_history[-10:]
                elapsed = time.perf_counter() - t0
                tps = tokens / max(elapsed, 1e-9)
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tps:.0f}", lr=f"{lr:.2g}")
                if on_progress is not None:
                    left = (cfg.steps - step) * elapsed / max(step - start_step, 1)
                    if cfg.minutes:
                        left = min(left, max(0.0, deadline - time.perf_counter()))
                    on_progress(
                        {
                            "step": step,
                            "steps": cfg.steps,
                            "loss": last_loss,
                            "lr": lr,
                            "tokens_per_s": tps,
                            "eta_s": left,
                        }
                    )
            if step % cfg.eval_every == 0:
                validate()
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted at step %d: saving %s", step, last_path)
    bar.close()
    if window_n:
        last_loss = window_loss / window_n
    metrics["last_loss"] = last_loss
    if not interrupted and (step % cfg.eval_every != 0 or not best_path.exists()):
        validate()
    else:
        save_checkpoint(last_path, payload(True))
        if not best_path.exists():
            save_checkpoint(best_path, payload(False))
    elapsed = time.perf_counter() - t0
    return TrainResult(
        steps=step,
        target_tokens_per_s=round(tokens / max(elapsed, 1e-9), 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
        last_loss=round(last_loss, 4) if not math.isnan(last_loss) else last_loss,
        valid_ppl=round(metrics["valid_ppl"], 3) if "valid_ppl" in metrics else None,
        best_valid_ppl=round(metrics["best_valid_ppl"], 3) if "best_valid_ppl" in metrics else None,
        checkpoint=str(best_path),
        last_checkpoint=str(last_path),
        seconds=round(elapsed, 2),
        interrupted=interrupted,
    )


def result_json(result: TrainResult) -> str:
    return json.dumps(asdict(result), ensure_ascii=False)
