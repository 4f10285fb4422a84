"""Live recall quality: which events count against which served list, and the numbers of
``GET /v1/experiment`` (HR@K with intervals per arm, the differences between arms, the
series by time bucket). Plain functions, no HTTP and no store.

The rules (docs/experiments.md, "Live quality"): an event counts when it is an
``interaction`` (never an impression) of a user with a served list (the last recall by
that user's id, kept for ``RECALL_SERVED_TTL_S``; an expired list counts nothing) and its
timestamp is not before the list was served (what the user did before seeing it is not
its effect). It counts one live event for the list's experiment, arm and bundle, in the
time bucket of its timestamp, and a hit at each K where the item's rank in the list is
< K. An item the list lacks, also one the arm's bundle does not know, is a miss: the
user engaged with something the arm did not recall. Items are compared as a client spells
them: an arm's bundle may type ids otherwise than control, which types the events
(``"42"`` in the list is the event's ``42``). Several events in one request each count
against the same list.

The intervals treat events as independent trials; repeated events of one user are
correlated, so the true uncertainty is wider when a few users make many events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from recall.index.experiment import CONTROL, Experiment
from recall.index.ids import ExternalId
from recall.service.state import LIVE_KS, Event, LiveCount, ServedList

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""
SERIES_BUCKETS = 1000
"""Most buckets per arm in the series (the latest)."""


def count_live(
    events: Sequence[Event], served: Mapping[ExternalId, ServedList], bucket_s: float
) -> list[LiveCount]:
    """The live counts ``events`` make against their users' ``served`` lists (user id ->
    list, canonical ids; a user missing: no list), one per (experiment, arm, bundle,
    bucket of ``bucket_s`` seconds) touched."""
    totals: dict[tuple[str, str, str, float], list[int]] = {}
    ranks: dict[ExternalId, dict[ExternalId, int]] = {}
    for event in events:
        if event.type != "interaction":
            continue
        served_list = served.get(event.user_id)
        if served_list is None or event.timestamp < served_list.served_at:
            continue
        rank_of = ranks.get(event.user_id)
        if rank_of is None:  # first occurrence: a recall lists an item once
            items = served_list.item_ids
            rank_of = {str(item): r for r, item in reversed(list(enumerate(items)))}
            ranks[event.user_id] = rank_of
        rank = rank_of.get(str(event.item_id), LIVE_KS[-1])  # as spelled: 42 is "42"
        bucket = math.floor(event.timestamp / bucket_s) * bucket_s
        key = (served_list.experiment_id, served_list.arm, served_list.bundle_id, bucket)
        total = totals.setdefault(key, [0] * (1 + len(LIVE_KS)))
        total[0] += 1
        for j, k in enumerate(LIVE_KS):
            total[1 + j] += rank < k
    return [
        LiveCount(experiment_id, arm, bundle_id, bucket, total[0], tuple(total[1:]))
        for (experiment_id, arm, bundle_id, bucket), total in totals.items()
    ]


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float, float] | None:
    """``(rate, low, high)``: ``hits / n`` and its Wilson score interval; None when n is 0."""
    if n <= 0:
        return None
    p = hits / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if hits == 0 else max(0.0, centre - half)  # exact ends, not rounding's
    high = 1.0 if hits == n else min(1.0, centre + half)
    return p, low, high


def newcombe(
    a: tuple[int, int], b: tuple[int, int], z: float = Z95
) -> tuple[float, float, float] | None:
    """``(difference, low, high)`` of the rates ``a`` minus ``b`` (each ``(hits, n)``):
    Newcombe's hybrid score interval (his method 10, from the two Wilson intervals); None
    when either n is 0."""
    one, two = wilson(*a, z=z), wilson(*b, z=z)
    if one is None or two is None:
        return None
    (p1, l1, u1), (p2, l2, u2) = one, two
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def _rate(hits: int, n: int) -> dict[str, float | None]:
    interval = wilson(hits, n)
    if interval is None:
        return {"value": None, "low": None, "high": None}
    value, low, high = interval
    return {"value": value, "low": low, "high": high}


def report(experiment: Experiment | None, counts: Sequence[LiveCount]) -> dict[str, Any]:
    """The body of ``GET /v1/experiment``: ``counts`` (the store's, of ``experiment``; its
    id ``""`` when None) per arm (control first, then the experiment's arms in order),
    the difference of each arm from control at each K, the series by bucket."""
    shares = {CONTROL: 1.0}
    if experiment is not None:
        shares = {CONTROL: round(1.0 - sum(a.share for a in experiment.arms), 12)}
        shares.update({a.name: a.share for a in experiment.arms})
    events = dict.fromkeys(shares, 0)
    hits = {arm: [0] * len(LIVE_KS) for arm in shares}
    bundles: dict[str, dict[str, float]] = {arm: {} for arm in shares}  # id -> first bucket
    buckets: dict[str, dict[float, list[int]]] = {arm: {} for arm in shares}
    for count in counts:
        if count.arm not in shares:
            continue  # not an arm of this experiment
        events[count.arm] += count.events
        seen = bundles[count.arm]
        seen[count.bundle_id] = min(seen.get(count.bundle_id, math.inf), count.bucket)
        bucket = buckets[count.arm].setdefault(count.bucket, [0] * (1 + len(LIVE_KS)))
        bucket[0] += count.events
        for j, value in enumerate(count.hits):
            hits[count.arm][j] += value
            bucket[1 + j] += value
    arms = [
        {
            "name": arm,
            "bundle_ids": sorted(bundles[arm], key=lambda b: (bundles[arm][b], b)),
            "share": share,
            "events": events[arm],
            "hits": {str(k): hits[arm][j] for j, k in enumerate(LIVE_KS)},
            "hr": {str(k): _rate(hits[arm][j], events[arm]) for j, k in enumerate(LIVE_KS)},
        }
        for arm, share in shares.items()
    ]
    differences = []
    for arm in shares:
        if arm == CONTROL:
            continue
        for j, k in enumerate(LIVE_KS):
            diff = newcombe((hits[arm][j], events[arm]), (hits[CONTROL][j], events[CONTROL]))
            ends = dict(zip(("value", "low", "high"), diff or (None, None, None), strict=True))
            differences.append({"arm": arm, "vs": CONTROL, "k": str(k), **ends})
    rows = [
        (t, arm, total)
        for arm in shares
        for t, total in sorted(buckets[arm].items())[-SERIES_BUCKETS:]
    ]
    rows.sort(key=lambda row: row[0])  # stable: arms in order within a bucket
    series = [
        {
            "arm": arm,
            "t": t,
            "events": total[0],
            "hits": {str(k): total[1 + j] for j, k in enumerate(LIVE_KS)},
        }
        for t, arm, total in rows
    ]
    return {
        "experiment": None
        if experiment is None
        else {
            "id": experiment.id,
            "started_at": experiment.started_at,
            "arms": [a.model_dump() for a in experiment.arms],
        },
        "ks": list(LIVE_KS),
        "arms": arms,
        "differences": differences,
        "series": series,
    }
