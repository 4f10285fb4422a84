"""The bundle contract: atomic writes, verified reads, nothing pickled."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recall.index import bundle as b


def _write(root: Path, arrays: dict[str, object] | None = None, bundle_id: str = "b1") -> Path:
    return b.write_bundle(
        root,
        bundle_id,
        arrays  # type: ignore[arg-type]
        if arrays is not None
        else {
            b.ITEM_IDS: np.arange(3, dtype=np.int64),
            b.ITEM_VECTORS: np.ones((3, 4), dtype=np.float32),
            b.USER_SEEN: {"indptr": np.array([0, 1]), "indices": np.array([2], dtype=np.int32)},
        },
        dim=4,
        counts=b.Counts(users=1, items=3, interactions=1),
        trainer={"config": {"seed": 0}},
    )


def test_written_bundle_verifies_and_round_trips(tmp_path: Path) -> None:
    bundle = _write(tmp_path)
    manifest = b.read_manifest(bundle)
    assert manifest.id == "b1" and manifest.dim == 4 and manifest.schema_version == 1
    assert set(manifest.files) == {b.ITEM_IDS, b.ITEM_VECTORS, b.USER_SEEN}
    np.testing.assert_array_equal(b.load_array(bundle, manifest, b.ITEM_IDS), [0, 1, 2])
    seen = b.load_arrays(bundle, manifest, b.USER_SEEN)
    np.testing.assert_array_equal(seen["indices"], [2])
    assert [p.name for p in tmp_path.iterdir()] == ["b1"]


def test_failure_half_way_leaves_no_bundle_directory(tmp_path: Path) -> None:
    class Exploding(dict[str, np.ndarray]):
        def items(self):  # type: ignore[no-untyped-def,override]
            yield b.ITEM_IDS, np.arange(3)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, Exploding())
    assert list(tmp_path.iterdir()) == []


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(b.BundleError, match="object arrays"):
        _write(tmp_path, {b.ITEM_IDS: np.array(["a", 1], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_never_overwritten(tmp_path: Path) -> None:
    _write(tmp_path)
    with pytest.raises(b.BundleError, match="already exists"):
        _write(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "bytes"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00"), "sha256"),
    ],
)
def test_damaged_file_is_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    bundle = _write(tmp_path)
    manifest = b.read_manifest(bundle)
    damage(bundle / b.ITEM_VECTORS)
    with pytest.raises(b.BundleError, match=message):
        b.load_array(bundle, manifest, b.ITEM_VECTORS)


def test_unfinished_or_invalid_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(b.BundleError, match=r"no manifest\.json"):
        b.read_manifest(tmp_path)
    (tmp_path / b.MANIFEST).write_text('{"format": "recall-bundle", "schema_version": 2}')
    with pytest.raises(b.BundleError, match="invalid manifest"):
        b.read_manifest(tmp_path)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    bundle = _write(tmp_path)
    path = bundle / b.ITEM_IDS
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    forged = b.Manifest.model_validate(
        {**b.read_manifest(bundle).model_dump(), "files": {b.ITEM_IDS: b.file_entry(path)}}
    )
    with pytest.raises(b.BundleError, match="not a plain numpy array"):
        b.load_array(bundle, forged, b.ITEM_IDS)


BAD_CURRENTS = [
    (b"\xff\n", "not UTF-8"),
    (b"a/b\n", "not a bundle id"),
    (b"", "not a bundle id"),
    (b"a" * 5000, "longer than 4096 bytes"),
]
"""CURRENT contents that name no bundle, and what the problem says (local and S3 roots)."""


def test_current_names_a_bundle_id_or_says_why_not(tmp_path: Path) -> None:
    from recall.index.current import CURRENT, inspect_current, read_current

    assert inspect_current(tmp_path).key is None and read_current(tmp_path) is None
    current = tmp_path / CURRENT
    current.write_text("20260101T000000Z-aaaaaa\n")
    assert read_current(tmp_path) == "20260101T000000Z-aaaaaa"
    for raw, why in BAD_CURRENTS:
        current.write_bytes(raw)
        state = inspect_current(tmp_path)
        assert state.bundle_id is None and state.problem is not None and why in state.problem
        with pytest.raises(b.BundleError, match=why):
            read_current(tmp_path)


def test_current_must_be_a_regular_file(tmp_path: Path) -> None:
    from recall.index.current import CURRENT, inspect_current

    target = tmp_path / "elsewhere"
    target.write_text("20260101T000000Z-aaaaaa\n")
    current = tmp_path / CURRENT
    current.symlink_to(target)
    assert "is a symlink" in (inspect_current(tmp_path).problem or "")
    current.unlink()
    os.mkfifo(current)  # opening a FIFO for reading would block without O_NONBLOCK
    assert "not a regular file" in (inspect_current(tmp_path).problem or "")
    current.unlink()
    current.mkdir()
    assert "not a regular file" in (inspect_current(tmp_path).problem or "")


def test_current_key_changes_when_current_is_replaced_even_with_the_same_text(
    tmp_path: Path,
) -> None:
    from recall.index.current import CURRENT, inspect_current

    b.write_text_atomic(tmp_path / CURRENT, "x1\n")
    first = inspect_current(tmp_path)
    assert inspect_current(tmp_path) == first  # unchanged file, same key
    b.write_text_atomic(tmp_path / CURRENT, "x1\n")  # a re-publish of the same id
    again = inspect_current(tmp_path)
    assert again.bundle_id == first.bundle_id == "x1" and again.key != first.key


def test_a_bundle_with_user_history_is_schema_version_2_and_needs_trained_until(
    tmp_path: Path,
) -> None:
    history = {"indptr": np.array([0, 1]), "items": np.array([2], dtype=np.int32)}
    arrays = {b.ITEM_IDS: np.arange(3, dtype=np.int64), b.USER_HISTORY: history}
    with pytest.raises(ValueError, match="schema_version 2 needs trained_until"):
        _write(tmp_path, arrays)
    assert list(tmp_path.iterdir()) == []
    bundle = b.write_bundle(
        tmp_path,
        "b2",
        arrays,
        dim=4,
        counts=b.Counts(users=1, items=3, interactions=1),
        trainer={},
        trained_until=1.5e9,
    )
    manifest = b.read_manifest(bundle)
    assert manifest.schema_version == 2 and manifest.trained_until == 1.5e9
    assert b.USER_HISTORY in manifest.files


def _resigned_npz(bundle: Path, name: str, write: object) -> b.Manifest:
    """Write ``name`` with ``write(file)`` and record it in the manifest."""
    path = bundle / name
    with path.open("wb") as f:
        write(f)  # type: ignore[operator]
    manifest = b.read_manifest(bundle)
    return b.Manifest.model_validate(
        {**manifest.model_dump(), "files": {**manifest.files, name: b.file_entry(path)}}
    )


def _short_member(f: io.BufferedWriter) -> None:
    """A stored member whose .npy header promises 100 int64 but holds 1."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (100,)}
    )
    with zipfile.ZipFile(f, "w") as archive:
        archive.writestr("a.npy", header.getvalue() + bytes(8))


