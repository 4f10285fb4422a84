"""Publishing: the atomic ``CURRENT`` swap, full verification first, and retention.

``<root>/CURRENT`` holds one line, the id of the bundle to serve. :func:`publish` verifies
the whole bundle (every file's size and sha256, shapes, finite vectors, the index loads),
then replaces ``CURRENT`` via a temp file + fsync + ``os.replace`` + fsync of ``root``, and
finally applies retention: the newest ``keep`` bundles (by ``created_at``, then id) stay,
``CURRENT`` always stays, the others are renamed to ``.trash-*`` and removed; leftover
``.staging-*`` directories older than ``stale_hours`` go too.

Locks (``flock`` on directories, no lock files): a build holds its bundle's lock, a publish
holds the bundle's lock and the root's; so a bundle cannot be published mid-build, nor
rebuilt once it is ``CURRENT``, and retention skips bundles being built.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from index import bundle as b
from index.search import ItemIndex, check_vectors

logger = logging.getLogger(__name__)

__all__ = [
    "CURRENT",
    "bundle_lock",
    "publish",
    "read_current",
    "retain",
    "verify_bundle",
]

CURRENT = "CURRENT"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@contextmanager
def _dir_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on directory ``path`` (fail fast when another holds it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise b.BundleError(f"{path}: no such directory") from None
    except NotADirectoryError:
        raise b.BundleError(f"{path}: not a directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise b.BundleError(f"{path}: {what} is in progress elsewhere") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def bundle_lock(bundle: Path) -> AbstractContextManager[None]:
    """Exclusive lock of one bundle directory (held by builds and publishes)."""
    return _dir_lock(bundle, "a build or publish of this bundle")


def read_current(root: Path) -> str | None:
    """The bundle id named by ``root/CURRENT``, or None when there is none yet."""
    try:
        text = (root / CURRENT).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    value = text.strip()
    if not _ID.fullmatch(value):
        raise b.BundleError(f"{root / CURRENT}: not a bundle id: {text[:80]!r}")
    return value


def verify_bundle(bundle: Path) -> b.Manifest:
    """Check a whole bundle before it may be published; return its manifest.

    Every trainer file and ``index.faiss`` must be listed and pass its size + sha256
    check; vectors must be finite float32 of width ``dim`` with the manifest's counts;
    id arrays and popularity must match the counts; the index must load with the right
    width and size. Raises :class:`~index.bundle.BundleError` with the first problem.
    """
    manifest = b.read_manifest(bundle)
    if manifest.id != bundle.name:
        raise b.BundleError(f"{bundle}: directory name differs from manifest id {manifest.id}")
    if manifest.index is None or b.INDEX not in manifest.files:
        raise b.BundleError(f"{bundle}: no index (run `recall build-index {bundle}`)")
    n_items, n_users = manifest.counts.items, manifest.counts.users
    for name in (b.ITEM_IDS, b.USER_IDS, b.ITEM_POPULARITY):
        array = b.load_array(bundle, manifest, name, mmap=True)
        rows = n_users if name == b.USER_IDS else n_items
        if array.ndim != 1 or array.shape[0] != rows:
            raise b.BundleError(f"{bundle}: {name} has shape {array.shape}, expected ({rows},)")
    users = b.load_array(bundle, manifest, b.USER_VECTORS, mmap=True)
    check_vectors(bundle, b.USER_VECTORS, users, n_users, manifest.dim)
    seen = b.load_arrays(bundle, manifest, b.USER_SEEN)
    indptr = seen.get("indptr")
    if indptr is None or indptr.shape != (n_users + 1,):
        raise b.BundleError(f"{bundle}: {b.USER_SEEN} indptr must have {n_users + 1} entries")
    b.load_arrays(bundle, manifest, b.USER_TOWER)
    ItemIndex.load(bundle)  # item vectors + index.faiss: checksums, shapes, NaN, width
    return manifest


def _write_current(root: Path, bundle_id: str) -> None:
    b.write_text_atomic(root / CURRENT, f"{bundle_id}\n")
    b.fsync_path(root)


def publish(bundle: Path, *, keep: int = 3, stale_hours: float = 24.0) -> list[Path]:
    """Verify ``bundle`` and make it ``CURRENT`` of its parent directory, atomically; then
    apply :func:`retain`. Returns the directories retention removed.

    Used for a new bundle and for rollback to an older one. On any verification error
    ``CURRENT`` is left as it was.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    bundle = Path(os.path.abspath(bundle))
    root = bundle.parent
    if not _ID.fullmatch(bundle.name):
        raise b.BundleError(f"{bundle}: not a bundle directory name")
    with bundle_lock(bundle), _dir_lock(root, "a publish to this root"):
        verify_bundle(bundle)
        previous = read_current(root)
        _write_current(root, bundle.name)
        logger.info("published %s (CURRENT was %s)", bundle, previous)
        return _retain(root, keep, stale_hours)


def retain(root: Path, keep: int = 3, *, stale_hours: float = 24.0) -> list[Path]:
    """Remove all but the newest ``keep`` bundles of ``root``, never ``CURRENT`` nor a
    bundle being built; also stale ``.staging-*`` directories. Returns what it removed."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    with _dir_lock(root, "a publish to this root"):
        return _retain(root, keep, stale_hours)


def _retain(root: Path, keep: int, stale_hours: float) -> list[Path]:
    current = read_current(root)
    bundles: list[tuple[str, str, Path]] = []
    for path in root.iterdir():
        if path.name.startswith(".") or not path.is_dir() or not _ID.fullmatch(path.name):
            continue
        try:
            manifest = b.read_manifest(path)
        except b.BundleError:
            continue  # not ours, or not finished: leave it alone
        if manifest.id == path.name:
            bundles.append((manifest.created_at.isoformat(), path.name, path))
    bundles.sort()
    keep_names = {name for _, name, _ in bundles[-keep:]}
    if current is not None:
        keep_names.add(current)
    removed: list[Path] = []
    for _, name, path in bundles:
        if name in keep_names:
            continue
        try:
            with bundle_lock(path):
                trash = root / f".trash-{name}-{secrets.token_hex(3)}"
                os.rename(path, trash)
        except b.BundleError as e:
            logger.warning("retention: keeping %s: %s", path, e)
            continue
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
        logger.info("retention: removed %s", path)
    cutoff = time.time() - stale_hours * 3600
    for path in root.iterdir():
        stale = path.name.startswith(".trash-") or (
            path.name.startswith(".staging-") and path.stat().st_mtime < cutoff
        )
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            logger.info("retention: removed leftover %s", path)
    if removed:
        b.fsync_path(root)
    return removed
