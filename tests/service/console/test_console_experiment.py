"""The console's Experiment page (``#/experiment``) in a real headless chromium
(tests/browser.py): its curve arithmetic (service/console/experiment.js) on a hand-made
series, and the page against live servers with a real experiment and real events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from recall.service.recaller import ServingBundle
from tests.browser import Browser, Tab


@pytest.fixture
def module_tab(browser: Browser, server: tuple[str, httpx.Client, ServingBundle]) -> Iterator[Tab]:
    """A page on the console (so experiment.js imports from the same origin)."""
    with browser.tab() as opened:
        opened.page.goto(f"{server[0]}/console#/model")
        opened.page.get_by_test_id("bundle-id").wait_for()
        yield opened
    assert opened.problems() == []


def run_js(tab: Tab, script: str, arg: Any) -> Any:
    """``script`` (a JS function body with ``m`` = experiment.js's exports and ``arg``)."""
    return tab.page.evaluate(
        "async ([script, arg]) => {"
        " const m = await import('/console/assets/experiment.js');"
        " return new Function('m', 'arg', script)(m, arg); }",
        [script, arg],
    )


def test_the_curves_are_cumulative_hit_rates_in_time_order(module_tab: Tab) -> None:
    series = [  # out of order, two arms, a bucket with no events first
        {"arm": "canary", "t": 120.0, "events": 2, "hits": {"10": 0, "50": 2}},
        {"arm": "control", "t": 60.0, "events": 4, "hits": {"10": 1, "50": 2}},
        {"arm": "control", "t": 0.0, "events": 0, "hits": {"10": 0, "50": 0}},
        {"arm": "canary", "t": 60.0, "events": 2, "hits": {"10": 1, "50": 1}},
        {"arm": "control", "t": 120.0, "events": 6, "hits": {"10": 0, "50": 4}},
    ]
    curves = run_js(
        module_tab, "return m.cumulative(arg, ['control', 'canary', 'idle'], '50');", series
    )
    assert curves == [
        {"arm": "control", "points": [[60.0, 0.5, 4], [120.0, 0.6, 10]]},
        {"arm": "canary", "points": [[60.0, 0.5, 2], [120.0, 0.75, 4]]},
        {"arm": "idle", "points": []},
    ]


@pytest.mark.parametrize(
    ("difference", "verdict"),
    [
        ({"value": 0.05, "low": 0.01, "high": 0.09}, "better"),
        ({"value": -0.05, "low": -0.09, "high": -0.01}, "worse"),
        ({"value": 0.02, "low": -0.01, "high": 0.05}, "not clear yet (the interval holds 0)"),
        ({"value": None, "low": None, "high": None}, "no events yet"),
    ],
)
def test_a_difference_wins_only_when_its_interval_excludes_zero(
    module_tab: Tab, difference: dict[str, float | None], verdict: str
) -> None:
    assert run_js(module_tab, "return m.verdict(arg);", difference) == verdict
