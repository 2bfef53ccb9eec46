"""Reuse across calls of the drop-in ``phase_cross_correlation``: correlators by content.

Code written for scikit-image calls ``phase_cross_correlation(reference, frame,
reference_mask=...)`` in a loop with one reference. Everything that depends
only on the reference and the masks (their spectra, the overlap of valid
pixels, the accepted shifts: seven of the twelve transforms of a call) is then
the same every time. :func:`masked_correlator` keeps the last few correlators
and hands one back when the same reference and masks come again.

"The same" is decided by content, never by identity: an entry is found by a
cheap fingerprint (shape, dtype and a sample of the values) and then confirmed
by comparing every bit of the reference and of both masks with the copies the
entry holds, so an array changed in place is never served a stale answer.
Memory is bounded (a few entries, a byte budget; the newest entry is always
kept) and the cache is safe to use from many threads.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..backends._cache import BoundedCache
from ..backends._memory import warm_heap
from ._masked import MaskedCorrelator

__all__ = ["CorrelatorCache", "masked_correlator"]

#: values sampled (evenly spaced) for an array's fingerprint
_SAMPLE = 4096


def _bits(a: np.ndarray) -> np.ndarray:
    """Floats as unsigned integers of the same size: NaN, -0.0 and 0.0 compare by bits."""
    if a.dtype.kind in "fc":
        return a.view(f"u{a.dtype.itemsize // (2 if a.dtype.kind == 'c' else 1)}")
    return a


def fingerprint(a: np.ndarray) -> tuple:
    """Shape, dtype and a hash of a sample of the values: cheap, not a proof of equality."""
    flat = a.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    sample = np.ascontiguousarray(_bits(flat[::step]))
    digest = hashlib.blake2b(sample.tobytes(), digest_size=16).hexdigest()
    return a.shape, a.dtype.str, digest


def same_content(a: np.ndarray, b: np.ndarray) -> bool:
    """Every bit equal (and the same shape and dtype)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(_bits(a), _bits(b)))


def _nbytes(obj) -> int:
    """The bytes of ``obj``'s numpy arrays (its own, or its attributes')."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    total = 0
    for value in getattr(obj, "__dict__", {}).values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        total += sum(v.nbytes for v in items if isinstance(v, np.ndarray))
    return total


class CorrelatorCache:
    """Correlators keyed by the content of their arrays; least recently used go first.

    Parameters
    ----------
    max_entries : int
        Correlators kept at most.
    max_bytes : int
        Memory budget of the kept correlators (their arrays and the copies of
        the inputs); the most recent entry is kept even if it alone exceeds it.
    """

    def __init__(self, max_entries: int = 4, max_bytes: int = 512 * 2**20):
        self._entries = BoundedCache(max_entries=int(max_entries), max_bytes=int(max_bytes))

    max_entries = property(lambda self: self._entries.max_entries)
    max_bytes = property(lambda self: self._entries.max_bytes)
    hits = property(lambda self: self._entries.hits, doc="calls served a kept correlator")
    misses = property(lambda self: self._entries.misses, doc="calls that built one")

    def get(self, arrays: tuple[np.ndarray, ...], settings: tuple, build):
        """The cached result of ``build(*copies)`` for arrays of this content and
        these (hashable) settings; built (outside the lock) and kept on a miss."""
        arrays = tuple(np.asarray(a) for a in arrays)
        key = (tuple(fingerprint(a) for a in arrays), settings)
        entry = self._entries.get(key, accept=lambda kept: all(
            same_content(a, b) for a, b in zip(arrays, kept[0])))
        if entry is not None:
            return entry[1]
        copies = tuple(np.array(a, copy=True, order="C") for a in arrays)
        value = build(*copies)
        self._entries.put(key, (copies, value), _nbytes(value) + sum(c.nbytes for c in copies))
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


#: the drop-in's cache (module level: shared by every thread)
CACHE = CorrelatorCache()


def masked_correlator(reference, reference_mask, moving_mask, *, moving_shape, overlap_ratio,
                      upsample_factor, dtype) -> MaskedCorrelator:
    """A :class:`MaskedCorrelator` for these inputs, reused when the reference and
    the masks (by content) and the settings are those of a recent call. The
    inputs must be the checked, finite ones the drop-in hands on."""
    settings = (tuple(moving_shape), float(overlap_ratio), float(upsample_factor), np.dtype(dtype).str)
    warm_heap()  # calls in a loop reuse freed memory instead of faulting in fresh pages

    def build(ref, ref_mask, mov_mask):
        return MaskedCorrelator(
            ref,
            ref_mask,
            mov_mask,
            moving_shape=moving_shape,
            overlap_ratio=overlap_ratio,
            upsample_factor=upsample_factor,
            shrink=False,
            dtype=dtype,
        )

    return CACHE.get((reference, reference_mask, moving_mask), settings, build)
