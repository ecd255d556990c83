"""``xianliao review``: list, search, approve/reject, edit and export logged exchanges.

Subcommands (``xianliao review COMMAND --help`` for the options):

- ``list``: a page of exchanges matching filters, as a table or one JSON object per line.
- ``show ID...``: every field of some exchanges, full text.
- ``approve`` / ``reject`` / ``pending`` ``ID...``, or ``--all-matching FILTERS`` in bulk.
- ``edit ID ANSWER``: store the answer the bot should have given (and approve it).
- ``export --format tsv|jsonl``: stream matching exchanges; TSV is the corpus format.

Only this entry point reads configuration (``DATABASE_URL`` from the environment and ``.env``,
or ``--database-url``). It never imports python-telegram-bot. Each command is one transaction:
a change either happens whole (with its audit row) or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from xianliao.bot.config import Settings
from xianliao.bot.runtime import tolerate_bad_bytes, valid_text
from xianliao.storage.db import NoDatabase, open_existing, read_only_engine, session_factory
from xianliao.storage.models import (
    REVIEW_APPROVED,
    REVIEW_PENDING,
    REVIEW_REJECTED,
    REVIEW_STATUSES,
    Exchange,
    Feedback,
    User,
)
from xianliao.storage.repositories import AuditRepository, ExchangeFilter, ExchangeRepository

PROG = "xianliao review"
CLI_REVIEWER = 0  # the reviewer id recorded for changes made from the command line
MAX_AUDIT_IDS = 1000  # ids listed in one audit row of a bulk change (the count is always there)
MAX_ID = 2**63 - 1  # the largest id a database stores; a bigger one names no exchange
SOURCES = ("telegram", "terminal")  # where an exchange was logged (Exchange.source)

# Characters that end a line for some reader (str.splitlines) or a TSV field: replaced by a space
# in TSV export so that every exchange stays exactly one ``question<TAB>answer`` line.
_TSV_BREAKS = re.compile("[\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")


class ReviewError(Exception):
    """An expected failure, reported as one line on stderr."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


# ----- argument parsing -----------------------------------------------------------------------


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


def _build_parser() -> argparse.ArgumentParser:
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "show",
        parents=[common],
        help="show exchanges in full",
        description="Show every field of the given exchanges.",
    )
    p.add_argument("ids", nargs="+", type=_exchange_id, metavar="ID")
    p.set_defaults(func=_cmd_show)

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
        p.add_argument(
            "--reviewer",
            type=int,
            default=CLI_REVIEWER,
            metavar="ID",
            help="reviewer recorded (default 0: the command line)",
        )
        p.set_defaults(func=_cmd_set_status, target=status, verb=verb)

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
    p.add_argument(
        "--reviewer",
        type=int,
        default=CLI_REVIEWER,
        metavar="ID",
        help="reviewer recorded (default 0: the command line)",
    )
    p.set_defaults(func=_cmd_edit)

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
    p.set_defaults(func=_cmd_export)
    return parser


# ----- filters and rows -------------------------------------------------------------------------


