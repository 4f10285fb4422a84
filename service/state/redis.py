"""The shared state store: one Redis server or a Redis Cluster, through redis-py's asyncio
clients (:func:`~recall.service.state.redis_client.connect`), for several replicas.

Keys (service/state/redis_client.py, docs/state.md "Key layout"; ids JSON-encoded, so
``7`` and ``"7"`` stay apart and come back typed)::

    recall:{u:<user>}:r   sorted set, score = timestamp, member = <item json>@<timestamp>:
                          the user's last `window` interactions (the same item at another
                          time is another member; an exact repeat is one); expires
                          `retention_s` after the user's last interaction
    recall:{u:<user>}:s   sorted set, score = latest timestamp, member = <item json>:
                          impressions newer than `shown_ttl_s` (trimmed on write, the key
                          expires after it)
    recall:{log:<n>}      streams, one entry per `add` (field ``e``: the batch as JSON
                          ``[[kind, user, item, ts], ...]``), trimmed to `retention_s` by
                          entry id (arrival time, ``XADD MINID ~``); one (n = 0) on a
                          server, LOG_BUCKETS on a cluster
    recall:{avail}        set of <item json>: the disabled items (availability)
    recall:{avail}:v      integer, INCR'd in the script call of each change (0: never set)
    recall:{u:<user>}:served  string, served.py's JSON: the user's last served list (SET EX
                          `served_ttl_s`)
    recall:{live:<experiment id>}  hash, field ``[arm, bundle, bucket, n]`` (JSON; n: 0 for
                          events, 1.. for hits at LIVE_KS) -> count (HINCRBY); expires
                          `retention_s` after its last count. One hash per experiment: one
                          slot, so a count is one command and ``live_counts`` one HGETALL
                          (a hot key on a cluster: every count of an experiment goes to one
                          master, a few HINCRBYs per events request)

**One server**: ``add`` is one Lua script call over the log and every user's keys (one round
trip, applied whole; a MULTI pipeline of ~3 commands per user cost ~4x the client CPU:
redis-py packs and parses every command); a read is one script call too (``ZRANGEBYSCORE``
per user, server-side).

**A cluster** refuses a script whose keys are in several slots, so every script call is
one user's (their ``{u:...}`` keys), and a call's commands go in one cluster pipeline,
which redis-py groups by node and sends to the nodes concurrently: an ``add`` or a read of
several users is one round trip per node. An ``add`` writes the users' keys first, then,
once they all are, the batch to the retraining log and the live counts (concurrently), so
a refused add leaves nothing in the log and a retry with the same timestamps stores every
event once (an exact repeat is kept once in a window): an ``add`` that raised may have
stored some users' windows, never the log entry. The store instance appends its batches
to one log bucket of its own (picked at random when it opens, so writers spread over the
masters); a connection error on its bucket moves the writer to a bucket on another
master, and the entry is written there in the same call. The live counts of an
experiment are one hash, on one master: when it is down the add still stores the events
and answers that the counts were not kept (``add`` returns False), rather than refusing
events over a statistic. ``export`` merges the buckets by entry id (arrival time). After
the writes, ``WAIT <replicas> <ms>`` on each node written (``?wait_replicas=1&wait_ms=100``
in the URL, the default): the add returns once a replica has the events or the wait
passed (docs/state.md, "Durability").

Every call is bounded (``asyncio.timeout``): reads by ``timeout_s``, writes, ``ping`` and
each page of ``export`` by ``write_timeout_s``; a timeout or a connection error raises
StoreUnavailable. The client reconnects by itself once the server is back (a cluster
client reads the slot map again after a failover; scripts a new master does not know are
loaded again). Durability is the server's: with ``appendonly yes`` and ``appendfsync
everysec`` a crash of Redis loses at most about the last second of writes.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, TypeVar, cast

import orjson
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from recall.index.ids import ExternalId
from recall.service.state import served as served_codec
from recall.service.state.base import (
    LIVE_KS,
    Event,
    EventType,
    LiveCount,
    ServedList,
    StoreLimits,
    StoreTimeout,
    StoreUnavailable,
    check_availability,
    check_event,
    check_id,
    check_time,
    id_order,
)
from recall.service.state.redis_client import (
    PREFIX,
    connect,
    is_cluster_url,
    parse_cluster_url,
    user_key,
)

T = TypeVar("T")

LOG_BUCKETS = 16
"""Log streams on a cluster: their 16 slots spread over the masters (5/5/6 of them on a
three-master cluster split evenly), so up to 16 masters take log writes."""
DISABLED = PREFIX + b"{avail}"
VERSION = PREFIX + b"{avail}:v"
EXPORT_PAGE = 500  # stream entries (batches) per XRANGE
KINDS: tuple[EventType, ...] = ("interaction", "impression")
UNPACK = 1000
"""Most members one ZADD in the script gets (Lua's unpack() stops at ~8000 values)."""
STORE_ERRORS = (RedisError, RedisClusterException, OSError)

ADD_SCRIPT = """
-- One add, atomically, in one round trip. KEYS: the log stream when ARGV[1] (the batch) is
-- not empty, then users' keys. ARGV: batch, minid, window, keep_s, ttl_s, shown cutoff, then
-- per user key: 'r' (recent) or 's' (shown), n, then n (score, member) pairs.
local first_key, pos, window = 1, 7, tonumber(ARGV[3])
if ARGV[1] ~= '' then
    redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[2], '*', 'e', ARGV[1])
    first_key = 2
end
for k = first_key, #KEYS do
    local kind, n = ARGV[pos], tonumber(ARGV[pos + 1])
    local first, last = pos + 2, pos + 1 + 2 * n
    if kind == 'r' then
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


def live_key(experiment_id: str) -> bytes:
    """``recall:{live:<experiment id>}``: the live counts of one experiment (``""``: none)."""
    return PREFIX + b"{live:" + experiment_id.encode() + b"}"


def _live_increments(live: Sequence[LiveCount]) -> dict[bytes, dict[bytes, int]]:
    """Per live hash, its fields' increments (zero increments left out)."""
    out: dict[bytes, dict[bytes, int]] = {}
    for count in live:
        fields = out.setdefault(live_key(count.experiment_id), {})
        for n, value in enumerate((count.events, *count.hits)):
            if value:
                field = orjson.dumps([count.arm, count.bundle_id, count.bucket, n])
                fields[field] = fields.get(field, 0) + value
    return out


def log_key(bucket: int) -> bytes:
    """``recall:{log:<bucket>}``: one stream of the retraining log."""
    return PREFIX + b"{log:%d}" % bucket


UserWrites = list[tuple[bytes, bytes, list[tuple[bytes, float]]]]
"""One user's part of an add: ``(key, b"r" | b"s", [(member, score), ...])`` chunks."""


def _script_call(
    keys: list[bytes], header: list[bytes | str | int], users: Iterable[UserWrites]
) -> tuple[list[bytes], list[bytes | str | int]]:
    """KEYS and ARGV of one ADD_SCRIPT call: ``keys`` (the log, or none), then every chunk of
    ``users``' writes."""
    keys, args = list(keys), list(header)
    for user_writes in users:
        for key, name, pairs in user_writes:
            keys.append(key)
            args += (name, len(pairs))
            for member, ts in pairs:
                args += (repr(ts), member)
    return keys, args


class RedisStore:
    """:class:`~recall.service.state.base.StateStore` on the Redis server or Redis Cluster at
    ``url``."""

    def __init__(self, url: str, limits: StoreLimits) -> None:
        self.limits = limits
        self._client = connect(url, timeout_s=limits.write_timeout_s)
        self._cluster = isinstance(self._client, RedisCluster)
        self._buckets = LOG_BUCKETS if self._cluster else 1
        self._bucket = random.randrange(self._buckets)  # this writer's log stream
        parsed = parse_cluster_url(url) if is_cluster_url(url) else None
        self._wait = (parsed.wait_replicas, parsed.wait_ms) if parsed else (0, 0)
        self._add_script = self._client.register_script(ADD_SCRIPT)
        self._read_script = self._client.register_script(READ_SCRIPT)
        self._availability_script = self._client.register_script(AVAILABILITY_SCRIPT)
        self._read_availability_script = self._client.register_script(READ_AVAILABILITY_SCRIPT)
        self._closed = False

    @property
    def cluster(self) -> bool:
        """Whether this store is a Redis Cluster: a read of several users may then fail
        for some of them alone (one node down fails the whole pipeline)."""
        return self._cluster

    async def _bounded(self, call: Awaitable[T], bound: float, op: str) -> T:
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()
            raise StoreUnavailable("the state store is closed")
        try:
            async with asyncio.timeout(bound):  # not wait_for: see StateStore (base.py)
                reply = await call
        except TimeoutError:
            raise StoreTimeout(f"Redis {op} took longer than {bound:g} s") from None
        except STORE_ERRORS as e:
            raise StoreUnavailable(f"Redis {op} failed: {e}") from e
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py 8.1 returns the reply when a cancel lands after it arrived: the
            # cancel is still pending on the task, so it is raised here (see StateStore)
            raise asyncio.CancelledError
        return reply

    async def add(self, events: Sequence[Event], live: Sequence[LiveCount] = ()) -> bool:
        rows = [check_event(e) for e in events]
        if not rows:
            if live:
                await self._bounded(self._count(live), self.limits.write_timeout_s, "add")
            return True
        now = time.time()
        recent: dict[ExternalId, dict[bytes, float]] = {}
        shown: dict[ExternalId, dict[bytes, float]] = {}
        for user, item, ts, kind in rows:
            if kind == "interaction":
                recent.setdefault(user, {})[_enc(item) + b"@" + repr(ts).encode()] = ts
            else:
                items = shown.setdefault(user, {})
                member = _enc(item)
                items[member] = max(ts, items.get(member, -math.inf))
        writes: dict[ExternalId, UserWrites] = {}
        for name, groups in ((b"r", recent), (b"s", shown)):
            for user, members in groups.items():
                key, pairs = user_key(user, name), list(members.items())
                for start in range(0, len(pairs), UNPACK):  # a key may come more than once
                    writes.setdefault(user, []).append((key, name, pairs[start : start + UNPACK]))
        batch = orjson.dumps([[KINDS.index(k), u, i, ts] for u, i, ts, k in rows])
        header: list[bytes | str | int] = [
            b"",  # the batch, when this call also writes the log
            max(0, int((now - self.limits.retention_s) * 1000)),  # the log's MINID
            self.limits.window,
            math.ceil(self.limits.retention_s),
            math.ceil(self.limits.shown_ttl_s),
            repr(now - self.limits.shown_ttl_s),
        ]
        if self._cluster:
            return await self._bounded(
                self._add_per_user(batch, header, writes, live), self.limits.write_timeout_s, "add"
            )
        keys, args = _script_call([log_key(0)], [batch, *header[1:]], writes.values())
        call = self._add_script(keys, args) if not live else self._add_counted(keys, args, live)
        await self._bounded(call, self.limits.write_timeout_s, "add")
        return True

    async def _add_counted(
        self, keys: list[bytes], args: list[bytes | str | int], live: Sequence[LiveCount]
    ) -> None:
        """One server: the add script and the live counts in one MULTI/EXEC (one round
        trip, applied whole)."""
        pipe = self._client.pipeline(transaction=True)
        await self._add_script(keys, args, client=pipe)  # type: ignore[arg-type]
        self._queue_counts(pipe, live)
        await pipe.execute()

    async def _count(self, live: Sequence[LiveCount]) -> None:
        """The live counts alone (an add without events; on a cluster, beside the users')."""
        pipe = await self._pipeline() if self._cluster else self._client.pipeline()
        keys = self._queue_counts(pipe, live)
        if self._cluster:
            self._wait_for_replicas(pipe, keys)
        await pipe.execute()

    def _queue_counts(self, pipe: Any, live: Sequence[LiveCount]) -> list[bytes]:
        """Queue the HINCRBYs of ``live`` and each hash's EXPIRE on ``pipe``; the keys."""
        increments = _live_increments(live)
        for key, fields in increments.items():
            for field, value in fields.items():
                pipe.hincrby(key, field, value)
            pipe.expire(key, math.ceil(self.limits.retention_s))
        return list(increments)

    async def _add_per_user(
        self,
        batch: bytes,
        header: list[bytes | str | int],
        writes: dict[ExternalId, UserWrites],
        live: Sequence[LiveCount],
    ) -> bool:
        """The cluster's add: a script call per user in one pipeline (a round trip per
        node); once every user's is applied, the log entry in this writer's bucket beside
        the live counts (their hash's node); each pipeline then WAITs on its nodes. Whether
        the live counts were stored (a failure of theirs alone fails nothing else)."""
        calls = [_script_call([], header, [user_writes]) for user_writes in writes.values()]
        await self._add_users(calls)
        if not live:
            await self._append_log(batch, header[1])
            return True
        logged, counted = await asyncio.gather(
            self._append_log(batch, header[1]), self._count(live), return_exceptions=True
        )
        if isinstance(logged, BaseException):
            raise logged
        if isinstance(counted, STORE_ERRORS):
            return False
        if isinstance(counted, BaseException):
            raise counted
        return True

    async def _add_users(self, calls: list[tuple[list[bytes], list[bytes | str | int]]]) -> None:
        replies = await self._run(calls)
        missing = [calls[i] for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # a new master (a failover) or a flushed script cache
            await cast(RedisCluster, self._client).script_load(ADD_SCRIPT)
            replies = await self._run(missing)
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed

    async def _run(self, calls: list[tuple[list[bytes], list[bytes | str | int]]]) -> list[Any]:
        """``calls`` of the add script in one cluster pipeline, then WAIT on the nodes
        written; every reply, errors as values."""
        pipe = await self._pipeline()
        for keys, args in calls:
            pipe.evalsha(self._add_script.sha, len(keys), *keys, *args)
        self._wait_for_replicas(pipe, [keys[0] for keys, _ in calls])
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _append_log(self, batch: bytes, min_id: object) -> None:
        """The batch as one entry of this writer's log bucket. A failure moves the writer
        to a bucket on another master (this one may be down); after a connection error
        (the master is gone, or the connection broke) the entry is sent there at once,
        which risks no more than the client's own retry of a refused add would: a second
        entry when the first had been applied after all. Other failures are raised."""
        for attempt in range(2):
            log = log_key(self._bucket)
            try:
                await self._xadd(log, batch, min_id)
                return
            except BaseException as e:
                self._bucket = self._bucket_elsewhere(log)
                if attempt or not isinstance(e, RedisConnectionError):
                    raise

    async def _xadd(self, log: bytes, batch: bytes, min_id: object) -> None:
        """The batch as one entry of the stream ``log``, then WAIT on its node."""
        pipe = await self._pipeline()
        pipe.xadd(log, {b"e": batch}, minid=cast(int, min_id), approximate=True)
        self._wait_for_replicas(pipe, [log])
        await pipe.execute()

    def _bucket_elsewhere(self, log: bytes) -> int:
        """The next bucket after this writer's whose slot another master serves."""
        client = cast(RedisCluster, self._client)
        try:
            failed = client.get_node_from_key(cast(str, log))
            for step in range(1, self._buckets):
                bucket = (self._bucket + step) % self._buckets
                if client.get_node_from_key(cast(str, log_key(bucket))) != failed:
                    return bucket
        except STORE_ERRORS:  # the slot map is being read again: just the next one
            pass
        return (self._bucket + 1) % self._buckets

    async def _pipeline(self) -> Any:
        client = cast(RedisCluster, self._client)
        await client.initialize()  # the slot map, for the WAITs (a no-op once read)
        return client.pipeline()

    def _wait_for_replicas(self, pipe: Any, keys: list[bytes]) -> None:
        """Queue ``WAIT replicas ms`` on each node that serves one of ``keys`` (it follows
        that node's writes on the same connection)."""
        replicas, wait_ms = self._wait
        if not replicas:
            return
        client = cast(RedisCluster, self._client)
        nodes = {}
        for key in keys:
            node = client.get_node_from_key(cast(str, key))
            if node is not None:
                nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command("WAIT", replicas, wait_ms, target_nodes=node)

    async def recent(
        self, user_ids: Sequence[ExternalId], after: float
    ) -> list[list[tuple[ExternalId, float]]]:
        ids = [check_id(u) for u in user_ids]
        if not ids:
            return []
        after = check_time(after)
        low = "-inf" if after == -math.inf else f"({after!r}"
        replies = await self._read([user_key(u, b"r") for u in ids], low, "recent")
        out = []
        for reply in replies:
            items = []
            for member in reply[-self.limits.window :]:
                item, _, ts = member.rpartition(b"@")  # the exact repr of the score
                items.append((orjson.loads(item), float(ts)))
            out.append(items)
        return out

    async def remember(self, lists: Sequence[ServedList]) -> None:
        """One ``SET EX`` per user: in one pipeline (one server: one round trip; a cluster:
        one per node, sent concurrently); a single list, the command alone."""
        values = {check_id(s.user_id): served_codec.encode(s) for s in lists}
        if not values:
            return
        ttl = math.ceil(self.limits.served_ttl_s)
        if len(values) == 1:
            ((user, value),) = values.items()
            call: Awaitable[object] = self._client.set(user_key(user, b"served"), value, ex=ttl)
        else:
            pipe = self._client.pipeline(transaction=False)
            for user, value in values.items():
                pipe.set(user_key(user, b"served"), value, ex=ttl)
            call = pipe.execute()
        await self._bounded(call, self.limits.timeout_s, "remember")

    async def served(self, user_ids: Sequence[ExternalId]) -> list[ServedList | None]:
        ids = [check_id(u) for u in user_ids]
        if not ids:
            return []
        keys = [user_key(u, b"served") for u in ids]
        if self._cluster:
            client = cast(RedisCluster, self._client)
            call: Awaitable[object] = client.mget_nonatomic(keys)
        else:
            call = self._client.mget(keys)
        replies = cast(
            list[bytes | None], await self._bounded(call, self.limits.timeout_s, "served")
        )
        since = time.time() - self.limits.served_ttl_s  # exact TTL: EX rounds up
        out: list[ServedList | None] = []
        for user, value in zip(ids, replies, strict=True):
            served = None if value is None else served_codec.decode(user, value)
            out.append(served if served is not None and served.served_at >= since else None)
        return out

    async def live_counts(self, experiment_id: str) -> list[LiveCount]:
        reply = await self._bounded(
            self._client.hgetall(live_key(experiment_id)),
            self.limits.write_timeout_s,
            "live_counts",
        )
        totals: dict[tuple[str, str, float], list[int]] = {}
        for field, value in cast(dict[bytes, bytes], reply).items():
            arm, bundle_id, bucket, n = orjson.loads(field)
            totals.setdefault((arm, bundle_id, float(bucket)), [0] * (1 + len(LIVE_KS)))[n] = int(
                value
            )
        return [
            LiveCount(experiment_id, arm, bundle_id, bucket, counts[0], tuple(counts[1:]))
            for (arm, bundle_id, bucket), counts in totals.items()
        ]

    async def shown(self, user_ids: Sequence[ExternalId], since: float) -> list[list[ExternalId]]:
        ids = [check_id(u) for u in user_ids]
        if not ids:
            return []
        # exact TTL, trimmed or not
        since = max(check_time(since), time.time() - self.limits.shown_ttl_s)
        replies = await self._read([user_key(u, b"s") for u in ids], repr(since), "shown")
        return [[orjson.loads(member) for member in reply] for reply in replies]

    async def _read(self, keys: list[bytes], low: str, op: str) -> list[list[bytes]]:
        """Per key, the members scored >= ``low`` (``(x``: > x), oldest first. One server:
        one script call (a pipeline costs redis-py's per-command overhead per user); a
        cluster: a ``ZRANGEBYSCORE`` per key in one pipeline, one round trip per node (one
        key: the command alone)."""
        if self._cluster and len(keys) == 1:  # a plain command: ~1.5x faster than a pipeline
            call: Awaitable[object] = self._read_one(keys[0], low)
        elif self._cluster:
            pipe = cast(RedisCluster, self._client).pipeline()
            for key in keys:
                pipe.zrangebyscore(key, low, "+inf")
            call = pipe.execute()
        else:
            call = self._read_script(keys, [low])
        reply = await self._bounded(call, self.limits.timeout_s, op)
        return cast(list[list[bytes]], reply)

    async def _read_one(self, key: bytes, low: str) -> list[list[bytes]]:
        return [cast(list[bytes], await self._client.zrangebyscore(key, low, "+inf"))]

    async def export(self, since: float | None = None) -> AsyncIterator[Event]:
        """Every bucket's entries merged by entry id (arrival ms, then sequence; a tie
        between buckets in one millisecond goes by bucket number)."""
        # Exact retention whenever the stream was trimmed: entry ids are arrival times (ms).
        start = max(0, int((time.time() - self.limits.retention_s) * 1000))
        streams = [self._entries(log_key(b), start) for b in range(self._buckets)]
        heads: list[tuple[tuple[int, int], int, bytes]] = []
        for bucket, stream in enumerate(streams):
            entry = await anext(stream, None)
            if entry is not None:
                heads.append((entry[0], bucket, entry[1]))
        heapq.heapify(heads)
        while heads:
            _, bucket, batch = heads[0]
            for kind, user, item, ts in orjson.loads(batch):
                if since is None or ts >= since:
                    yield Event(user, item, ts, KINDS[kind])
            entry = await anext(streams[bucket], None)
            if entry is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (entry[0], bucket, entry[1]))

    async def _entries(
        self, log: bytes, start_ms: int
    ) -> AsyncIterator[tuple[tuple[int, int], bytes]]:
        """``((ms, seq), batch json)`` of the stream ``log`` from ``start_ms`` on, a page at
        a time."""
        start = str(start_ms)
        while True:
            reply = await self._bounded(
                self._client.xrange(log, min=start, max="+", count=EXPORT_PAGE),
                self.limits.write_timeout_s,
                "export",
            )
            page = cast(list[tuple[bytes, dict[bytes, bytes]]], reply or [])
            for entry_id, fields in page:
                ms, _, seq = entry_id.partition(b"-")
                yield (int(ms), int(seq)), fields[b"e"]
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
