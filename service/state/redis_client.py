"""Redis connections from a state URL, and the key naming rule shared by every Redis user.

    redis://[user:password@]host:port/db          one Redis server (rediss:// with TLS)
    redis+cluster://[user:password@]host:port[,host:port...]
                                                  a Redis Cluster: any reachable nodes,
                                                  the client finds the rest (rediss+cluster://
                                                  with TLS); no database number

:func:`connect` (asyncio, the service) and :func:`connect_sync` (offline jobs such as
``recall publish``) return redis-py's client for either kind; :func:`check_reachable` is the
start-up check that a cluster URL names a reachable node of a real cluster.

**Keys** (docs/state.md, "Key layout"): every key starts ``recall:`` and carries a Redis
Cluster hash tag (the part in ``{}``), so one call touches one slot:

    recall:{u:<user json>}:<name>   one user's data; every key of one user is in one slot
    recall:{log:<n>}                the retraining log's buckets (service/state/redis.py)
    recall:{avail}...               availability: one slot

A user id is JSON-encoded (``7`` and ``"7"`` stay apart). A string id holding ``}`` cuts the
tag short, but it cuts every key of that user the same way, so the user still has one slot.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import redis
import redis.asyncio
import redis.cluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry as SyncRetry

from recall.index.ids import ExternalId
from recall.service.state.base import StoreUnavailable

__all__ = [
    "CLUSTER_SCHEMES",
    "ClusterUrl",
    "check_reachable",
    "connect",
    "connect_sync",
    "is_cluster_url",
    "parse_cluster_url",
    "user_key",
    "user_tag",
]

TOPOLOGY_REFRESH_S = 0.25
"""Least time between two slot-map reads a failing call asks for (redis-py's default is
1 s): a replica promoted after a master died is found within 0.25 s, not up to a second
later, at the cost of one ``CLUSTER SLOTS`` a quarter second per client while calls fail
(docs/state.md, "The first seconds after a master dies")."""
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_URL_FORM = "redis+cluster://host:port[,host:port...]"
PREFIX = b"recall:"

AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A parsed ``redis+cluster://`` URL: the seed nodes ``(host, port)`` and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    wait_replicas: int = 1
    """After a write, ``WAIT`` for this many replicas of each node written (0: no wait)."""
    wait_ms: int = 100
    """... for at most this long (milliseconds)."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.partition(":")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterUrl:
    """The nodes and credentials of a cluster URL; ValueError (never quoting the URL: it
    may hold a password) when it does not parse."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"a Redis Cluster state URL looks like {CLUSTER_URL_FORM}")
    rest, _, query = rest.partition("?")
    userinfo, at, hosts = rest.rpartition("@")
    hosts = hosts.rstrip("/")
    if "/" in hosts:
        raise ValueError(f"a Redis Cluster has no database number: {CLUSTER_URL_FORM}")
    nodes = tuple(_node(part) for part in hosts.split(","))
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    wait = _wait_options(query)
    return ClusterUrl(nodes, username, password, scheme.lower() == "rediss+cluster", *wait)


def _wait_options(query: str) -> tuple[int, int]:
    """``(wait_replicas, wait_ms)`` from the URL's query (``wait_replicas=1&wait_ms=100``)."""
    options = {"wait_replicas": 1, "wait_ms": 100}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in options or not value.isdigit():
            raise ValueError(
                "a Redis Cluster state URL takes ?wait_replicas=N&wait_ms=M "
                "(non-negative integers) and no other option"
            )
        options[name] = int(value)
    return options["wait_replicas"], options["wait_ms"]


def _node(part: str) -> tuple[str, int]:
    try:
        split = urlsplit("//" + part)
        host, port = split.hostname, split.port
    except ValueError:
        host = port = None
    if not host or port is None or port == 0:
        raise ValueError(f"each node of a cluster state URL is host:port: {CLUSTER_URL_FORM}")
    return host, port


def connect(url: str, *, timeout_s: float = 1.0) -> AsyncClient:
    """redis-py's asyncio client for ``url`` (one server or a cluster), connecting lazily:
    socket connect and read bounded by ``timeout_s``, one immediate retry (a pooled
    connection that died with a restarted server is replaced within the call), raw bytes
    replies. ValueError when the URL does not parse."""
    nodes, options = _client_options(url, timeout_s, Retry(NoBackoff(), 1))
    if not nodes:
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.asyncio.RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        topology_refresh_min_interval=TOPOLOGY_REFRESH_S,
        **options,
    )


def connect_sync(url: str, *, timeout_s: float = 1.0) -> SyncClient:
    """The blocking client for ``url``, configured as :func:`connect` does. A cluster client
    connects here (it reads the slot map) and raises redis-py's errors when it cannot;
    ValueError for a URL that does not parse."""
    nodes, options = _client_options(url, timeout_s, SyncRetry(NoBackoff(), 1))
    if not nodes:
        return redis.Redis.from_url(url, **options)
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
        **options,
    )


def _client_options(
    url: str, timeout_s: float, retry: Retry | SyncRetry
) -> tuple[tuple[tuple[str, int], ...], dict[str, Any]]:
    """(a cluster URL's seed nodes, () for one server's URL; the keyword arguments that
    redis-py's client for it takes, blocking or asyncio alike). ValueError when a cluster
    URL does not parse."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": retry,
        "decode_responses": False,
    }
    if not is_cluster_url(url):
        return (), options
    parsed = parse_cluster_url(url)
    options.update(
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        # a shard down must not stop the others: the client starts with slots uncovered
        require_full_coverage=False,
    )
    return parsed.nodes, options


def check_reachable(url: str, setting: str, *, timeout_s: float = 2.0) -> None:
    """For a cluster URL: ValueError naming ``setting`` (e.g. ``RECALL_STATE_URL``) when the
    URL does not parse or a node it names is not a Redis Cluster node; StoreUnavailable
    (naming it too) when no node answers within ``timeout_s``. One server's URL is not
    checked here (a replica starts while its Redis is down and answers from the bundle)."""
    if not is_cluster_url(url):
        return
    try:
        parse_cluster_url(url)
    except ValueError as e:
        raise ValueError(f"{setting}: {e}") from None
    asyncio.run(_check_cluster(url, setting, timeout_s))


async def _check_cluster(url: str, setting: str, timeout_s: float) -> None:
    client = connect(url, timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s * 2):
            await client.initialize()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as e:
        if "cluster mode is not enabled" in str(e).lower():
            raise ValueError(f"{setting}: the server is not a Redis Cluster node") from None
        raise StoreUnavailable(f"{setting}: no Redis Cluster node answered ({e})") from None
    finally:
        await client.aclose()


def user_tag(user_id: ExternalId) -> bytes:
    """The hash tag of one user's keys: ``{u:<user json>}``."""
    return b"{u:" + orjson.dumps(user_id) + b"}"


def user_key(user_id: ExternalId, name: bytes) -> bytes:
    """``recall:{u:<user json>}:<name>``: a key of ``user_id``'s, in the user's slot."""
    return PREFIX + user_tag(user_id) + b":" + name
