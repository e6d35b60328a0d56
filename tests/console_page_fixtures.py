"""Fixtures of the console's page tests (headless Chromium), shared by every module that defines
a module-scoped ``world`` (tests/test_console_support.World): ``server`` serves that world's gateway
with uvicorn, ``browser`` is one Chromium, ``page`` a fresh context whose every request is recorded
(none may leave localhost; no script error). Registered in tests/conftest.py (``pytest_plugins``);
a module's own fixture of the same name wins (tests/test_mllp.py has its own ``server``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_console_support import ServerThread, World, console_app, launch_chromium

ARTIFACTS = Path(os.environ.get("PIVOT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "var" / "test-artifacts"))
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[ServerThread]:
    srv = ServerThread(console_app(world.gw, stream_max_s=5, feeds_ttl_s=0.2)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: ServerThread) -> Iterator[Any]:
    """A fresh context (empty storage) whose every request is recorded; none may leave localhost."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="fr-CA")
    context.set_default_timeout(TIMEOUT_MS)
    urls: list[str] = []
    context.on("request", lambda request: urls.append(request.url))
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    outside = [u for u in urls if not u.startswith(f"{server.base}/")]
    assert urls
    assert not outside, outside
    assert not errors, errors


def open_console(page: Any, server: ServerThread, route: str = "#/clients") -> None:
    """Load a console page and wait until it rendered (``aria-busy`` gone)."""
    page.goto(f"{server.base}/console/{route}")
    page.wait_for_selector("main h1")
    page.wait_for_selector("main:not([aria-busy])")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.joinpath("console").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console" / f"{name}.png"), full_page=True)
