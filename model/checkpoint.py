"""The checkpoint: one self-describing file, plain types and tensors, ``weights_only`` loadable.

Keys: ``format_version``, ``model_config``, ``vocab``, ``tokenizer``, ``state_dict``, ``train``,
``weights_digest`` (SHA-256 of the weights, checked at every load), optionally ``serving``
(decoding options to serve it with) and, in the resumable
``last`` checkpoint only, ``optimizer`` (plus ``resume`` for sampler/RNG state). ``load_checkpoint`` is the only way to open one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from xianliao.model.errors import CheckpointError, DeviceError, file_digest  # noqa: F401 - re-exported

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "vocab", "tokenizer", "state_dict", "train")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    payload["weights_digest"] = weights_digest(payload["state_dict"])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: str = "cpu") -> dict[str, Any]:
    """Open and validate a checkpoint; raise ``CheckpointError`` with a clear one-line message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train one with 'xianliao train')")
    if isinstance(map_location, str):
        check_device(map_location)
    try:
        with warnings.catch_warnings():
            # A foreign file's first byte often reads as an unknown pickle protocol: torch warns
            # about it (two more lines on stderr) before failing; the error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any exception: see below
        # The weights-only unpickler interprets the file's bytes: a text file or other foreign
        # file makes it fail with whatever its stack machine hits (IndexError, KeyError,
        # UnicodeDecodeError, UnpicklingError, ...), none of which is a bug of ours.
        raise CheckpointError(
            f"{path} is not a readable xianliao checkpoint (truncated, corrupt or another "
            f"format): {_first_line(exc)}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a xianliao checkpoint (top level is not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a xianliao checkpoint: missing {', '.join(missing)}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {_short(ckpt['format_version'])}; this xianliao reads "
            f"format {FORMAT_VERSION}"
        )
    _check_shapes(path, ckpt)
    expected = ckpt.get("weights_digest")  # checkpoints older than it have none
    if expected is not None and weights_digest(ckpt["state_dict"]) != expected:
        raise CheckpointError(
            f"{path} is damaged: its weights do not match the digest written with them"
        )
    return ckpt


def weights_digest(state_dict: dict[str, Any]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes: a flipped bit in a weight
    (disk, copy, tampering) is caught at load, and so before any promotion."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_device(device: str) -> None:
    """Raise ``DeviceError`` unless ``device`` names a torch device that this machine has
    (otherwise ``torch.load`` fails in a way that reads like a corrupt file)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"{device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{device!r}: this machine (or this torch build) has no CUDA device")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"{device!r}: this machine has {count} CUDA device(s), from cuda:0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{device!r}: MPS (Apple GPU) is not available on this machine")


def _check_shapes(path: Path, ckpt: dict[str, Any]) -> None:
    """The parts every user of a checkpoint indexes into have the types they expect."""
    kinds = {"model_config": dict, "vocab": list, "tokenizer": dict, "state_dict": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(ckpt[k], kind)]
    if wrong:
        raise CheckpointError(
            f"{path} is not a xianliao checkpoint: wrong type of {', '.join(wrong)}"
        )
    vocab_size = ckpt["model_config"].get("vocab_size")
    emb = ckpt["state_dict"].get("embedding.weight")
    rows = emb.shape[0] if isinstance(emb, torch.Tensor) and emb.dim() == 2 else None
    if vocab_size != len(ckpt["vocab"]) or rows != vocab_size:
        raise CheckpointError(
            f"{path} is inconsistent: vocabulary has {len(ckpt['vocab'])} tokens, model config "
            f"says {_short(vocab_size)}, embedding has {rows} rows"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _short(value: Any) -> str:
    """A value from the file, for a one-line message: repr, one line, at most 40 characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:39] + "…"


def export_for_inference(
    src: str | os.PathLike, dest: str | os.PathLike, *, serving: dict | None = None
) -> Path:
    """Copy a checkpoint (e.g. the resumable ``last.pt``) without its optimizer and resume
    state: what serving needs, a third of the size. Written atomically. ``serving``: decoding
    options to record with it (``ChatBot.load`` serves it with them), and ``"int8": False``
    to keep it in fp32 on CPU (``model.chatbot.served_int8``)."""
    ckpt = load_checkpoint(src)
    for key in ("optimizer", "resume", "format_version", "weights_digest"):
        ckpt.pop(key, None)
    if serving is not None:
        ckpt["serving"] = dict(serving)
    return save_checkpoint(dest, ckpt)
