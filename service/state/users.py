"""Users in the store: each bundle's per-user records in Redis, keyed by bundle id.

``recall publish`` (:class:`UserLoader`, synchronous) loads every user of a bundle before
``CURRENT`` names it; replicas (:class:`StoreUsers`, asyncio) read the users of a request
in one round trip per node. Keys (the hash-tag rule of
:mod:`recall.service.state.redis_client`: a user's record sits in the slot of the user's
events)::

    recall:{u:<user json>}:ub:<bundle>   bytes: the user's record (recall.service.users)
    recall:{ub:<bundle>}                 hash: state (loading | complete | dropping), ids
                                         (int | str), users, next (rows loaded), dim,
                                         n_categorical, n_numeric, numeric_norm, fingerprint
    recall:{ub}:bundles                  set: the bundle ids that have keys here

Why keyed by bundle id: a record holds item *rows*, a stored vector and encoded features,
all of which mean something only in the bundle that made them; a replica on bundle B reads
``...:ub:B`` keys alone, so a publish of C (loading beside B) or a rollback to A never
mixes users of another bundle into B's answers. A publish is resumable (``next``) and
idempotent (a complete meta with the same fingerprint is left as it is); a replica loads
a bundle only when its meta says ``complete``. Old bundles' keys go with the bundles
retention removes (:meth:`UserLoader.drop`: the meta first marked ``dropping``, so no
replica starts on half-deleted users, then the records, then the meta).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from recall.index import bundle as b
from recall.index.ids import ExternalId
from recall.index.search import row_norms
from recall.index.verify import UsersElsewhere, VerifiedBundle
from recall.service.state import redis_client
from recall.service.state.base import StoreUnavailable, check_id
from recall.service.users import RecordShape, StoredUser, decode_user, encode_users

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLES",
    "LOAD_CHUNK",
    "StoreUsers",
    "UserLoader",
    "UsersMeta",
    "meta_key",
    "records_pattern",
    "user_key",
]

BUNDLES = redis_client.PREFIX + b"{ub}:bundles"
LOAD_CHUNK = 2000
"""Users per MSET into one Redis (~1.4 MB: a command blocks the server ~1 ms)."""
CLUSTER_CHUNK = 50_000
"""Users per round of a cluster load: MSETs per slot get ~3 keys (16384 slots), which
makes the load ~3.5x faster than rounds of 2000 (one key per command)."""
USER_FILES = (b.USER_IDS, b.USER_VECTORS, b.USER_SEEN, b.USER_HISTORY)
ERRORS = (RedisError, RedisClusterException, OSError)


def meta_key(bundle_id: str) -> bytes:
    return redis_client.PREFIX + b"{ub:" + bundle_id.encode() + b"}"


def user_key(bundle_id: str, user: ExternalId) -> bytes:
    """The key of one user's record of one bundle, in the user's slot."""
    return redis_client.user_key(user, b"ub:" + bundle_id.encode())


def records_pattern(bundle_id: str) -> bytes:
    """The ``SCAN MATCH`` pattern of every user record of one bundle."""
    return user_key(bundle_id, 0).replace(b"{u:0}", b"{u:*}")


def _fingerprint(verified: VerifiedBundle) -> str:
    """The sha256 over the user files' own sha256s: what a complete load is of."""
    files = verified.manifest.files
    joined = "".join(f"{name}={files[name].sha256};" for name in USER_FILES if name in files)
    return hashlib.sha256(joined.encode()).hexdigest()


@dataclass(frozen=True)
class UsersMeta:
    """What a replica needs of a bundle's users in the store: their id kind, how many, the
    record shape, and the largest norm of their numeric features (the tower's bound)."""

    elsewhere: UsersElsewhere
    shape: RecordShape
    users: int

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> UsersMeta:
        def get(name: str) -> str:
            return fields[name.encode()].decode()

        shape = RecordShape(int(get("dim")), int(get("n_categorical")), int(get("n_numeric")))
        kind = get("ids")
        if kind not in ("int", "str"):
            raise ValueError(f"unknown id kind {kind!r}")
        return cls(UsersElsewhere(kind, float(get("numeric_norm"))), shape, int(get("users")))


