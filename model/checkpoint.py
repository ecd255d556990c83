"""The checkpoint: one self-describing file, plain types and tensors, ``weights_only`` loadable.

Keys: ``format_version``, ``model_config``, ``vocab``, ``tokenizer``, ``state_dict``, ``train``
and, in the resumable ``last`` checkpoint only, ``optimizer`` (plus ``resume`` for sampler/RNG
state). ``load_checkpoint`` is the only way to open one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from model.errors import CheckpointError, file_digest  # noqa: F401 - re-exported

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
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        AttributeError,
        KeyError,
        TypeError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable xianliao checkpoint (truncated, corrupt or another "
            f"format): {first[:200]}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a xianliao checkpoint (top level is not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a xianliao checkpoint: missing {', '.join(missing)}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt['format_version']!r}; this xianliao reads "
            f"format {FORMAT_VERSION}"
        )
    vocab_size = ckpt["model_config"].get("vocab_size")
    emb = ckpt["state_dict"].get("embedding.weight")
    if vocab_size != len(ckpt["vocab"]) or emb is None or emb.shape[0] != vocab_size:
        raise CheckpointError(
            f"{path} is inconsistent: vocabulary has {len(ckpt['vocab'])} tokens, model config "
            f"says {vocab_size}, embedding has {None if emb is None else emb.shape[0]} rows"
        )
    return ckpt


def export_for_inference(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a checkpoint (e.g. the resumable ``last.pt``) without its optimizer and resume
    state: what serving needs, a third of the size. Written atomically."""
    ckpt = load_checkpoint(src)
    for key in ("optimizer", "resume", "format_version"):
        ckpt.pop(key, None)
    return save_checkpoint(dest, ckpt)
