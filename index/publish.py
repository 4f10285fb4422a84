"""Publishing: the atomic ``CURRENT`` swap, full verification first, and retention.

``<root>/CURRENT`` holds one line, the id of the bundle to serve. :func:`publish` verifies
the whole bundle (every file's size and sha256, shapes, finite vectors, the index loads),
then replaces ``CURRENT`` via a temp file + fsync + ``os.replace`` + fsync of ``root``, and
finally applies retention: the newest ``keep`` bundles (by ``created_at``, then id) stay,
``CURRENT`` and every arm of the running ``EXPERIMENT`` always stay, the others are
renamed to ``.trash-*`` and removed; leftover ``.staging-*`` directories older than
``stale_hours`` go too, and so do ``.CURRENT.tmp-*`` (``.EXPERIMENT.tmp-*``) files left
by a publish (an experiment's start) that died between writing its temp file and the
rename (the link).
Retention reads other bundles' manifests: what it cannot read it logs and leaves alone,
and once ``CURRENT`` is switched nothing it meets makes :func:`publish` raise.

What "verifies" means is :func:`recall.index.verify.verify_bundle`, the same function the service
loads bundles with: a bundle that publishes is one every replica serves.

Locks (``flock`` on directories, no lock files): a build holds its bundle's lock, a publish
holds the bundle's lock and the root's; so a bundle cannot be published mid-build, nor
rebuilt once it is ``CURRENT``, and retention skips bundles being built. The only writer
of ``.CURRENT.tmp-*`` is a publish, and of ``.EXPERIMENT.tmp-*`` an experiment's start,
both under the root's lock; so whoever holds that lock knows every such file is a dead
writer's and may remove it (both publish and retain do).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from recall.index import bundle as b
from recall.index.current import BUNDLE_ID, CURRENT, inspect_current, read_current
from recall.index.experiment import EXPERIMENT, inspect_experiment
from recall.index.verify import VerifiedBundle, verify_bundle

logger = logging.getLogger(__name__)

__all__ = [
    "CURRENT",
    "UserSink",
    "bundle_lock",
    "publish",
    "read_current",
    "retain",
    "root_lock",
    "verify_bundle",
    "verify_or_refuse",
]


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


def root_lock(root: Path) -> AbstractContextManager[None]:
    """Exclusive lock of a root (held by publishes, retention and experiment changes)."""
    return _dir_lock(root, "a publish or experiment change of this root")


def _write_current(root: Path, bundle_id: str) -> None:
    b.write_text_atomic(root / CURRENT, f"{bundle_id}\n")
    b.fsync_path(root)


class UserSink(Protocol):
    """Where a bundle's users are served from when not from its files (the state store):
    :meth:`load` puts every user of a verified bundle there (resumable and idempotent,
    raises when it cannot), :meth:`drop` removes the users of bundles retention removed."""

    def load(self, verified: VerifiedBundle) -> object: ...

    def drop(self, bundle_ids: Iterable[str]) -> None: ...


def publish(
    bundle: Path, *, keep: int = 3, stale_hours: float = 24.0, users: UserSink | None = None
) -> list[Path]:
    """Verify ``bundle`` and make it ``CURRENT`` of its parent directory, atomically; then
    apply :func:`retain`. Returns the directories retention removed. With ``users``, the
    bundle's users are loaded there before ``CURRENT`` changes (a failure raises and
    leaves ``CURRENT`` as it was), and the users of the bundles retention removed go too.

    Used for a new bundle and for rollback to an older one; publishing the bundle that is
    already ``CURRENT`` verifies it and leaves ``CURRENT`` untouched. Any refusal is a
    :class:`~recall.index.bundle.BundleError` and leaves ``CURRENT`` as it was. Once ``CURRENT``
    names the bundle, nothing raises: what retention cannot do is logged and skipped.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    bundle = Path(os.path.abspath(bundle))
    root = bundle.parent
    if not BUNDLE_ID.fullmatch(bundle.name):
        raise b.BundleError(f"{bundle}: not a bundle directory name")
    with bundle_lock(bundle), root_lock(root):
        verified = verify_or_refuse(bundle)
        if users is not None:
            users.load(verified)
        previous = inspect_current(root)  # may be unreadable: publishing repairs that
        if previous.bundle_id == bundle.name:
            logger.info("%s is already CURRENT: nothing to switch", bundle)
        else:
            _write_current(root, bundle.name)
            was = previous.bundle_id or previous.problem or "absent"
            logger.info("published %s (CURRENT was %s)", bundle, was)
        try:
            removed = _retain(root, keep, stale_hours)
        except Exception:  # CURRENT is switched: the publish is done whatever happens here
            logger.exception("retention failed after publishing %s; CURRENT names it", bundle)
            return []
        if users is not None:
            gone = [p.name for p in removed if BUNDLE_ID.fullmatch(p.name)]
            try:
                users.drop(gone)
            except Exception:
                logger.exception("removing the users of %s failed; CURRENT names %s", gone, bundle)
        return removed


