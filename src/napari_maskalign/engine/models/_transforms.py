"""Transforms: homogeneous matrices, their parameters, and aligned copies made with them.

Convention (as napari's ``affine``): ``(n, ndim + 1, ndim + 1)`` matrices in
data-axis (row, col) order, each mapping a pixel coordinate of a moving frame
to the reference coordinate where that content belongs. A pure shift is
``[[1, 0, sy], [0, 1, sx], [0, 0, 1]]``, the shift in scikit-image's sign
convention.

Rigid and similarity transforms are described by three numbers per frame
(2D frames):

* the **shift of the frame centre** ``T(c) - c``, with ``c`` the centre of the
  frame's pixel grid, ``((rows - 1) / 2, (cols - 1) / 2)``;
* the **rotation** in degrees: positive turns content counterclockwise as seen
  in napari (rows point down, columns right), i.e. the matrix
  ``[[cos, -sin], [sin, cos]]`` in (row, col) order;
* the **scale**: how much the transform magnifies the frame's content.

``T(p) = c + scale * R(rotation) @ (p - c) + shift``. Like the shift, rotation
and scale are those that *register* the frame: a pattern that turned 1 degree
counterclockwise and grew by 2 % gets rotation -1 and scale 1/1.02.
"""

from __future__ import annotations

import numpy as np

from ..backends import backend_for
from ..backends._device import namespace_of, native
from ._shift import (
    aligned_dtype,
    check_frames,
    check_resampling,
    map_frames,
    shift_frame,
    shift_valid,
)

__all__ = [
    "apply_transforms",
    "check_transforms",
    "frame_centre",
    "is_translation",
    "similarity_transforms",
    "transform_parameters",
    "warp_frame",
    "warp_valid",
]


def frame_centre(frame_shape) -> np.ndarray:
    """The centre of a frame's pixel grid, ``(shape - 1) / 2`` per axis."""
    return (np.asarray(frame_shape, dtype=float) - 1.0) / 2.0


