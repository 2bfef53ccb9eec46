"""Non-rigid fields on disk: the spline coefficients beside the shifts table.

A non-rigid run's shifts CSV holds the global translation (one row per
frame, as for any run); the fields live beside it in ``<shifts>.fields.npz``:
the cubic B-spline coefficients ``(n, 2, ny, nx)`` float32 (a few KB a frame),
the grid (frame shape, spacing, knot origin), the convention, and per frame
the fallback flag, the deformation RMS and maximum beyond the global shift and
the fraction of patches that matched; those four are also columns of the
shifts CSV, written with its rows. While a run goes, the fields of its
finished frames are kept in ``.<shifts>.fields.partial.npz``
(:class:`FieldRows`), which ``--resume`` continues. :func:`read_fields` gives back a
:class:`~napari_maskalign.engine.FieldStack` that ``maskalign apply`` and the
workflow align frames with.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

__all__ = ["SUMMARY_COLUMNS", "FieldRows", "fields_path_for", "fields_summary",
           "partial_fields_path", "read_fields", "write_fields"]

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
    return _write_npz(path, result.grid, {
        "coefficients": result.coefficients, "fallback": result.fallback,
        "deformation_rms": result.deformation_rms, "deformation_max": result.deformation_max,
        "valid_patches": result.valid_patches, "patch_centres": result.patch_centres,
        "patch_shifts": result.patch_shifts, "patch_quality": result.patch_quality})


#: how each array is stored
_DTYPES = {"coefficients": np.float32, "fallback": bool, "deformation_rms": float,
           "deformation_max": float, "valid_patches": float, "patch_centres": float,
           "patch_shifts": np.float32, "patch_quality": np.float32}


def _write_npz(path, grid, arrays: dict, *, compressed: bool = True) -> Path:
    from ..engine import FIELD_CONVENTION
    from .writers import replacing

    path = Path(path)
    meta = {"grid": grid.describe(), "convention": FIELD_CONVENTION,
            "format": "napari-maskalign fields 1"}
    buf = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buf, **{k: np.asarray(v, _DTYPES[k]) for k, v in arrays.items()},
         meta=np.array(json.dumps(meta)))
    with replacing(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return path


def partial_fields_path(shifts_path) -> Path:
    """Where a run keeps the fields of its finished frames until it completes:
    ``.<shifts>.fields.partial.npz`` (what ``--resume`` continues from)."""
    p = Path(shifts_path)
    return p.with_name(f".{p.name}.fields.partial.npz")


class FieldRows:
    """A non-rigid run's per-frame field data, kept as frames finish.

    The shifts journal (:class:`~napari_maskalign.workflow.journal.ShiftJournal`,
    its ``fields``) saves the finished prefix here before each rewrite of the
    table -- to :func:`partial_fields_path`, so the table never holds a row whose
    field is not on disk -- and writes :meth:`columns` with the table's rows.
    A resumed run loads the saved frames first (:meth:`load`).
    """

    def __init__(self, shifts_path, n_frames: int, grid):
        self.path = partial_fields_path(shifts_path)
        self.grid, self.n_frames = grid, int(n_frames)
        self.arrays = None  # made for the patch count of the first frame recorded or loaded
        self.patch_centres = None
        self.saved = 0

    def _allocate(self, n_patches: int) -> dict:
        if self.arrays is None:
            n, (ny, nx) = self.n_frames, self.grid.grid_shape
            self.arrays = {
                "coefficients": np.zeros((n, 2, ny, nx), np.float32),
                "fallback": np.zeros(n, bool),
                "deformation_rms": np.zeros(n), "deformation_max": np.zeros(n),
                "valid_patches": np.zeros(n),
                "patch_shifts": np.full((n, n_patches, 2), np.nan, np.float32),
                "patch_quality": np.zeros((n, n_patches), np.float32),
            }
        return self.arrays

    def record(self, frame: int, nonrigid) -> None:
        """One finished frame's ``NonrigidRecord`` (coefficients, patches, summary)."""
        a = self._allocate(len(nonrigid.patch_quality))
        a["coefficients"][frame] = nonrigid.coefficients
        a["fallback"][frame] = nonrigid.fallback
        a["deformation_rms"][frame] = nonrigid.rms
        a["deformation_max"][frame] = nonrigid.max
        a["valid_patches"][frame] = nonrigid.valid_patches
        a["patch_shifts"][frame] = nonrigid.patch_shifts
        a["patch_quality"][frame] = nonrigid.patch_quality

    def record_result(self, result) -> None:
        """Every frame of a finished :class:`~napari_maskalign.engine.NonrigidResult`."""
        for key in self._allocate(result.patch_quality.shape[1]):
            self.arrays[key][:] = getattr(result, key)
        self.patch_centres = np.asarray(result.patch_centres, float)

    def columns(self, k: int) -> dict:
        """The summary columns of rows ``0..k-1`` (:data:`SUMMARY_COLUMNS`): the
        deformation beyond the global shift, RMS and maximum over valid pixels in
        px, the fraction of patches that matched, 1 where the frame kept the
        translation."""
        a = self.arrays
        if a is None:  # nothing recorded yet (no rows either)
            return {}
        return {"deformation_rms": a["deformation_rms"][:k],
                "deformation_max": a["deformation_max"][:k],
                "valid_patches": a["valid_patches"][:k], "fallback": a["fallback"][:k]}

    def save(self, k: int) -> None:
        """The first ``k`` frames to :attr:`path` (uncompressed: it is rewritten often)."""
        if self.arrays is None or (k == self.saved and self.path.exists()):
            return  # nothing recorded yet, or nothing new
        arrays = {key: v[:k] for key, v in self.arrays.items()}
        if self.patch_centres is not None:
            arrays["patch_centres"] = self.patch_centres
        _write_npz(self.path, self.grid, arrays, compressed=False)
        self.saved = k

    def load(self, k: int) -> int:
        """Take frames ``0..k-1`` from :attr:`path` (an interrupted run's): how many it
        holds, at most ``k`` (0 when there is no such file). ``ValueError`` naming
        the file when it does not fit this run."""
        if not k or not self.path.exists():
            return 0
        try:
            with np.load(self.path, allow_pickle=False) as z:
                data = {key: z[key] for key in z.files}
            grid = json.loads(str(data.pop("meta")))["grid"]
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot resume: {self.path} is not readable ({exc})") from None
        if grid != self.grid.describe():
            raise ValueError(f"cannot resume: {self.path} holds fields on another grid ({grid})")
        m = min(k, len(data.get("coefficients", ())))
        if "patch_quality" not in data:
            raise ValueError(f"cannot resume: {self.path} has no patch_quality")
        for key, v in self._allocate(data["patch_quality"].shape[1]).items():
            if key not in data or data[key].shape[1:] != v.shape[1:]:
                raise ValueError(f"cannot resume: {self.path} has no {key} of this run's shape")
            v[:m] = data[key][:m]
        if "patch_centres" in data:
            self.patch_centres = data["patch_centres"]
        self.saved = m
        return m

    def finish(self, fields_path) -> Path:
        """The complete fields to ``fields_path`` (compressed); the partial file goes."""
        if self.patch_centres is None:
            raise ValueError("the fields of a run are written once it has patch centres")
        out = _write_npz(fields_path, self.grid, {**self.arrays,
                                                  "patch_centres": self.patch_centres})
        self.path.unlink(missing_ok=True)
        return out

    def result(self, base):
        """A :class:`~napari_maskalign.engine.NonrigidResult`: ``base`` (the result over
        the shifts table) with these fields."""
        from ..engine import FieldStack
        from ..engine.run._nonrigid import with_fields

        extras = {key: v for key, v in self.arrays.items() if key != "coefficients"}
        extras["patch_centres"] = self.patch_centres
        return with_fields(base, FieldStack(self.arrays["coefficients"], self.grid), extras)


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