class UserLoader:
    """Loads bundles' users into the Redis at ``url`` and drops them (``recall publish``).
    Every failure to reach or use the server is :class:`StoreUnavailable`."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, chunk: int | None = None) -> None:
        try:  # a cluster client reads the slot map here
            self.client = redis_client.connect_sync(url, timeout_s=timeout_s)
        except ERRORS as e:
            raise StoreUnavailable(f"Redis did not answer: {e}") from None
        cluster = isinstance(self.client, redis.cluster.RedisCluster)
        self.chunk = chunk or (CLUSTER_CHUNK if cluster else LOAD_CHUNK)

    def ping(self) -> None:
        try:
            self.client.ping()
        except ERRORS as e:
            raise StoreUnavailable(f"Redis did not answer: {e}") from None

    def load(self, verified: VerifiedBundle) -> int:
        """Load every user of ``verified`` (resuming a load that stopped); returns how many
        users this call wrote (0 when the bundle was loaded already)."""
        try:
            return self._load(verified)
        except ERRORS as e:
            raise StoreUnavailable(f"loading the users into Redis failed: {e}") from None

    def _load(self, verified: VerifiedBundle) -> int:
        bundle_id, n = verified.manifest.id, verified.manifest.counts.users
        key, fingerprint = meta_key(bundle_id), _fingerprint(verified)
        meta = cast(dict[bytes, bytes], self.client.hgetall(key))
        if meta.get(b"fingerprint") == fingerprint.encode() and meta.get(b"state") in (
            b"loading",
            b"complete",
        ):
            if meta[b"state"] == b"complete":
                logger.info("the users of %s are in the store already", bundle_id)
                return 0
            start = int(meta[b"next"])
            logger.info("resuming the load of %s's users at %d of %d", bundle_id, start, n)
        else:
            start = 0
            self.client.sadd(BUNDLES, bundle_id)
            self.client.delete(key)
            self.client.hset(key, mapping=self._meta(verified, fingerprint))
        began = time.perf_counter()
        if isinstance(self.client, redis.cluster.RedisCluster):
            for last, keys, records in self._chunks(verified, start):
                _mset_by_node(self.client, keys, records)
                self.client.hset(key, "next", last)
        else:
            self._load_pipelined(self.client, key, self._chunks(verified, start))
        self.client.hset(key, "state", "complete")
        took = time.perf_counter() - began
        logger.info(
            "loaded %d users of %s into the store in %.1f s (%.0f users/s)",
            n - start,
            bundle_id,
            took,
            (n - start) / max(took, 1e-9),
        )
        return n - start

    def _chunks(
        self, verified: VerifiedBundle, start: int
    ) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
        """``(end row, keys, records)`` of each chunk of users from row ``start`` on."""
        bundle_id, ids, n = verified.manifest.id, verified.user_ids.ids, len(verified.user_ids)
        for first in range(start, n, self.chunk):
            last = min(first + self.chunk, n)
            keys = [user_key(bundle_id, u) for u in ids[first:last].tolist()]
            yield last, keys, encode_users(verified, first, last)

    @staticmethod
    def _load_pipelined(
        client: redis.Redis, key: bytes, chunks: Iterator[tuple[int, list[bytes], list[bytes]]]
    ) -> None:
        """One MSET per chunk on one connection, each sent before the previous one's reply
        is read, so the server stores a chunk while the client encodes the next; ``next``
        moves only past chunks the server acknowledged."""
        acked_upto: int | None = None
        with _connection(client.connection_pool) as connection:
            for last, keys, records in chunks:
                parts = [b"MSET"]
                for pair in zip(keys, records, strict=True):
                    parts.extend(pair)
                connection.send_packed_command([_command(parts)])
                if acked_upto is not None:
                    connection.read_response()
                    client.hset(key, "next", acked_upto)
                acked_upto = last
            if acked_upto is not None:
                connection.read_response()
                client.hset(key, "next", acked_upto)

    def _meta(self, verified: VerifiedBundle, fingerprint: str) -> dict[FieldT, EncodableT]:
        spec, history = verified.tower.spec, verified.history
        numeric_norm = 0.0 if history is None else float(row_norms(history.numeric).max(initial=0))
        return {
            "state": "loading",
            "fingerprint": fingerprint,
            "ids": "int" if verified.user_ids.is_int else "str",
            "users": verified.manifest.counts.users,
            "next": 0,
            "dim": verified.manifest.dim,
            "n_categorical": len(spec.categorical),
            "n_numeric": len(spec.numeric),
            "numeric_norm": repr(numeric_norm),
        }

    def drop(self, bundle_ids: Iterable[str]) -> None:
        """Remove every key of these bundles' users, and finish any drop that stopped
        midway (a meta left ``dropping``). The records are found by ``SCAN``: it walks the
        whole keyspace, 10,000 keys a call (docs/state.md, "What the drop costs")."""
        try:
            unfinished = {
                bundle.decode()
                for bundle in cast(set[bytes], self.client.smembers(BUNDLES))
                if self.client.hget(meta_key(bundle.decode()), "state") == b"dropping"
            }
            for bundle_id in sorted(set(bundle_ids) | unfinished):
                key = meta_key(bundle_id)
                self.client.hset(key, "state", "dropping")
                batch: list[bytes] = []
                for found in self.client.scan_iter(match=records_pattern(bundle_id), count=10_000):
                    batch.append(found)
                    if len(batch) >= 10_000:
                        self.client.unlink(*batch)
                        batch = []
                if batch:
                    self.client.unlink(*batch)
                self.client.unlink(key)
                self.client.srem(BUNDLES, bundle_id)
                logger.info("removed the users of %s from the store", bundle_id)
        except ERRORS as e:
            raise StoreUnavailable(f"removing old users from Redis failed: {e}") from None

    def close(self) -> None:
        self.client.close()


def _mset_by_node(
    cluster: redis.cluster.RedisCluster, keys: list[bytes], values: list[bytes]
) -> None:
    """SET every key on a cluster: one MSET per slot, all of a master's sent at once on
    one of its connections, then their replies read. The commands are packed here: redis-py
    packs each command's arguments in Python (~30 us a command), which bounded the load
    to ~10-20k users/s, the cluster client's pipeline more."""
    by_slot: dict[int, list[bytes]] = {}
    for key, value in zip(keys, values, strict=True):
        by_slot.setdefault(key_slot(key), [b"MSET"]).extend((key, value))
    by_node: dict[str, tuple[Any, list[bytes]]] = {}
    node_of = cluster.nodes_manager.get_node_from_slot
    for slot, parts in by_slot.items():
        node = node_of(slot)
        by_node.setdefault(node.name, (node, []))[1].append(_command(parts))
    for node, commands in by_node.values():
        with _connection(cluster.get_redis_connection(node).connection_pool) as connection:
            connection.send_packed_command([b"".join(commands)])
            errors = []
            for _ in commands:  # every reply read, so the connection stays in step
                try:
                    connection.read_response()
                except ResponseError as e:
                    errors.append(e)
            if errors:
                raise errors[0]