def rotation_matrix(degrees: float) -> np.ndarray:
    """2x2 rotation in (row, col) order, counterclockwise as seen in napari."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s], [s, c]])


def similarity_transforms(shifts, rotations=None, scales=None, frame_shape=None) -> np.ndarray:
    """``(n, ndim + 1, ndim + 1)`` matrices from centre shifts, rotations (degrees) and
    scales; pure shifts when both are None (then ``frame_shape`` is not needed)."""
    shifts = np.asarray(shifts, dtype=float)
    n, ndim = shifts.shape
    out = np.broadcast_to(np.eye(ndim + 1), (n, ndim + 1, ndim + 1)).copy()
    out[:, :ndim, ndim] = shifts
    if rotations is None and scales is None:
        return out
    rot = np.zeros(n) if rotations is None else np.asarray(rotations, dtype=float)
    scl = np.ones(n) if scales is None else np.asarray(scales, dtype=float)
    if ndim != 2 and np.any(rot):
        raise ValueError("rotation is for 2D frames only")
    c = frame_centre(frame_shape)
    for i in range(n):
        lin = scl[i] * (rotation_matrix(rot[i]) if ndim == 2 else np.eye(ndim))
        out[i, :ndim, :ndim] = lin
        out[i, :ndim, ndim] = c + shifts[i] - lin @ c
    return out


def transform_parameters(transforms, frame_shape):
    """Centre shifts ``(n, ndim)``, rotations (degrees, 2D; else 0) and scales ``(n,)``
    of ``transforms`` (exact for rigid and similarity transforms; for other affine
    ones the rotation and the scale of their closest similarity)."""
    t = np.asarray(transforms, dtype=float)
    ndim = t.shape[-1] - 1
    c = frame_centre(frame_shape)
    lin = t[:, :ndim, :ndim]
    shifts = lin @ c + t[:, :ndim, ndim] - c
    scales = np.abs(np.linalg.det(lin)) ** (1.0 / ndim)
    if ndim == 2:
        rotations = np.rad2deg(
            np.arctan2(lin[:, 1, 0] - lin[:, 0, 1], lin[:, 0, 0] + lin[:, 1, 1])
        )
    else:
        rotations = np.zeros(len(t))
    return shifts, rotations, scales


def is_translation(transforms, tol: float = 1e-12) -> np.ndarray:
    """Per frame: whether the transform is a pure shift."""
    t = np.asarray(transforms, dtype=float)
    ndim = t.shape[-1] - 1
    return np.all(np.abs(t[:, :ndim, :ndim] - np.eye(ndim)) <= tol, axis=(1, 2))


def check_transforms(stack_shape, transforms) -> np.ndarray:
    """``transforms`` as float ``(n, ndim + 1, ndim + 1)`` for a stack of ``stack_shape``;
    ``ValueError`` in plain words otherwise."""
    if len(stack_shape) < 2:
        raise ValueError(f"expected a stack (frames along the first axis), got shape {stack_shape}")
    n, ndim = stack_shape[0], len(stack_shape) - 1
    t = np.asarray(transforms, dtype=float)
    want = (n, ndim + 1, ndim + 1)
    if t.shape != want:
        raise ValueError(
            f"transforms must be one ({ndim + 1}, {ndim + 1}) matrix per frame: expected shape "
            f"{want}, got {t.shape}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("transforms contain NaN or inf")
    bottom = np.zeros(ndim + 1)
    bottom[-1] = 1
    if not np.allclose(t[:, ndim], bottom):
        raise ValueError(f"each transform's last row must be {bottom.tolist()} (homogeneous)")
    if np.any(np.abs(np.linalg.det(t[:, :ndim, :ndim])) < 1e-12):
        raise ValueError("a transform squashes the frame to nothing (its matrix is singular)")
    return t


def _source_coords(shape, inverse):
    """Where each output pixel samples the frame: ``inverse`` applied to the grid."""
    ndim = len(shape)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij",
                        sparse=True)
    return [sum(inverse[a, b] * grids[b] for b in range(ndim)) + inverse[a, ndim]
            for a in range(ndim)]


def _inside(shape, inverse) -> np.ndarray:
    src = _source_coords(shape, inverse)
    out = np.ones(shape, bool)
    for a, n in enumerate(shape):
        out &= (src[a] >= -1e-6) & (src[a] <= n - 1 + 1e-6)
    return out


def warp_frame(frame, transform, *, method="spline", order=3, fill_value=np.nan) -> np.ndarray:
    """Frame ``frame`` moved onto the reference by ``transform`` (pure shifts go
    through :func:`~._shift.shift_frame`, so they match :func:`apply_shifts`)."""
    t = np.asarray(transform, dtype=float)
    ndim = t.shape[0] - 1
    if is_translation(t[None])[0]:
        return shift_frame(frame, t[:ndim, ndim], method=method, order=order,
                           fill_value=fill_value)
    if method != "spline":
        raise ValueError(
            "a Fourier shift can only shift; frames that rotate or scale need method='spline'"
        )
    xp = namespace_of(frame)  # a CuPy frame is warped on its GPU and stays there
    frame = native(frame)
    ndimage = backend_for(xp).ndimage
    out_dtype = aligned_dtype(frame.dtype)
    work = frame.astype(np.float64 if out_dtype == np.float64 else np.float32, copy=False)
    inv = np.linalg.inv(t)
    matrix, offset = xp.asarray(inv[:ndim, :ndim]), tuple(inv[:ndim, ndim])
    out = ndimage.affine_transform(work, matrix, offset=offset, order=order, mode="nearest",
                                   prefilter=order > 1).astype(out_dtype, copy=False)
    if fill_value is not None:
        outside = ~_inside(frame.shape, inv)
        out[xp.asarray(outside)] = fill_value
    return out


def warp_valid(valid, transform) -> np.ndarray:
    """Where the moved frame holds real data: inside the field and valid before."""
    t = np.asarray(transform, dtype=float)
    ndim = t.shape[0] - 1
    if is_translation(t[None])[0]:
        return shift_valid(valid, t[:ndim, ndim])
    xp = namespace_of(valid)
    ndimage = backend_for(xp).ndimage
    inv = np.linalg.inv(t)
    matrix, offset = xp.asarray(inv[:ndim, :ndim]), tuple(inv[:ndim, ndim])
    moved = ndimage.affine_transform(valid.astype(np.float32), matrix, offset=offset, order=1,
                                     mode="constant", cval=0.0)
    inside = _inside(valid.shape, inv)
    return (moved > 0.999) & xp.asarray(inside)


def apply_transforms(stack, transforms, *, method="spline", order=3, fill_value=np.nan,
                     valid_mask=None, return_valid=False, device=None, workers=None):
    """Apply per-frame transforms (shift, rotation, scale) to a stack, as a new array.

    :func:`apply_shifts` for whole transforms: the same keywords, output
    dtype, fill value, valid mask and laziness (numpy in, numpy out; dask in,
    a lazy dask array out). Frames whose transform is a pure shift are
    shifted exactly as :func:`apply_shifts` does; the others are warped with
    a spline of ``order`` (``method="fourier"`` only shifts, so it is refused
    for them). With ``return_valid`` the second array says where each aligned
    frame holds real data: inside the field of view and valid (``valid_mask``,
    True = valid) before it was moved.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
    transforms : array, shape (n_frames, ndim + 1, ndim + 1)
        Per frame, the homogeneous matrix (data-axis order, as napari's
        ``affine``) mapping a pixel of the frame to the reference coordinate
        where its content belongs: ``RegistrationResult.transforms``.
    method, order, fill_value, valid_mask, return_valid, device, workers
        As for :func:`apply_shifts`.

    Returns
    -------
    aligned : ndarray or dask array
    valid : ndarray or dask array of bool (only with ``return_valid``)
    """
    stack = check_frames(stack, "apply_transforms")
    stack_shape = tuple(stack.shape)
    t = check_transforms(stack_shape, transforms)
    frame_shape = stack_shape[1:]
    valid_mask = check_resampling(frame_shape, valid_mask, method, order)
    if method == "fourier" and not is_translation(t).all():
        raise ValueError(
            "a Fourier shift can only shift; frames that rotate or scale need method='spline'"
        )
    return map_frames(stack, t, warp_frame, warp_valid, valid_mask, return_valid,
                      device=device, workers=workers, method=method, order=order,
                      fill_value=fill_value)
