"""Bundle roots: a local directory or an S3 prefix (``s3://bucket/prefix``).

A root holds ``CURRENT`` and the bundles, with the same layout on both kinds: the S3 root
``s3://bucket/prefix`` has the objects ``prefix/CURRENT`` and ``prefix/<id>/<file>``.
:func:`open_root` picks the kind from the text a user gives (``RECALL_ROOT``, ``--root``);
both kinds publish through :class:`Root`.

Publishing to S3 (:meth:`S3Root.publish`) verifies the local bundle with
:func:`recall.index.verify.verify_bundle` (the replicas' rule), notes ``CURRENT``'s ETag,
uploads every file (boto3's managed transfer: multipart above 8 MiB), hashing the bytes
it sends and comparing them with the manifest's sha256, uploads ``manifest.json`` last,
then replaces ``CURRENT`` with a conditional PutObject (``If-Match`` the ETag it noted, or
``If-None-Match: *`` when there was none). A publish that raced another and lost gets
:class:`PublishConflict`: ``CURRENT`` is the winner's. Objects are immutable: a bundle id
already in the bucket with other content is refused, the same content is not uploaded
again (so a publish that died is simply run again). Retention keeps the newest ``keep``
bundles by ``created_at``, whatever ``CURRENT`` names and every bundle an arm of the
running experiment names when it deletes.

``EXPERIMENT`` (:mod:`recall.index.experiment`) sits beside ``CURRENT`` on both kinds:
:meth:`Root.start_experiment` verifies every arm's bundle (the replicas' rule), loads its
users where the state store keeps them, and creates the file only if there is none
(local: a hard link of a synced temp file, under the root's lock; S3: a PutObject with
``If-None-Match: *``), so two starts cannot both win; :meth:`Root.stop_experiment`
removes the experiment it saw and no other (local: under the lock; S3: DeleteObject with
``If-Match`` its ETag).

The endpoint comes from the standard ``AWS_ENDPOINT_URL`` (``AWS_ENDPOINT_URL_S3``), the
credentials and region from the standard AWS chain; boto3 is imported only when an S3
root is opened (the service's request path and the trainer never import it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from recall.index import bundle as b
from recall.index.current import BUNDLE_ID, CURRENT, MAX_CURRENT_BYTES, CurrentState
from recall.index.experiment import (
    EXPERIMENT,
    MAX_EXPERIMENT_BYTES,
    Experiment,
    ExperimentState,
    inspect_experiment,
)

if TYPE_CHECKING:
    from recall.index.publish import UserSink
    from recall.index.verify import VerifiedBundle

S3Client = Any  # boto3's client classes are made at run time
logger = logging.getLogger(__name__)

__all__ = [
    "ExperimentConflict",
    "LocalRoot",
    "ObjectStoreUnavailable",
    "PublishConflict",
    "Root",
    "S3Location",
    "S3Root",
    "is_s3_url",
    "open_root",
]

#: A file name inside a bundle: one path component, nothing hidden.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_CHUNK = 1 << 20
#: What S3 answers for conditional requests: 304 unchanged, 412 precondition failed,
#: 409 a concurrent conditional write to the same key.
_NOT_MODIFIED, _PRECONDITION_FAILED, _CONFLICT = "304", "412", "409"


class ObjectStoreUnavailable(Exception):
    """The object store did not answer (down, unreachable, timing out, throttling, 5xx):
    nothing was decided about the bundle; try again later."""


class PublishConflict(b.BundleError):
    """Another publish replaced ``CURRENT`` while this one ran: this one did not switch it."""


class ExperimentConflict(b.BundleError):
    """EXPERIMENT is not what the caller saw: one is running already (a start), or it
    changed or went meanwhile (a stop). Nothing was written."""


class Root(Protocol):
    """Where bundles are published: a local directory or an S3 prefix."""

    url: str

    def publish(self, bundle: Path, *, keep: int, users: UserSink | None = None) -> None:
        """Make the local bundle directory ``bundle`` CURRENT of this root, then retain;
        with ``users``, its users are loaded there before CURRENT changes."""
        ...

    def current_id(self) -> str | None:
        """The bundle id CURRENT names (None: nothing published)."""
        ...

    def verified(self, bundle_id: str) -> AbstractContextManager[VerifiedBundle]:
        """The bundle ``bundle_id`` of this root, verified (the replicas' rule), for the
        block; BundleError when there is none or it fails verification."""
        ...

    def experiment(self) -> ExperimentState:
        """What EXPERIMENT holds now."""
        ...

    def start_experiment(self, experiment: Experiment, *, users: UserSink | None = None) -> None:
        """Verify every arm's bundle, load its ``users`` (when given), then create
        EXPERIMENT; :class:`ExperimentConflict` when one is running."""
        ...

    def stop_experiment(self, seen: ExperimentState) -> None:
        """Remove EXPERIMENT if it is still ``seen``; else :class:`ExperimentConflict`."""
        ...


def is_s3_url(text: str) -> bool:
    return text.startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: ``prefix`` without slashes at either end (may be empty)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Raise ValueError unless ``url`` is ``s3://bucket[/prefix]``."""
        if not is_s3_url(url):
            raise ValueError(f"not an s3:// URL: {url[:80]!r}")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"{url[:80]!r}: not a valid S3 bucket name")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ValueError(f"{url[:80]!r}: the prefix has an empty, . or .. part")
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name))

    @property
    def parent(self) -> S3Location:
        return S3Location(self.bucket, self.prefix.rpartition("/")[0])

    @property
    def name(self) -> str:
        return self.prefix.rpartition("/")[2]

    def __str__(self) -> str:
        return self.url


