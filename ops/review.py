"""Review of logged exchanges: list, search, count, approve/reject/pending, edit, export.

The one implementation behind every front end (``xianliao review``, the Telegram admin
commands, the web console). Each change is one transaction together with its audit row
(the admin's id, the action, what changed), and calls ``on_change`` afterwards so that a
running bot serves an approved or edited answer at once.

Records are JSON-ready dicts with these keys: ``id``, ``created_at`` (ISO 8601, UTC),
``user_id``, ``username``, ``chat_id``, ``message_id``, ``source``, ``user_text``,
``reply_text``, ``edited_reply``, ``answer`` (the edited reply, else the reply: what training
uses), ``review_status``, ``reviewed_by``, ``reviewed_at``, ``model_version``, ``latency_ms``,
``decode_options`` (a dict), ``feedback_up``, ``feedback_down``.

All functions are synchronous; an asyncio front end calls them in a thread.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from xianliao.storage.database import Database
from xianliao.storage.models import (
    REVIEW_APPROVED,
    REVIEW_PENDING,
    REVIEW_REJECTED,
    REVIEW_STATUSES,
)
from xianliao.storage.repositories import (
    AuditRepository,
    ExchangeFilter,
    ExchangeRepository,
    FeedbackRepository,
    UserRepository,
)

__all__ = [
    "REVIEW_APPROVED",
    "REVIEW_PENDING",
    "REVIEW_REJECTED",
    "REVIEW_STATUSES",
    "EditResult",
    "ExchangeFilter",
    "Export",
    "Review",
    "ReviewError",
    "StatusChange",
    "UnknownExchanges",
]

Record = dict[str, Any]
MAX_AUDIT_IDS = 1000  # ids listed in one audit row of a bulk change (the count is always there)

# Characters that end a line for some reader (str.splitlines) or a TSV field: replaced by a space
# in TSV export so that every exchange stays exactly one ``question<TAB>answer`` line.
_TSV_BREAKS = re.compile("[\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")


class ReviewError(Exception):
    """A request that cannot be carried out; the message is one line, nothing was changed."""


class UnknownExchanges(ReviewError):
    """Some of the given ids name no exchange; nothing was changed."""

    def __init__(self, missing: Sequence[int]) -> None:
        self.missing = list(missing)
        shown = ", ".join(str(i) for i in self.missing[:20])
        if len(self.missing) > 20:
            shown += " ..."
        noun = "id" if len(self.missing) == 1 else "ids"
        super().__init__(f"no exchange with {noun} {shown}; nothing changed")


@dataclass(frozen=True)
class StatusChange:
    """What a status change selected (``ids``) and how many rows it changed (0 on a dry run)."""

    status: str
    ids: list[int]
    changed: int
    dry_run: bool = False


@dataclass(frozen=True)
class EditResult:
    id: int
    answer: str | None  # None: the edit was removed
    previous: str | None
    approved: bool


@dataclass(frozen=True)
class Stats:
    """Counts for an admin's overview; latency percentiles over the last 24 hours."""

    users: int
    messages_today: int
    messages_total: int
    p50_ms: float | None
    p95_ms: float | None
    latency_window_count: int
    feedback_up: int
    feedback_down: int
    pending_review: int


def record(row: Any) -> Record:
    """A row of ``ExchangeRepository.review_rows`` as a JSON-ready dict."""
    d = row._asdict()
    d["created_at"] = d["created_at"].isoformat()
    d["reviewed_at"] = d["reviewed_at"].isoformat() if d["reviewed_at"] else None
    with contextlib.suppress(ValueError):  # otherwise keep the raw text
        d["decode_options"] = json.loads(d["decode_options"] or "{}")
    d["answer"] = d["edited_reply"] or d["reply_text"]
    return d


def describe_filter(flt: ExchangeFilter) -> dict[str, Any]:
    """The fields of ``flt`` that are set, JSON-ready (for the audit and for messages)."""
    out: dict[str, Any] = {}
    for name, value in vars(flt).items():
        if value is None:
            continue
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def tsv_field(text: str) -> str:
    """``text`` as one TSV field: tabs and line breaks become a space."""
    return _TSV_BREAKS.sub(" ", text).strip()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@dataclass
