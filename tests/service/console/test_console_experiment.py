"""The console's Experiment page (``#/experiment``) in a real headless chromium
(tests/browser.py): its curve arithmetic (service/console/experiment.js) on a hand-made
series, and the page against live servers with a real experiment and real events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from recall.cli import main
from recall.index.build import build_index
from recall.index.current import CURRENT
from recall.service.app import create_app
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from tests.browser import TIMEOUT_MS, Tab, run_module
from tests.conftest import PUBLISHED_ID
from tests.index.test_verify import copy_bundle
from tests.index_data import FAST_FLAT, write_dataset_bundle
from tests.live import live_server, settings


def run_js(tab: Tab, script: str, arg: Any) -> Any:
    """``script`` with ``m`` = experiment.js's exports (:func:`tests.browser.run_module`)."""
    return run_module(tab, "experiment.js", script, arg)


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


CONTROL_ID = PUBLISHED_ID  # control is the published test bundle
CANARY_ID = "20260102T000000Z-cccccc"


@pytest.fixture(scope="module")
def experiment_root(
    tmp_path_factory: pytest.TempPathFactory, published_root: Path, synthetic: Dataset,
    small_config: TrainConfig,
) -> Path:  # fmt: skip
    """CURRENT = the conftest bundle; an experiment with CANARY_ID (another random tower:
    other answers) at share 0.5, started by ``recall experiment start``."""
    root = tmp_path_factory.mktemp("experiment-root")
    copy_bundle(published_root, root)
    (root / CURRENT).write_text(f"{CONTROL_ID}\n")
    canary = write_dataset_bundle(root, synthetic, small_config, CANARY_ID, seed=3)
    build_index(canary, FAST_FLAT)
    flags = ["--arm", f"canary={CANARY_ID}", "--share", "0.5", "--salt", "console"]
    assert main(["experiment", "start", str(root), *flags]) == 0
    return root


def recall_then_act(client: httpx.Client, user: int, rank: int | None) -> str:
    """Recall for ``user`` (k=100), then post an interaction with the item at ``rank`` of
    the answer (None: an item it did not return); the answer's arm."""
    answer = client.post("/v1/recall", json={"user_id": user, "k": 100}).json()
    items = [i["item_id"] for i in answer["items"]]
    item = items[rank] if rank is not None else next(i for i in range(1, 10_000) if i not in items)
    event = {"user_id": user, "item_id": item, "type": "interaction"}
    assert client.post("/v1/events", json={"events": [event]}).json()["accepted"] == 1
    return str(answer["arm"])


def pct(value: float) -> str:
    """A rate as the page writes it (dom.js ``pct``)."""
    return f"{value * 100:.1f}%"


def interval_text(hr: dict[str, float | None]) -> str:
    """An HR interval as the page writes it (experiment.js ``interval``)."""
    if hr["value"] is None:
        return "—"
    return f"{pct(hr['value'])} ({pct(hr['low'])}\u2013{pct(hr['high'])})"  # type: ignore[arg-type]


def last_point_title(page: Page, arm: str) -> str:
    points = page.get_by_test_id("experiment-chart").locator(f"circle.arm-{arm}")
    return str(points.last.locator("title").text_content())


def test_the_page_shows_the_experiments_arms_differences_and_curves(
    tab: Tab, experiment_root: Path
) -> None:
    app = create_app(settings(experiment_root, live_bucket_s=1))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        ranks = [0, 5, 30, 70, None]  # hits at 10, 10, 50, 100 and a miss
        for n, user in enumerate(range(1, 41)):
            recall_then_act(client, user, ranks[n % len(ranks)])
            if n == 19:
                time.sleep(1.1)  # a second time bucket (RECALL_LIVE_BUCKET_S=1)
        served = client.get("/v1/experiment").json()
        assert {a["name"] for a in served["arms"]} == {"control", "canary"}
        page = tab.page
        page.goto(f"{url}/console#/experiment")
        expect(page.get_by_test_id("experiment-id")).to_have_text(served["experiment"]["id"])
        arms = page.get_by_test_id("experiment-arms")
        for arm in served["arms"]:
            row = arms.locator(f"tr[data-arm={arm['name']}]")
            expect(row.get_by_test_id("arm-events")).to_have_text(str(arm["events"]))
            for k in ("10", "50", "100"):
                expect(row.locator(f"td[data-k='{k}']")).to_have_text(interval_text(arm["hr"][k]))
            expect(row).to_contain_text(arm["bundle_ids"][0])
        differences = page.get_by_test_id("experiment-differences").locator("tbody tr")
        expect(differences).to_have_count(len(served["differences"]))
        # one point per bucket with events, the last at the arm's whole HR@K
        chart = page.get_by_test_id("experiment-chart")
        for arm in served["arms"]:
            buckets = [s for s in served["series"] if s["arm"] == arm["name"] and s["events"]]
            expect(chart.locator(f"circle.arm-{arm['name']}")).to_have_count(len(buckets))
            hr = arm["hits"]["50"] / arm["events"]
            assert f"HR@50 {pct(hr)} over {arm['events']} events" in last_point_title(
                page, arm["name"]
            )
        page.get_by_test_id("experiment-k").select_option("10")
        control = next(a for a in served["arms"] if a["name"] == "control")
        expect(chart.locator("text.axis-label").last).to_have_text("live HR@10 (%)")
        hr10 = control["hits"]["10"] / control["events"]
        assert f"HR@10 {pct(hr10)}" in last_point_title(page, "control")
        # the next poll shows a new event
        next(u for u in range(41, 400) if recall_then_act(client, u, 0) == "control")
        events = page.get_by_test_id("experiment-arms").locator("tr[data-arm=control]")
        expect(events.get_by_test_id("arm-events")).to_have_text(
            str(control["events"] + 1), timeout=TIMEOUT_MS
        )


def test_with_no_experiment_and_no_events_the_page_says_so(tab: Tab, published_root: Path) -> None:
    with (
        live_server(create_app(settings(published_root))) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        page = tab.page
        page.goto(f"{url}/console#/experiment")
        expect(page.get_by_test_id("experiment-none")).to_be_visible()
        expect(page.get_by_test_id("experiment-no-events")).to_be_visible()
        expect(page.get_by_test_id("experiment-chart-empty")).to_be_visible()
        control = page.get_by_test_id("experiment-arms").locator("tr[data-arm=control]")
        expect(control.get_by_test_id("arm-events")).to_have_text("0")
        expect(page.get_by_text("Difference from control")).to_be_hidden()
        # control's live hit rate alone, once an event counts
        assert recall_then_act(client, 3, 0) == "control"
        expect(control.get_by_test_id("arm-events")).to_have_text("1", timeout=TIMEOUT_MS)
        expect(control.locator("td[data-k='10']")).to_contain_text("100.0%")
        expect(page.get_by_test_id("experiment-chart").locator("circle.arm-control")).to_have_count(
            1
        )
        expect(page.get_by_test_id("experiment-no-events")).to_have_count(0)
