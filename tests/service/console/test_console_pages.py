"""Console pages in a real headless chromium (tests/browser.py) against a live server on
the conftest bundle: fresh events are marked in a user's history, the filter text area's
JSON errors are caught in the page and the API's filter errors shown, and a filtered
recall on the page is the API's filtered answer."""

from __future__ import annotations

import json
import time

import httpx
from playwright.sync_api import Page, expect

from recall.service.recaller import ServingBundle
from tests.browser import Tab

FAILED_422 = "Failed to load resource: the server responded with a status of 422"
"""What chromium itself logs for a fetch answered 422 (the page did nothing wrong)."""


def rows(page: Page, testid: str) -> list[str]:
    found = page.get_by_test_id(testid).locator("[data-item-id]")
    return [str(found.nth(i).get_attribute("data-item-id")) for i in range(found.count())]


def test_fresh_events_come_first_and_marked(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, bundle = server
    user = bundle.user_ids.ids[7].item()
    items = [bundle.item_ids.ids[i].item() for i in (3, 4)]
    now = time.time()
    events = [
        {"user_id": user, "item_id": i, "timestamp": now - 60 + n} for n, i in enumerate(items)
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 2
    history = client.get(f"/v1/users/{user}/history").json()
    page = tab.page
    page.goto(f"{url}/console#/user/{user}")
    table = page.get_by_test_id("user-history")
    expect(table.locator("tr.fresh")).to_have_count(2)
    expect(table.get_by_test_id("fresh-badge")).to_have_count(2)
    fresh = [str(e["item_id"]) for e in history["fresh_events"]]
    trained = [str(e["item_id"]) for e in history["history"]]
    assert fresh == [str(i) for i in reversed(items)]  # newest first
    assert rows(page, "user-history") == fresh + trained
    # the recall panel says the answer used them
    expect(page.get_by_text("source: user+events, 2 fresh events")).to_be_visible()


def test_a_filter_on_the_page_recalls_what_the_api_recalls(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, bundle = server
    user = bundle.user_ids.ids[2].item()
    schema = client.get("/v1/model").json()["item_attributes"]
    assert schema, "the conftest bundle has item attributes"
    name = next(
        a["name"] for a in schema if a["kind"] in ("categorical", "multi") and a["name"] != "title"
    )
    values = (
        client.get(f"/v1/items/{i.item()}").json()["attributes"].get(name)
        for i in bundle.item_ids.ids[:50]
    )
    value = next(v for v in values if v)
    value = value[0] if isinstance(value, list) else value
    flt = {name: {"any": [value]}}
    page = tab.page
    page.goto(f"{url}/console#/user/{user}")
    expect(page.get_by_test_id("recalled-items").locator("[data-item-id]").first).to_be_visible()
    page.get_by_test_id("k-input").fill("7")
    page.get_by_test_id("filter-input").fill(json.dumps(flt))
    page.get_by_test_id("recall-button").click()
    expect(page.get_by_test_id("recalled-items").locator("[data-item-id]").first).to_be_visible()
    answer = client.post("/v1/recall", json={"user_id": user, "k": 7, "filter": flt}).json()
    assert answer["items"]
    assert rows(page, "recalled-items") == [str(i["item_id"]) for i in answer["items"]]


def test_filter_errors_show_in_the_page(
    tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    url, client, bundle = server
    user = bundle.user_ids.ids[2].item()
    page = tab.page
    page.goto(f"{url}/console#/user/{user}")
    expect(page.get_by_test_id("recalled-items").locator("[data-item-id]").first).to_be_visible()
    before = rows(page, "recalled-items")
    # not JSON: caught in the page, no request, the last answer stays
    page.get_by_test_id("filter-input").fill('{"genres": {')
    page.get_by_test_id("recall-button").click()
    expect(page.get_by_test_id("filter-error")).to_contain_text("filter is not valid JSON")
    assert rows(page, "recalled-items") == before
    # JSON the API rejects: its message in the error box
    bad = {"no_such_attribute": {"any": ["x"]}}
    tab.expected_console_errors.append(FAILED_422)  # chromium logs the 422 fetch itself
    message = client.post("/v1/recall", json={"user_id": user, "filter": bad}).json()["error"]
    page.get_by_test_id("filter-input").fill(json.dumps(bad))
    page.get_by_test_id("recall-button").click()
    expect(page.get_by_test_id("error")).to_contain_text(message["message"])
    expect(page.get_by_test_id("filter-error")).to_have_text("")
