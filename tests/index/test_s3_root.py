"""S3 roots (index/roots.py) against a real moto_server process: upload (manifest last),
the conditional switch of CURRENT, refusals, downloads with resume, retention, rollback,
and the ``recall publish`` command on an s3:// root."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recall.index import bundle as b
from recall.index.build import build_index
from recall.index.current import CURRENT, CurrentState
from recall.index.roots import (
    ObjectStoreUnavailable,
    PublishConflict,
    RemoteCurrent,
    S3Location,
    S3Root,
    open_root,
)
from recall.index.verify import verify_bundle
from tests.index.test_bundle import BAD_CURRENTS
from tests.index_data import (
    FAST_FLAT,
    clustered,
    flip_a_byte,
    nan_with_fixed_up_sha,
    truncate_the_index,
    write_vectors_bundle,
)
from tests.moto_server import BUCKET, MotoServer, s3_environment
from tests.serve_process import RECALL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(moto: MotoServer, request: pytest.FixtureRequest) -> Iterator[S3Root]:
    """An S3 root of its own (a prefix named after the test) in the shared bucket."""
    with s3_environment(moto):
        yield S3Root(S3Location(BUCKET, f"t/{request.node.name}"))


def bundle(local: Path, n: int, *, seed: int = 0, items: int = 300) -> Path:
    item_vectors, user_vectors = clustered(items, 50, 8, seed=seed)
    path = write_vectors_bundle(
        local, item_vectors, user_vectors, bundle_id=f"20260101T0000{n:02d}Z-abcdef"
    )
    build_index(path, FAST_FLAT)
    return path


def keys(moto: MotoServer, root: S3Root) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=root.location.prefix + "/")
    return sorted(o["Key"][len(root.location.prefix) + 1 :] for o in listed.get("Contents", []))


def put(moto: MotoServer, root: S3Root, key: str, body: bytes) -> None:
    moto.client().put_object(Bucket=BUCKET, Key=root.location.key(key), Body=body)


def test_locations_parse() -> None:
    assert S3Location.parse("s3://bucket/a/b/") == S3Location("bucket", "a/b")
    assert S3Location.parse("s3://bucket").url == "s3://bucket"
    assert S3Location.parse("s3://bucket/a/id").parent == S3Location("bucket", "a")
    for bad in ("s3://", "s3://B_ad/x", "s3://bucket/a//b", "s3://bucket/../x"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)
    assert isinstance(open_root("s3://bucket/p"), S3Root)


def test_current_in_the_bucket_names_a_bundle_id_or_says_why_not(
    root: S3Root, moto: MotoServer
) -> None:
    """The local root's rule (test_bundle.py), over S3: CURRENT is one bundle id of UTF-8."""
    assert root.current() == RemoteCurrent(None, CurrentState(None))
    put(moto, root, CURRENT, b"20260101T000000Z-aaaaaa\n")
    assert root.current_id() == "20260101T000000Z-aaaaaa"
    for raw, why in BAD_CURRENTS:
        put(moto, root, CURRENT, raw)
        now = root.current()
        assert now is not None and now.etag is not None and now.state.bundle_id is None
        assert why in (now.state.problem or ""), now.state.problem
        assert f"{root.url}/{CURRENT}" in (now.state.problem or "")


def test_publish_uploads_everything_then_switches_current(
    root: S3Root, moto: MotoServer, tmp_path: Path
) -> None:
    first = bundle(tmp_path, 1)
    assert root.current_id() is None
    root.publish(first, keep=3)
    assert root.current_id() == first.name
    manifest = b.read_manifest(first)
    assert keys(moto, root) == sorted(
        ["CURRENT", f"{first.name}/{b.MANIFEST}"] + [f"{first.name}/{n}" for n in manifest.files]
    )
    head = moto.client().head_object(
        Bucket=BUCKET, Key=root.location.key(first.name, b.ITEM_VECTORS)
    )
    assert head["Metadata"]["sha256"] == manifest.files[b.ITEM_VECTORS].sha256

    root.publish(first, keep=3)  # again: nothing uploaded, CURRENT untouched
    assert root.current_id() == first.name

    copy = tmp_path / "copy" / first.name
    root.download(first.name, copy)
    assert verify_bundle(copy).manifest == manifest


