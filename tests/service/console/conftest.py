"""Fixtures of the console tests that run the console's own JS modules in a page."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from recall.service.recaller import ServingBundle
from tests.browser import Browser, Tab


@pytest.fixture
def module_tab(browser: Browser, server: tuple[str, httpx.Client, ServingBundle]) -> Iterator[Tab]:
    """A page on the console, so its modules import from the same origin
    (:func:`tests.browser.run_module`); the test fails if it logged an error or reached
    beyond 127.0.0.1."""
    with browser.tab() as opened:
        opened.page.goto(f"{server[0]}/console#/model")
        opened.page.get_by_test_id("bundle-id").wait_for()
        yield opened
    assert opened.problems() == []
