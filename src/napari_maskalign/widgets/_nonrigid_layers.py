"""What a non-rigid result shows in napari, as layer data (no Qt, no viewer).

* ``<image> patch shifts``: a time-indexed Vectors layer, one arrow per matched
  patch at its centre, the patch's deformation beyond the frame's global
  shift (the local part of the field), coloured by the patch's correlation
  quality; the layer's *length* control exaggerates the arrows (they start
  at ``EXAGGERATION`` times their size);
* ``<image> deformation``: ``|v(x) + s|`` per frame, the field's magnitude beyond
  the global shift, a lazy (dask) stack computed frame by frame from the
  spline coefficients.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXAGGERATION", "deformation_name", "deformation_stack", "patch_vectors",
           "vectors_name"]

#: the arrows' initial length factor (the deformations are a few pixels)
EXAGGERATION = 5.0


def vectors_name(source: str) -> str:
    return f"{source} patch shifts"


def deformation_name(source: str) -> str:
    return f"{source} deformation"


def patch_vectors(result) -> tuple[np.ndarray, np.ndarray]:
    """``(data (k, 2, 3), quality (k,))`` for a Vectors layer: positions ``(t, row, col)``
    and directions ``(0, drow, dcol)`` of every matched patch of every frame."""
    shifts = np.asarray(result.patch_shifts, float)  # (n, m, 2): the field at the centres
    quality = np.asarray(result.patch_quality, float)
    n, m = shifts.shape[:2]
    local = shifts + np.asarray(result.shifts, float)[:, None, :]  # beyond the global part
    ok = np.isfinite(local).all(axis=2)
    t, j = np.nonzero(ok)
    centres = np.asarray(result.patch_centres, float)[j]
    data = np.zeros((len(t), 2, 3))
    data[:, 0, 0] = t
    data[:, 0, 1:] = centres
    data[:, 1, 1:] = local[t, j]
    return data, quality[t, j]


def deformation_stack(result):
    """``(n, H, W)`` float32 dask array: the field's magnitude beyond the global shift."""
    import dask.array as da

    grid, shifts = result.grid, np.asarray(result.shifts, float)
    coef = da.from_array(np.asarray(result.coefficients), chunks=(1, 2, *grid.grid_shape))

    def _block(c, block_info=None):
        i = block_info[0]["array-location"][0][0]
        out = []
        for k, ck in enumerate(c):
            v = grid.evaluate(ck) + shifts[i + k][:, None, None]
            out.append(np.sqrt((v * v).sum(axis=0)))
        return np.stack(out).astype(np.float32)

    return coef.map_blocks(_block, dtype=np.float32, drop_axis=1,
                           chunks=(1, *grid.shape))