def test_a_racing_publish_loses_and_current_is_the_winners(root: S3Root, tmp_path: Path) -> None:
    first, second = bundle(tmp_path, 1), bundle(tmp_path, 2, seed=1)
    seen = root.current()  # the loser looked at CURRENT before it uploaded ...
    assert seen is not None and seen.etag is None
    root.publish(first, keep=3)  # ... the winner switched it meanwhile
    with pytest.raises(PublishConflict, match=f"now names {first.name}"):
        root.switch(second.name, seen)
    assert root.current_id() == first.name

    seen = root.current()
    assert seen is not None and seen.etag is not None
    root.publish(second, keep=3)
    with pytest.raises(PublishConflict, match=f"now names {second.name}"):
        root.switch(first.name, seen)  # If-Match the ETag it saw: refused
    assert root.current_id() == second.name


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_a_byte, "sha256"),
        (truncate_the_index, f"{b.INDEX} has .* bytes"),
        (nan_with_fixed_up_sha, "NaN/Inf"),
    ],
)
def test_a_damaged_bundle_is_refused_before_anything_is_uploaded(
    root: S3Root,
    moto: MotoServer,
    tmp_path: Path,
    damage: Callable[[Path], None],
    message: str,
) -> None:
    path = bundle(tmp_path, 1)
    damage(path)
    with pytest.raises(b.BundleError, match=message):
        root.publish(path, keep=3)
    assert keys(moto, root) == []


def test_an_id_in_the_bucket_with_other_content_is_refused(root: S3Root, tmp_path: Path) -> None:
    root.publish(bundle(tmp_path / "a", 1), keep=3)
    other = bundle(tmp_path / "b", 1, seed=5)  # the same id, other vectors
    with pytest.raises(b.BundleError, match="immutable"):
        root.publish(other, keep=3)


def test_downloads_resume_and_refuse_objects_of_the_wrong_size(
    root: S3Root, moto: MotoServer, tmp_path: Path
) -> None:
    path = bundle(tmp_path, 1, items=3000)
    root.publish(path, keep=3)
    dest = tmp_path / "cache" / path.name
    dest.mkdir(parents=True)
    whole = (path / b.ITEM_VECTORS).read_bytes()
    (dest / b.ITEM_VECTORS).write_bytes(whole[:1000])  # a download cut off
    root.download(path.name, dest)
    assert (dest / b.ITEM_VECTORS).read_bytes() == whole
    verify_bundle(dest)

    put(moto, root, f"{path.name}/{b.INDEX}", (path / b.INDEX).read_bytes()[:-10])
    with pytest.raises(b.BundleError, match=f"{b.INDEX} has .* bytes, the manifest says"):
        root.download(path.name, tmp_path / "again" / path.name)
    moto.client().delete_object(Bucket=BUCKET, Key=root.location.key(path.name, b.INDEX))
    with pytest.raises(b.BundleError, match="missing"):
        root.download(path.name, tmp_path / "third" / path.name)


def test_retention_keeps_the_newest_and_current(
    root: S3Root, moto: MotoServer, tmp_path: Path
) -> None:
    paths = [bundle(tmp_path, n, seed=n) for n in range(1, 5)]
    for path in paths:
        root.publish(path, keep=10)
    put(moto, root, "20250101T000000Z-unfini/item_ids.npy", b"x")  # upload in flight
    root.rollback(paths[0].name, keep=2)  # rollback: verified, then CURRENT again
    assert root.current_id() == paths[0].name
    remaining = set(root._bundle_ids())
    assert remaining == {paths[0].name, paths[2].name, paths[3].name, "20250101T000000Z-unfini"}
    root.retain(1, stale_hours=0)  # the unfinished upload is stale now
    assert set(root._bundle_ids()) == {paths[0].name, paths[3].name}


def test_an_unreachable_store_is_store_unavailable(tmp_path: Path, moto: MotoServer) -> None:
    with s3_environment(moto):
        os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:1"
        with pytest.raises(ObjectStoreUnavailable, match="reading s3://"):
            S3Root(S3Location(BUCKET, "x")).current()


def _recall(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RECALL), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_cli_publish_to_s3_and_rollback(root: S3Root, moto: MotoServer, tmp_path: Path) -> None:
    first, second = bundle(tmp_path, 1), bundle(tmp_path, 2, seed=1)
    env = {**os.environ, **moto.env()}
    for path in (first, second):
        done = _recall(env, "publish", str(path), "--root", root.url)
        assert done.returncode == 0, done.stderr
    assert root.current_id() == second.name
    done = _recall(env, "publish", f"{root.url}/{first.name}")
    assert done.returncode == 0, done.stderr
    assert root.current_id() == first.name

    nan = bundle(tmp_path, 3, seed=2)
    nan_with_fixed_up_sha(nan)  # checksummed faithfully: only the contents check refuses it
    done = _recall(env, "publish", str(nan), "--root", root.url)
    assert done.returncode == 2 and "NaN/Inf" in done.stderr, done.stderr
    assert root.current_id() == first.name

    down = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    done = _recall(down, "publish", str(second), "--root", root.url)
    assert done.returncode == 3 and "did not answer" in done.stderr, done.stderr
