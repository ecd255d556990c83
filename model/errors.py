"""What code that only handles checkpoints by name needs, without importing torch.

The bot's main process (which runs the model in worker processes) catches ``CheckpointError``
and hashes checkpoint files; keeping both here spares it importing torch, and its memory.
"""

from __future__ import annotations

import hashlib
import os


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line a user can act on."""


class DeviceError(CheckpointError):
    """The device asked for (``map_location``) does not exist or is not available here: the
    setting that chose it is at fault, not the file. A ``CheckpointError`` still, so that code
    that only knows that one keeps catching it."""


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