def verify_or_refuse(bundle: Path) -> VerifiedBundle:
    """:func:`verify_bundle`, with any failure a :class:`~recall.index.bundle.BundleError`."""
    try:
        return verify_bundle(bundle)
    except b.BundleError:
        raise
    except Exception as e:  # a loader's own error on content that passed its checksum
        logger.debug("verifying %s failed", bundle, exc_info=True)
        raise b.BundleError(f"{bundle}: refused: {type(e).__name__}: {e}") from None


def retain(root: Path, keep: int = 3, *, stale_hours: float = 24.0) -> list[Path]:
    """Remove all but the newest ``keep`` bundles of ``root``, never ``CURRENT``, an arm of
    the running experiment nor a bundle being built; also stale ``.staging-*``
    directories and leftover ``.CURRENT.tmp-*`` and ``.EXPERIMENT.tmp-*`` files. Returns
    what it removed. Raises :class:`~recall.index.bundle.BundleError` (removing nothing)
    when CURRENT names no bundle id or EXPERIMENT is not a valid experiment."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    with root_lock(root):
        return _retain(root, keep, stale_hours)


def _remove_dead_temps(root: Path) -> list[Path]:
    """Remove ``.CURRENT.tmp-*`` and ``.EXPERIMENT.tmp-*`` files; call only under the
    root's lock (see the module docstring: no live writer can be using one then)."""
    removed = []
    for name in (CURRENT, EXPERIMENT):
        for path in root.glob(f".{name}.tmp-*"):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
                logger.info("removed %s, left by a writer that died", path)
    return removed


def _retain(root: Path, keep: int, stale_hours: float) -> list[Path]:
    current = read_current(root)
    experiment = inspect_experiment(root).running()  # an invalid one: nothing is removed
    bundles: list[tuple[str, str, Path]] = []
    for path in root.iterdir():
        if path.name.startswith(".") or not BUNDLE_ID.fullmatch(path.name):
            continue
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            manifest = b.read_manifest(path)
        except (b.BundleError, OSError) as e:  # not ours, not finished, or unreadable
            logger.warning("retention: leaving %s alone: %s", path, e)
            continue
        if manifest.id == path.name:
            bundles.append((manifest.created_at.isoformat(), path.name, path))
    bundles.sort()
    keep_names = {name for _, name, _ in bundles[-keep:]}
    if current is not None:
        keep_names.add(current)
    if experiment is not None:
        keep_names.update(arm.bundle_id for arm in experiment.arms)
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
    removed.extend(_remove_dead_temps(root))
    cutoff = time.time() - stale_hours * 3600
    for path in root.iterdir():
        stale = path.name.startswith(".trash-") or (
            path.name.startswith(".staging-") and path.lstat().st_mtime < cutoff
        )
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            logger.info("retention: removed leftover %s", path)
    if removed:
        b.fsync_path(root)
    return removed
