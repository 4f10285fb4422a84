"""The bundle contract (schema_version 1 and 2): layout, manifest, atomic writes, verified reads.

A bundle is a directory of plain ``.npy``/``.npz`` arrays plus ``manifest.json``, which
records the sha256 and size of every file. schema_version 2 adds ``user_history.npz``
(each user's training window and encoded features, :mod:`recall.index.history`) and the
manifest's ``trained_until``; a bundle is version 2 exactly when it has that file.
Version 2 may also hold ``item_attributes.npz`` (the items file's columns,
:mod:`recall.index.attributes`), described by the manifest's ``item_attributes``: both or neither.
A bundle that ``recall import`` wrote from vectors made elsewhere (:mod:`recall.index.importer`)
has no ``user_tower.npz``: its manifest's ``history_rule`` says how a history becomes a query
vector (:mod:`recall.index.item_mean`), ``source`` records the import and its inputs, and
``metric`` may be ``cosine`` (every vector of unit norm; scores are cosines).
Writers stage everything under ``<root>/.staging-<id>/`` and rename the finished
directory into place, so a reader never sees half a bundle. Readers verify sizes and
checksums before trusting a file, and open every file as :func:`open_bundle_file` says
(a regular file of the bundle: no symlink, FIFO or device). Nothing is ever pickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"

ITEM_IDS = "item_ids.npy"
ITEM_VECTORS = "item_vectors.npy"
USER_IDS = "user_ids.npy"
USER_VECTORS = "user_vectors.npy"
USER_SEEN = "user_seen.npz"
USER_TOWER = "user_tower.npz"
ITEM_POPULARITY = "item_popularity.npy"
USER_HISTORY = "user_history.npz"
ITEM_ATTRIBUTES = "item_attributes.npz"
INDEX = "index.faiss"
ITEM_CLUSTERS = "item_clusters.npz"
"""Written by the index builder for HNSW: the item clusters of filtered search."""

TRAINER_FILES_V1 = (
    ITEM_IDS,
    ITEM_VECTORS,
    USER_IDS,
    USER_VECTORS,
    USER_SEEN,
    USER_TOWER,
    ITEM_POPULARITY,
)
"""Every file the trainer writes into a schema_version 1 bundle."""

TRAINER_FILES = (*TRAINER_FILES_V1, USER_HISTORY)
"""Every file the trainer writes (schema_version 2)."""

_HASH_CHUNK = 1 << 20
#: ``manifest.json`` is a few KiB; anything past this is not ours (and is not read).
MAX_MANIFEST_BYTES = 16 << 20


class BundleError(Exception):
    """A bundle is missing, incomplete, damaged or inconsistent."""


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    bytes: int = Field(ge=0)


class Counts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    users: int = Field(ge=0)
    items: int = Field(ge=1)
    interactions: int = Field(ge=0)


class AttributeSpec(BaseModel):
    """One entry of the manifest's ``item_attributes``: a column of ``item_attributes.npz``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["categorical", "multi", "numeric"]


class HistoryRule(BaseModel):
    """The manifest's ``history_rule``, for a bundle without a user tower: a history's query
    vector is the mean of the item vectors of its last ``history_length`` items, normalized
    to unit norm when the metric is cosine (:class:`recall.index.item_mean.ItemMean`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["item_mean"] = "item_mean"
    history_length: int = Field(ge=1, le=10_000)


class InputFile(BaseModel):
    """One input file of ``recall import`` as it was read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str
    bytes: int = Field(ge=0)
    rows: int = Field(ge=0)
    columns: list[str] = Field(description="the arrays or columns read from it")


