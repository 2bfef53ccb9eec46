"""Non-rigid fields: a stack of them kept as spline coefficients, their result, applying them.

Convention (scikit-image's optical flow): a field ``v`` is ``(2, H, W)`` in
(row, col) on the reference grid, and the aligned frame is ``moving(x + v(x))``.
A pure shift ``s`` in scikit-image's registration sign is ``v = -s``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..kernels._bspline import SplineGrid
from ._shift import check_frames, check_resampling, map_frames

__all__ = ["FIELD_CONVENTION", "FieldStack", "apply_fields", "warp_field"]

#: said wherever fields are stored (zarr attributes, the shifts CSV's header)
FIELD_CONVENTION = ("aligned(x) = moving(x + v(x)); v = (row, col) on the reference grid, "
                    "pixels; a pure shift s is v = -s (scikit-image optical flow)")


class FieldStack:
    """A stack of fields ``(n, 2, H, W)`` stored as cubic B-spline coefficients
    ``(n, 2, ny, nx)``: ``stack[i]`` evaluates frame ``i``'s field (float32), a
    slice or index array gives a smaller :class:`FieldStack`, :meth:`to_dask` a lazy array."""

    def __init__(self, coefficients, grid: SplineGrid):
        c = np.asarray(coefficients, np.float32)
        if c.ndim != 4 or c.shape[1] != 2 or tuple(c.shape[2:]) != grid.grid_shape:
            raise ValueError(
                f"coefficients must have shape (n, 2, {grid.grid_shape[0]}, {grid.grid_shape[1]}) "
                f"for this grid, got {c.shape}"
            )
        self.coefficients, self.grid = c, grid

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.coefficients), 2, *self.grid.shape)

    def __len__(self) -> int:
        return len(self.coefficients)

    def __getitem__(self, index):
        """An integer: that frame's field ``(2, H, W)``; a slice or index array: a
        :class:`FieldStack` of those frames."""
        if isinstance(index, (int, np.integer)):
            return self.grid.evaluate(self.coefficients[index]).astype(np.float32)
        return FieldStack(self.coefficients[index], self.grid)

    def to_dask(self):
        """``(n, 2, H, W)`` float32, one chunk per frame, evaluated when computed."""
        import dask.array as da

        grid = self.grid
        coef = da.from_array(self.coefficients, chunks=(1, 2, *grid.grid_shape))

        def _block(c):
            return np.stack([grid.evaluate(ci) for ci in c]).astype(np.float32)

        return coef.map_blocks(_block, dtype=np.float32, chunks=(1, 2, *grid.shape))


def warp_field(frame, field, *, order: int = 3, fill_value=np.nan, method: str = "spline"):
    """One frame aligned by a field: ``frame(x + field(x))`` (spline of ``order``,
    edges extended); ``fill_value`` where ``x + field(x)`` leaves the frame."""
    del method  # only splines warp by a field
    frame = np.asarray(frame)
    v = np.asarray(field, np.float64)
    h, w = frame.shape
    y, x = np.mgrid[:h, :w]
    yy, xx = y + v[0], x + v[1]
    work = frame.astype(np.float64 if frame.dtype == np.float64 else np.float32, copy=False)
    out = ndi.map_coordinates(work, [yy, xx], order=order, mode="nearest")
    if fill_value is not None:
        out[(yy < -0.5) | (yy > h - 0.5) | (xx < -0.5) | (xx > w - 0.5)] = fill_value
    return out


def _field_valid(valid, field):
    """Where the aligned frame holds data: ``x + field(x)`` lands inside the frame on
    valid pixels (linear interpolation of the mask above 0.999, as for shifts)."""
    v = np.asarray(field, np.float64)
    h, w = valid.shape
    y, x = np.mgrid[:h, :w]
    yy, xx = y + v[0], x + v[1]
    moved = ndi.map_coordinates(valid.astype(np.float32), [yy, xx], order=1, mode="constant",
                                cval=0.0)
    inside = (yy >= -0.5) & (yy <= h - 0.5) & (xx >= -0.5) & (xx <= w - 0.5)
    return (moved > 0.999) & inside


def apply_fields(stack, fields, *, order: int = 3, fill_value=np.nan, valid_mask=None,
                 return_valid: bool = False, workers=None, method: str = "spline", device=None):
    """Apply per-frame non-rigid fields to a stack, as a new array.

    :func:`apply_shifts` for fields: the same output dtype, fill value, valid
    mask (ignored pixels take their nearest valid pixel's value before the
    warp, and are not data where they land) and laziness (numpy in, numpy out;
    dask in, a lazy dask array out). CPU only.

    Parameters
    ----------
    stack : array, shape (n_frames, H, W)
    fields : array (n_frames, 2, H, W), :class:`FieldStack`, or a
        ``NonrigidResult``
        Per frame, ``v`` such that the aligned frame is ``frame(x + v(x))``
        (scikit-image's optical-flow convention; a pure shift ``s`` is ``-s``).
    order, fill_value, valid_mask, return_valid, workers
        As for :func:`apply_shifts`.
    method, device
        Only ``"spline"`` and the CPU (None or ``"cpu"``) warp by a field.
    """
    if method != "spline":
        raise ValueError(f"fields are applied with method='spline' only, got {method!r}")
    if device not in (None, "cpu"):
        raise ValueError(f"fields are applied on the CPU (device=None or 'cpu'), got {device!r}")
    stack = check_frames(stack, "apply_fields")
    if hasattr(fields, "field_stack"):  # a NonrigidResult
        fields = fields.field_stack
    shape = tuple(stack.shape)
    if len(shape) != 3:
        raise ValueError(f"apply_fields needs a stack of 2D frames, got shape {shape}")
    if not isinstance(fields, FieldStack):
        fields = np.asarray(fields)
        if not np.all(np.isfinite(fields)):
            raise ValueError("fields contain NaN or inf")
    want = (shape[0], 2, *shape[1:])
    if tuple(fields.shape) != want:
        raise ValueError(f"the stack needs fields of shape {want}, got {tuple(fields.shape)}")
    valid_mask = check_resampling(shape[1:], valid_mask, "spline", order)
    return map_frames(stack, fields, warp_field, _field_valid, valid_mask, return_valid,
                      device="cpu", workers=workers, order=order, fill_value=fill_value)
