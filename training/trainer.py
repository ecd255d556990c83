"""The moving parts of one training run: model, optimizer, learning-rate rules, batch sampler,
validation, checkpoints and the metrics log, on one process or as one rank of several.

The Trainer holds exactly the state a resumable ``last`` checkpoint captures, so that saving
(:meth:`Trainer.payload`) and resuming (:meth:`Trainer.restore`) read as inverses.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from xianliao.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xianliao.model.seq2seq import Seq2Seq, Seq2SeqConfig, default_cutoffs
from xianliao.model.vocab import Vocab
from xianliao.training.data import BatchSampler, DataError, PairArrays, Source, iter_eval_batches
from xianliao.training.distributed import Dist
from xianliao.training.metrics import METRICS_FILE, MetricsLog

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_vocab(data_dir: str | Path) -> Vocab:
    path = Path(data_dir) / "vocab.txt"
    if not path.is_file():
        raise DataError(f"{data_dir} has no vocab.txt: run 'xianliao prepare' first")
    return Vocab(path.read_text("utf-8").rstrip("\n").split("\n"))


@torch.no_grad()
def loss_sums(
    model: Seq2Seq, arrays: PairArrays, batch_size: int, limit: int, device, shard=(0, 1)
) -> tuple[float, int]:
    """(summed cross-entropy, target tokens) over this shard of the first ``limit`` pairs."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for b in iter_eval_batches(arrays, batch_size, limit, shard=shard):
        loss = model(b.src.to(device), b.src_len, b.tgt_in.to(device), b.tgt_out.to(device))
        total += loss.item() * b.n_tokens
        n += b.n_tokens
    model.train(was_training)
    return total, n


