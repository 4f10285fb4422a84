"""Item clusters (index.clusters) and prepared filters (index.allowed): the partition, the
per-filter grouping, the candidate walk, validation, and the views AllowedItems keeps."""

from __future__ import annotations

import numpy as np
import pytest

from recall.index.allowed import AllowedItems
from recall.index.clusters import ItemClusters, build_clusters
from tests.index_data import clustered

N_ITEMS, DIM = 3000, 8


@pytest.fixture(scope="module")
def clusters() -> ItemClusters:
    items, _ = clustered(N_ITEMS, 4, DIM, seed=2)
    return build_clusters(items, 32, seed=0)


def test_build_partitions_every_row_once_by_nearest_centroid(clusters: ItemClusters) -> None:
    items, _ = clustered(N_ITEMS, 4, DIM, seed=2)
    assert clusters.count == 32 and clusters.n_items == N_ITEMS
    assert np.array_equal(np.sort(clusters.rows), np.arange(N_ITEMS))
    for c in (0, 7, 31):
        members = clusters.rows[clusters.offsets[c] : clusters.offsets[c + 1]]
        d = ((items[members, None, :] - clusters.centroids[None]) ** 2).sum(-1)
        assert (d.argmin(1) == c).mean() > 0.99  # float32 ties aside: the nearest centroid
    assert build_clusters(items[:5], 32).count == 5  # never more clusters than rows


def test_group_keeps_only_allowed_rows_in_their_clusters(clusters: ItemClusters) -> None:
    mask = np.random.default_rng(1).random(N_ITEMS) < 0.2
    groups = clusters.group(mask)
    assert groups.offsets[-1] == mask.sum()
    for c in range(clusters.count):
        got = groups.rows[groups.offsets[c] : groups.offsets[c + 1]]
        members = clusters.rows[clusters.offsets[c] : clusters.offsets[c + 1]]
        assert np.array_equal(got, members[mask[members]])


def test_empty_clusters_group_to_nothing() -> None:
    """A cluster with no rows (k-means can leave one) groups to an empty slice, and its
    neighbours keep theirs."""
    centroids = np.eye(4, 3, dtype=np.float32)
    rows = np.array([3, 0, 4, 1, 2], dtype=np.int32)
    clusters = ItemClusters(centroids, rows, np.array([0, 2, 2, 5, 5], dtype=np.int64))
    groups = clusters.group(np.array([True, False, True, True, True]))
    assert groups.offsets.tolist() == [0, 2, 2, 4, 4]
    assert groups.rows.tolist() == [3, 0, 4, 2]


def test_candidates_take_the_nearest_clusters_until_enough(clusters: ItemClusters) -> None:
    """Whole clusters, nearest first (L2 to the padded query), stopping at the first that
    reaches ``want`` allowed rows; every allowed row when fewer exist."""
    mask = np.random.default_rng(2).random(N_ITEMS) < 0.5
    groups = clusters.group(mask)
    query = np.random.default_rng(3).normal(size=DIM + 1).astype(np.float32)
    order = np.argsort(((clusters.centroids - query) ** 2).sum(1))
    sizes = np.diff(groups.offsets)[order]
    want = int(sizes[:3].sum()) - 1  # reached inside the third nearest cluster
    got = clusters.candidates(query, groups, want)
    expected = np.concatenate(
        [groups.rows[groups.offsets[c] : groups.offsets[c + 1]] for c in order[:3]]
    )
    assert np.array_equal(got, expected)
    everything = clusters.candidates(query, groups, 10 * N_ITEMS)
    assert np.array_equal(np.sort(everything), np.flatnonzero(mask))
    none = clusters.group(np.zeros(N_ITEMS, dtype=bool))
    assert clusters.candidates(query, none, 10).size == 0


def test_invalid_arrays_are_refused(clusters: ItemClusters) -> None:
    good = clusters.to_arrays()
    cases = {
        "rows must hold": {**good, "rows": np.zeros(N_ITEMS, dtype=np.int32)},
        "rows must be int32": {**good, "rows": good["rows"].astype(np.int64)},
        "offsets must rise": {**good, "offsets": good["offsets"][::-1].copy()},
        "offsets must be int64": {**good, "offsets": good["offsets"][:-1]},
        "NaN": {**good, "centroids": np.full_like(good["centroids"], np.nan)},
        "expected arrays": {"rows": good["rows"]},
    }
    for message, arrays in cases.items():
        with pytest.raises(ValueError, match=message):
            ItemClusters.from_arrays(arrays)
    assert ItemClusters.from_arrays(good).count == clusters.count
    clusters.check_fits(N_ITEMS, DIM + 1)  # the index space of these items
    for n, width in ((N_ITEMS - 1, DIM + 1), (N_ITEMS, DIM + 2)):
        with pytest.raises(ValueError, match=f"covers {N_ITEMS} items of width {DIM + 1}"):
            clusters.check_fits(n, width)


def test_allowed_items_views_are_computed_once_and_read_only(clusters: ItemClusters) -> None:
    mask = np.random.default_rng(4).random(N_ITEMS) < 0.3
    allowed = AllowedItems(mask)
    mask[:] = False  # a copy was taken: the caller may reuse its array
    assert allowed.count == int(allowed.mask.sum()) > 0 and not allowed.mask.flags.writeable
    assert np.array_equal(allowed.rows, np.flatnonzero(allowed.mask))
    bits = np.unpackbits(allowed.bitmap, bitorder="little")[:N_ITEMS].astype(bool)
    assert np.array_equal(bits, allowed.mask)
    assert allowed.groups(clusters) is allowed.groups(clusters)
    assert allowed.rows is allowed.rows and allowed.bitmap is allowed.bitmap
    assert AllowedItems(np.ones(5, dtype=bool)).everything
    with pytest.raises(ValueError, match="bool mask"):
        AllowedItems(np.ones((2, 5), dtype=bool))


def test_intersect_is_kept_for_the_same_other() -> None:
    rng = np.random.default_rng(5)
    a = AllowedItems(rng.random(100) < 0.5)
    b = AllowedItems(rng.random(100) < 0.5)
    both = a.intersect(b)
    assert np.array_equal(both.mask, a.mask & b.mask)
    assert a.intersect(b) is both
    c = AllowedItems(rng.random(100) < 0.5)  # a new availability: computed again
    assert np.array_equal(a.intersect(c).mask, a.mask & c.mask)
