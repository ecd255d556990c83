"""Fixtures for the console tests (``pytest_plugins = ["console_fixtures"]``): the database,
the app, the server, and Debian's chromium driven by Playwright (skipped with a reason where
either is missing, unless XIANLIAO_REQUIRE_BROWSER=1, as CI sets: then they fail)."""

from __future__ import annotations

import os
import shutil

import pytest
from console_helpers import Shots, make_settings, seed, serve

from xianliao.storage.database import Database


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path}/console.db")
    seed(database)
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path, db):
    return make_settings(tmp_path)


@pytest.fixture
def app(settings, db):
    from xianliao.console.app import create_app

    return create_app(settings, db)


@pytest.fixture
def server(settings, db):
    with serve(settings, db) as url:
        yield url


def _no_browser(reason: str):  # noqa: ANN202
    if os.environ.get("XIANLIAO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required here, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium():
    """A headless chromium (Debian's package) under Playwright. Per module, not per session:
    Playwright's sync API keeps an event loop running in the main thread while it is open, and
    other tests call asyncio.run."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _no_browser("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, server, tmp_path):
    """A fresh browser context (no cookies) on the console; ``page.shot(name)`` screenshots."""
    context = chromium.new_context(base_url=server, viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.shot = Shots(pg, tmp_path / "screenshots")
    yield pg
    context.close()
