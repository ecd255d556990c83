"""The one ``xianliao`` command: dispatches each subcommand to its package.

Each package is imported only when its subcommand runs, so ``xianliao chat`` never loads
python-telegram-bot and ``xianliao bot`` never loads the training code.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import signal
import sys

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": (
        "xianliao.training.cli",
        "prepare_main",
        "segment a corpus into vocabulary + token-id arrays",
    ),
    "index": ("xianliao.training.cli", "index_main", "build the reply index from corpora"),
    "train": ("xianliao.training.cli", "train_main", "train (or resume) a model on prepared data"),
    "eval": ("xianliao.training.cli", "eval_main", "evaluate a checkpoint on a TSV file"),
    "plot": ("xianliao.training.cli", "plot_main", "draw a training run's curves into curves.png"),
    "chat": ("xianliao.bot.terminal", "main", "chat with a checkpoint in the terminal"),
    "bot": ("xianliao.console_in_bot", "main", "run the Telegram bot"),
    "review": (
        "xianliao.bot.review_cli",
        "main",
        "list, approve, edit and export logged exchanges",
    ),
    "retrain": ("xianliao.retrain_cli", "retrain_main", "retrain on approved logged exchanges"),
    "promote": ("xianliao.retrain_cli", "promote_main", "put a checkpoint live (forced)"),
    "rollback": ("xianliao.retrain_cli", "rollback_main", "put the previous model back"),
    "quickstart": ("xianliao.quickstart", "main", "train a small model if none exists, then chat"),
    "console": ("xianliao.console.cli", "main", "the admin web console (review, runs, models)"),
}


# Commands that run for minutes: Ctrl+C, kill -INT and kill -TERM (what service managers send)
# stop them cleanly (train saves last.pt; retrain never promotes; the others exit 130).
LONG_COMMANDS = frozenset({"prepare", "index", "train", "eval", "retrain", "quickstart"})


def _raise_interrupt(signum, frame) -> None:  # noqa: ANN001 - a signal handler
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, even where SIGINT was inherited as ignored
    (a shell starts background jobs, `cmd &` and nohup, with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _usage() -> str:
    lines = ["usage: xianliao COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines.append("\nRun 'xianliao COMMAND --help' for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"xianliao: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # OpenMP threads that spin while waiting collapse when the cores are shared (the bot and a
    # retraining run, or any other busy process): 2 threads went from 0.15 to 4.2 s per training
    # step on a loaded 2-core machine. Sleeping waits cost little when the machine is idle.
    # Must be set before torch is imported; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # python-telegram-bot 22 warns that RetryAfter.retry_after becomes a timedelta in its next
    # major version; opt in now (bot.handlers reads either form).
    os.environ.setdefault("PTB_TIMEDELTA", "1")
    # A fatal signal in C code (SIGBUS when SQLite's memory-mapped -shm file is truncated under
    # it, SIGSEGV) ends the process at once: say so, with the Python stack, in the log. (Not
    # where stderr is no file: called from Python code that captures it.)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        faulthandler.enable()
    if name in LONG_COMMANDS:
        _interrupt_on_signals()
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
