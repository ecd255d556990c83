"""``xianliao chat``: talk to a checkpoint in the terminal, through the same dialogue service.

Interactive (a TTY): a prompt per line, ``/quit`` or Ctrl-D to leave. Piped: one reply line
per input line and nothing else on stdout, so ``xianliao chat < questions.txt`` is a script.
Exchanges are logged like the bot's (as the local user 0) unless ``--no-log``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TextIO

from xianliao.bot.config import read_settings
from xianliao.bot.runtime import (
    StartupError,
    create_service,
    setup_logging,
    tolerate_bad_bytes,
    valid_text,
)
from xianliao.bot.service import DialogueService, Incoming

TERMINAL_USER_ID = 0  # the local user; Telegram ids are positive, so it never clashes
QUIT_WORDS = {"/quit", "/exit", "quit", "exit", "退出"}


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="xianliao chat", description="Chat with a trained checkpoint in the terminal."
    )
    parser.add_argument(
        "checkpoint", nargs="?", type=Path, help="checkpoint file (default: MODEL_PATH)"
    )
    parser.add_argument(
        "--no-log", action="store_true", help="do not store the conversation in the database"
    )
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    return parser.parse_args(argv)


def _incoming(text: str) -> Incoming:
    return Incoming(
        text=text,
        user_id=TERMINAL_USER_ID,
        chat_id=TERMINAL_USER_ID,
        message_id=None,
        chat_type="terminal",
        username="terminal",
        source="terminal",
    )


def chat_loop(service: DialogueService, stdin: TextIO, stdout: TextIO, interactive: bool) -> int:
    """Read lines and answer each; returns how many lines were answered."""
    answered = 0
    if interactive:
        print(
            f"闲聊 ({service.model_version}) — 输入消息后回车，/quit 退出。Type /quit to leave.",
            file=stdout,
        )
    use_input = interactive and stdin is sys.stdin and stdout is sys.stdout  # line editing
    while True:
        if use_input:
            try:
                line = input("你> ") + "\n"
            except EOFError:
                line = ""
        else:
            if interactive:
                print("你> ", end="", file=stdout, flush=True)
            line = stdin.readline()
        if not line:  # EOF
            if interactive:
                print(file=stdout)
            return answered
        text = valid_text(line.rstrip("\r\n"))
        if interactive and text.strip() in QUIT_WORDS:
            return answered
        if interactive and not text.strip():
            continue
        reply = service.respond_sync(_incoming(text))
        one_line = " ".join(reply.text.split())
        print(f"闲聊> {one_line}" if interactive else one_line, file=stdout, flush=True)
        answered += 1


def main(argv: list[str]) -> int:
    """Entry point of ``xianliao chat``."""
    args = _parse_args(argv)
    settings = read_settings(args.env_file, "xianliao chat")
    if settings is None:
        return 2
    setup_logging("WARNING")
    try:
        service = create_service(settings, model_path=args.checkpoint, log=not args.no_log)
    except StartupError as exc:
        print(f"xianliao chat: {exc}", file=sys.stderr)
        return 2
    tolerate_bad_bytes(sys.stdin)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - arrow keys and history for input()
    try:
        chat_loop(service, sys.stdin, sys.stdout, interactive=interactive)
    except KeyboardInterrupt:
        print(file=sys.stdout)
    finally:
        service.close()
    return 0