def open_root(text: str | Path) -> Root:
    """The root ``text`` names: ``s3://bucket/prefix``, else a local directory."""
    if isinstance(text, str) and is_s3_url(text):
        return S3Root(S3Location.parse(text))
    return LocalRoot(Path(text))


class LocalRoot:
    """A local directory root (:mod:`recall.index.publish`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))
        self.url = str(self.path)

    def publish(self, bundle: Path, *, keep: int, users: UserSink | None = None) -> None:
        from recall.index.publish import publish

        bundle = Path(os.path.abspath(bundle))
        if bundle.parent != self.path:
            raise b.BundleError(
                f"{bundle}: not a bundle of the root {self.path} (a local root publishes "
                "the bundles inside it)"
            )
        publish(bundle, keep=keep, users=users)

    def current_id(self) -> str | None:
        from recall.index.current import read_current

        return read_current(self.path)

    @contextmanager
    def verified(self, bundle_id: str) -> Iterator[VerifiedBundle]:
        from recall.index.publish import bundle_lock, verify_or_refuse

        path = self.path / bundle_id
        if not BUNDLE_ID.fullmatch(bundle_id) or not path.is_dir():
            raise b.BundleError(f"{self.url}: no bundle {bundle_id[:80]!r}")
        with bundle_lock(path):
            yield verify_or_refuse(path)

    def experiment(self) -> ExperimentState:
        return inspect_experiment(self.path)

    def start_experiment(self, experiment: Experiment, *, users: UserSink | None = None) -> None:
        from recall.index.publish import root_lock

        with root_lock(self.path):  # no publish retains an arm's bundle meanwhile
            _check_start(self, experiment, users)
            _create_exclusively(self.path / EXPERIMENT, experiment.to_json())
        logger.info("started experiment %s in %s", experiment.id, self.url)

    def stop_experiment(self, seen: ExperimentState) -> None:
        from recall.index.publish import root_lock

        with root_lock(self.path):
            now = self.experiment()
            _refuse_changed(self.url, seen, now)
            (self.path / EXPERIMENT).unlink()
            b.fsync_path(self.path)
        logger.info("stopped the experiment of %s", self.url)


@dataclass(frozen=True)
class RemoteCurrent:
    """``CURRENT`` of an S3 root: its ETag (None: no such object) and what it names."""

    etag: str | None
    state: CurrentState


def s3_client() -> S3Client:
    """A boto3 S3 client from the standard AWS configuration (``AWS_ENDPOINT_URL``, the
    credential chain), with bounded timeouts and botocore's standard retries."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=16,
    )
    return boto3.client("s3", config=config)


