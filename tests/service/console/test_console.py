"""The console (``GET /console``) in a real headless chromium (tests/browser.py) against a
live server on the conftest bundle (item attributes, a v2 history): every page loads with
no console error and no request leaving 127.0.0.1, and what the pages show equals what the
public HTTP API answers for the same question."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx
from playwright.sync_api import Locator, Page, expect

from recall.service.recaller import ServingBundle
from tests.browser import TIMEOUT_MS, Tab

POSITIVE = re.compile(r"(?<![\d.])(?:[1-9]\d*(?:\.\d+)?|0\.\d*[1-9]\d*)")
"""A number above zero somewhere in a text ("12.5 req/s", "0.4/s"; not "0" or "0.0")."""
FAILED_404 = "Failed to load resource: the server responded with a status of 404"
"""What chromium itself logs for a fetch answered 404 (the page did nothing wrong)."""


def element(page: Page, name: str) -> Locator:
    """The element with ``data-testid=name``."""
    return page.get_by_test_id(name)


def row_ids(container: Locator) -> list[str]:
    """The ``data-item-id`` of every row in ``container``, in page order."""
    rows = container.locator("[data-item-id]")
    return [str(rows.nth(i).get_attribute("data-item-id")) for i in range(rows.count())]


def ids_of(answer: dict[str, Any]) -> list[str]:
    """The item ids of a recall/similar answer, as the page writes them (strings)."""
    return [str(item["item_id"]) for item in answer["items"]]


def shows_the_apis_recall(
    page: Page, client: httpx.Client, query: dict[str, Any]
) -> dict[str, Any]:
    """Once the page shows as many recalled items as its k asks, they are the API's answer
    to ``query`` with the page's k and exclude_seen; that answer."""
    recalled = element(page, "recalled-items").locator("[data-item-id]")
    k = int(element(page, "k-input").input_value())
    expect(recalled).to_have_count(k)
    options = {"k": k, "exclude_seen": element(page, "exclude-seen").is_checked()}
    expected: dict[str, Any] = client.post("/v1/recall", json={**query, **options}).json()
    assert row_ids(element(page, "recalled-items")) == ids_of(expected)
    return expected


def open_console(tab: Tab, url: str, route: str) -> Page:
    tab.page.goto(f"{url}/console#{route}")
    return tab.page