def _statuses(args: argparse.Namespace, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    given = args.status
    if not given:
        return default
    if "all" in given:
        return None
    return tuple(dict.fromkeys(given))


def _filter(args: argparse.Namespace, default_statuses: tuple[str, ...] | None) -> ExchangeFilter:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise ReviewError("--since must be before --until", code=2)
    return ExchangeFilter(
        user_id=args.user,
        chat_id=args.chat,
        since=args.since,
        until=args.until,
        text=args.text or None,
        feedback=args.feedback,
        review_status=_statuses(args, default_statuses),
        source=args.source,
    )


def _has_filter(args: argparse.Namespace) -> bool:
    values = (args.user, args.chat, args.since, args.until, args.text, args.feedback, args.source)
    return any(v is not None and v != "" for v in values) or _statuses(args, None) is not None


def _rows_stmt(flt: ExchangeFilter):  # noqa: ANN202 - a Select of many columns
    """Every exchange column, the user's name and the 👍/👎 counts, filtered by ``flt``."""
    up = (
        select(func.count(Feedback.id))
        .where(Feedback.exchange_id == Exchange.id, Feedback.value > 0)
        .scalar_subquery()
    )
    down = (
        select(func.count(Feedback.id))
        .where(Feedback.exchange_id == Exchange.id, Feedback.value < 0)
        .scalar_subquery()
    )
    stmt = select(
        Exchange.id,
        Exchange.created_at,
        Exchange.user_id,
        User.username,
        Exchange.chat_id,
        Exchange.message_id,
        Exchange.source,
        Exchange.user_text,
        Exchange.reply_text,
        Exchange.edited_reply,
        Exchange.review_status,
        Exchange.reviewed_by,
        Exchange.reviewed_at,
        Exchange.model_version,
        Exchange.latency_ms,
        Exchange.decode_options,
        up.label("feedback_up"),
        down.label("feedback_down"),
    ).outerjoin(User, User.id == Exchange.user_id)
    return flt.apply(stmt)


def _record(row: Any) -> dict[str, Any]:
    """A result row as a JSON-ready dict (times in ISO 8601 UTC, decode options parsed)."""
    d = row._asdict()
    d["created_at"] = d["created_at"].isoformat()
    d["reviewed_at"] = d["reviewed_at"].isoformat() if d["reviewed_at"] else None
    with contextlib.suppress(ValueError):  # otherwise keep the raw text
        d["decode_options"] = json.loads(d["decode_options"] or "{}")
    d["answer"] = d["edited_reply"] or d["reply_text"]  # what training uses
    return d


def _iter_records(session: Session, flt: ExchangeFilter, batch_size: int = 500) -> Iterator[dict]:
    """Stream matching exchanges in id order, ``batch_size`` rows fetched at a time."""
    stmt = _rows_stmt(flt).order_by(Exchange.id)
    for row in session.execute(stmt.execution_options(yield_per=batch_size)):
        yield _record(row)


def _missing_ids(session: Session, ids: list[int]) -> list[int]:
    found: set[int] = set()
    storable = [i for i in ids if i <= MAX_ID]  # a bigger one overflows the driver's integer
    for start in range(0, len(storable), 500):
        chunk = storable[start : start + 500]
        found.update(session.scalars(select(Exchange.id).where(Exchange.id.in_(chunk))))
    return [i for i in ids if i not in found]


def _unknown(missing: list[int]) -> ReviewError:
    shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
    noun = "id" if len(missing) == 1 else "ids"
    return ReviewError(f"no exchange with {noun} {shown}; nothing changed")


# ----- the table ------------------------------------------------------------------------------


def _visible(text: str, keep: str = "") -> str:
    """``text`` with control characters (ESC, BEL, NUL, DEL, ...) but those in ``keep`` shown as
    escapes (``\\x1b``): logged text is a stranger's, and written raw it would drive the
    reviewer's terminal (move the cursor, change colours, hide what follows)."""
    return "".join(
        f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" and ch not in keep else ch
        for ch in text
    )


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _fit(text: str, width: int) -> str:
    """``text`` on one line, shortened with … and padded to ``width`` terminal columns."""
    text = _visible(" ".join(text.split()))
    if _width(text) > width:
        out, used = [], 0
        for ch in text:
            w = _char_width(ch)
            if used + w > width - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    return text + " " * (width - _width(text))


_COLUMNS = (  # (title, width; 0 = as wide as the widest value)
    ("ID", 0),
    ("TIME (UTC)", 16),
    ("USER", 0),
    ("STATUS", 8),
    ("FB", 5),
    ("QUESTION", 24),
    ("REPLY (✎ edited)", 30),
    ("MODEL", 12),
)


def _table_cells(r: dict[str, Any]) -> list[str]:
    fb = ""
    if r["feedback_up"]:
        fb += f"+{r['feedback_up']}"
    if r["feedback_down"]:
        fb += f"-{r['feedback_down']}"
    reply = f"✎ {r['edited_reply']}" if r["edited_reply"] else r["reply_text"]
    return [
        str(r["id"]),
        r["created_at"][:16].replace("T", " "),
        str(r["user_id"]),
        r["review_status"],
        fb or "-",
        r["user_text"],
        reply,
        r["model_version"],
    ]


def _print_table(records: list[dict[str, Any]], out: TextIO) -> None:
    rows = [_table_cells(r) for r in records]
    widths = [
        w or max([_width(title)] + [_width(row[i]) for row in rows])
        for i, (title, w) in enumerate(_COLUMNS)
    ]
    lines = [[title for title, _ in _COLUMNS], *rows]
    for cells in lines:
        print("  ".join(_fit(c, w) for c, w in zip(cells, widths, strict=True)).rstrip(), file=out)


# ----- commands -------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace, engine: Engine) -> int:
    flt = _filter(args, None)
    out = sys.stdout
    with session_factory(read_only_engine(engine))() as session:
        order = Exchange.id.asc() if args.oldest_first else Exchange.id.desc()
        stmt = _rows_stmt(flt).order_by(order).limit(args.limit).offset(args.offset)
        records = [_record(row) for row in session.execute(stmt)]
        if args.json:
            for r in records:
                print(json.dumps(r, ensure_ascii=False), file=out)
            return 0
        total = ExchangeRepository(session).count(flt)
    if not records:
        print("no exchanges match" if total == 0 else f"no rows after --offset {args.offset}")
        return 0
    _print_table(records, out)
    first, last = args.offset + 1, args.offset + len(records)
    footer = f"{first}-{last} of {total}"
    if last < total:
        footer += f"; next page: --offset {last}"
    print(footer, file=out)
    return 0


def _cmd_show(args: argparse.Namespace, engine: Engine) -> int:
    ids = list(dict.fromkeys(args.ids))
    with session_factory(read_only_engine(engine))() as session:
        missing = _missing_ids(session, ids)
        if missing:
            raise _unknown(missing)
        stmt = _rows_stmt(ExchangeFilter()).where(Exchange.id.in_(ids))
        records = {r["id"]: r for r in map(_record, session.execute(stmt))}
    for n, i in enumerate(ids):
        r = {
            k: _visible(v, keep="\n\t") if isinstance(v, str) else v for k, v in records[i].items()
        }
        if n:
            print()
        user = f"{r['user_id']}" + (f" (@{r['username']})" if r["username"] else "")
        print(f"#{r['id']}  {r['created_at']}  {r['source']}  user {user}  chat {r['chat_id']}")
        print(f"  status:   {r['review_status']}", end="")
        if r["reviewed_at"]:
            print(f" (by {r['reviewed_by']} at {r['reviewed_at']})", end="")
        print(f"\n  feedback: +{r['feedback_up']} -{r['feedback_down']}")
        print(f"  model:    {r['model_version']}  {r['latency_ms']:.0f} ms")
        print(f"  question: {r['user_text']}")
        print(f"  reply:    {r['reply_text']}")
        if r["edited_reply"]:
            print(f"  edited:   {r['edited_reply']}")
    return 0


def _cmd_set_status(args: argparse.Namespace, engine: Engine) -> int:
    status: str = args.target
    verb: str = args.verb
    if args.all_matching and args.ids:
        raise ReviewError("give ids or --all-matching, not both", code=2)
    if not args.all_matching:
        if not args.ids:
            raise ReviewError(f"{verb}: give exchange ids, or --all-matching with filters", code=2)
        if _has_filter(args):
            raise ReviewError("filters select exchanges only with --all-matching", code=2)
    elif not _has_filter(args) and not args.yes:
        raise ReviewError(
            f"--all-matching without filters would {verb} every exchange; "
            "add filters, or --yes if you mean it",
            code=2,
        )

    detail: dict[str, Any] = {"via": "cli"}
    with session_factory(engine).begin() as session:  # one transaction: all or nothing
        if args.all_matching:
            # Rows already in the target status are left alone (their reviewer stays).
            flt = _filter(args, None)
            stmt = flt.apply(select(Exchange.id)).where(Exchange.review_status != status)
            ids = list(session.scalars(stmt.order_by(Exchange.id)))
            detail["filter"] = _describe_filter(flt)
        else:
            ids = list(dict.fromkeys(args.ids))
            missing = _missing_ids(session, ids)
            if missing:
                raise _unknown(missing)
        if not ids:
            print(f"no exchanges to {verb}; nothing changed")
            return 0
        noun = "exchange" if len(ids) == 1 else "exchanges"
        if args.dry_run:
            print(f"would mark {len(ids)} {noun} {status}: {_id_list(ids)}")
            return 0
        changed = ExchangeRepository(session).set_review_status(ids, status, reviewer=args.reviewer)
        detail.update(count=changed, ids=ids[:MAX_AUDIT_IDS])
        if len(ids) > MAX_AUDIT_IDS:
            detail["ids_truncated"] = True
        AuditRepository(session).record(
            args.reviewer, f"review_{status}", allowed=True, detail=_json(detail)
        )
    print(f"marked {changed} {noun} {status}: {_id_list(ids)}")
    return 0


def _cmd_edit(args: argparse.Namespace, engine: Engine) -> int:
    if args.clear:
        if args.answer is not None:
            raise ReviewError("give an answer or --clear, not both", code=2)
        answer = None
    else:
        if args.answer is None:
            raise ReviewError("edit: give the better answer (or - to read it from stdin)", code=2)
        if args.answer == "-":
            tolerate_bad_bytes(sys.stdin)
            answer = valid_text(sys.stdin.read())
        else:
            answer = args.answer
        answer = answer.strip()
        if not answer:
            raise ReviewError("the answer is empty (use --clear to remove an edit)", code=2)
    approve = answer is not None and not args.keep_status
    with session_factory(engine).begin() as session:
        repo = ExchangeRepository(session)
        exchange = repo.get(args.id) if args.id <= MAX_ID else None
        if exchange is None:
            raise _unknown([args.id])
        previous = exchange.edited_reply
        repo.set_edited_reply(args.id, answer, reviewer=args.reviewer)
        if approve:
            repo.set_review_status(args.id, REVIEW_APPROVED, reviewer=args.reviewer)
        detail = {
            "via": "cli",
            "id": args.id,
            "edited_reply": answer,
            "previous": previous,
            "approved": approve,
        }
        AuditRepository(session).record(
            args.reviewer, "review_edit", allowed=True, detail=_json(detail)
        )
    if answer is None:
        print(f"#{args.id}: edited answer removed")
    else:
        print(f"#{args.id}: answer stored" + (" and approved" if approve else ""))
    return 0


def _clean_tsv_field(text: str) -> str:
    return _TSV_BREAKS.sub(" ", text).strip()


def _cmd_export(args: argparse.Namespace, engine: Engine) -> int:
    tsv = args.format == "tsv"
    flt = _filter(args, (REVIEW_APPROVED,) if tsv else None)
    written = skipped = 0
    with (
        session_factory(read_only_engine(engine))() as session,
        _output(args.out) as out,
    ):
        if tsv:
            pairs = ExchangeRepository(session).iter_training_pairs(flt, statuses=None)
            for question, answer in pairs:
                q, a = _clean_tsv_field(question), _clean_tsv_field(answer)
                if not q or not a:
                    skipped += 1
                    continue
                out.write(f"{q}\t{a}\n")
                written += 1
        else:
            for record in _iter_records(session, flt):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    where = "stdout" if args.out in (None, "-") else args.out
    noun = "pairs" if tsv else "exchanges"
    message = f"{PROG}: exported {written} {noun} to {where}"
    if skipped:
        message += f" ({skipped} skipped: empty question or answer)"
    print(message, file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """stdout, or a file written to a temporary name and renamed when complete."""
    if path in (None, "-"):
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise ReviewError(f"--out {path} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    except OSError as exc:
        raise ReviewError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _describe_filter(flt: ExchangeFilter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in vars(flt).items():
        if value is None:
            continue
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _id_list(ids: list[int], limit: int = 20) -> str:
    return ", ".join(f"#{i}" for i in ids[:limit]) + (
        f" ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# ----- entry point ----------------------------------------------------------------------------


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return args.database_url
    try:
        return Settings(_env_file=args.env_file).database_url
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]).upper()
        raise ReviewError(
            f"setting {name}: {err['msg']} (fix {args.env_file}, or pass --database-url)", code=2
        ) from None


def _open_engine(url: str) -> Engine:
    """The engine for ``url``. Reviewing never creates a database: a missing or empty SQLite
    file, or a database without our tables, is an error (nothing to review there)."""
    try:
        return open_existing(url)
    except ArgumentError:
        raise ReviewError(f"{url!r} is not a database URL", code=2) from None
    except NoDatabase as exc:
        raise ReviewError(
            f"{exc}: nothing logged yet, or DATABASE_URL (--database-url) points elsewhere"
        ) from None
    except ImportError as exc:
        raise ReviewError(f"no driver for {make_url(url).get_backend_name()}: {exc}") from None
    except RuntimeError as exc:  # a schema newer than this code
        raise ReviewError(str(exc)) from None


def _db_message(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else (str(exc).splitlines() or [type(exc).__name__])[0]
    if "locked" in text or "busy" in text:
        return f"the database is busy ({text}): another process holds it; try again"
    return f"database error: {text}"


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Entry point of ``xianliao review``."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # Python gives bytes of argv that are not UTF-8 as surrogates, which the database driver
    # cannot encode: replace them in the texts (paths keep them: they name real files).
    for name in ("text", "answer"):
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, valid_text(getattr(args, name)))
    engine: Engine | None = None
    try:
        engine = _open_engine(_database_url(args))
        return args.func(args, engine)
    except ReviewError as exc:
        _fail(str(exc))
        return exc.code
    except SQLAlchemyError as exc:
        _fail(_db_message(exc))
        return 1
    except BrokenPipeError:  # e.g. `xianliao review list | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if engine is not None:
            engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
