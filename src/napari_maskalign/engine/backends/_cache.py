"""One bounded, thread-safe least-recently-used map for the engine's module-level
caches (the fill indices and smoothing weights of masks, the spectrum geometry of
a shape, the drop-in's correlators), so that each does not carry its own lock and
eviction code. Imports nothing from the rest of the engine."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["BoundedCache"]


class BoundedCache:
    """A thread-safe map that forgets its least recently used entries first.

    Every bound is optional (None: none). After each :meth:`put` the least
    recently used entries go while the map holds more than ``max_entries`` or
    its sizes sum to more than ``max_bytes``; the newest item is always kept,
    even alone over ``max_bytes``, unless it is over ``max_item_bytes``: such
    an item is not kept at all (the caller, who computed it, still returns it).

    Values are kept as they are, not copied: keep read-only arrays, or copies
    nobody else holds. ``hits`` and ``misses`` count :meth:`get`'s answers.
    """

    def __init__(self, max_entries=None, max_bytes=None, max_item_bytes=None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._entries: OrderedDict = OrderedDict()  # key -> (value, nbytes), oldest first
        self._held = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key, default=None, *, accept=None):
        """The value kept for ``key``, which becomes the most recently used, or
        ``default``. With ``accept``, a kept value is only an answer if
        ``accept(value)`` is true (called under the lock: a key that is only a
        fingerprint of the content confirmed by the content itself)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None and (accept is None or accept(found[0])):
                self._entries.move_to_end(key)
                self.hits += 1
                return found[0]
            self.misses += 1
            return default

    def put(self, key, value, nbytes: int = 0) -> bool:
        """Keep ``value`` (of size ``nbytes``) for ``key`` as the most recently used,
        replacing any older one, then evict down to the bounds. False when the item
        is over ``max_item_bytes`` and so not kept (an older value stays)."""
        nbytes = int(nbytes)
        with self._lock:
            if self.max_item_bytes is not None and nbytes > self.max_item_bytes:
                return False
            old = self._entries.pop(key, None)
            self._held += nbytes - (old[1] if old is not None else 0)
            self._entries[key] = (value, nbytes)
            while len(self._entries) > 1 and (
                (self.max_entries is not None and len(self._entries) > self.max_entries)
                or (self.max_bytes is not None and self._held > self.max_bytes)
            ):
                self._held -= self._entries.popitem(last=False)[1][1]
            return True

    @property
    def nbytes(self) -> int:
        """The sizes of the kept items, summed."""
        return self._held

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0

    def __len__(self) -> int:
        return len(self._entries)
