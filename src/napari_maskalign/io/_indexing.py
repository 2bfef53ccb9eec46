"""Array-style indexing for stacks that read one frame at a time.

:class:`FrameIndexing` sits under every lazy stack of :mod:`.stacks` and
:mod:`.detectors` (a module of its own, so that neither imports the other's
internals).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FrameIndexing"]


class FrameIndexing:
    """Indexing on top of ``_read(i) -> frame``: ints, slices, index lists, tuples."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key):
        rest: tuple = ()
        if isinstance(key, tuple):
            if not key:
                key = slice(None)
            else:
                key, rest = key[0], key[1:]
        n = self.shape[0]

        def frame_index(i) -> int:
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"frame {i} is out of range: the stack has {n} frames")
            return i % n

        if isinstance(key, (int, np.integer)):
            frame = self._read(frame_index(key))
            return frame[rest] if rest else frame
        if isinstance(key, slice):
            idx = range(*key.indices(n))
        elif key is Ellipsis:
            idx, rest = range(n), (Ellipsis, *rest)
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                arr = np.flatnonzero(arr)
            idx = [frame_index(i) for i in arr.ravel()]
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(idx):
            out[j] = self._read(i)
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)
