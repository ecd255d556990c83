"""What the training commands' parsers share: one-line usage errors and checked numbers."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the usage + the error:
    the line that says what is wrong is the last thing a user sees, and scripts log one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def whole_number(minimum: int, maximum: int | None = None):  # noqa: ANN201 - an argparse type
    """An argparse type: an integer from ``minimum`` to ``maximum``. Values out of range would
    do nothing (0 steps), or break a later step (a vocabulary of 0 words, 2000 per mille)."""
    where = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < minimum or (maximum is not None and n > maximum):
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number {where}")
        return n

    return parse


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def device_arg(value: str) -> str:
    """An argparse type: auto, or a torch device this machine has (checked before training
    starts, instead of a traceback from deep inside torch)."""
    if value == "auto":
        return value
    from xianliao.model.checkpoint import DeviceError, check_device

    try:
        check_device(value)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value
