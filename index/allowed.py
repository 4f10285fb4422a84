"""The items a filtered query may return, prepared once for every search strategy.

A filter's mask is the same for many queries (a batch, or every request with the same
filter while the service caches it), and each strategy of :mod:`recall.index.search` needs its
own view of it: the FAISS bitmap, the allowed rows, their grouping by cluster. Each of
those costs a pass over all n_items (~0.1-1 ms at 1M items, as much as a whole query), so
:class:`AllowedItems` computes each view on first use and keeps it.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import numpy.typing as npt

from recall.index.clusters import ClusterGroups, ItemClusters

__all__ = ["AllowedItems"]


class AllowedItems:
    """A read-only bool mask (n_items,) of the allowed items and its derived views.

    Thread-safe without locks: the views are pure functions of the mask (two threads
    computing one at once get equal arrays), and each kept one is a single attribute.
    """

    def __init__(self, mask: npt.ArrayLike) -> None:
        """``mask``: bool (n_items,); copied unless it is already read-only."""
        array = np.asarray(mask)
        if array.dtype != np.bool_ or array.ndim != 1:
            raise ValueError(
                f"allowed must be a bool mask (n_items,), got {array.dtype} {array.shape}"
            )
        if array.flags.writeable:
            array = array.copy()
            array.setflags(write=False)
        self.mask: npt.NDArray[np.bool_] = array
        self.count = int(np.count_nonzero(array))
        self._groups: tuple[ItemClusters, ClusterGroups] | None = None
        self._both: tuple[AllowedItems, AllowedItems] | None = None

    @property
    def n_items(self) -> int:
        """The catalog size (the mask's length; :attr:`count` is how many are allowed)."""
        return int(self.mask.shape[0])

    @property
    def everything(self) -> bool:
        return self.count == self.n_items

    @cached_property
    def rows(self) -> npt.NDArray[np.int64]:
        """The allowed rows, ascending (count,)."""
        return np.flatnonzero(self.mask)

    @cached_property
    def bitmap(self) -> npt.NDArray[np.uint8]:
        """The mask as FAISS's ``IDSelectorBitmap`` reads it (bit i of byte i // 8, little
        endian), (ceil(n_items / 8),) uint8."""
        return np.packbits(self.mask, bitorder="little")

    def groups(self, clusters: ItemClusters) -> ClusterGroups:
        """The allowed rows grouped by ``clusters`` (kept for the last clusters asked)."""
        kept = self._groups
        if kept is not None and kept[0] is clusters:
            return kept[1]
        groups = clusters.group(self.mask)
        self._groups = (clusters, groups)
        return groups

    def nbytes(self) -> int:
        """Bytes held: the mask, the views computed so far, and the kept intersection."""
        held = int(self.mask.nbytes)
        held += sum(
            int(vars(self)[name].nbytes) for name in ("rows", "bitmap") if name in vars(self)
        )
        if self._groups is not None:
            held += self._groups[1].rows.nbytes + self._groups[1].offsets.nbytes
        if self._both is not None:
            held += self._both[1].nbytes()
        return held

    def intersect(self, other: AllowedItems) -> AllowedItems:
        """The items both allow (kept for the last ``other`` asked: a cached filter meets
        the same availability request after request, until an item is disabled)."""
        kept = self._both
        if kept is not None and kept[0] is other:
            return kept[1]
        mask = self.mask & other.mask
        mask.setflags(write=False)
        both = AllowedItems(mask)
        self._both = (other, both)
        return both