class Export:
    """An export being streamed: iterate for the lines (each ending in a newline); ``written``
    and ``skipped`` (TSV pairs with an empty question or answer) count as it goes."""

    lines: Iterator[str]
    written: int = 0
    skipped: int = 0
    format: str = field(default="tsv")

    def __iter__(self) -> Iterator[str]:
        return self.lines


class Review:
    """Review operations on ``db``; ``on_change`` is called after every committed change,
    ``via`` (``cli``, ``telegram``, ``web``) is recorded in the audit."""

    def __init__(
        self,
        db: Database,
        *,
        on_change: Callable[[], None] | None = None,
        via: str = "cli",
    ) -> None:
        self.db = db
        self.on_change = on_change
        self.via = via

    # ----- reading ------------------------------------------------------------------------------

    def search(
        self,
        flt: ExchangeFilter | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[Record]:
        """A page of exchanges matching ``flt``."""
        with self.db.read() as session:
            rows = ExchangeRepository(session).review_rows(
                flt, limit=limit, offset=offset, newest_first=newest_first
            )
            return [record(r) for r in rows]

    def pending(self, limit: int = 5) -> list[Record]:
        """The newest exchanges still waiting for review."""
        return self.search(ExchangeFilter(review_status=REVIEW_PENDING), limit=limit)

    def count(self, flt: ExchangeFilter | None = None) -> int:
        with self.db.read() as session:
            return ExchangeRepository(session).count(flt)

    def get(self, exchange_id: int) -> Record | None:
        """One exchange, or None."""
        found = self.get_many([exchange_id], strict=False)
        return found[0] if found else None

    def get_many(self, ids: Sequence[int], *, strict: bool = True) -> list[Record]:
        """The exchanges ``ids`` in that order (repeats once); ``strict``: raise
        :class:`UnknownExchanges` if any is missing, else leave the missing out."""
        ids = list(dict.fromkeys(ids))
        with self.db.read() as session:
            repo = ExchangeRepository(session)
            existing = repo.existing_ids(ids)
            if strict and len(existing) < len(ids):
                raise UnknownExchanges([i for i in ids if i not in existing])
            by_id = {r.id: record(r) for r in repo.review_rows(ids=sorted(existing))}
        return [by_id[i] for i in ids if i in by_id]

    def stats(self, now: datetime | None = None) -> Stats:
        """Users, messages today (UTC) and in all, latency, feedback, pending review."""
        now = now or datetime.now(UTC)
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with self.db.read() as s:
            exchanges = ExchangeRepository(s)
            latency = exchanges.latency(ExchangeFilter(since=now - timedelta(days=1)))
            fb = FeedbackRepository(s).counts()
            return Stats(
                users=UserRepository(s).count(),
                messages_today=exchanges.count(ExchangeFilter(since=midnight)),
                messages_total=exchanges.count(),
                p50_ms=latency.p50_ms,
                p95_ms=latency.p95_ms,
                latency_window_count=latency.count,
                feedback_up=fb["up"],
                feedback_down=fb["down"],
                pending_review=exchanges.count(ExchangeFilter(review_status=REVIEW_PENDING)),
            )

    # ----- changing -----------------------------------------------------------------------------

    def set_status(
        self,
        status: str,
        *,
        reviewer: int,
        ids: Sequence[int] | None = None,
        matching: ExchangeFilter | None = None,
        dry_run: bool = False,
    ) -> StatusChange:
        """Mark the exchanges ``ids``, or every one ``matching`` a filter that is not in
        ``status`` yet (their reviewer stays), as ``status``. All or nothing: an unknown id
        raises :class:`UnknownExchanges` and changes nothing."""
        if status not in REVIEW_STATUSES:
            raise ReviewError(f"review status must be one of {', '.join(REVIEW_STATUSES)}")
        if (ids is None) == (matching is None):
            raise ReviewError("give exchange ids or a filter, not both or neither")
        detail: dict[str, Any] = {"via": self.via}
        with self.db.begin() as session:
            repo = ExchangeRepository(session)
            if matching is not None:
                selected = repo.ids_to_change(matching, status)
                detail["filter"] = describe_filter(matching)
            else:
                selected = list(dict.fromkeys(ids or ()))
                existing = repo.existing_ids(selected)
                if len(existing) < len(selected):
                    raise UnknownExchanges([i for i in selected if i not in existing])
            if dry_run or not selected:
                return StatusChange(status, selected, 0, dry_run)
            changed = repo.set_review_status(selected, status, reviewer=reviewer)
            detail.update(count=changed, ids=selected[:MAX_AUDIT_IDS])
            if len(selected) > MAX_AUDIT_IDS:
                detail["ids_truncated"] = True
            AuditRepository(session).record(
                reviewer, f"review_{status}", allowed=True, detail=_json(detail)
            )
        self._changed()
        return StatusChange(status, selected, changed)

    def approve(self, *, reviewer: int, **target: Any) -> StatusChange:
        """``set_status(REVIEW_APPROVED, ...)``: ``ids=`` or ``matching=``, ``dry_run=``."""
        return self.set_status(REVIEW_APPROVED, reviewer=reviewer, **target)

    def reject(self, *, reviewer: int, **target: Any) -> StatusChange:
        return self.set_status(REVIEW_REJECTED, reviewer=reviewer, **target)

    def to_pending(self, *, reviewer: int, **target: Any) -> StatusChange:
        return self.set_status(REVIEW_PENDING, reviewer=reviewer, **target)

    def edit(
        self, exchange_id: int, answer: str | None, *, reviewer: int, approve: bool = True
    ) -> EditResult:
        """Store the answer the bot should have given (used by training and served from the
        next message on) and approve the exchange unless ``approve`` is False. ``answer=None``
        removes the edit (the status stays). A blank answer is refused."""
        if answer is not None:
            answer = answer.strip()
            if not answer:
                raise ReviewError("the answer is empty")
        approve = approve and answer is not None
        with self.db.begin() as session:
            repo = ExchangeRepository(session)
            exchange = repo.get(exchange_id) if repo.existing_ids([exchange_id]) else None
            if exchange is None:
                raise UnknownExchanges([exchange_id])
            previous = exchange.edited_reply
            repo.set_edited_reply(exchange_id, answer, reviewer=reviewer)
            if approve:
                repo.set_review_status(exchange_id, REVIEW_APPROVED, reviewer=reviewer)
            detail = {
                "via": self.via,
                "id": exchange_id,
                "edited_reply": answer,
                "previous": previous,
                "approved": approve,
            }
            AuditRepository(session).record(
                reviewer, "review_edit", allowed=True, detail=_json(detail)
            )
        self._changed()
        return EditResult(exchange_id, answer, previous, approve)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ----- export -------------------------------------------------------------------------------

    def export(self, fmt: str, flt: ExchangeFilter | None = None) -> Export:
        """Stream matching exchanges, oldest first, never all in memory. ``tsv``: lines
        ``question<TAB>answer`` (the corpus format; only approved exchanges unless the filter
        names statuses); ``jsonl``: one record per line, all statuses unless the filter says."""
        if fmt not in ("tsv", "jsonl"):
            raise ReviewError(f"export format must be tsv or jsonl, not {fmt!r}")
        flt = flt or ExchangeFilter()
        if fmt == "tsv" and flt.review_status is None:
            flt = replace(flt, review_status=(REVIEW_APPROVED,))
        export = Export(iter(()), format=fmt)
        export.lines = self._tsv(flt, export) if fmt == "tsv" else self._jsonl(flt, export)
        return export

    def records(self, flt: ExchangeFilter | None = None) -> Iterator[Record]:
        """Every exchange matching ``flt`` as a record, oldest first, streamed."""
        with self.db.read() as session:
            for row in ExchangeRepository(session).review_rows(flt):
                yield record(row)

    def _tsv(self, flt: ExchangeFilter, export: Export) -> Iterator[str]:
        with self.db.read() as session:
            pairs = ExchangeRepository(session).iter_training_pairs(flt, statuses=None)
            for question, answer in pairs:
                q, a = tsv_field(question), tsv_field(answer)
                if not q or not a:
                    export.skipped += 1
                    continue
                export.written += 1
                yield f"{q}\t{a}\n"

    def _jsonl(self, flt: ExchangeFilter, export: Export) -> Iterator[str]:
        for r in self.records(flt):
            export.written += 1
            yield json.dumps(r, ensure_ascii=False) + "\n"