def evaluate_loss(model: Seq2Seq, arrays: PairArrays, batch_size: int, limit: int, device) -> float:
    """Token-weighted mean cross-entropy over the first ``limit`` pairs."""
    total, n = loss_sums(model, arrays, batch_size, limit, device)
    return total / max(n, 1)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: Seq2Seq, cfg) -> torch.optim.Optimizer:  # noqa: ANN001 - TrainConfig
    try:
        return torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
    except (RuntimeError, TypeError):  # no fused kernel for this device or torch
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Trainer:
    """Set up from prepared data dirs ``[(dir, weight), ...]``; :meth:`run` trains."""

    def __init__(
        self,
        data: list[tuple[str, float]],
        out_dir: str | Path,
        cfg,  # noqa: ANN001 - a TrainConfig (train.py imports this module)
        *,
        resume: bool = False,
        dist: Dist | None = None,
        tokenizer_desc: dict | None = None,
    ) -> None:
        self.dist = dist or Dist()
        self.data = data
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        self.vocab = read_vocab(data[0][0])
        for d, _ in data[1:]:
            if read_vocab(d).itos != self.vocab.itos:
                raise DataError(f"{d} was prepared with another vocabulary than {data[0][0]}")
        self.sources = [Source(PairArrays(d, "train"), w, name=str(d)) for d, w in data]
        self.valid, self.valid_split = PairArrays(data[0][0], "valid"), "valid"
        if len(self.valid) == 0:  # tiny corpora: validate on training pairs, and say so
            self.valid, self.valid_split = self.sources[0].arrays, "train"
        self.tokenizer_desc = (
            tokenizer_desc
            or self.valid.meta.get("tokenizer")
            or self.sources[0].arrays.meta["tokenizer"]
        )
        state = self._read_resume() if resume else None
        if state is not None:  # the run's own settings, but the new length
            saved = state["train"]["config"]
            cfg = replace(cfg, **{**saved, "steps": cfg.steps, "minutes": cfg.minutes})
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(
                f"a batch of {cfg.batch_size} pairs does not split evenly over "
                f"{self.dist.world_size} processes"
            )
        self.cfg = cfg
        self.device = self.dist.device_for(pick_device(cfg.device))
        self.use_amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        self.dist.start(self.device)
        torch.manual_seed(cfg.seed)
        self.model, self.mcfg = self._build_model(state)
        self.optimizer = make_optimizer(self.model, cfg)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=2
        )
        if cfg.both_directions:  # (after a resume restored cfg) validation stays forward
            self.sources += [
                Source(s.arrays.reversed(), s.weight, name=f"{s.name} (reversed)")
                for s in self.sources
            ]
        self.sampler = self._sampler(cfg.seed + self.dist.rank)
        self.step, self.best_loss, self.loss_history = 0, math.inf, []
        self.metrics: dict = {}
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.validated_step = -1
        if state is not None:
            self.restore(state)
        elif self.dist.rank:
            torch.manual_seed(cfg.seed + self.dist.rank)  # dropout of its own on every rank
        self.net = self._wrap(self.model)
        self.log = None
        if self.dist.is_main:
            resume_step = self.step if state is not None else None
            self.log = MetricsLog(self.out / METRICS_FILE, resume_step=resume_step)
        self.t0 = time.perf_counter()
        self.tokens = 0

    def _read_resume(self) -> dict:
        if not self.last_path.is_file():
            raise CheckpointError(f"cannot resume: {self.last_path} does not exist")
        state = load_checkpoint(self.last_path)
        if "optimizer" not in state or "resume" not in state:
            raise CheckpointError(f"cannot resume: {self.last_path} has no optimizer/sampler state")
        if state["vocab"] != self.vocab.itos:
            raise CheckpointError(f"cannot resume: {self.last_path} has another vocabulary")
        return state

    def _build_model(self, state: dict | None) -> tuple[Seq2Seq, Seq2SeqConfig]:
        cfg, vocab = self.cfg, self.vocab
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
        model = Seq2Seq(mcfg).to(self.device)
        if init is not None:
            model.load_state_dict(init["state_dict"])
        return model, mcfg

    def _sampler(self, seed: int) -> BatchSampler:
        """Each rank draws its own share of the global batch, from a seed of its own."""
        return BatchSampler(
            self.sources,
            self.cfg.batch_size // self.dist.world_size,
            seed=seed,
            pool_batches=self.cfg.pool_batches,
        )

    def _wrap(self, model: Seq2Seq) -> torch.nn.Module:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # A batch may hold no word of an adaptive-softmax tail cluster: its weights then get no
        # gradient, which DDP must be told to expect.
        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=bool(self.mcfg.adaptive_cutoffs),
        )

    # --- checkpoints -------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def payload(self, rank_states: list[dict] | None = None) -> dict:
        """The checkpoint; with ``rank_states`` (every rank's sampler and RNG) the resumable one."""
        p = {
            "model_config": self.mcfg.to_dict(),
            "vocab": self.vocab.itos,
            "tokenizer": self.tokenizer_desc,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "train": {
                "step": self.step,
                "metrics": self.metrics,
                "config": asdict(self.cfg),
                "data": [[str(d), w] for d, w in self.data],
                "time": _utc_now(),
            },
        }
        if rank_states is not None:
            p["optimizer"] = self.optimizer.state_dict()
            p["resume"] = {
                "step": self.step,
                "best_loss": self.best_loss,
                "loss_history": self.loss_history,
                "plateau": self.plateau.state_dict(),
                "sampler": rank_states[0]["sampler"],
                "torch_rng": rank_states[0]["torch_rng"],
                "elapsed_s": self.elapsed(),
                "world_size": len(rank_states),
                "ranks": rank_states,
            }
        return p

    def restore(self, state: dict) -> None:
        """Continue from a ``last`` checkpoint: exactly when it was written by as many ranks."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        r = state["resume"]
        self.plateau.load_state_dict(r["plateau"])
        self.step, self.best_loss = r["step"], r["best_loss"]
        self.loss_history = list(r["loss_history"])
        self.metrics = dict(state["train"].get("metrics", {}))
        self.elapsed_before = float(r.get("elapsed_s", 0.0))
        saved_world = r.get("world_size", 1)
        if saved_world == self.dist.world_size:
            own = r["ranks"][self.dist.rank] if "ranks" in r else r
            self.sampler.load_state_dict(own["sampler"])
            torch.set_rng_state(own["torch_rng"])
            return
        # Another number of ranks: the batches cannot continue where they were; draw new ones,
        # seeded by the step so that they differ from the run's first batches.
        if self.dist.is_main:
            logger.warning(
                "resuming a %d-process run on %d processes: the batches are drawn afresh "
                "(the same model and optimizer, not the exact continuation)",
                saved_world,
                self.dist.world_size,
            )
        seed = self.cfg.seed + self.dist.rank + 1009 * self.step
        self.sampler = self._sampler(seed)
        torch.manual_seed(seed)

    def save_last(self) -> None:
        """Write ``last.pt`` (rank 0); every rank must call it, since it gathers their states."""
        mine = {"sampler": self.sampler.state_dict(), "torch_rng": torch.get_rng_state()}
        states = self.dist.gather(mine)
        if self.dist.is_main:
            save_checkpoint(self.last_path, self.payload(states))

    def save_best(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.best_path, self.payload())

    # --- validation and the metrics log -------------------------------------------------------

    def validate(self) -> None:
        """Validation loss over the ranks' shares of the held-out pairs, reduced so that every
        rank takes the same learning-rate step; then the checkpoints."""
        total, n = loss_sums(
            self.model,
            self.valid,
            self.cfg.batch_size,
            self.cfg.eval_pairs,
            self.device,
            shard=(self.dist.rank, self.dist.world_size),
        )
        total, n = self.dist.all_sum([total, float(n)])
        vloss = total / max(n, 1)
        self.metrics.update(
            valid_loss=vloss,
            valid_ppl=math.exp(min(vloss, 50.0)),
            valid_split=self.valid_split,
            step=self.step,
        )
        if self.cfg.lr_rule == "plateau":
            self.plateau.step(vloss)
        if vloss < self.best_loss:
            self.best_loss = vloss
            self.metrics["best_valid_ppl"] = self.metrics["valid_ppl"]
            self.save_best()
        self.save_last()
        self.validated_step = self.step

    def record(self, train_loss: float | None, lr: float, validated: bool) -> None:
        """One line of ``metrics.jsonl`` (rank 0)."""
        if self.log is None:
            return
        rec: dict = {"step": self.step, "time": _utc_now(), "elapsed_s": round(self.elapsed(), 1)}
        if train_loss is not None and not math.isnan(train_loss):
            rec["train_loss"] = round(train_loss, 4)
        if validated:
            rec["valid_loss"] = round(self.metrics["valid_loss"], 4)
            rec["valid_ppl"] = round(self.metrics["valid_ppl"], 3)
        rec["lr"] = lr
        self.log.append(rec)

    # --- the loop -----------------------------------------------------------------------------

    def train_step(self, elapsed: float) -> float:
        """One optimisation step on this rank's share of a batch; returns its loss."""
        cfg, device = self.cfg, self.device
        batch = self.sampler.next_batch()
        if cfg.lr_rule == "linear":
            done = self.step / cfg.steps
            if cfg.minutes:
                done = max(done, elapsed / (cfg.minutes * 60))
            for g in self.optimizer.param_groups:
                g["lr"] = cfg.lr * max(0.0, 1.0 - done)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            loss = self.net(
                batch.src.to(device),
                batch.src_len,
                batch.tgt_in.to(device),
                batch.tgt_out.to(device),
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP, the gradients arrive averaged over the ranks
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.step += 1
        self.tokens += batch.n_tokens
        return loss.item()

    def seed_rule(self, loss: float) -> None:
        """The seed's rule: x0.9 whenever the loss is above the max of the 5 before."""
        if len(self.loss_history) > 5 and loss > max(self.loss_history[-5:]):
            for g in self.optimizer.param_groups:
                g["lr"] *= 0.9
        self.loss_history = (self.loss_history + [loss])[-10:]
