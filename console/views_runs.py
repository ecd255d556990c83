"""Training runs (filled in below once ops.runs exists)."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    return []
