"""A real headless browser for the console tests: Debian's ``chromium`` driven by the
Playwright sync API (the Python package's node driver talks to that binary; no browser is
downloaded). Every request to a host other than 127.0.0.1 is aborted and recorded, and
console errors and uncaught page errors are collected, so tests can assert there were none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser as PlaywrightBrowser
from playwright.sync_api import ConsoleMessage, Page, Route, ViewportSize, sync_playwright

CHROMIUM = "/usr/bin/chromium"
"""Debian's ``chromium`` package installs the browser here (``.ci/run`` installs it)."""

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
"""Headless, offline-friendly: no sandbox (CI runs as root), no GPU, no background fetches."""

LAPTOP: ViewportSize = {"width": 1366, "height": 850}
"""The viewport tests and screenshots use (CSS pixels)."""

LOCAL_HOST = "127.0.0.1"


def chromium_binary() -> str:
    """The chromium executable; fails the test (not a skip) when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"chromium is not installed at {CHROMIUM}: the console tests run a real browser. "
            "Install Debian's package with `apt-get install -y chromium` (.ci/run does this in CI)."
        )
    return CHROMIUM


TIMEOUT_MS = 10_000
"""How long an expectation waits for the page (ms): generous for a loaded CI machine."""
READ_ONLY_POST = re.compile(r"^http://127\.0\.0\.1:\d+/v1/(recall|items/[^/]+/similar)$")
"""The only POSTs the console may send: questions, never a change (no admin, no event)."""


@dataclass
class Tab:
    """One page plus what it did wrong: ``console_errors`` (console.error texts),
    ``page_errors`` (uncaught exceptions) and ``blocked`` (URLs aborted as non-local)."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, URL) of every request the page made to 127.0.0.1, in order."""
    expected_console_errors: list[str] = field(default_factory=list)
    """Prefixes of console errors a test provokes on purpose (whenever they arrive)."""

    def problems(self) -> list[str]:
        """Everything a clean console page must not produce, one line each."""
        unexpected = [
            text
            for text in self.console_errors
            if not text.startswith(tuple(self.expected_console_errors))
        ]
        return (
            [f"console error: {text}" for text in unexpected]
            + [f"page error: {text}" for text in self.page_errors]
            + [f"request leaving {LOCAL_HOST}: {url}" for url in self.blocked]
        )


class Browser:
    """A headless chromium; :meth:`tab` opens a page in a context of its own."""

    def __init__(self, browser: PlaywrightBrowser) -> None:
        self._browser = browser

    @contextmanager
    def tab(self) -> Iterator[Tab]:
        """A new context (own cookies and storage) with one page at :data:`LAPTOP` size."""
        context = self._browser.new_context(viewport=LAPTOP, service_workers="block")
        page = context.new_page()
        tab = Tab(page)

        def route(route: Route) -> None:
            if urlsplit(route.request.url).hostname == LOCAL_HOST:
                tab.requests.append((route.request.method, route.request.url))
                route.continue_()
            else:
                tab.blocked.append(route.request.url)
                route.abort("blockedbyclient")

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                tab.console_errors.append(f"{message.text} ({message.location.get('url')})")

        context.route("**/*", route)
        page.on("console", console)
        page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        try:
            yield tab
        finally:
            context.close()


@contextmanager
def open_browser() -> Iterator[Browser]:
    """Start chromium (headless, :data:`FLAGS`) until the block ends. Playwright's ``launch``
    gives it a fresh temporary user-data dir, removed on close."""
    binary = chromium_binary()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, headless=True, args=FLAGS)
        try:
            yield Browser(browser)
        finally:
            browser.close()


def run_module(tab: Tab, module: str, script: str, arg: Any) -> Any:
    """``script`` (a JS function body with ``m`` = the exports of the console's
    ``/console/assets/<module>``, and ``arg``) run in ``tab``'s page; its return value."""
    return tab.page.evaluate(
        "async ([module, script, arg]) => {"
        " const m = await import(`/console/assets/${module}`);"
        " return new Function('m', 'arg', script)(m, arg); }",
        [module, script, arg],
    )
