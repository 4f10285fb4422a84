"""The Live page's arithmetic (service/console/prom.js) run in a real headless chromium
(tests/browser.py) on a live server's real ``/metrics``: the JS parser reads the same
samples as prometheus_client's own parser, and its histogram quantiles are the
linear-in-bucket interpolation of Prometheus's ``histogram_quantile``."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recall.service.recaller import ServingBundle
from tests.browser import Tab, run_module

LATENCY = "recall_http_request_duration_seconds"


def run_prom(tab: Tab, script: str, arg: Any) -> Any:
    """``script`` with ``m`` = prom.js's exports (:func:`tests.browser.run_module`)."""
    return run_module(tab, "prom.js", script, arg)


def reference_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile on cumulative (le, count) buckets, sorted by le."""
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def test_the_js_parser_reads_what_prometheus_client_reads(
    module_tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    _, client, bundle = server
    for user in bundle.user_ids.ids[:5]:
        assert client.post("/v1/recall", json={"user_id": user.item(), "k": 3}).status_code == 200
    assert client.get("/v1/users/no-such-user/vector").status_code == 404
    text = client.get("/metrics").text
    expected = sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )
    parsed = run_prom(module_tab, "return m.parseProm(arg)", text)
    # JSON carries +Inf as null: put it back before comparing
    got = sorted(
        (s["name"], sorted(s["labels"].items()), math.inf if s["value"] is None else s["value"])
        for s in parsed
    )
    assert len(got) > 50
    assert got == expected
    assert any(
        name == "recall_http_requests_total" and ("status", "404") in labels
        for name, labels, _ in got
    )


def test_quantiles_interpolate_in_buckets_like_histogram_quantile(
    module_tab: Tab, server: tuple[str, httpx.Client, ServingBundle]
) -> None:
    _, client, bundle = server
    # a hand-made case: 10 observations in (0.1, 0.2] -> p50 at 0.15, p90 at 0.19
    hand = [[0.1, 0], [0.2, 10], [math.inf, 10]]
    got = run_prom(module_tab, "return [0.5, 0.9].map((q) => m.quantile(q, arg))", hand)
    assert got == pytest.approx([0.15, 0.19])
    assert run_prom(module_tab, "return m.quantile(0.5, arg)", [[0.1, 0], [math.inf, 0]]) is None
    # the real histogram of /v1/recall after traffic, from the page's own bucket summing
    for user in bundle.user_ids.ids[:40]:
        assert client.post("/v1/recall", json={"user_id": user.item(), "k": 5}).status_code == 200
    text = client.get("/metrics").text
    recall_buckets = f"m.buckets(m.parseProm(arg), '{LATENCY}', '/v1/recall')"
    buckets = run_prom(module_tab, f"return {recall_buckets}", text)
    cumulative = [(math.inf if le is None else le, count) for le, count in buckets]
    assert cumulative[-1][1] >= 40
    qs = [0.5, 0.95, 0.99]
    got = run_prom(
        module_tab,
        f"const b = {recall_buckets}; return [0.5, 0.95, 0.99].map((q) => m.quantile(q, b));",
        text,
    )
    assert got == pytest.approx([reference_quantile(q, cumulative) for q in qs])
    assert 0 < got[0] <= got[1] <= got[2] < 10