class S3Root:
    """An S3 (or S3-compatible) root; every call raises :class:`ObjectStoreUnavailable` when the
    store does not answer and :class:`~recall.index.bundle.BundleError` for what it says."""

    def __init__(self, location: S3Location, client: S3Client | None = None) -> None:
        self.location = location
        self.url = location.url
        self._client = client

    @property
    def client(self) -> S3Client:
        if self._client is None:
            self._client = s3_client()
        return self._client

    # -- CURRENT ----------------------------------------------------------------------

    def current(self, if_none_match: str | None = None) -> RemoteCurrent | None:
        """``CURRENT`` now; None when its ETag is still ``if_none_match`` (a conditional
        GET: nothing is transferred then)."""
        got = self._read_if_changed(CURRENT, MAX_CURRENT_BYTES, if_none_match)
        if got is None:
            return None
        etag, raw = got
        if etag is None:
            return RemoteCurrent(None, CurrentState(None))
        return RemoteCurrent(etag, CurrentState.parse(("s3", etag), raw, f"{self.url}/{CURRENT}"))

    def _read_if_changed(
        self, name: str, limit: int, if_none_match: str | None
    ) -> tuple[str | None, bytes] | None:
        """The root's small file ``name``: its ETag and at most ``limit + 1`` bytes, or
        ``(None, b"")`` when there is none; None when its ETag is still ``if_none_match``
        (a conditional GET: nothing is transferred then)."""
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.location.key(name)}
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        with _S3Errors(f"reading {self.url}/{name}", missing_ok=True) as missing:
            response = self.client.get_object(**kwargs)
            raw: bytes = response["Body"].read(limit + 1)
            response["Body"].close()
        if missing.code == _NOT_MODIFIED:
            return None
        if missing.code is not None:
            return None, b""
        return str(response["ETag"]), raw

    def current_id(self) -> str | None:
        current = self.current()
        assert current is not None  # an unconditional GET never answers 304
        if current.state.problem is not None:
            raise b.BundleError(current.state.problem)
        return current.state.bundle_id

    def switch(self, bundle_id: str, seen: RemoteCurrent) -> None:
        """Replace CURRENT if it is still what ``seen`` saw; else :class:`PublishConflict`."""
        condition = {"IfMatch": seen.etag} if seen.etag else {"IfNoneMatch": "*"}
        with _S3Errors(f"writing {self.url}/{CURRENT}", conflicts=True) as conflict:
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self.location.key(CURRENT),
                Body=f"{bundle_id}\n".encode(),
                ContentType="text/plain; charset=utf-8",
                CacheControl="no-cache",
                **condition,
            )
        if conflict.code is not None:
            now = self.current()
            names = now.state.bundle_id if now and now.state.bundle_id else "something else"
            raise PublishConflict(
                f"{self.url}: another publish replaced CURRENT while this one ran (it now "
                f"names {names}); {bundle_id} was uploaded but is not CURRENT: publish it "
                "again to replace that one"
            )

    # -- publishing -------------------------------------------------------------------

    def publish(
        self,
        bundle: Path,
        *,
        keep: int,
        users: UserSink | None = None,
        stale_hours: float = 24.0,
    ) -> None:
        """Verify the local ``bundle``, upload it, load its ``users`` (when given), switch
        CURRENT conditionally, retain (and drop the users of the bundles removed)."""
        from recall.index.publish import bundle_lock, verify_or_refuse

        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        bundle = Path(os.path.abspath(bundle))
        if not BUNDLE_ID.fullmatch(bundle.name):
            raise b.BundleError(f"{bundle}: not a bundle directory name")
        with bundle_lock(bundle):
            verified = verify_or_refuse(bundle)
            seen = self._current_or_absent()
            self._upload(bundle, verified.manifest)
            if users is not None:
                users.load(verified)
            self._commit(bundle.name, seen, keep, stale_hours, users)

    def rollback(
        self,
        bundle_id: str,
        *,
        keep: int,
        users: UserSink | None = None,
        stale_hours: float = 24.0,
    ) -> None:
        """Make the bundle ``bundle_id`` already in the bucket CURRENT again, after
        downloading and verifying it (the replicas' rule) in a temporary directory."""
        seen = self._current_or_absent()
        with self.verified(bundle_id) as verified:
            if users is not None:  # loaded again if they left the store
                users.load(verified)
        self._commit(bundle_id, seen, keep, stale_hours, users)

    @contextmanager
    def verified(self, bundle_id: str) -> Iterator[VerifiedBundle]:
        """Downloaded into a temporary directory (removed after the block) and verified."""
        import tempfile

        from recall.index.publish import verify_or_refuse

        if not BUNDLE_ID.fullmatch(bundle_id):
            raise b.BundleError(f"{bundle_id[:80]!r}: not a bundle id")
        with tempfile.TemporaryDirectory(prefix="recall-verify-") as tmp:
            local = Path(tmp) / bundle_id
            self.download(bundle_id, local)
            yield verify_or_refuse(local)

    # -- EXPERIMENT -------------------------------------------------------------------

    def experiment(self) -> ExperimentState:
        state = self.experiment_if_changed(None)
        assert state is not None  # an unconditional GET never answers 304
        return state

    def experiment_if_changed(self, if_none_match: str | None) -> ExperimentState | None:
        """EXPERIMENT now (key ``("s3", etag)``); None when its ETag is still
        ``if_none_match`` (a conditional GET: nothing is transferred then)."""
        got = self._read_if_changed(EXPERIMENT, MAX_EXPERIMENT_BYTES, if_none_match)
        if got is None:
            return None
        etag, raw = got
        if etag is None:
            return ExperimentState(None)
        return ExperimentState.parse(("s3", etag), raw, f"{self.url}/{EXPERIMENT}")

    def start_experiment(self, experiment: Experiment, *, users: UserSink | None = None) -> None:
        _check_start(self, experiment, users)
        key = self.location.key(EXPERIMENT)
        with _S3Errors(f"writing {self.url}/{EXPERIMENT}", conflicts=True) as conflict:
            written = self.client.put_object(
                Bucket=self.location.bucket,
                Key=key,
                Body=experiment.to_json(),
                ContentType="application/json",
                CacheControl="no-cache",
                IfNoneMatch="*",
            )
        if conflict.code is not None:
            _refuse_running(self.url, self.experiment())
            raise ExperimentConflict(f"{self.url}: another experiment started meanwhile")
        # A retention that read EXPERIMENT before it existed may have removed an arm's
        # bundle since it was verified: then the experiment goes again.
        for arm in experiment.arms:
            try:
                self.read_manifest(arm.bundle_id)
            except b.BundleError:
                self._delete_experiment(str(written["ETag"]))
                raise b.BundleError(
                    f"{self.url}: bundle {arm.bundle_id} was removed while the experiment "
                    "started (a publish's retention); nothing was started"
                ) from None
        logger.info("started experiment %s in %s", experiment.id, self.url)

    def stop_experiment(self, seen: ExperimentState) -> None:
        _refuse_changed(self.url, seen, self.experiment())
        assert seen.key is not None  # _refuse_changed: there is one
        if not self._delete_experiment(str(seen.key[1])):
            _refuse_changed(self.url, seen, self.experiment())
            raise ExperimentConflict(f"{self.url}: EXPERIMENT changed while it was stopped")
        logger.info("stopped the experiment of %s", self.url)

    def _delete_experiment(self, etag: str) -> bool:
        """Delete EXPERIMENT if its ETag is ``etag``; False when it is not (or is gone)."""
        with _S3Errors(f"deleting {self.url}/{EXPERIMENT}", conflicts=True) as conflict:
            self.client.delete_object(
                Bucket=self.location.bucket, Key=self.location.key(EXPERIMENT), IfMatch=etag
            )
        return conflict.code is None

    def _current_or_absent(self) -> RemoteCurrent:
        seen = self.current()
        assert seen is not None  # an unconditional GET never answers 304
        return seen

    def _commit(
        self,
        bundle_id: str,
        seen: RemoteCurrent,
        keep: int,
        stale_hours: float,
        users: UserSink | None = None,
    ) -> None:
        if seen.state.bundle_id == bundle_id:
            logger.info("%s/%s is already CURRENT: nothing to switch", self.url, bundle_id)
        else:
            self.switch(bundle_id, seen)
            was = seen.state.bundle_id or seen.state.problem or "absent"
            logger.info("published %s/%s (CURRENT was %s)", self.url, bundle_id, was)
        try:
            removed = self.retain(keep, stale_hours=stale_hours)
        except (ObjectStoreUnavailable, b.BundleError) as e:  # CURRENT is switched: published
            logger.warning("retention failed after publishing %s: %s", bundle_id, e)
            return
        if users is not None:
            try:
                users.drop(removed)
            except Exception:
                logger.exception("removing the users of %s failed", removed)

    def _upload(self, bundle: Path, manifest: b.Manifest) -> None:
        """Every file, then the manifest; what the bucket holds already is checked, not
        uploaded again. Raise BundleError if the bucket holds this id with other content."""
        where = self.location.child(bundle.name)
        remote_manifest = self._read_object(where.key(b.MANIFEST), b.MAX_MANIFEST_BYTES)
        local_manifest = (bundle / b.MANIFEST).read_bytes()
        if remote_manifest is not None and remote_manifest != local_manifest:
            raise b.BundleError(
                f"{where}: the bucket holds another bundle with this id (bundles are immutable)"
            )
        for name, entry in sorted(manifest.files.items()):
            self._upload_file(bundle / name, where.key(name), entry)
        if remote_manifest is None:
            with _S3Errors(f"uploading {where}/{b.MANIFEST}"):
                self.client.put_object(
                    Bucket=where.bucket, Key=where.key(b.MANIFEST), Body=local_manifest
                )
        logger.info("uploaded %s (%d files)", where, len(manifest.files) + 1)

    def _upload_file(self, path: Path, key: str, entry: b.FileEntry) -> None:
        from boto3.s3.transfer import TransferConfig

        bucket = self.location.bucket
        head = self._head(key)
        if head is not None and _matches(head, entry):
            logger.debug("s3://%s/%s is already uploaded", bucket, key)
            return
        with path.open("rb") as f:
            reader = _HashingReader(f)
            with _S3Errors(f"uploading s3://{bucket}/{key}"):
                self.client.upload_fileobj(
                    reader,
                    bucket,
                    key,
                    ExtraArgs={"Metadata": {"sha256": entry.sha256}},
                    Config=TransferConfig(multipart_chunksize=64 << 20, use_threads=True),
                )
        if (reader.size, reader.hexdigest()) != (entry.bytes, entry.sha256):
            with _S3Errors(f"deleting s3://{bucket}/{key}"):
                self.client.delete_object(Bucket=bucket, Key=key)
            raise b.BundleError(
                f"{path}: changed while it was uploaded (sha256 differs from the manifest's)"
            )

    # -- reading bundles --------------------------------------------------------------

    def read_manifest(self, bundle_id: str) -> tuple[bytes, b.Manifest]:
        """``<id>/manifest.json``: its bytes and what they say (BundleError if missing or
        invalid, or if its id is another)."""
        where = self.location.child(bundle_id)
        raw = self._read_object(where.key(b.MANIFEST), b.MAX_MANIFEST_BYTES)
        if raw is None:
            raise b.BundleError(f"{where}: no {b.MANIFEST} (not a bundle, or not finished)")
        if len(raw) > b.MAX_MANIFEST_BYTES:
            raise b.BundleError(f"{where}/{b.MANIFEST}: longer than {b.MAX_MANIFEST_BYTES} bytes")
        manifest = b.parse_manifest(f"{where}/{b.MANIFEST}", raw)
        if manifest.id != bundle_id:
            raise b.BundleError(f"{where}: the manifest's id is {manifest.id!r}")
        for name in manifest.files:
            if not FILE_NAME.fullmatch(name) or name == b.MANIFEST:
                raise b.BundleError(f"{where}: the manifest lists a bad file name {name[:80]!r}")
        return raw, manifest

    def download(self, bundle_id: str, dest: Path, skip: Collection[str] = ()) -> None:
        """Download the bundle into the directory ``dest`` (created), the manifest last,
        without the files named in ``skip`` (a replica whose users are in the state store
        fetches no user file).

        A file already in ``dest`` with fewer bytes than the manifest says is resumed
        (a ranged GET of the rest), one with more is downloaded again; one of the right
        size is kept (the verification that follows checks its sha256). An object of
        another size than the manifest's is a BundleError before any byte is read.
        """
        raw, manifest = self.read_manifest(bundle_id)
        dest.mkdir(parents=True, exist_ok=True)
        where = self.location.child(bundle_id)
        for name, entry in sorted(manifest.files.items()):
            if name not in skip:
                self._download_file(where.key(name), dest / name, entry.bytes)
        b.replace_atomically(dest / b.MANIFEST, lambda tmp: tmp.write_bytes(raw))

    def _download_file(self, key: str, path: Path, size: int) -> None:
        have = path.stat().st_size if path.exists() else 0
        if have == size:
            return
        if have > size:
            path.unlink()
            have = 0
        where = f"s3://{self.location.bucket}/{key}"
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if have:
            kwargs["Range"] = f"bytes={have}-"
        with _S3Errors(f"downloading {where}", missing_ok=True) as missing:
            response = self.client.get_object(**kwargs)
        if missing.code is not None:
            raise b.BundleError(f"{where}: missing (the manifest lists it)")
        if response["ResponseMetadata"]["HTTPStatusCode"] != 206:  # the whole object
            have = 0
            path.unlink(missing_ok=True)
        total = _object_size(response, have)
        if total != size:
            response["Body"].close()
            raise b.BundleError(f"{where} has {total} bytes, the manifest says {size}")
        with _S3Errors(f"downloading {where}"), path.open("ab") as f:
            for chunk in response["Body"].iter_chunks(_CHUNK):
                f.write(chunk)
        got = path.stat().st_size
        if got != size:  # the connection ended early without an error
            raise ObjectStoreUnavailable(f"{where}: the download ended at {got} of {size} bytes")

    # -- retention --------------------------------------------------------------------

    def retain(self, keep: int, *, stale_hours: float = 24.0) -> list[str]:
        """Delete all but the newest ``keep`` bundles (by ``created_at``, then id),
        CURRENT's and the running experiment's arms'; also unfinished uploads (no
        manifest) older than ``stale_hours``. Returns the bundle ids (prefixes) deleted."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        bundles: list[tuple[str, str]] = []
        unfinished: list[str] = []
        for bundle_id in self._bundle_ids():
            try:
                _, manifest = self.read_manifest(bundle_id)
            except b.BundleError as e:
                if "not finished" in str(e):
                    unfinished.append(bundle_id)
                else:
                    logger.warning("retention: leaving %s/%s alone: %s", self.url, bundle_id, e)
                continue
            bundles.append((manifest.created_at.isoformat(), bundle_id))
        bundles.sort()
        keep_ids = {bundle_id for _, bundle_id in bundles[-keep:]}
        doomed = [bundle_id for _, bundle_id in bundles if bundle_id not in keep_ids]
        cutoff = datetime.now(UTC).timestamp() - stale_hours * 3600
        doomed += [u for u in unfinished if self._newest_object_at(u) < cutoff]
        # read last: a rollback may just have named one, an experiment started
        spared = {self.current_id(), *_arm_bundles(self.experiment())}
        removed = []
        for bundle_id in doomed:
            if bundle_id in spared:
                continue
            self._delete_prefix(bundle_id)
            removed.append(bundle_id)
            logger.info("retention: removed %s/%s", self.url, bundle_id)
        return removed

    def _bundle_ids(self) -> Iterator[str]:
        prefix = self.location.key("") + "/" if self.location.prefix else ""
        with _S3Errors(f"listing {self.url}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix, Delimiter="/"
            )
            names = [
                common["Prefix"][len(prefix) :].rstrip("/")
                for page in pages
                for common in page.get("CommonPrefixes", [])
            ]
        yield from (name for name in names if BUNDLE_ID.fullmatch(name))

    def _objects(self, bundle_id: str) -> list[dict[str, Any]]:
        with _S3Errors(f"listing {self.url}/{bundle_id}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.key(bundle_id) + "/"
            )
            objects = [obj for page in pages for obj in page.get("Contents", [])]
        return objects

    def _newest_object_at(self, bundle_id: str) -> float:
        times = [obj["LastModified"].timestamp() for obj in self._objects(bundle_id)]
        return max(times, default=0.0)

    def _delete_prefix(self, bundle_id: str) -> None:
        """The manifest first (what is left is an unfinished bundle, never a damaged one)."""
        manifest_key = self.location.key(bundle_id, b.MANIFEST)
        keys = [manifest_key] + [
            str(obj["Key"]) for obj in self._objects(bundle_id) if obj["Key"] != manifest_key
        ]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            with _S3Errors(f"deleting {self.url}/{bundle_id}"):
                self.client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
                )

    # -- plumbing ---------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any] | None:
        with _S3Errors(f"reading s3://{self.location.bucket}/{key}", missing_ok=True) as gone:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        return None if gone.code is not None else dict(head)

    def _read_object(self, key: str, limit: int) -> bytes | None:
        """At most ``limit + 1`` bytes of the object ``key``; None when it does not exist."""
        where = f"s3://{self.location.bucket}/{key}"
        with _S3Errors(f"reading {where}", missing_ok=True) as missing:
            response = self.client.get_object(Bucket=self.location.bucket, Key=key)
            data: bytes = response["Body"].read(limit + 1)
            response["Body"].close()
        return None if missing.code is not None else data


class _S3Errors:
    """Turns botocore's errors into ours. ``code`` is set (and the error swallowed) for
    an answer the caller expects: 404 / 304 with ``missing_ok``, 412 / 409 with
    ``conflicts``. A store that does not answer, throttles or fails (5xx) is
    :class:`ObjectStoreUnavailable`; any other answer (403, 400, ...) a BundleError."""

    def __init__(self, doing: str, *, missing_ok: bool = False, conflicts: bool = False) -> None:
        self.doing = doing
        self.expected: set[str] = set()
        if missing_ok:
            self.expected |= {"404", "NoSuchKey", "NotFound", _NOT_MODIFIED}
        if conflicts:
            self.expected |= {_PRECONDITION_FAILED, "PreconditionFailed", _CONFLICT}
        self.code: str | None = None

    def __enter__(self) -> _S3Errors:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> bool:
        if error is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, ClientError):
            answer = error.response.get("Error", {})
            code = str(answer.get("Code", ""))
            status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in self.expected or status in self.expected:
                self.code = status or code
                return True
            if status.startswith("5") or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise ObjectStoreUnavailable(f"{self.doing}: {code or status}") from None
            message = str(answer.get("Message", ""))[:200]
            raise b.BundleError(f"{self.doing}: {code or status} {message}".rstrip()) from None
        if isinstance(error, BotoCoreError | OSError):
            raise ObjectStoreUnavailable(f"{self.doing}: {type(error).__name__}: {error}") from None
        return False


def _arm_bundles(state: ExperimentState) -> set[str]:
    """The bundle ids the arms of the experiment ``state`` holds name (BundleError when
    EXPERIMENT is not a valid one: retention then removes nothing)."""
    experiment = state.running()
    return set() if experiment is None else {arm.bundle_id for arm in experiment.arms}


def _refuse_running(url: str, state: ExperimentState) -> None:
    if state.problem is not None:
        raise ExperimentConflict(
            f"{url}: {EXPERIMENT} exists but is not a valid experiment ({state.problem}); "
            "remove it with `recall experiment stop` first"
        )
    if state.experiment is not None:
        arms = ", ".join(f"{a.name}={a.bundle_id}" for a in state.experiment.arms)
        raise ExperimentConflict(
            f"{url}: experiment {state.experiment.id} is running ({arms}); stop it first"
        )


def _check_start(root: Root, experiment: Experiment, users: UserSink | None) -> None:
    """What starting ``experiment`` on ``root`` needs: no experiment running (else
    ExperimentConflict), a bundle published (the control arm) and every arm's bundle
    verified, its users loaded into ``users`` when given (else BundleError)."""
    _refuse_running(root.url, root.experiment())
    if root.current_id() is None:
        raise b.BundleError(
            f"{root.url}: nothing is published: the control arm is CURRENT's bundle"
        )
    for arm in experiment.arms:
        with root.verified(arm.bundle_id) as verified:
            if users is not None:
                users.load(verified)


def _refuse_changed(url: str, seen: ExperimentState, now: ExperimentState) -> None:
    if now.key is None:
        raise ExperimentConflict(f"{url}: no experiment is running")
    if now.key != seen.key:
        raise ExperimentConflict(f"{url}: {EXPERIMENT} changed meanwhile; nothing was stopped")


def _create_exclusively(path: Path, payload: bytes) -> None:
    """Create ``path`` holding ``payload`` unless it exists (ExperimentConflict): a synced
    temp file hard-linked to the name (``link`` never replaces), then the directory synced."""
    tmp = path.with_name(f".{path.name}.tmp-{os.urandom(4).hex()}")
    try:
        tmp.write_bytes(payload)
        b.fsync_path(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ExperimentConflict(f"{path}: an experiment is running; stop it first") from None
    finally:
        tmp.unlink(missing_ok=True)
    b.fsync_path(path.parent)


class _HashingReader:
    """A binary file object that hashes (sha256) and counts what is read from it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._digest.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _matches(head: dict[str, Any], entry: b.FileEntry) -> bool:
    """The object is the file the manifest lists (its size, and the sha256 we stored)."""
    metadata = head.get("Metadata", {})
    return bool(head.get("ContentLength") == entry.bytes and metadata.get("sha256") == entry.sha256)


def _object_size(response: dict[str, Any], offset: int) -> int:
    """The whole object's size from a GET (ranged from ``offset`` or not)."""
    content_range = response.get("ContentRange")
    if content_range:  # "bytes start-end/total"
        return int(str(content_range).rpartition("/")[2])
    return int(response["ContentLength"]) + offset
