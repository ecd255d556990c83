"""The conversation filters of the console's forms and links (the same ones as
``xianliao review list``), parsed into the storage layer's ``ExchangeFilter``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from xianliao.ops.review import REVIEW_STATUSES, ExchangeFilter

FIELDS = ("user", "chat", "since", "until", "text", "feedback", "status", "source")
FEEDBACK = ("up", "down", "any", "none")
SOURCES = ("telegram", "terminal")


class FilterError(ValueError):
    """A filter value that cannot be used; the message is one line for the page."""


MAX_ID = 2**63 - 1  # Telegram ids fit a BIGINT; a bigger number names nobody


def _int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FilterError(f"{name} must be a number, not {value!r}") from None
    if abs(number) > MAX_ID:
        raise FilterError(f"{name} {value} is out of range")
    return number


def _time(name: str, value: str, *, end: bool) -> datetime:
    """A date (YYYY-MM-DD, whole days in UTC: ``until`` includes that day) or an ISO time."""
    try:
        if len(value) == 10:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        when = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{name} must be a date like 2026-12-01, not {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def values(params: Mapping[str, str]) -> dict[str, str]:
    """The filter fields present in ``params``, stripped, blanks dropped."""
    out = {}
    for name in FIELDS:
        value = (params.get(name) or "").strip()
        if value:
            out[name] = value
    return out


def parse(raw: Mapping[str, str]) -> ExchangeFilter:
    """An ``ExchangeFilter`` from ``values(...)``; raises ``FilterError``."""
    status = raw.get("status")
    if status is not None and status not in REVIEW_STATUSES:
        raise FilterError(f"status must be one of {', '.join(REVIEW_STATUSES)}")
    feedback = raw.get("feedback")
    if feedback is not None and feedback not in FEEDBACK:
        raise FilterError(f"feedback must be one of {', '.join(FEEDBACK)}")
    source = raw.get("source")
    if source is not None and source not in SOURCES:
        raise FilterError(f"source must be one of {', '.join(SOURCES)}")
    return ExchangeFilter(
        user_id=_int("user", raw["user"]) if "user" in raw else None,
        chat_id=_int("chat", raw["chat"]) if "chat" in raw else None,
        since=_time("since", raw["since"], end=False) if "since" in raw else None,
        until=_time("until", raw["until"], end=True) if "until" in raw else None,
        text=raw.get("text"),
        feedback=feedback,
        review_status=status,
        source=source,
    )


def query(raw: Mapping[str, str], **more: object) -> str:
    """A query string of the filter ``raw`` plus ``more`` (for links that keep the filter)."""
    items = {**raw, **{k: str(v) for k, v in more.items() if v is not None}}
    return urlencode(items)