@contextmanager
def _connection(pool: Any) -> Iterator[Any]:
    """A connection of ``pool`` for raw commands, back to the pool after; dropped on any
    error, since its replies may be out of step with its commands."""
    connection = pool.get_connection()
    try:
        yield connection
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _command(parts: list[bytes]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class StoreUsers:
    """A replica's reads of the users in the Redis at ``url``: each call one round trip,
    bounded by ``timeout_s``; store trouble is :class:`StoreUnavailable`."""

    def __init__(self, url: str, *, timeout_s: float, write_timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s
        self._client = redis_client.connect(url, timeout_s=write_timeout_s)

    async def meta(self, bundle_id: str) -> UsersMeta:
        """The users' meta of a bundle whose load is complete; :class:`StoreUnavailable`
        when the store cannot say, LookupError when they are not (all) loaded."""
        reply = await self._bounded(self._client.hgetall(meta_key(bundle_id)), self.write_timeout_s)
        fields = cast(dict[bytes, bytes], reply)
        if fields.get(b"state") != b"complete":
            raise LookupError(
                f"the users of bundle {bundle_id} are not loaded into the state store "
                "(publish it with the same RECALL_STATE_URL)"
            )
        try:
            return UsersMeta.from_hash(fields)
        except (KeyError, ValueError) as e:
            raise LookupError(f"the store's meta of bundle {bundle_id} is invalid: {e}") from None

    async def read(
        self, bundle_id: str, shape: RecordShape, user_ids: Sequence[ExternalId]
    ) -> list[StoredUser | None]:
        """Each of ``user_ids`` (canonical) as the store holds them for ``bundle_id``,
        None where it holds nothing: one MGET."""
        if not user_ids:
            return []
        keys = [user_key(bundle_id, check_id(u)) for u in user_ids]
        if isinstance(self._client, redis.asyncio.RedisCluster):  # one pipeline per node
            reply = await self._bounded(self._client.mget_nonatomic(keys), self.timeout_s)
        else:
            reply = await self._bounded(self._client.mget(keys), self.timeout_s)
        out: list[StoredUser | None] = []
        for record in cast(list[bytes | None], reply):
            if record is None:
                out.append(None)
                continue
            try:
                out.append(decode_user(record, shape))
            except ValueError as e:
                raise StoreUnavailable(f"a user record of {bundle_id} is damaged: {e}") from None
        return out

    async def _bounded(self, call: Any, bound: float) -> Any:
        try:
            async with asyncio.timeout(bound):
                return await call
        except TimeoutError:
            raise StoreUnavailable(f"Redis took longer than {bound:g} s") from None
        except ERRORS as e:
            raise StoreUnavailable(f"Redis failed: {e}") from None

    async def close(self) -> None:
        await self._client.aclose()
