"""docs/state.md's upgrade of one Redis from the key layout before hash tags, run as the
docs print it against a real redis-server: the windows, impressions, retraining log and
availability an older release wrote are all read by this one afterwards.

The older layout is made from data this release writes, each key renamed back to its old
name (the values' formats did not change: only the names did)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis

from recall.service.state import Event, open_store
from tests.redis_server import redis_server

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000.0


def _upgrade_script() -> str:
    """The python block of docs/state.md's "Upgrading one Redis from an older release"."""
    text = (REPO / "docs" / "state.md").read_text()
    section = text.split("### Upgrading one Redis from an older release", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the upgrade section has no python block"
    return "\n".join(line.removeprefix("   ") for line in found.group(1).splitlines())


def _to_old_layout(url: str) -> None:
    """Each key renamed to the name an older release gave it."""
    r = redis.Redis.from_url(url)
    for key in list(r.scan_iter(match=b"recall:*")):
        user = re.fullmatch(rb"recall:\{u:(.*)\}:(r|s)", key)
        if user is not None:
            r.rename(key, b"recall:" + user.group(2) + b":" + user.group(1))
        else:
            old = {b"recall:{log:0}": b"recall:log", b"recall:{avail}": b"recall:avail"}
            r.rename(key, old.get(key, key.replace(b"{avail}", b"avail")))
    assert not [k for k in r.scan_iter(match=b"recall:*") if b"{" in k]


def test_the_documented_upgrade_keeps_every_kind_of_state(tmp_path: Path) -> None:
    shown_at = time.time()
    events = [
        Event(7, 100, T0),
        Event(7, 101, T0 + 1),
        Event("ab}c", "x", T0 + 2),  # a string id, with the tag's closing brace
        Event(7, 102, shown_at, "impression"),
    ]

    async def write(url: str) -> None:
        store = open_store(url)
        try:
            await store.add(events)
            await store.set_availability([100, "gone"], [])
        finally:
            await store.close()

    async def read(url: str) -> tuple[object, ...]:
        store = open_store(url)
        try:
            return (
                await store.recent([7, "ab}c"], after=-math.inf),
                await store.shown([7], since=shown_at - 10),
                await store.availability(),
                [e async for e in store.export()],
            )
        finally:
            await store.close()

    with redis_server(tmp_path / "redis") as server:
        url = server.url()
        asyncio.run(write(url))
        before = asyncio.run(read(url))
        _to_old_layout(url)
        assert asyncio.run(read(url))[0] == [[], []]  # the old names are not read
        done = subprocess.run(
            [sys.executable, "-"],
            input=_upgrade_script(),
            env={**os.environ, "RECALL_STATE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        after = asyncio.run(read(url))
        assert after == before
        recent, shown, (version, disabled), exported = after
        assert recent == [[(100, T0), (101, T0 + 1)], [("x", T0 + 2)]]
        assert shown == [[102]] and version == 1 and disabled == [100, "gone"]
        assert exported == events
        assert redis.Redis.from_url(url).ttl(b"recall:{u:7}:r") > 0  # RENAME kept it
