"""The shared state store: Redis through redis-py's asyncio client, for several replicas.

Keys (service/state/redis_client.py, docs/state.md "Key layout"; ids JSON-encoded, so
``7`` and ``"7"`` stay apart and come back typed)::

    recall:{u:<user>}:r   sorted set, score = timestamp, member = <item json>@<timestamp>:
                          the user's last `window` interactions (the same item at another
                          time is another member; an exact repeat is one); expires
                          `retention_s` after the user's last interaction
    recall:{u:<user>}:s   sorted set, score = latest timestamp, member = <item json>:
                          impressions newer than `shown_ttl_s` (trimmed on write, the key
                          expires after it)
    recall:{log:0}        stream, one entry per `add` (field ``e``: the batch as JSON
                          ``[[kind, user, item, ts], ...]``), trimmed to `retention_s` by
                          entry id (arrival time, ``XADD MINID ~``)
    recall:{avail}        set of <item json>: the disabled items (availability)
    recall:{avail}:v      integer, INCR'd in the script call of each change (0: never set)

``add`` is one Lua script call (one round trip, applied whole; a MULTI pipeline of ~3
commands per user cost ~4x the client CPU: redis-py packs and parses every command); a
read is one script call too (``ZRANGEBYSCORE`` per user, server-side). Every call is
bounded (``asyncio.wait_for``): reads by ``timeout_s``, writes, ``ping`` and each page of
``export`` by ``write_timeout_s``; a timeout or a connection error raises
StoreUnavailable. The connection pool reconnects by itself once the server is back (and
redis-py reloads the scripts a restarted server forgot). Durability is the server's: with
``appendonly yes`` and ``appendfsync everysec`` a crash of Redis loses at most about the
last second of writes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from recall.index.ids import ExternalId
from recall.service.state.base import (
    Event,
    EventType,
    StoreLimits,
    StoreUnavailable,
    check_availability,
    check_event,
    check_id,
    check_time,
    id_order,
)
from recall.service.state.redis_client import PREFIX, user_key

T = TypeVar("T")

LOG = PREFIX + b"{log:0}"
DISABLED = PREFIX + b"{avail}"
VERSION = PREFIX + b"{avail}:v"
EXPORT_PAGE = 500  # stream entries (batches) per XRANGE
KINDS: tuple[EventType, ...] = ("interaction", "impression")
UNPACK = 1000
"""Most members one ZADD in the script gets (Lua's unpack() stops at ~8000 values)."""

ADD_SCRIPT = """
-- One add, atomically, in one round trip. KEYS[1] the log stream, then the recent keys,
-- then the shown keys. ARGV: batch, minid, window, keep_s, ttl_s, shown cutoff,
-- number of recent keys, then per key: n, then n (score, member) pairs.
redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[2], '*', 'e', ARGV[1])
local window, n_recent, pos = tonumber(ARGV[3]), tonumber(ARGV[7]), 8
for k = 2, #KEYS do
    local n = tonumber(ARGV[pos])
    local first, last = pos + 1, pos + 2 * n
    if k - 1 <= n_recent then
        redis.call('ZADD', KEYS[k], unpack(ARGV, first, last))
        redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -window - 1)
        redis.call('EXPIRE', KEYS[k], ARGV[4])
    else
        redis.call('ZADD', KEYS[k], 'GT', unpack(ARGV, first, last))
        redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[6])
        redis.call('EXPIRE', KEYS[k], ARGV[5])
    end
    pos = last + 1
end
return #KEYS
"""

AVAILABILITY_SCRIPT = """
-- One availability change, atomically: KEYS[1] the disabled set, KEYS[2] the version.
-- ARGV: number of ids to disable, then those ids, then the ids to enable.
local n_off, chunk = tonumber(ARGV[1]), 1000
for first = 2, n_off + 1, chunk do
    redis.call('SADD', KEYS[1], unpack(ARGV, first, math.min(first + chunk - 1, n_off + 1)))
end
for first = n_off + 2, #ARGV, chunk do
    redis.call('SREM', KEYS[1], unpack(ARGV, first, math.min(first + chunk - 1, #ARGV)))
end
return redis.call('INCR', KEYS[2])
"""

READ_AVAILABILITY_SCRIPT = """
return {redis.call('GET', KEYS[2]) or '0', redis.call('SMEMBERS', KEYS[1])}
"""

READ_SCRIPT = """
local out = {}
for k = 1, #KEYS do
    out[k] = redis.call('ZRANGEBYSCORE', KEYS[k], ARGV[1], '+inf')
end
return out
"""


def _enc(value: ExternalId) -> bytes:
    return orjson.dumps(value)


def _recent_key(user: ExternalId) -> bytes:
    return user_key(user, b"r")


def _shown_key(user: ExternalId) -> bytes:
    return user_key(user, b"s")


class RedisStore:
    """:class:`~recall.service.state.base.StateStore` on the Redis server at ``url``."""

    def __init__(
        self,
        url: str,
        limits: StoreLimits,
    ) -> None:
        self.limits = limits
        # One retry, at once: a pooled connection that died with a restarted server is
        # replaced within the same call. wait_for bounds the whole call either way.
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=limits.write_timeout_s,
            socket_connect_timeout=limits.write_timeout_s,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        self._add_script = self._client.register_script(ADD_SCRIPT)
        self._read_script = self._client.register_script(READ_SCRIPT)
        self._availability_script = self._client.register_script(AVAILABILITY_SCRIPT)
        self._read_availability_script = self._client.register_script(READ_AVAILABILITY_SCRIPT)
        self._closed = False

    async def _bounded(self, call: Awaitable[T], bound: float, op: str) -> T:
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()
            raise StoreUnavailable("the state store is closed")
        try:
            async with asyncio.timeout(bound):  # not wait_for: see StateStore (base.py)
                reply = await call
        except TimeoutError:
            raise StoreUnavailable(f"Redis {op} took longer than {bound:g} s") from None
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"Redis {op} failed: {e}") from e
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py 8.1 returns the reply when a cancel lands after it arrived: the
            # cancel is still pending on the task, so it is raised here (see StateStore)
            raise asyncio.CancelledError
        return reply

    async def add(self, events: Sequence[Event]) -> None:
        rows = [check_event(e) for e in events]
        if not rows:
            return
        now = time.time()
        recent: dict[bytes, dict[bytes, float]] = {}
        shown: dict[bytes, dict[bytes, float]] = {}
        for user, item, ts, kind in rows:
            if kind == "interaction":
                member = _enc(item) + b"@" + repr(ts).encode()
                recent.setdefault(_recent_key(user), {})[member] = ts
            else:
                items = shown.setdefault(_shown_key(user), {})
                member = _enc(item)
                items[member] = max(ts, items.get(member, -math.inf))
        batch = orjson.dumps([[KINDS.index(k), u, i, ts] for u, i, ts, k in rows])
        min_id = max(0, int((now - self.limits.retention_s) * 1000))
        keys: list[bytes] = [LOG]
        args: list[bytes | str | int] = [
            batch,
            min_id,
            self.limits.window,
            math.ceil(self.limits.retention_s),
            math.ceil(self.limits.shown_ttl_s),
            repr(now - self.limits.shown_ttl_s),
            0,  # the number of recent keys, set below
        ]
        n_recent = 0
        for groups in (recent, shown):
            for key, members in groups.items():
                pairs = list(members.items())
                for start in range(0, len(pairs), UNPACK):  # a key may come more than once
                    chunk = pairs[start : start + UNPACK]
                    keys.append(key)
                    args.append(len(chunk))
                    for member, ts in chunk:
                        args += (repr(ts), member)
                    n_recent += groups is recent
        args[6] = n_recent
        await self._bounded(self._add_script(keys, args), self.limits.write_timeout_s, "add")

    async def recent(
        self, user_ids: Sequence[ExternalId], after: float
    ) -> list[list[tuple[ExternalId, float]]]:
        ids = [check_id(u) for u in user_ids]
        if not ids:
            return []
        after = check_time(after)
        low = "-inf" if after == -math.inf else f"({after!r}"
        replies = await self._read([_recent_key(u) for u in ids], low, "recent")
        out = []
        for reply in replies:
            items = []
            for member in reply[-self.limits.window :]:
                item, _, ts = member.rpartition(b"@")  # the exact repr of the score
                items.append((orjson.loads(item), float(ts)))
            out.append(items)
        return out

    async def shown(self, user_ids: Sequence[ExternalId], since: float) -> list[list[ExternalId]]:
        ids = [check_id(u) for u in user_ids]
        if not ids:
            return []
        # exact TTL, trimmed or not
        since = max(check_time(since), time.time() - self.limits.shown_ttl_s)
        replies = await self._read([_shown_key(u) for u in ids], repr(since), "shown")
        return [[orjson.loads(member) for member in reply] for reply in replies]

    async def _read(self, keys: list[bytes], low: str, op: str) -> list[list[bytes]]:
        """Per key, the members scored >= ``low`` (``(x``: > x), oldest first: one script
        call (a pipeline costs redis-py's per-command overhead per user)."""
        reply = await self._bounded(self._read_script(keys, [low]), self.limits.timeout_s, op)
        return cast(list[list[bytes]], reply)

    async def export(self, since: float | None = None) -> AsyncIterator[Event]:
        # Exact retention whenever the stream was trimmed: entry ids are arrival times (ms).
        start = str(max(0, int((time.time() - self.limits.retention_s) * 1000)))
        while True:
            reply = await self._bounded(
                self._client.xrange(LOG, min=start, max="+", count=EXPORT_PAGE),
                self.limits.write_timeout_s,
                "export",
            )
            page = cast(list[tuple[bytes, dict[bytes, bytes]]], reply or [])
            for _, fields in page:
                for kind, user, item, ts in orjson.loads(fields[b"e"]):
                    if since is None or ts >= since:
                        yield Event(user, item, ts, KINDS[kind])
            if len(page) < EXPORT_PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def set_availability(
        self, disable: Sequence[ExternalId], enable: Sequence[ExternalId]
    ) -> int:
        off, on = check_availability(disable, enable)
        if not off and not on:
            return await self.availability_version()
        args: list[bytes | int] = [len(off), *map(_enc, off), *map(_enc, on)]
        reply = await self._bounded(
            self._availability_script([DISABLED, VERSION], args),
            self.limits.write_timeout_s,
            "set_availability",
        )
        return int(cast(int, reply))

    async def availability(self) -> tuple[int, list[ExternalId]]:
        reply = await self._bounded(
            self._read_availability_script([DISABLED, VERSION], []),
            self.limits.write_timeout_s,
            "availability",
        )
        version, members = cast(tuple[bytes, list[bytes]], reply)
        items: list[ExternalId] = [orjson.loads(m) for m in members]
        return int(version), sorted(items, key=id_order)

    async def availability_version(self) -> int:
        reply = await self._bounded(
            self._client.get(VERSION), self.limits.write_timeout_s, "availability_version"
        )
        return 0 if reply is None else int(cast(bytes, reply))

    async def ping(self) -> None:
        await self._bounded(self._client.ping(), self.limits.write_timeout_s, "ping")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()
