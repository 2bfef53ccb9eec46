"""Non-rigid fields on disk: the spline coefficients beside the shifts table.

A non-rigid run's shifts CSV holds the global translation (one row per
frame, as for any run); the fields live beside it in ``<shifts>.fields.npz``:
the cubic B-spline coefficients ``(n, 2, ny, nx)`` float32 (a few KB a frame),
the grid (frame shape, spacing, knot origin), the convention, and per frame
the fallback flag, the deformation RMS and maximum beyond the global shift and
the fraction of patches that matched. :func:`read_fields` gives back a
:class:`~napari_maskalign.engine.FieldStack` that ``maskalign apply`` and the
workflow align frames with.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

__all__ = ["SUMMARY_COLUMNS", "add_summary_columns", "fields_path_for", "fields_summary",
           "read_fields", "write_fields"]

#: what a non-rigid run adds to its shifts CSV, per frame (readers ignore extra columns)
SUMMARY_COLUMNS = ("deformation_rms", "deformation_max", "valid_patches", "fallback")


def fields_path_for(shifts_path) -> Path:
    """Where a shifts table's fields are kept: ``<shifts>.fields.npz``."""
    p = Path(shifts_path)
    return p.with_name(p.name + ".fields.npz")


def fields_summary(result) -> dict:
    """JSON-ready facts about a non-rigid result's fields (for zarr attributes)."""
    from ..engine import FIELD_CONVENTION

    return {"model": "nonrigid", "convention": FIELD_CONVENTION, "grid": result.grid.describe(),
            "fallback_frames": [int(i) for i in np.flatnonzero(result.fallback)]}


def write_fields(path, result) -> Path:
    """Write a :class:`~napari_maskalign.engine.NonrigidResult`'s fields to ``path``
    (written under a temporary name, then renamed)."""
    from ..engine import FIELD_CONVENTION
    from .writers import replacing

    path = Path(path)
    meta = {"grid": result.grid.describe(), "convention": FIELD_CONVENTION,
            "format": "napari-maskalign fields 1"}
    buf = io.BytesIO()
    np.savez_compressed(
        buf, coefficients=np.asarray(result.coefficients, np.float32),
        fallback=np.asarray(result.fallback, bool),
        deformation_rms=np.asarray(result.deformation_rms, float),
        deformation_max=np.asarray(result.deformation_max, float),
        valid_patches=np.asarray(result.valid_patches, float),
        patch_centres=np.asarray(result.patch_centres, float),
        patch_shifts=np.asarray(result.patch_shifts, np.float32),
        patch_quality=np.asarray(result.patch_quality, np.float32),
        meta=np.array(json.dumps(meta)),
    )
    with replacing(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return path


def read_fields(path, *, n_frames: int | None = None, frame_shape=None):
    """``(FieldStack, extras)`` from a fields file; ``extras`` holds the per-frame
    summary arrays (fallback, deformation_rms, deformation_max, valid_patches,
    patch data). ``ValueError`` naming the file when it does not fit the stack."""
    from ..engine import FieldStack
    from ..engine.kernels._bspline import SplineGrid

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fields file {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("meta")))
        grid = SplineGrid(tuple(meta["grid"]["shape"]), float(meta["grid"]["spacing"]))
        fields = FieldStack(data.pop("coefficients"), grid)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a fields file of napari-maskalign: {exc}") from None
    if n_frames is not None and len(fields) != n_frames:
        raise ValueError(f"{path} has fields for {len(fields)} frames, the stack has {n_frames}")
    if frame_shape is not None and tuple(grid.shape) != tuple(frame_shape):
        raise ValueError(f"{path} has fields of frames {tuple(grid.shape)}, the stack's frames "
                         f"are {tuple(frame_shape)}")
    return fields, data


def add_summary_columns(csv_path, result) -> None:
    """Append :data:`SUMMARY_COLUMNS` to a finished non-rigid run's shifts CSV (the
    deformation beyond the global shift, RMS and maximum over valid pixels in px,
    the fraction of patches that matched, 1 where the frame kept the translation)."""
    from .writers import atomic_write_text

    path = Path(csv_path)
    lines = path.read_text().splitlines()
    if not lines:
        return
    header = lines[0].split(",")
    if SUMMARY_COLUMNS[0] in header:
        return
    frame_col = header.index("frame")
    values = np.column_stack([result.deformation_rms, result.deformation_max,
                              result.valid_patches, result.fallback.astype(int)])
    out = [",".join([*header, *SUMMARY_COLUMNS])]
    for line in lines[1:]:
        cells = line.split(",")
        i = int(cells[frame_col])
        rms, mx, vp, fb = values[i]
        out.append(",".join([*cells, repr(float(rms)), repr(float(mx)), repr(float(vp)),
                             str(int(fb))]))
    atomic_write_text(path, "\n".join(out) + "\n")
