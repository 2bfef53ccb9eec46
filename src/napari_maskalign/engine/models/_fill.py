"""Ignored pixels filled from their nearest valid neighbour: before a spline or a
Fourier transform, so that a mask's edge does not ring (the refinement, the
log-polar search, and aligned copies of frames with ignored pixels)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["filled", "nearest_fill_index"]


def nearest_fill_index(valid):
    """``(targets, sources)``: flat indices of the invalid pixels and of their nearest
    valid pixel, for :func:`filled`; None when every pixel is valid."""
    valid = np.asarray(valid, bool)
    if valid.all():
        return None
    idx = ndi.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    targets = np.flatnonzero(~valid)
    sources = np.ravel_multi_index(tuple(i.ravel()[targets] for i in idx), valid.shape)
    return targets, sources


def filled(frame, index) -> np.ndarray:
    """A float64 copy of ``frame`` whose invalid pixels hold their nearest valid value."""
    out = np.array(frame, dtype=np.float64)
    if index is not None:
        flat = out.reshape(-1)
        flat[index[0]] = flat[index[1]]
    return out