def test_the_console_loads_offline_with_the_served_bundle(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, _ = server
    page = open_console(tab, url, "/model")
    bundle_id = client.get("/v1/model").json()["bundle_id"]
    expect(element(page, "bundle-id")).to_contain_text(bundle_id)
    page.wait_for_load_state("networkidle")


def test_the_model_page_plots_one_point_per_epoch(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, _, bundle = server
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    epochs = manifest["trainer"]["metrics"]["epochs"]
    assert len(epochs) >= 2
    page = open_console(tab, url, "/model")
    curve = element(page, "training-curve")
    expect(curve).to_be_visible()
    assert curve.evaluate("node => node.tagName.toLowerCase()") == "svg"
    expect(curve.locator("circle.point")).to_have_count(len(epochs))


def test_a_typed_user_id_shows_history_and_the_apis_recall(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, bundle = server
    user_id = bundle.user_ids.ids[3].item()
    page = open_console(tab, url, "/user")
    element(page, "user-id-input").fill(str(user_id))
    element(page, "user-id-input").press("Enter")
    expect(page).to_have_url(f"{url}/console#/user/{user_id}")
    history = client.get(f"/v1/users/{user_id}/history", params={"limit": 50}).json()
    assert history["known"] and history["history"]
    rows = element(page, "user-history").locator("[data-item-id]")
    expect(rows).to_have_count(len(history["fresh_events"]) + len(history["history"]))
    assert row_ids(element(page, "user-history")) == [
        str(h["item_id"]) for h in history["fresh_events"] + history["history"]
    ]
    shows_the_apis_recall(page, client, {"user_id": user_id})
    # other options: the page asks again, still the API's answer
    element(page, "k-input").fill("7")
    element(page, "exclude-seen").uncheck()
    recalled = element(page, "recalled-items").locator("[data-item-id]")
    expect(recalled).to_have_count(7)
    expected = client.post("/v1/recall", json={"user_id": user_id, "k": 7, "exclude_seen": False})
    expect(recalled.first).to_have_attribute("data-item-id", ids_of(expected.json())[0])
    assert row_ids(element(page, "recalled-items")) == ids_of(expected.json())


def test_the_similar_items_link_shows_the_apis_similar_items(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, bundle = server
    user_id = bundle.user_ids.ids[3].item()
    page = open_console(tab, url, f"/user/{user_id}")
    first = element(page, "recalled-items").locator("[data-item-id]").first
    expect(first).to_be_visible()
    item_id = first.get_attribute("data-item-id")
    first.get_by_test_id("similar-link").click()
    expect(page).to_have_url(f"{url}/console#/item/{item_id}")
    rows = element(page, "recalled-items").locator("[data-item-id]")
    k = int(element(page, "k-input").input_value())
    expect(rows).to_have_count(k)
    expected = client.post(f"/v1/items/{item_id}/similar", json={"k": k}).json()
    assert row_ids(element(page, "recalled-items")) == ids_of(expected)
    assert item_id not in row_ids(element(page, "recalled-items"))


def test_a_bad_user_id_shows_the_apis_error_message(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, _ = server
    page = open_console(tab, url, "/user")
    # chromium logs each 404 fetch itself (history and recall: they may arrive late)
    tab.expected_console_errors.append(FAILED_404)
    bad = "no-such-user-xyz"
    element(page, "user-id-input").fill(bad)
    element(page, "user-id-input").press("Enter")
    answer = client.get(f"/v1/users/{bad}/history")
    assert answer.status_code == 404
    expect(element(page, "error")).to_contain_text(answer.json()["error"]["message"])


def test_the_live_page_shows_a_request_rate_after_traffic(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, _, bundle = server
    page = open_console(tab, url, "/live")
    recall_rate = element(page, "live-rps").locator("tr[data-route='/v1/recall'] td").nth(1)
    user_id = bundle.user_ids.ids[1].item()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=url) as own:
            while not stop.is_set():
                own.post("/v1/recall", json={"user_id": user_id, "k": 5}).raise_for_status()
                time.sleep(0.01)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:  # two polls of /metrics 2.5 s apart, with recall requests between them
        expect(recall_rate).to_have_text(POSITIVE, timeout=3 * TIMEOUT_MS)
    finally:
        stop.set()
        thread.join()
    assert float(recall_rate.inner_text()) > 0


def test_the_live_page_shows_why_metrics_failed(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    """/metrics answered 503, then unreachable: each poll's failure is shown in #error."""
    url, _, _ = server
    page = tab.page
    tab.expected_console_errors.append(
        "Failed to load resource: the server responded with a status of 503"
    )
    page.route("**/metrics", lambda route: route.fulfill(status=503, body="down"))
    open_console(tab, url, "/live")
    expect(element(page, "error")).to_have_text("/metrics answered 503")
    tab.expected_console_errors.append("Failed to load resource: net::")
    page.unroute("**/metrics")
    page.route("**/metrics", lambda route: route.abort())
    expect(element(page, "error")).to_contain_text(
        "network error calling /metrics: ", timeout=3 * TIMEOUT_MS
    )


def test_the_new_user_builder_recalls_for_the_picked_items(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, bundle = server
    picked = [bundle.item_ids.ids[i].item() for i in (10, 20)]
    page = open_console(tab, url, "/user")
    for item_id in picked:
        title = client.get(f"/v1/items/{item_id}").json()["attributes"]["title"]
        element(page, "item-search").fill(title)
        element(page, "item-search").press("Enter")
        element(page, "search-results").locator(f"[data-item-id='{item_id}']").click()
    expect(element(page, "picked-items").locator("[data-item-id]")).to_have_count(2)
    assert shows_the_apis_recall(page, client, {"history": picked})["source"] == "history"
