"""recall.service.live_quality: the counting rules and the intervals, against known values
(Wilson at 0/n and n/n, Newcombe's own worked examples) and a hand-computed report."""

from __future__ import annotations

import math

import pytest

from recall.index.experiment import Arm, Experiment
from recall.service.live_quality import count_live, newcombe, report, wilson
from recall.service.state import Event, LiveCount, ServedList

T0 = 1_765_130_000.0


def test_wilson_at_the_edges_and_a_textbook_case() -> None:
    assert wilson(0, 0) is None
    # 0/n and n/n: the interval has one end at the bound, the other at n / (n + z^2)
    rate, low, high = wilson(0, 10)  # type: ignore[misc]
    assert (rate, low) == (0.0, 0.0) and high == pytest.approx(0.27753, abs=1e-5)
    rate, low, high = wilson(10, 10)  # type: ignore[misc]
    assert (rate, high) == (1.0, 1.0) and low == pytest.approx(0.72247, abs=1e-5)
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", 81/263
    rate, low, high = wilson(81, 263)  # type: ignore[misc]
    assert rate == pytest.approx(0.3080, abs=1e-4)
    assert (low, high) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))


def test_newcombe_hybrid_score_matches_the_paper() -> None:
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    d, low, high = newcombe((56, 70), (48, 80))  # type: ignore[misc]
    assert d == pytest.approx(0.2, abs=1e-12)
    assert (low, high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))
    # 10/10 - 0/10: the low end is 1 - sqrt(2) x the Wilson half-width of 10/10
    d, low, high = newcombe((10, 10), (0, 10))  # type: ignore[misc]
    assert (d, high) == (1.0, 1.0)
    assert low == pytest.approx(1 - math.sqrt(2) * (1 - 0.72247), abs=1e-5)
    assert newcombe((1, 2), (0, 0)) is None


def served(user: int, items: list[int], at: float, arm: str = "control") -> ServedList:
    return ServedList(user, "exp1", arm, "b1", tuple(items), at)


def test_count_live_rules() -> None:
    items = list(range(1000, 1100))  # ranks 0..99
    lists = {1: served(1, items, T0), 2: served(2, items, T0, arm="canary")}
    events = [
        Event(1, 1000, T0 + 5),  # rank 0: a hit at 10, 50, 100
        Event(1, 1020, T0 + 6),  # rank 20: hits at 50, 100
        Event(1, 1099, T0 + 7),  # rank 99: a hit at 100
        Event(1, 5, T0 + 8),  # not in the list (e.g. unknown to the bundle): a miss
        Event(1, 1000, T0 + 9, "impression"),  # impressions never count
        Event(1, 1000, T0 - 1),  # before the list was served: not counted
        Event(3, 1000, T0 + 5),  # no served list: not counted
        Event(2, 1009, T0 + 70),  # the canary's list, the next bucket: rank 9
        Event(1, 1000, T0 + 70),  # the same list again, next bucket
    ]
    counts = count_live(events, lists, bucket_s=60)
    bucket = math.floor(T0 / 60) * 60
    assert sorted(counts, key=lambda c: (c.bucket, c.arm)) == [
        LiveCount("exp1", "control", "b1", bucket, 4, (1, 2, 3)),
        LiveCount("exp1", "canary", "b1", bucket + 60, 1, (1, 1, 1)),
        LiveCount("exp1", "control", "b1", bucket + 60, 1, (1, 1, 1)),
    ]


def test_report_numbers_are_the_hand_computation() -> None:
    experiment = Experiment(
        id="20261207T000000Z-abcdef",
        salt="s",
        started_at=T0,
        arms=(Arm(name="canary", bundle_id="20260102T000000Z-cccccc", share=0.1),),
    )
    counts = [
        LiveCount(experiment.id, "control", "b1", T0, 50, (10, 25, 40)),
        LiveCount(experiment.id, "control", "b0", T0 - 60, 30, (2, 5, 10)),
        LiveCount(experiment.id, "canary", "c1", T0, 20, (8, 12, 15)),
        LiveCount(experiment.id, "gone", "x", T0, 5, (5, 5, 5)),  # not an arm: left out
    ]
    body = report(experiment, counts)
    assert body["experiment"] == {
        "id": experiment.id,
        "started_at": T0,
        "arms": [{"name": "canary", "bundle_id": "20260102T000000Z-cccccc", "share": 0.1}],
    }
    assert body["ks"] == [10, 50, 100]
    control, canary = body["arms"]
    assert (control["name"], control["share"], control["events"]) == ("control", 0.9, 80)
    assert control["bundle_ids"] == ["b0", "b1"]  # oldest first
    assert control["hits"] == {"10": 12, "50": 30, "100": 50}
    assert canary["hits"] == {"10": 8, "50": 12, "100": 15} and canary["events"] == 20
    value, low, high = wilson(30, 80)  # type: ignore[misc]
    assert control["hr"]["50"] == {"value": value, "low": low, "high": high}
    diff = {d["k"]: d for d in body["differences"]}
    assert set(diff) == {"10", "50", "100"}
    d, low, high = newcombe((12, 20), (30, 80))  # type: ignore[misc]
    assert diff["50"] == {
        "arm": "canary",
        "vs": "control",
        "k": "50",
        "value": d,
        "low": low,
        "high": high,
    }
    assert [(s["arm"], s["t"], s["events"]) for s in body["series"]] == [
        ("control", T0 - 60, 30),
        ("control", T0, 50),
        ("canary", T0, 20),
    ]


def test_report_without_experiment_or_events() -> None:
    body = report(None, [])
    assert body["experiment"] is None
    (control,) = body["arms"]
    assert control["share"] == 1.0 and control["events"] == 0
    assert control["hr"]["10"] == {"value": None, "low": None, "high": None}
    assert body["differences"] == [] and body["series"] == []
