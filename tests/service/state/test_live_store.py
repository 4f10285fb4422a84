"""The state store's live-quality part, one suite over the three backends (a real SQLite
file, a real redis-server, the real Redis Cluster): served lists remembered, replaced and
expired, live counts added atomically with the events they count, summed per (arm,
bundle, bucket) and read back per experiment."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from recall.service.state import Event, LiveCount, ServedList, StateStore
from tests.service.state.test_state import shared_redis, url
from tests.service.state.test_state import with_store as with_any_store

__all__ = ["shared_redis", "url"]

T0 = float(int(time.time()) // 60 * 60)  # a bucket of now: SQLite drops buckets past retention


def with_store(url: str, body: Callable[[StateStore], Awaitable[Any]], **limits: Any) -> Any:
    """test_state's ``with_store`` with reads bounded by 1 s: a remember is bounded as a
    read, and the first call of a loaded machine opens the file or the connection."""
    return with_any_store(url, body, **{"timeout_s": 1.0, **limits})


def served(
    user: int | str, items: tuple[int | str, ...], at: float, arm: str = "control"
) -> ServedList:
    return ServedList(user, "exp-1", arm, "20260101T000000Z-aaaaaa", items, at)


def test_remember_replace_and_read(url: str) -> None:
    now = time.time()
    first = served(7, tuple(range(100)), now - 5)
    again = served(7, (3, "x", 2**62), now, arm="canary")
    other = served("7", ("a",), now)

    async def body(store: StateStore) -> None:
        await store.remember([first])
        assert await store.served([7, "7", 8]) == [first, None, None]
        await store.remember([again, other])  # one call, two users: replaced, added
        assert await store.served([7, "7"]) == [again, other]
        assert [type(i) for i in (await store.served([7]))[0].item_ids] == [int, str, int]
        assert await store.served([]) == []

    with_store(url, body)


def test_a_list_older_than_the_ttl_is_gone(url: str) -> None:
    now = time.time()

    async def body(store: StateStore) -> None:
        await store.remember([served(1, (1,), now - 3), served(2, (2,), now)])
        assert await store.served([1, 2]) == [None, served(2, (2,), now)]

    with_store(url, body, served_ttl_s=2.0)


def test_live_counts_add_up_with_their_events(url: str) -> None:
    one = LiveCount("exp-1", "control", "b1", T0, 3, (1, 2, 3))
    two = LiveCount("exp-1", "control", "b1", T0, 2, (0, 1, 2))
    canary = LiveCount("exp-1", "canary", "b2", T0 + 60, 1, (1, 1, 1))
    none = LiveCount("", "control", "b1", T0, 4, (0, 0, 4))

    async def body(store: StateStore) -> None:
        await store.add([Event(1, 2, T0)], [one, canary])
        await store.add([Event(3, 4, T0, "impression")], [two, none])
        await store.add([], [two])  # counts alone
        got = sorted(await store.live_counts("exp-1"), key=lambda c: c.arm)
        assert got == [canary, LiveCount("exp-1", "control", "b1", T0, 7, (1, 4, 7))]
        assert await store.live_counts("") == [none]
        assert await store.live_counts("exp-2") == []
        assert [e.item_id async for e in store.export()] == [2, 4]

    with_store(url, body)


@pytest.mark.parametrize("users", [1, 300])
def test_remember_many_users_in_one_call(url: str, users: int) -> None:
    now = time.time()
    lists = [served(u, (u, u + 1), now) for u in range(users)]

    async def body(store: StateStore) -> None:
        await store.remember(lists)
        assert await store.served(list(range(users))) == lists

    with_store(url, body)
