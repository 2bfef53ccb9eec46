"""Ignored pixels filled before a spline or a Fourier transform, so that a mask's
edge does not ring: from their nearest valid neighbour (the refinement, the
log-polar search, and aligned copies of frames with ignored pixels), or
smoothly from the valid pixels nearby (:func:`smooth_filler`: the Wiener
estimate and the stack's template)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..backends._cache import BoundedCache

__all__ = ["filled", "nearest_fill_index", "smooth_filler"]

#: the fill indices of the last few masks, by their content: a mask is filled for every
#: frame aligned (one ``apply_shifts`` call per frame or block, the mean's pass too), and
#: its distance transform cost about a third of shifting a 512 px frame
#: (``FILL_CACHE_BYTES``: what the cache may hold, index bytes; a larger index is not kept)
FILL_CACHE_BYTES = 64 << 20
_FILL_CACHE = BoundedCache(max_bytes=FILL_CACHE_BYTES, max_item_bytes=FILL_CACHE_BYTES)


def nearest_fill_index(valid):
    """``(targets, sources)``: flat indices of the invalid pixels and of their nearest
    valid pixel, for :func:`filled`; None when every pixel is valid.

    The last few masks' indices are kept, keyed by the mask's content (a mask
    changed in place is another mask), and returned read-only: the same mask
    is not transformed again for every frame."""
    valid = np.asarray(valid, bool)
    if valid.all():
        return None
    key = (valid.shape, np.packbits(valid).tobytes())
    hit = _FILL_CACHE.get(key)
    if hit is not None:
        return hit
    idx = ndi.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    targets = np.flatnonzero(~valid)
    sources = np.ravel_multi_index(tuple(i.ravel()[targets] for i in idx), valid.shape)
    targets.setflags(write=False)
    sources.setflags(write=False)
    found = (targets, sources)
    _FILL_CACHE.put(key, found, targets.nbytes + sources.nbytes + len(key[1]))
    return found


def filled(frame, index, dtype=np.float64) -> np.ndarray:
    """A copy of ``frame`` (float64, or ``dtype``) whose invalid pixels hold their
    nearest valid value."""
    out = np.array(frame, dtype=dtype)
    if index is not None:
        flat = out.reshape(-1)
        flat[index[0]] = flat[index[1]]
    return out


#: the smooth fill's mask weights of the last few masks (:func:`smooth_filler`), by content
#: (8 masks; weights over an eighth of the fill's budget are not kept)
_SMOOTH_CACHE = BoundedCache(max_entries=8, max_item_bytes=FILL_CACHE_BYTES // 8)


def _smooth_weights(valid, sigma: float):
    """``(box, inside, weight, far)`` of :func:`smooth_filler` for ``valid``; kept for the
    last few masks, read-only (a refiner's set-up per reference of a stack, or per frame
    in "previous" mode, smoothed the same mask again: a sixth of its set-up)."""
    key = (valid.shape, np.packbits(valid).tobytes(), float(sigma))
    hit = _SMOOTH_CACHE.get(key)
    if hit is not None:
        return hit
    # only the invalid pixels read the smoothing: it runs on their bounding box grown by
    # the Gaussian's reach (scipy's truncate of 4 sigmas), the same values there (a
    # beam block's box is a third of a frame)
    reach = int(4.0 * float(sigma) + 0.5)
    box = []
    for ax, n in enumerate(valid.shape):
        hit = np.flatnonzero(~valid.all(axis=tuple(a for a in range(valid.ndim) if a != ax)))
        box.append(slice(max(int(hit[0]) - reach, 0), min(int(hit[-1]) + 1 + reach, n)))
    box = tuple(box)
    inside = valid[box]
    w = ndi.gaussian_filter(inside.astype(np.float64), sigma)
    weight, far = np.maximum(w, 1e-3), w <= 1e-3
    found = (box, inside, weight, far if far.any() else None)
    for a in found[1:]:
        if a is not None:
            a.setflags(write=False)
    _SMOOTH_CACHE.put(key, found, weight.nbytes)
    return found


def smooth_filler(valid, sigma: float = 4.0):
    """A function giving a float64 copy of an image whose invalid pixels (False in
    ``valid``) hold the Gaussian-weighted mean of the valid pixels nearby (normalized
    convolution of width ``sigma``; the mean of all valid pixels where none is near):
    smooth, so a Fourier transform does not ring on them. The mask's weights are
    computed once, here (or found for a mask seen lately)."""
    valid = np.asarray(valid, bool)
    if valid.all():
        return lambda image: np.asarray(image, dtype=np.float64)
    box, inside, weight, far = _smooth_weights(valid, sigma)
    outside = ~inside

    def fill(image):
        out = np.array(image, dtype=np.float64)  # the one copy: filled in place
        part = out[box]
        smooth = np.where(inside, part, 0.0)
        ndi.gaussian_filter(smooth, sigma, output=smooth)  # (a line filter: in place)
        smooth /= weight
        if far is not None:  # (the valid pixels' mean only where a pixel has no near one)
            smooth[far] = float(out[valid].mean())
        np.copyto(part, smooth, where=outside)
        return out

    return fill