class ImportSource(BaseModel):
    """The manifest's ``source`` of an imported bundle: the command and what it read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["import"] = "import"
    model: str | None = Field(None, description="what made the vectors, as the user named it")
    command: str = Field(description="the `recall import` command line")
    inputs: dict[Literal["items", "users", "interactions", "item_attributes"], InputFile]
    normalized: bool = Field(description="vectors scaled to unit norm at import (cosine)")


class Manifest(BaseModel):
    """``manifest.json``: what a bundle holds and how it was made."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["recall-bundle"] = "recall-bundle"
    schema_version: Literal[1, 2] = 1
    id: str
    created_at: datetime
    dim: int = Field(ge=2, description="vector width (a trained bundle's bias coordinate included)")
    metric: Literal["inner_product", "cosine"] = Field(
        "inner_product", description="cosine: every vector has unit norm, scores are cosines"
    )
    counts: Counts
    files: dict[str, FileEntry]
    trainer: dict[str, Any] = Field(default_factory=dict)
    index: dict[str, Any] | None = None
    trained_until: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="unix seconds: the largest timestamp of the training input data "
        "(schema_version 2; events after it are fresh)",
    )
    item_attributes: list[AttributeSpec] | None = Field(
        default=None,
        description=f"the columns of {ITEM_ATTRIBUTES} (schema_version 2, optional)",
    )
    history_rule: HistoryRule | None = Field(
        default=None,
        description=f"a bundle without {USER_TOWER}: how a history becomes a query vector "
        "(null: through the user tower)",
    )
    source: ImportSource | None = Field(
        default=None, description="where the vectors came from (null: `recall train`)"
    )

    @model_validator(mode="after")
    def _user_side(self) -> Manifest:
        """A bundle has the user tower or a history rule, never both (verification needs
        one); cosine is for imports."""
        if self.history_rule is not None and USER_TOWER in self.files:
            raise ValueError(f"a bundle has {USER_TOWER} or a history_rule, not both")
        if self.metric == "cosine" and self.history_rule is None:
            raise ValueError(
                "metric cosine needs a history_rule (a user tower scores by inner product)"
            )
        return self

    @model_validator(mode="after")
    def _version_fields(self) -> Manifest:
        """Version 2 has ``trained_until`` and ``user_history.npz``; version 1 neither."""
        v2 = self.trained_until is not None or USER_HISTORY in self.files
        if self.schema_version == 2 and not (
            self.trained_until is not None and USER_HISTORY in self.files
        ):
            raise ValueError(f"schema_version 2 needs trained_until and {USER_HISTORY}")
        if self.schema_version == 1 and v2:
            raise ValueError(f"schema_version 1 has neither trained_until nor {USER_HISTORY}")
        if self.schema_version == 1 and (
            self.item_attributes is not None or ITEM_ATTRIBUTES in self.files
        ):
            raise ValueError(f"schema_version 1 has no item attributes ({ITEM_ATTRIBUTES})")
        return self


