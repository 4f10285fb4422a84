"""Online state: events since the bundle, behind one interface chosen by URL.

    sqlite:///abs/path/events.sqlite   embedded (stdlib sqlite3, WAL): one replica's workers
    sqlite:relative/path.sqlite        the same, relative to the working directory
    redis://host:port/db               Redis (``rediss://`` with TLS): several replicas
    redis+cluster://host:port[,host:port...]   a Redis Cluster (``rediss+cluster://``: TLS)

``open_store`` connects lazily: nothing is opened until the first call (``ping`` at
startup surfaces a bad path or an unreachable server).
"""

from __future__ import annotations

from pathlib import Path

from recall.service.state.base import (
    DEFAULT_RETENTION_S,
    DEFAULT_SERVED_TTL_S,
    DEFAULT_WRITE_TIMEOUT_S,
    LIVE_KS,
    Event,
    EventType,
    LiveCount,
    ReadsInThread,
    ServedList,
    StateStore,
    StoreLimits,
    StoreTimeout,
    StoreUnavailable,
)
from recall.service.state.redis_client import CLUSTER_SCHEMES, parse_cluster_url

__all__ = [
    "DEFAULT_RETENTION_S",
    "DEFAULT_SERVED_TTL_S",
    "LIVE_KS",
    "Event",
    "EventType",
    "LiveCount",
    "ReadsInThread",
    "ServedList",
    "StateStore",
    "StoreLimits",
    "StoreTimeout",
    "StoreUnavailable",
    "check_url",
    "open_store",
    "sqlite_path",
    "sqlite_url",
]

SCHEMES = ("sqlite", "redis", "rediss", *CLUSTER_SCHEMES)


def check_url(url: str) -> str:
    """The backend of ``url`` (``"sqlite"``, ``"redis"`` or ``"redis+cluster"``), or
    ValueError saying which URLs work. The message never quotes the URL (a Redis URL may
    hold a password)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(
            "unsupported state URL scheme: use sqlite:///abs/path/events.sqlite, "
            "sqlite:relative/path.sqlite, redis://host:port/db or "
            "redis+cluster://host:port[,host:port...]"
        )
    if scheme.lower() == "sqlite":
        sqlite_path(url)
        return "sqlite"
    if scheme.lower() in CLUSTER_SCHEMES:
        parse_cluster_url(url)
        return "redis+cluster"
    if not rest.startswith("//") or len(rest) <= 2:
        raise ValueError("a Redis state URL looks like redis://host:port/db")
    return "redis"


def sqlite_url(path: Path) -> str:
    """The ``sqlite://`` URL of ``path`` (made absolute)."""
    return "sqlite://" + str(path.absolute())


def sqlite_path(url: str) -> Path:
    """The database file a ``sqlite:`` URL names, or ValueError."""
    rest = url.partition(":")[2]
    if rest.startswith("//"):  # sqlite:///abs/path: an empty host, then the path
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ValueError("a SQLite state URL is sqlite:///abs/path or sqlite:relative/path")
    if not rest or rest.endswith("/") or "?" in rest:
        raise ValueError("a SQLite state URL names a file: sqlite:///abs/path/events.sqlite")
    return Path(rest)


def open_store(
    url: str,
    *,
    window: int = 50,
    shown_ttl_s: float = 3600,
    retention_s: float = DEFAULT_RETENTION_S,
    timeout_s: float = 0.05,
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    served_ttl_s: float = DEFAULT_SERVED_TTL_S,
) -> StateStore:
    """The store at ``url``: per user the last ``window`` interactions, impressions for
    ``shown_ttl_s``, the last served list for ``served_ttl_s`` and the retraining log for
    ``retention_s`` (seconds, wall clock). Reads are bounded by ``timeout_s``, writes by
    ``write_timeout_s``."""
    if min(window, shown_ttl_s, retention_s, timeout_s, served_ttl_s) <= 0:
        raise ValueError(
            "window, shown_ttl_s, retention_s, timeout_s and served_ttl_s must be positive"
        )
    limits = StoreLimits(
        window=window,
        shown_ttl_s=shown_ttl_s,
        retention_s=retention_s,
        timeout_s=timeout_s,
        write_timeout_s=max(write_timeout_s, timeout_s),
        served_ttl_s=served_ttl_s,
    )
    if check_url(url) == "sqlite":
        from recall.service.state.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), limits)
    from recall.service.state.redis import RedisStore

    return RedisStore(url, limits)
