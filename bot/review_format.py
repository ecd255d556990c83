"""How ``xianliao review`` shows exchanges on a terminal: a one-line-per-exchange table and the
full view of ``show``. Logged text is a stranger's: control characters are shown as escapes."""

from __future__ import annotations

import unicodedata
from typing import Any, TextIO


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


def print_table(records: list[dict[str, Any]], out: TextIO) -> None:
    rows = [_table_cells(r) for r in records]
    widths = [
        w or max([_width(title)] + [_width(row[i]) for row in rows])
        for i, (title, w) in enumerate(_COLUMNS)
    ]
    lines = [[title for title, _ in _COLUMNS], *rows]
    for cells in lines:
        print("  ".join(_fit(c, w) for c, w in zip(cells, widths, strict=True)).rstrip(), file=out)


def print_full(records: list[dict[str, Any]], out: TextIO) -> None:
    """Every field of each record, full text (tabs and line breaks kept)."""
    for n, record in enumerate(records):
        r = {k: _visible(v, keep="\n\t") if isinstance(v, str) else v for k, v in record.items()}
        if n:
            print(file=out)
        user = f"{r['user_id']}" + (f" (@{r['username']})" if r["username"] else "")
        print(
            f"#{r['id']}  {r['created_at']}  {r['source']}  user {user}  chat {r['chat_id']}",
            file=out,
        )
        status = f"  status:   {r['review_status']}"
        if r["reviewed_at"]:
            status += f" (by {r['reviewed_by']} at {r['reviewed_at']})"
        print(status, file=out)
        print(f"  feedback: +{r['feedback_up']} -{r['feedback_down']}", file=out)
        print(f"  model:    {r['model_version']}  {r['latency_ms']:.0f} ms", file=out)
        print(f"  question: {r['user_text']}", file=out)
        print(f"  reply:    {r['reply_text']}", file=out)
        if r["edited_reply"]:
            print(f"  edited:   {r['edited_reply']}", file=out)
