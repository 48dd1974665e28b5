"""A small thread-safe, bounded LRU cache for per-image results (keyed by ``LoadedImage.key``).

Gradio serves several users from one process, so every per-image cache is shared between threads.
:meth:`LRUCache.get_or_compute` runs the computation outside the cache-wide lock (a slow model pass
must not block lookups of other keys) but under a per-key lock: two threads missing the same key
at once compute it once, the second waits and gets the first's value.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

_MISSING = object()


class LRUCache(Generic[V]):
    """A bounded mapping that evicts the least recently used entry.

    Args:
        maxsize: most entries kept (>= 1).

    Attributes:
        hits: lookups answered from the cache.
        misses: lookups that found nothing.
    """

    def __init__(self, maxsize: int = 16) -> None:
        if int(maxsize) < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, list] = {}  # key -> [lock held while computing, threads using it]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        """Membership test; does not count as a hit or miss, nor refresh the entry."""
        with self._lock:
            return key in self._data

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value for ``key`` (refreshed as most recent), or ``default``."""
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return value  # type: ignore[return-value]

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` as the most recent entry, evicting the oldest beyond ``maxsize``."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value for ``key``, computing and storing it on a miss (once, whatever the threads)."""
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING:
                self._data.move_to_end(key)
                self.hits += 1
                return value  # type: ignore[return-value]
            self.misses += 1
            entry = self._inflight.setdefault(key, [threading.RLock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                with self._lock:
                    value = self._data.get(key, _MISSING)
                    if value is not _MISSING:  # another thread computed it while this one waited
                        self._data.move_to_end(key)
                        return value  # type: ignore[return-value]
                computed = compute()
                self.put(key, computed)
                return computed
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._inflight.pop(key, None)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self.hits = 0
            self.misses = 0