def test_map_arrays_memory_maps_each_member_of_an_npz(tmp_path: Path) -> None:
    arrays = {
        "indptr": np.array([0, 2, 2, 5], dtype=np.int64),
        "items": np.array([4, 1, 0, 2, 3], dtype=np.int32),
        "matrix": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "empty": np.zeros((0, 3), dtype=np.int64),
        "names": np.array(["a", "bc"]),
    }
    bundle = _write(tmp_path, {b.ITEM_IDS: np.arange(3, dtype=np.int64), "h.npz": arrays})
    mapped = b.map_arrays(bundle, b.read_manifest(bundle), "h.npz")
    assert set(mapped) == set(arrays)
    for key, array in arrays.items():
        np.testing.assert_array_equal(mapped[key], array)
        assert mapped[key].dtype == array.dtype and mapped[key].shape == array.shape
        if array.size:
            assert isinstance(mapped[key].base, np.memmap) and not mapped[key].flags.writeable
    assert type(mapped["items"]) is np.ndarray  # not the memmap subclass (orjson refuses it)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda f: np.savez_compressed(f, a=np.arange(3)), "a.npy is not a stored .npy member"),
        (
            lambda f: np.savez(f, a=np.array([{"x": 1}], dtype=object), allow_pickle=True),
            "object arrays are not allowed",
        ),
        (lambda f: f.write(b"PK\x03\x04 not a zip at all"), "is not a plain numpy archive"),
        (_short_member, "a.npy is shorter than its header says"),
    ],
)
def test_map_arrays_refuses_what_it_cannot_map(tmp_path: Path, write: object, message: str) -> None:
    bundle = _write(tmp_path)
    manifest = _resigned_npz(bundle, "h.npz", write)
    with pytest.raises(b.BundleError, match=message):
        b.map_arrays(bundle, manifest, "h.npz")