def new_bundle_id(now: datetime | None = None) -> str:
    """A sortable, unique bundle id such as ``20261127T094641Z-3f9a2c``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_of(path), bytes=path.stat().st_size)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: str) -> None:
    """Write text to ``path`` via a temp file + fsync + ``os.replace``."""
    write_text_atomic(path, payload)


def write_text_atomic(path: Path, payload: str) -> None:
    """Write text to ``path`` (UTF-8) with :func:`replace_atomically`."""
    replace_atomically(path, lambda tmp: tmp.write_text(payload, encoding="utf-8"))


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Make ``path`` what ``write(tmp)`` writes to a temp file ``.<name>.tmp-<hex>`` in the
    same directory: fsync it, then ``os.replace``. Readers see the old content or the new
    one, never a mix; on an error the temp file is removed. fsync the directory
    (:func:`fsync_path`) afterwards to make the rename itself durable.
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_array(path: Path, array: np.ndarray | Mapping[str, np.ndarray]) -> None:
    """Save one array as ``.npy`` or a mapping of arrays as ``.npz``; refuse object dtypes."""
    arrays = array if isinstance(array, Mapping) else {"": array}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise BundleError(
                f"{path.name}{':' + name if name else ''}: object arrays are not allowed"
            )
    with path.open("wb") as f:
        if isinstance(array, Mapping):
            np.savez(f, allow_pickle=False, **array)
        else:
            np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_bundle(
    root: Path,
    bundle_id: str,
    arrays: Mapping[str, np.ndarray | Mapping[str, np.ndarray]],
    *,
    dim: int,
    counts: Counts,
    trainer: Mapping[str, Any],
    trained_until: float | None = None,
    item_attributes: Sequence[Mapping[str, str]] | None = None,
    metric: Literal["inner_product", "cosine"] = "inner_product",
    history_rule: HistoryRule | None = None,
    source: ImportSource | None = None,
) -> Path:
    """Write a new bundle atomically and return its final directory ``root/bundle_id``.

    ``arrays`` maps file names (``*.npy`` or ``*.npz``) to an array or a mapping of arrays.
    With :data:`USER_HISTORY` among them (and ``trained_until``, unix seconds) the bundle is
    schema_version 2, else 1. ``item_attributes`` (``[{"name", "kind"}]``) is the schema of
    :data:`ITEM_ATTRIBUTES` among ``arrays`` (version 2 only). An imported bundle gives
    ``history_rule`` in place of :data:`USER_TOWER`, its ``source`` and maybe ``metric``.
    Files are written and fsynced under ``root/.staging-<id>/``, the manifest last, then
    the directory is renamed into place. On any failure the staging directory is removed
    and nothing appears under ``root/<id>``.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / bundle_id
    if final.exists():
        raise BundleError(f"bundle {bundle_id} already exists in {root}")
    staging = root / f".staging-{bundle_id}"
    staging.mkdir()
    try:
        for name, array in arrays.items():
            save_array(staging / name, array)
        manifest = Manifest(
            id=bundle_id,
            created_at=datetime.now(UTC),
            dim=dim,
            counts=counts,
            files={name: file_entry(staging / name) for name in sorted(arrays)},
            trainer=dict(trainer),
            schema_version=2 if USER_HISTORY in arrays else 1,
            trained_until=trained_until,
            item_attributes=None
            if item_attributes is None
            else [AttributeSpec.model_validate(dict(a)) for a in item_attributes],
            metric=metric,
            history_rule=history_rule,
            source=source,
        )
        write_json_atomic(staging / MANIFEST, manifest.model_dump_json(indent=2))
        fsync_path(staging)
        os.rename(staging, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote bundle %s", final)
    return final


def open_bundle_file(bundle: Path, name: str) -> int:
    """Open file ``name`` of ``bundle`` for reading; return the descriptor (close it).

    A bundle file must be a regular file in the bundle directory itself: a symlink (to
    anywhere), a FIFO, a device or a directory is a :class:`BundleError`. The open never
    follows a symlink and never blocks (``O_NOFOLLOW | O_NONBLOCK``; blocking is restored
    once it is known to be a regular file), so such a file cannot hang a reader.
    """
    path = bundle / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: {name} is missing") from None
    except OSError as e:
        why = "is a symlink" if e.errno == errno.ELOOP else f"cannot be opened: {e.strerror}"
        raise BundleError(f"{bundle}: {name} {why}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{bundle}: {name} is not a regular file (a FIFO, device, ...)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_at_most(fd: int, limit: int, consume: Callable[[bytes], object]) -> int:
    """Pass the bytes of ``fd`` to ``consume`` in chunks, stopping after ``limit`` + 1 bytes
    (the one more tells a longer file); return how many were read."""
    total = 0
    while total <= limit and (chunk := os.read(fd, min(_HASH_CHUNK, limit + 1 - total))):
        consume(chunk)
        total += len(chunk)
    return total


def read_manifest(bundle: Path) -> Manifest:
    """Parse ``bundle/manifest.json`` (at most :data:`MAX_MANIFEST_BYTES` of UTF-8 JSON)."""
    path = bundle / MANIFEST
    try:
        fd = open_bundle_file(bundle, MANIFEST)
    except BundleError:
        if not os.path.lexists(path):
            why = (  # the root given for one of its bundles: the likeliest slip
                f"a bundle root: name one of its bundles, {bundle}/<bundle-id>"
                if os.path.lexists(bundle / "CURRENT")
                else "not a bundle, or not finished"
            )
            raise BundleError(f"{bundle}: no {MANIFEST} ({why})") from None
        raise
    parts: list[bytes] = []
    try:
        size = _read_at_most(fd, MAX_MANIFEST_BYTES, parts.append)
    except OSError as e:
        raise BundleError(f"{path}: cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: longer than {MAX_MANIFEST_BYTES} bytes")
    return parse_manifest(str(path), b"".join(parts))


def parse_manifest(where: str, raw: bytes) -> Manifest:
    """The manifest ``raw`` (UTF-8 JSON) read from ``where`` (named in errors)."""
    try:
        return Manifest.model_validate(json.loads(raw.decode("utf-8")))
    except RecursionError:  # nested deeper than Python's json reads
        raise BundleError(f"{where}: invalid manifest: nested too deep") from None
    except (ValueError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise BundleError(f"{where}: invalid manifest: {e}") from None


def verify_file(bundle: Path, manifest: Manifest, name: str) -> Path:
    """Return the path of ``name`` after checking its size and sha256 against the manifest.

    The file is opened as :func:`open_bundle_file` says and at most the manifest's size
    (+ 1 byte) is hashed, so neither a FIFO nor an endless file can hang the check.
    """
    entry = manifest.files.get(name)
    if entry is None:
        raise BundleError(f"{bundle}: {name} is not listed in the manifest")
    fd = open_bundle_file(bundle, name)
    digest = hashlib.sha256()
    try:
        size = os.fstat(fd).st_size
        if size != entry.bytes:
            raise BundleError(f"{bundle}: {name} has {size} bytes, manifest says {entry.bytes}")
        read = _read_at_most(fd, entry.bytes, digest.update)
    except OSError as e:
        raise BundleError(f"{bundle}: {name} cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)
    if read != entry.bytes or digest.hexdigest() != entry.sha256:
        raise BundleError(f"{bundle}: {name} fails its sha256 check (damaged or modified)")
    return bundle / name


def load_array(bundle: Path, manifest: Manifest, name: str, *, mmap: bool = False) -> np.ndarray:
    """Load a verified ``.npy`` file (memory-mapped read-only when ``mmap``: a plain,
    read-only ``np.ndarray`` view of the map, as :func:`map_arrays` gives; the
    ``np.memmap`` subclass would run Python code on every slice of the serving path)."""
    path = verify_file(bundle, manifest, name)
    try:
        array: np.ndarray = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as e:
        raise BundleError(f"{bundle}: {name} is not a plain numpy array: {e}") from None
    return array.view(np.ndarray) if mmap else array


def load_arrays(bundle: Path, manifest: Manifest, name: str) -> dict[str, np.ndarray]:
    """Load every array of a verified ``.npz`` file into memory."""
    path = verify_file(bundle, manifest, name)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as e:
        raise BundleError(f"{bundle}: {name} is not a plain numpy archive: {e}") from None


_LOCAL_HEADER = 30  # bytes of a zip local file header before the name and extra field
_NPY_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def map_arrays(bundle: Path, manifest: Manifest, name: str) -> dict[str, np.ndarray]:
    """Every array of a verified ``.npz`` file, memory-mapped read-only (not copied: the
    workers of a replica share the pages, like the vectors').

    ``np.savez`` stores each array uncompressed as a ``.npy`` member, so each one is a
    plain array at an offset of the file. A compressed member, an object dtype or a
    member that does not fit its zip entry is a :class:`BundleError`.
    """
    path = verify_file(bundle, manifest, name)
    where = f"{bundle}: {name}"
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as f:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    raise BundleError(f"{where}: {info.filename} is not a stored .npy member")
                f.seek(info.header_offset)
                local = f.read(_LOCAL_HEADER)
                if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                    raise BundleError(f"{where}: {info.filename} has no local zip header")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
                f.seek(start)
                reader = _NPY_READERS.get(np.lib.format.read_magic(f))
                if reader is None:
                    raise BundleError(f"{where}: {info.filename} has an unknown .npy version")
                shape, fortran, dtype = reader(f)
                if dtype.hasobject:
                    raise BundleError(f"{where}: {info.filename}: object arrays are not allowed")
                offset = f.tell()
                size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if offset + size > start + info.file_size:
                    raise BundleError(f"{where}: {info.filename} is shorter than its header says")
                key = info.filename.removesuffix(".npy")
                if size == 0:
                    arrays[key] = np.zeros(shape, dtype=dtype)
                    continue
                mapped = np.memmap(
                    path,
                    dtype=dtype,
                    mode="r",
                    offset=offset,
                    shape=shape,
                    order="F" if fortran else "C",
                )
                arrays[key] = np.asarray(mapped)  # a plain ndarray view of the map
    except (zipfile.BadZipFile, ValueError, OSError, struct.error) as e:
        raise BundleError(f"{where} is not a plain numpy archive: {e}") from None
    return arrays
