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
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from xianliao.bot.config import Settings
from xianliao.bot.review_args import PROG, UsageError, build_filter, build_parser, has_filter
from xianliao.bot.review_format import print_full, print_table
from xianliao.bot.runtime import tolerate_bad_bytes, valid_text
from xianliao.ops.review import REVIEW_STATUSES, Review, ReviewError
from xianliao.storage.database import Database
from xianliao.storage.db import NoDatabase, open_existing


def _id_list(ids: list[int], limit: int = 20) -> str:
    return ", ".join(f"#{i}" for i in ids[:limit]) + (
        f" ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    )


# ----- commands: parse, call ops.review, format ---------------------------------------------------


def _cmd_list(args: argparse.Namespace, review: Review) -> int:
    flt = build_filter(args)
    records = review.search(
        flt, limit=args.limit, offset=args.offset, newest_first=not args.oldest_first
    )
    if args.json:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    total = review.count(flt)
    if not records:
        print("no exchanges match" if total == 0 else f"no rows after --offset {args.offset}")
        return 0
    print_table(records, sys.stdout)
    first, last = args.offset + 1, args.offset + len(records)
    footer = f"{first}-{last} of {total}"
    if last < total:
        footer += f"; next page: --offset {last}"
    print(footer)
    return 0


def _cmd_show(args: argparse.Namespace, review: Review) -> int:
    print_full(review.get_many(args.ids), sys.stdout)
    return 0


def _cmd_set_status(args: argparse.Namespace, review: Review) -> int:
    status: str = args.target
    verb: str = args.verb
    if args.all_matching and args.ids:
        raise UsageError("give ids or --all-matching, not both")
    if not args.all_matching:
        if not args.ids:
            raise UsageError(f"{verb}: give exchange ids, or --all-matching with filters")
        if has_filter(args):
            raise UsageError("filters select exchanges only with --all-matching")
        target = {"ids": args.ids}
    elif not has_filter(args) and not args.yes:
        raise UsageError(
            f"--all-matching without filters would {verb} every exchange; "
            "add filters, or --yes if you mean it"
        )
    else:
        target = {"matching": build_filter(args)}
    change = review.set_status(status, reviewer=args.reviewer, dry_run=args.dry_run, **target)
    if not change.ids:
        print(f"no exchanges to {verb}; nothing changed")
        return 0
    noun = "exchange" if len(change.ids) == 1 else "exchanges"
    if change.dry_run:
        print(f"would mark {len(change.ids)} {noun} {status}: {_id_list(change.ids)}")
    else:
        print(f"marked {change.changed} {noun} {status}: {_id_list(change.ids)}")
    return 0


def _answer(args: argparse.Namespace) -> str | None:
    """The answer given (None for --clear); - reads it from stdin."""
    if args.clear:
        if args.answer is not None:
            raise UsageError("give an answer or --clear, not both")
        return None
    if args.answer is None:
        raise UsageError("edit: give the better answer (or - to read it from stdin)")
    if args.answer == "-":
        tolerate_bad_bytes(sys.stdin)
        answer = valid_text(sys.stdin.read())
    else:
        answer = args.answer
    if not answer.strip():
        raise UsageError("the answer is empty (use --clear to remove an edit)")
    return answer


def _cmd_edit(args: argparse.Namespace, review: Review) -> int:
    result = review.edit(
        args.id, _answer(args), reviewer=args.reviewer, approve=not args.keep_status
    )
    if result.answer is None:
        print(f"#{args.id}: edited answer removed")
    else:
        print(f"#{args.id}: answer stored" + (" and approved" if result.approved else ""))
    return 0


def _cmd_export(args: argparse.Namespace, review: Review) -> int:
    flt = build_filter(args)
    if args.status and "all" in args.status:  # None would mean the format's default
        flt = replace(flt, review_status=REVIEW_STATUSES)
    export = review.export(args.format, flt)
    with _output(args.out) as out:
        for line in export:
            out.write(line)
    where = "stdout" if args.out in (None, "-") else args.out
    noun = "pairs" if args.format == "tsv" else "exchanges"
    message = f"{PROG}: exported {export.written} {noun} to {where}"
    if export.skipped:
        message += f" ({export.skipped} skipped: empty question or answer)"
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


COMMANDS = {
    "list": _cmd_list,
    "show": _cmd_show,
    "status": _cmd_set_status,
    "edit": _cmd_edit,
    "export": _cmd_export,
}


# ----- entry point ----------------------------------------------------------------------------


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return args.database_url
    try:
        return Settings(_env_file=args.env_file).database_url
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]).upper()
        raise UsageError(
            f"setting {name}: {err['msg']} (fix {args.env_file}, or pass --database-url)"
        ) from None


def _open(url: str) -> Database:
    """The database at ``url``. Reviewing never creates one: a missing or empty SQLite file,
    or a database without our tables, is an error (nothing to review there)."""
    try:
        return Database(open_existing(url))
    except ArgumentError:
        raise UsageError(f"{url!r} is not a database URL") from None
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
    parser = build_parser()
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
    db: Database | None = None
    try:
        db = _open(_database_url(args))
        return COMMANDS[args.command](args, Review(db, via="cli"))
    except UsageError as exc:
        _fail(str(exc))
        return 2
    except ReviewError as exc:
        _fail(str(exc))
        return 1
    except SQLAlchemyError as exc:
        _fail(_db_message(exc))
        return 1
    except BrokenPipeError:  # e.g. `xianliao review list | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if db is not None:
            db.dispose()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
