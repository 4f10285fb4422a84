"""A replica's bundles from an S3 root: a conditional poll of ``CURRENT``, downloads into a
local cache (``RECALL_CACHE_DIR``), and the last verified bundle for when the store is down.

The cache is a local bundle root of its own:

    <cache>/CURRENT            the last bundle this replica verified and served
    <cache>/<id>/              a downloaded bundle (complete: the manifest came last)
    <cache>/.download-<id>/    a download in progress or cut off (resumed next time)

A download goes into ``.download-<id>/`` (each file resumed from where it stopped, the
manifest last) and is renamed to ``<id>/`` when complete. Nothing reads it before
:class:`~recall.service.reloader.BundleHolder` loads it with
:func:`recall.index.verify.verify_bundle` (every file's size and sha256, then the
contents): one that fails is deleted, so the next try downloads it again, and only a
bundle that loaded is written to ``<cache>/CURRENT``. The cache keeps that bundle, the
bundles of the experiment's arms (:meth:`S3CachedSource.pin`) and at most ``keep - 1``
others (the newest, downloads cut off included). Worker processes of one replica share
the cache: a ``flock`` on the directory lets one of them download at a time (the others
skip their turn and find the bundle there on their next poll).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path

from recall.index import bundle as b
from recall.index.current import CurrentState, inspect_current
from recall.index.experiment import ExperimentState
from recall.index.roots import RemoteCurrent, S3Root
from recall.service.reloader import SourceBusy

logger = logging.getLogger(__name__)

__all__ = ["S3CachedSource"]

DOWNLOAD_PREFIX = ".download-"


class S3CachedSource:
    """The :class:`~recall.service.reloader.BundleSource` of an S3 root, through a cache.
    Every method blocks (call it in a thread); :meth:`inspect` and :meth:`fetch` raise
    :class:`~recall.index.roots.ObjectStoreUnavailable` when the store does not answer."""

    def __init__(
        self, root: S3Root, cache: Path, keep: int = 2, skip: Collection[str] = ()
    ) -> None:
        """``skip``: bundle files never downloaded (the user files when the users are in
        the state store)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = root
        self.cache = cache
        self.keep = keep
        self.skip = skip
        self.where = root.url
        self._seen: RemoteCurrent | None = None
        self._experiment: ExperimentState | None = None
        self._pinned: frozenset[str] = frozenset()
        cache.mkdir(parents=True, exist_ok=True)

    def inspect(self) -> CurrentState:
        """CURRENT of the bucket: a conditional GET (If-None-Match its last ETag), so an
        unchanged CURRENT costs one small request and no body."""
        etag = self._seen.etag if self._seen is not None else None
        now = self.root.current(if_none_match=etag)
        if now is not None:
            self._seen = now
        assert self._seen is not None
        return self._seen.state

    def experiment(self) -> ExperimentState:
        """EXPERIMENT of the bucket, by a conditional GET as :meth:`inspect`'s."""
        seen = self._experiment
        etag = str(seen.key[1]) if seen is not None and seen.key is not None else None
        now = self.root.experiment_if_changed(etag)
        if now is not None:
            self._experiment = now
        assert self._experiment is not None
        return self._experiment

    def pin(self, bundle_ids: set[str]) -> None:
        """The experiment's arms' bundles: never pruned from the cache while pinned."""
        self._pinned = frozenset(bundle_ids)

    def fetch(self, bundle_id: str) -> Path:
        """The local directory of ``bundle_id``, downloaded first unless the cache has it."""
        path = self.cache / bundle_id
        if path.is_dir():
            return path
        with self._locked():
            if path.is_dir():  # another worker finished it meanwhile
                return path
            staging = self.cache / f"{DOWNLOAD_PREFIX}{bundle_id}"
            resumed = staging.is_dir()
            logger.info(
                "%s %s/%s into %s",
                "resuming the download of" if resumed else "downloading",
                self.where,
                bundle_id,
                self.cache,
            )
            self.root.download(bundle_id, staging, self.skip)
            os.rename(staging, path)
            b.fsync_path(self.cache)
        return path

    def loaded(self, bundle_id: str) -> None:
        """``bundle_id`` verified and is served: the cache's CURRENT; prune the rest."""
        b.write_text_atomic(self.cache / "CURRENT", f"{bundle_id}\n")
        b.fsync_path(self.cache)
        try:
            with self._locked():
                self._prune(bundle_id)
        except SourceBusy:
            pass  # the worker downloading prunes after its own load

    def refused(self, bundle_id: str) -> None:
        """``bundle_id`` failed verification: delete the cached copy, so a retry downloads
        it again (the bucket may hold a repaired one by then)."""
        for path in (self.cache / bundle_id, self.cache / f"{DOWNLOAD_PREFIX}{bundle_id}"):
            shutil.rmtree(path, ignore_errors=True)

    def fallback(self) -> CurrentState | None:
        """The cache's CURRENT (the last bundle verified here), or None when it names none."""
        state = inspect_current(self.cache)
        return state if state.bundle_id is not None else None

    def _prune(self, serving: str) -> None:
        """Keep ``serving``, the pinned arms' bundles and the newest ``keep - 1`` other
        bundles or downloads."""
        kept = {serving, *self._pinned}
        others = sorted(
            (path.stat().st_mtime, path)
            for path in self.cache.iterdir()
            if path.is_dir()
            and not path.is_symlink()
            and path.name.removeprefix(DOWNLOAD_PREFIX) not in kept
            and (path.name.startswith(DOWNLOAD_PREFIX) or not path.name.startswith("."))
        )
        for _, path in others[: max(0, len(others) - (self.keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
            logger.info("cache: removed %s", path)

    def _locked(self) -> _CacheLock:
        return _CacheLock(self.cache)


class _CacheLock:
    """An exclusive ``flock`` on the cache directory; :class:`SourceBusy` when held."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.cache, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SourceBusy(f"{self.cache}: another worker is downloading") from None

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)
