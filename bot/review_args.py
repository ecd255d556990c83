"""The command line of ``xianliao review``: its parser and the filter it builds.

Parsing only: argparse types that refuse bad input with one line, the subcommands and their
options, and :func:`build_filter` (the options as an ``ExchangeFilter``).
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from typing import NoReturn

from xianliao.ops.review import (
    REVIEW_APPROVED,
    REVIEW_PENDING,
    REVIEW_REJECTED,
    REVIEW_STATUSES,
    ExchangeFilter,
    ReviewError,
)

PROG = "xianliao review"
CLI_REVIEWER = 0  # the reviewer id recorded for changes made from the command line
SOURCES = ("telegram", "terminal")  # where an exchange was logged (Exchange.source)


class UsageError(ReviewError):
    """Options that do not go together (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parse_time(value: str, *, end: bool) -> datetime:
    """A date (``YYYY-MM-DD``, a whole UTC day) or an ISO time (UTC unless it has an offset)."""
    try:
        if len(value) <= 10:
            d = date.fromisoformat(value)
            start = datetime(d.year, d.month, d.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        t = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _since(value: str) -> datetime:
    return _parse_time(value, end=False)


def _until(value: str) -> datetime:
    return _parse_time(value, end=True)


def _exchange_id(value: str) -> int:
    try:
        n = int(value.lstrip("#"))
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not an exchange id (a positive number)")
    return n


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number >= 0")
    return n


def _positive(value: str) -> int:
    n = _non_negative(value)
    if n == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number >= 1")
    return n


def _add_filters(p: argparse.ArgumentParser, *, status_help: str) -> None:
    g = p.add_argument_group("filters (combined with AND)")
    g.add_argument("--user", type=int, metavar="ID", help="Telegram user id (0: terminal)")
    g.add_argument("--chat", type=int, metavar="ID", help="chat id")
    g.add_argument(
        "--since", type=_since, metavar="DATE", help="from this UTC day (YYYY-MM-DD) or time"
    )
    g.add_argument(
        "--until",
        type=_until,
        metavar="DATE",
        help="up to and including this UTC day (a time given with THH:MM is exclusive)",
    )
    g.add_argument(
        "--text", metavar="STR", help="substring of the question, the reply or the edited reply"
    )
    g.add_argument(
        "--feedback",
        choices=("up", "down", "any", "none"),
        help="has a 👍 (up), a 👎 (down), any feedback, or none",
    )
    g.add_argument(
        "--status",
        action="append",
        choices=(*REVIEW_STATUSES, "all"),
        help=status_help + " (repeat for several)",
    )
    g.add_argument("--source", choices=SOURCES, help="where it was logged")


def _add_reviewer(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reviewer",
        type=int,
        default=CLI_REVIEWER,
        metavar="ID",
        help="reviewer recorded (default 0: the command line)",
    )


def _add_list(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "list",
        parents=[common],
        help="list exchanges (newest first)",
        description="List "
        "exchanges matching the filters, newest first; long text is shortened (use --json or "
        "show for the full text).",
    )
    _add_filters(p, status_help="review status (default: all)")
    p.add_argument("--limit", type=_positive, default=50, metavar="N", help="rows (default 50)")
    p.add_argument("--offset", type=_non_negative, default=0, metavar="N", help="skip N rows")
    p.add_argument("--oldest-first", action="store_true", help="oldest first instead")
    p.add_argument("--json", action="store_true", help="one JSON object per line, full text")
    p.set_defaults(command="list")

    p = sub.add_parser(
        "show",
        parents=[common],
        help="show exchanges in full",
        description="Show every field of the given exchanges.",
    )
    p.add_argument("ids", nargs="+", type=_exchange_id, metavar="ID")
    p.set_defaults(command="show")


def _add_status(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    for status, verb in (
        (REVIEW_APPROVED, "approve"),
        (REVIEW_REJECTED, "reject"),
        (REVIEW_PENDING, "pending"),
    ):
        what = "back to pending" if status == REVIEW_PENDING else status
        p = sub.add_parser(
            verb,
            parents=[common],
            help=f"mark exchanges {what} (by id or --all-matching)",
            description=f"Mark exchanges {what}: the given ids, or with --all-matching every "
            f"exchange matching the filters that is not {status} yet. All or nothing: an "
            "unknown id changes nothing.",
        )
        p.add_argument("ids", nargs="*", type=_exchange_id, metavar="ID")
        p.add_argument(
            "--all-matching", action="store_true", help="every exchange matching the filters"
        )
        _add_filters(p, status_help="only exchanges with this review status")
        p.add_argument("--yes", action="store_true", help="allow --all-matching without any filter")
        p.add_argument(
            "--dry-run", action="store_true", help="say how many would change, change nothing"
        )
        _add_reviewer(p)
        p.set_defaults(command="status", target=status, verb=verb)


def _add_edit_export(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "edit",
        parents=[common],
        help="store the answer the bot should have given",
        description="Store a corrected answer for an exchange (training then uses it instead "
        "of the logged reply) and approve the exchange, unless --keep-status.",
    )
    p.add_argument("id", type=_exchange_id, metavar="ID")
    p.add_argument("answer", nargs="?", metavar="ANSWER", help="the better answer; - reads stdin")
    p.add_argument("--keep-status", action="store_true", help="do not approve it")
    p.add_argument("--clear", action="store_true", help="remove the edited answer instead")
    _add_reviewer(p)
    p.set_defaults(command="edit")

    p = sub.add_parser(
        "export",
        parents=[common],
        help="export exchanges as TSV (corpus format) or JSONL",
        description="Stream matching exchanges, oldest first. tsv: question<TAB>answer lines "
        "(the edited answer when there is one), only approved exchanges unless --status says "
        "otherwise; tabs and line breaks inside a text become spaces. jsonl: every field, all "
        "review statuses unless --status says otherwise.",
    )
    p.add_argument("--format", required=True, choices=("tsv", "jsonl"))
    _add_filters(p, status_help="review status (default: approved for tsv, all for jsonl)")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")
    p.set_defaults(command="export")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    g = common.add_argument_group("database")
    g.add_argument(
        "--env-file", default=".env", metavar="FILE", help="settings file (default: .env)"
    )
    g.add_argument(
        "--database-url", metavar="URL", help="use this database instead of DATABASE_URL"
    )
    parser = _Parser(
        prog=PROG,
        description="Review logged exchanges: list and search them, approve or reject them, "
        "correct replies, export them for training.",
    )
    parser.set_defaults(command=None)
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=_Parser)
    _add_list(sub, common)
    _add_status(sub, common)
    _add_edit_export(sub, common)
    return parser


# ----- the options as a filter ------------------------------------------------------------------


def _statuses(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The statuses asked for; None for all (no --status, or --status all)."""
    given = args.status
    if not given or "all" in given:
        return None
    return tuple(dict.fromkeys(given))


def build_filter(args: argparse.Namespace) -> ExchangeFilter:
    """The filter options as an ``ExchangeFilter`` (statuses None when not given)."""
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be before --until")
    return ExchangeFilter(
        user_id=args.user,
        chat_id=args.chat,
        since=args.since,
        until=args.until,
        text=args.text or None,
        feedback=args.feedback,
        review_status=_statuses(args),
        source=args.source,
    )


def has_filter(args: argparse.Namespace) -> bool:
    values = (args.user, args.chat, args.since, args.until, args.text, args.feedback, args.source)
    return any(v is not None and v != "" for v in values) or _statuses(args) is not None
