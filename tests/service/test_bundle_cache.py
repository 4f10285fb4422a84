"""A replica's bundles from an S3 root (service/bundle_cache.py through the reloader),
against a real moto_server: download into the cache, verify, swap; damaged objects
refused (counted once, the old bundle serving); the store killed mid-download, then back;
a replica started while the store is down serves its cache's last verified bundle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recall.index import bundle as b
from recall.index.build import build_index
from recall.index.roots import S3Location, S3Root
from recall.service.bundle_cache import DOWNLOAD_PREFIX, S3CachedSource
from recall.service.domain_errors import BundleNotReady, ReloadRefused
from recall.service.metrics import Metrics
from recall.service.reloader import BundleHolder
from tests.index_data import (
    FAST_FLAT,
    clustered,
    flip_a_byte,
    nan_with_fixed_up_sha,
    truncate_the_index,
    write_vectors_bundle,
)
from tests.moto_server import BUCKET, MotoServer, moto_server, s3_environment


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    with moto_server(tmp_path / "moto.log") as server, s3_environment(server):
        yield server


@pytest.fixture
def root(moto: MotoServer) -> S3Root:
    return S3Root(S3Location(BUCKET, "bundles"))


def bundle(local: Path, n: int, *, items: int = 300) -> Path:
    item_vectors, user_vectors = clustered(items, 50, 8, seed=n)
    path = write_vectors_bundle(
        local, item_vectors, user_vectors, bundle_id=f"20260101T0000{n:02d}Z-abcdef"
    )
    build_index(path, FAST_FLAT)
    return path


def holder_of(root: S3Root, cache: Path, keep: int = 2) -> BundleHolder:
    return BundleHolder(S3CachedSource(S3Root(root.location), cache, keep), Metrics())


def reload(holder: BundleHolder) -> str:
    bundle_served, _ = asyncio.run(holder.reload(retry_failed=False))
    return bundle_served.id


def failures(holder: BundleHolder) -> float:
    value = holder.metrics.registry.get_sample_value("recall_reloads_total", {"result": "failure"})
    return value or 0.0


def upload_as_is(moto: MotoServer, root: S3Root, path: Path) -> None:
    """Put a local bundle's files into the bucket byte for byte (no checks), manifest last,
    and name it in CURRENT: what a broken writer or bit rot leaves."""
    client = moto.client()
    names = [*sorted(b.read_manifest(path).files), b.MANIFEST]
    for name in names:
        client.put_object(
            Bucket=BUCKET, Key=root.location.key(path.name, name), Body=(path / name).read_bytes()
        )
    client.put_object(Bucket=BUCKET, Key=root.location.key("CURRENT"), Body=f"{path.name}\n")


def test_a_replica_downloads_verifies_and_swaps(root: S3Root, tmp_path: Path) -> None:
    first, second, third = (bundle(tmp_path / "local", n) for n in (1, 2, 3))
    cache = tmp_path / "cache"
    holder = holder_of(root, cache, keep=2)
    with pytest.raises(BundleNotReady):
        reload(holder)  # nothing published yet
    root.publish(first, keep=3)
    assert reload(holder) == first.name
    assert (cache / "CURRENT").read_text() == f"{first.name}\n"
    assert reload(holder) == first.name  # unchanged: a conditional GET, no download
    for path in (second, third):
        root.publish(path, keep=3)
        assert reload(holder) == path.name
    assert (cache / "CURRENT").read_text() == f"{third.name}\n"
    assert sorted(p.name for p in cache.iterdir()) == [second.name, third.name, "CURRENT"]
    assert failures(holder) == 0


@pytest.mark.parametrize("damage", [flip_a_byte, truncate_the_index, nan_with_fixed_up_sha])
def test_a_damaged_bundle_in_the_bucket_is_refused(
    root: S3Root, moto: MotoServer, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    good = bundle(tmp_path / "local", 1)
    root.publish(good, keep=3)
    holder = holder_of(root, tmp_path / "cache")
    assert reload(holder) == good.name

    bad = bundle(tmp_path / "local", 2)
    damage(bad)
    upload_as_is(moto, root, bad)
    for _ in range(3):  # refused once, counted once; the poller does not retry it
        with pytest.raises(ReloadRefused, match=f"still serving {good.name}"):
            reload(holder)
    assert failures(holder) == 1
    assert holder.require().id == good.name
    assert not (tmp_path / "cache" / bad.name).exists()  # the next try downloads it again
    assert (tmp_path / "cache" / "CURRENT").read_text() == f"{good.name}\n"


def test_the_store_killed_mid_download_then_back(
    root: S3Root, moto: MotoServer, tmp_path: Path
) -> None:
    old, new = bundle(tmp_path / "local", 1), bundle(tmp_path / "local", 2, items=200_000)
    root.publish(old, keep=3)
    cache = tmp_path / "cache"
    holder = holder_of(root, cache)
    assert reload(holder) == old.name
    root.publish(new, keep=3)

    staging = cache / f"{DOWNLOAD_PREFIX}{new.name}"

    def kill_once_bytes_arrive() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if staging.is_dir() and any(f.stat().st_size for f in staging.iterdir()):
                moto.kill()
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_once_bytes_arrive)
    killer.start()
    with pytest.raises(ReloadRefused, match=f"still serving {old.name}"):
        reload(holder)
    killer.join()
    assert staging.is_dir() and not (cache / new.name).exists()  # cut off, kept to resume
    assert holder.require().id == old.name and not holder.store_reachable
    for _ in range(2):  # retried at every poll, counted once
        with pytest.raises(ReloadRefused):
            reload(holder)
    assert failures(holder) == 1

    fresh = holder_of(root, cache)  # a replica started while the store is down
    assert reload(fresh) == old.name
    assert fresh.serving_from_cache and not fresh.store_reachable

    moto.start()  # an empty store on the same port: publish the same bundle again
    root.publish(new, keep=3)
    assert reload(holder) == new.name
    assert holder.store_reachable and failures(holder) == 1
    assert reload(fresh) == new.name  # the cache has it now: no second download
    assert not fresh.serving_from_cache and fresh.store_reachable


def test_with_users_in_the_store_a_replica_downloads_no_user_file(
    root: S3Root, tmp_path: Path
) -> None:
    """Redis mode on an s3:// root: the replica's cache holds every file but the user
    files, and it serves the users from the store (what it fetches no longer grows with
    the users)."""
    from recall.service.state.users import USER_FILES, StoreUsers
    from tests.redis_server import load_users, redis_server

    first = bundle(tmp_path / "local", 1)
    root.publish(first, keep=3)
    cache = tmp_path / "cache"
    with redis_server(tmp_path / "redis") as redis:
        load_users(redis.url(), first)
        holder = BundleHolder(
            S3CachedSource(S3Root(root.location), cache, skip=USER_FILES), Metrics()
        )
        users = holder.users = StoreUsers(redis.url(), timeout_s=2, write_timeout_s=2)

        async def served() -> str:
            try:
                return (await holder.reload())[0].id
            finally:
                await users.close()

        assert asyncio.run(served()) == first.name
    cached = {p.name for p in (cache / first.name).iterdir()}
    assert cached == set(b.read_manifest(first).files) - set(USER_FILES) | {b.MANIFEST}
    assert holder.current is not None and len(holder.current.user_ids) == 0
