"""Compiled filters of one bundle, shared by its requests: a small LRU of allowed items.

Compiling a filter reads whole attribute columns: ~17 ms at 1M items for a genre, year
and language condition (a multi-valued ``any`` alone ~11 ms), several times the search
itself, and the same few filters ("only what ships to this country") come back request
after request. :class:`FilterCache` keeps the most recently used filters, compiled to
:class:`~recall.index.allowed.AllowedItems` (the mask and the views the search strategies
prepare from it once: bitmap, rows, cluster groups, the mask AND the availability),
keyed by the filter's canonical JSON, within a byte budget: what the entries and their
keys hold when a filter is added (a key can be as large as a request body; the views grow
as strategies ask for them, so the budget is checked again at every addition). A filter
over the budget on its own is answered and not kept. Errors are not cached (a bad filter
is cheap to refuse again).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

from recall.index.allowed import AllowedItems

__all__ = ["MAX_BYTES", "MAX_ENTRIES", "FilterCache", "filter_key"]

MAX_BYTES = 128 << 20
"""Compiled filters kept per bundle, in bytes, keys included (a key's ``sys.getsizeof``).
A filter holds 1.1-7 bytes per catalog item (:meth:`AllowedItems.nbytes`: the mask and
bitmap, int32 cluster groups of the allowed rows, the same again for its AND with the
disabled items): about 19 to 119 filters of 1M items."""
MAX_ENTRIES = 256
"""At most this many filters, however small the catalog."""

Spec = Mapping[str, Mapping[str, object]]


def filter_key(spec: Spec) -> str:
    """The canonical JSON of a filter: key order does not matter (``1990`` and ``1990.0``
    stay two keys, one mask each)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


class FilterCache:
    """LRU of compiled filters (:class:`AllowedItems` over n_items), for one bundle;
    thread-safe."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, AllowedItems] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, spec: Spec, compile_: Callable[[Spec], AllowedItems]) -> AllowedItems:
        """The allowed items of ``spec``: cached, or ``compile_(spec)`` (its errors
        propagate, and nothing is cached). The least recently used entries go until the
        rest fit the budget; a new one that does not fit alone is not kept. Two threads
        missing at once both compile; one is kept."""
        key = filter_key(spec)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        compiled = compile_(spec)  # outside the lock: other filters need not wait
        if _weight(key, compiled) > self.max_bytes:
            return compiled  # alone over the budget: answered, not kept
        with self._lock:
            self._entries[key] = compiled
            self._entries.move_to_end(key)
            held = sum(_weight(k, entry) for k, entry in self._entries.items())
            while self._entries and (held > self.max_bytes or len(self._entries) > MAX_ENTRIES):
                oldest_key, oldest = self._entries.popitem(last=False)
                held -= _weight(oldest_key, oldest)
        return compiled


def _weight(key: str, entry: AllowedItems) -> int:
    """Bytes one entry holds: its key string and its allowed items."""
    return sys.getsizeof(key) + entry.nbytes()
