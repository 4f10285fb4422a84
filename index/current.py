"""Reading ``<root>/CURRENT``: the one line naming the bundle to serve.

:func:`inspect_current` never raises: it says what CURRENT holds right now as a
:class:`CurrentState`, including when it cannot be read or names no bundle id. Its ``key``
changes whenever CURRENT is replaced or rewritten (device, inode, mtime, size, raw bytes),
so a poller that remembers the key of a refused value retries exactly when CURRENT
changes. :func:`read_current` is the strict form for publishing tools.

CURRENT must be a regular file (not a symlink, directory or FIFO) of at most
:data:`MAX_CURRENT_BYTES` bytes of UTF-8 holding one bundle id. ``problem`` texts name
paths and quote up to 80 characters of the content: they are for the server log, never
for a client.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from recall.index.bundle import BundleError

__all__ = [
    "BUNDLE_ID",
    "CURRENT",
    "MAX_CURRENT_BYTES",
    "CurrentState",
    "SmallFile",
    "inspect_current",
    "read_current",
    "read_small_file",
]

CURRENT = "CURRENT"
#: What a bundle id (and so a bundle directory name) may look like.
BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
#: CURRENT holds one id of at most 200 characters; anything much longer is not ours.
MAX_CURRENT_BYTES = 4096

Key = tuple[object, ...]


@dataclass(frozen=True)
class CurrentState:
    """What ``root/CURRENT`` holds now.

    ``key``: None when there is no CURRENT, else a value that differs after any change
    of the file. ``bundle_id``: the id it names, when it is valid. ``problem``: why it
    names no bundle (server-log text: may hold paths and quoted content), else None.
    """

    key: Key | None
    bundle_id: str | None = None
    problem: str | None = None

    @classmethod
    def parse(cls, key: Key, raw: bytes, where: str) -> CurrentState:
        """The state of a CURRENT file ``where`` whose bytes are ``raw``; never raises."""
        if len(raw) > MAX_CURRENT_BYTES:
            return cls(key, problem=f"{where}: longer than {MAX_CURRENT_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return cls(key, problem=f"{where}: not UTF-8 text: {raw[:80]!r}")
        value = text.strip()
        if not BUNDLE_ID.fullmatch(value):
            return cls(key, problem=f"{where}: not a bundle id: {text[:80]!r}")
        return cls(key, bundle_id=value)


@dataclass(frozen=True)
class SmallFile:
    """What a small control file of a root (CURRENT, EXPERIMENT) holds now: ``key`` as
    :class:`CurrentState`'s (None: no such file); ``raw`` its bytes (at most the limit
    plus one), or None with ``problem`` saying why it cannot be read."""

    key: Key | None
    raw: bytes | None = None
    problem: str | None = None


def read_small_file(path: Path, max_bytes: int) -> SmallFile:
    """Read a regular file of at most ``max_bytes`` without following symlinks or
    blocking on odd files; never raises."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return SmallFile(None)
    except OSError as e:
        return SmallFile(("lstat", e.errno), problem=f"{path}: cannot stat: {e.strerror}")
    if not stat.S_ISREG(before.st_mode):
        what = "a symlink" if stat.S_ISLNK(before.st_mode) else "not a regular file"
        target = _link_target(path) if stat.S_ISLNK(before.st_mode) else ""
        return SmallFile(
            (*_stat_key(before), target), problem=f"{path}: is {what}{target and ' to '}{target}"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        why = "became a symlink" if e.errno == errno.ELOOP else e.strerror
        return SmallFile(
            (*_stat_key(before), "open", e.errno), problem=f"{path}: cannot open: {why}"
        )
    try:
        st = os.fstat(fd)
        raw = os.read(fd, max_bytes + 1) if stat.S_ISREG(st.st_mode) else b""
    except OSError as e:
        return SmallFile(
            (*_stat_key(before), "read", e.errno), problem=f"{path}: cannot read: {e.strerror}"
        )
    finally:
        os.close(fd)
    key = (*_stat_key(st), raw)
    if not stat.S_ISREG(st.st_mode):
        return SmallFile(key, problem=f"{path}: not a regular file")
    if len(raw) > max_bytes:
        return SmallFile(key, problem=f"{path}: longer than {max_bytes} bytes")
    return SmallFile(key, raw)


def inspect_current(root: Path) -> CurrentState:
    """Read ``root/CURRENT`` without following symlinks or blocking on odd files."""
    path = root / CURRENT
    found = read_small_file(path, MAX_CURRENT_BYTES)
    if found.key is None:
        return CurrentState(None)
    if found.raw is None:
        return CurrentState(found.key, problem=found.problem)
    return CurrentState.parse(found.key, found.raw, str(path))


def read_current(root: Path) -> str | None:
    """The bundle id named by ``root/CURRENT``, or None when there is none yet.

    Raises :class:`~recall.index.bundle.BundleError` when CURRENT exists but names no bundle id.
    """
    state = inspect_current(root)
    if state.problem is not None:
        raise BundleError(state.problem)
    return state.bundle_id


def _stat_key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)[:200]
    except OSError:
        return ""
