"""Shift tables (CSV): one row per frame.

Columns ``frame``, ``shift_y``, ``shift_x`` (``shift_z`` first for 3D frames),
``quality``; scikit-image's sign convention (the shift that registers the
frame onto the reference). Written atomically, floats at full precision.

Rigid and similarity registrations add ``rotation_deg`` and ``scale`` before
``quality``; their shift is then that of the frame's centre
``((rows - 1) / 2, (cols - 1) / 2)`` (see
:func:`napari_maskalign.engine.similarity_transforms`). A translation table
has exactly the columns it always had.

Tables of a registration also carry each frame's one-sigma error after
``quality``: ``sigma_y``, ``sigma_x`` (``sigma_z`` first for 3D frames) in
pixels, and for rigid and similarity runs ``sigma_rotation_deg`` and
``sigma_scale``; ``nan`` where unknown. They are optional when reading (older
tables have none).

A run of ``maskalign register`` also writes, last, each frame's second correlation
peak and the first's lead over it: ``second_peak_y``, ``second_peak_x``
(``second_peak_z`` first for 3D frames; ``nan``: none) and ``peak_lead`` (noise
standard deviations; ``inf``: no second peak). A lattice of Bragg spots can make the
two nearly equal; ``--resume`` reads them back, so that a tie before the
interruption is judged as in one uninterrupted run.

A smoothed run's table (``smoothing="auto"``) holds the smoothed values in
those columns and every one of them again as measured, ``raw_`` in front
(``raw_shift_y``, ..., ``raw_sigma_scale``): what ``--resume`` continues from.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..engine.models import AXIS_NAMES, table_columns
from .writers import atomic_write_text

__all__ = [
    "AXIS_NAMES",
    "TRANSFORM_COLUMNS",
    "ShiftTable",
    "format_shifts_csv",
    "peak_columns",
    "peak_values",
    "read_shift_table",
    "read_shifts_csv",
    "shift_columns",
    "sigma_columns",
    "write_shifts_csv",
]

#: the columns a rigid or similarity table adds (degrees; magnification): every
#: model's columns, from the model registry
TRANSFORM_COLUMNS = table_columns()

#: the one-sigma errors of the rotation and the scale (rigid, similarity)
TRANSFORM_SIGMA_COLUMNS = ("sigma_rotation_deg", "sigma_scale")


class ShiftTable(NamedTuple):
    """A shift table's columns: ``rotations`` (degrees) and ``scales`` are None for a
    translation table."""

    shifts: np.ndarray
    quality: np.ndarray
    rotations: np.ndarray | None = None
    scales: np.ndarray | None = None
    #: one-sigma error of each shift (px, per axis), None when the table has none
    uncertainties: np.ndarray | None = None
    #: one-sigma error of the rotation (degrees) and the scale, None when absent
    parameter_uncertainties: np.ndarray | None = None
    #: ``(second_peaks, leads)``: each frame's second correlation peak (px per axis, NaN:
    #: none) and how far the first led it (noise sigmas, inf: none); None when absent
    peaks: tuple | None = None

    def transforms(self, frame_shape) -> np.ndarray:
        """The rows as ``(n, ndim + 1, ndim + 1)`` matrices for frames of ``frame_shape``."""
        from ..engine import similarity_transforms

        return similarity_transforms(self.shifts, self.rotations, self.scales, frame_shape)


def shift_columns(ndim: int) -> list[str]:
    """``["shift_y", "shift_x"]`` for 2D frames, ``["shift_z", "shift_y", "shift_x"]`` for 3D."""
    if not 1 <= ndim <= len(AXIS_NAMES):
        raise ValueError(f"frames must have 1 to {len(AXIS_NAMES)} dimensions, got {ndim}")
    return [f"shift_{a}" for a in AXIS_NAMES[-ndim:]]


def sigma_columns(ndim: int) -> list[str]:
    """``["sigma_y", "sigma_x"]`` for 2D frames (``sigma_z`` first for 3D): the
    one-sigma error of each shift, in pixels."""
    return [c.replace("shift_", "sigma_") for c in shift_columns(ndim)]


def peak_columns(ndim: int) -> list[str]:
    """``["second_peak_y", "second_peak_x", "peak_lead"]`` for 2D frames
    (``second_peak_z`` first for 3D): each frame's second correlation peak and the
    first's lead over it, in noise standard deviations."""
    return [c.replace("shift_", "second_peak_") for c in shift_columns(ndim)] + ["peak_lead"]


def peak_values(second_peaks, peak_leads) -> dict:
    """The :func:`peak_columns` of a table, name -> one value per row, for
    :func:`write_shifts_csv`'s ``columns``."""
    second_peaks = np.asarray(second_peaks, dtype=float)
    names = peak_columns(second_peaks.shape[1])
    return {**dict(zip(names, second_peaks.T)), names[-1]: np.asarray(peak_leads, dtype=float)}


def _per_row(values, n, width, what) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values, dtype=float)
    if values.shape != (n, width):
        raise ValueError(f"{what} must have shape {(n, width)}, got {values.shape}")
    return values


def _columns(shifts, rotations, scales, uncertainties, parameter_uncertainties):
    """A table's columns besides ``frame`` and ``quality``, checked: ``(names before
    quality, their values (n, k), names after quality, their values)``."""
    n, ndim = shifts.shape
    names, values = shift_columns(ndim), [shifts]
    moves = rotations is not None or scales is not None
    if moves:
        rot = np.zeros(n) if rotations is None else np.asarray(rotations, dtype=float)
        scl = np.ones(n) if scales is None else np.asarray(scales, dtype=float)
        if rot.shape != (n,) or scl.shape != (n,):
            raise ValueError(f"rotations and scales must have one value per frame ({n})")
        names, values = [*names, *TRANSFORM_COLUMNS], [*values, rot[:, None], scl[:, None]]
    after, errors = [], []
    sig = _per_row(uncertainties, n, ndim, "uncertainties")
    if sig is not None:
        after, errors = sigma_columns(ndim), [sig]
        if moves:
            psig = _per_row(parameter_uncertainties, n, 2, "parameter_uncertainties")
            after = [*after, *TRANSFORM_SIGMA_COLUMNS]
            errors.append(np.full((n, 2), np.nan) if psig is None else psig)
    return names, np.hstack(values), after, np.hstack(errors) if errors else np.zeros((n, 0))


def format_shifts_csv(shifts, quality, frames=None, *, rotations=None, scales=None,
                      uncertainties=None, parameter_uncertainties=None,
                      raw: ShiftTable | None = None, columns=None) -> str:
    shifts = np.asarray(shifts, dtype=float)
    if shifts.ndim != 2:
        raise ValueError(f"shifts must be a table of shape (n_frames, ndim), got {shifts.shape}")
    n = len(shifts)
    quality = np.full(n, np.nan) if quality is None else np.asarray(quality, dtype=float)
    if quality.shape != (n,):
        raise ValueError(f"quality must have one value per frame ({n}), got {quality.shape}")
    frames = np.arange(n) if frames is None else np.asarray(frames, dtype=int)
    if frames.shape != (n,):
        raise ValueError(f"frames must have one index per row ({n}), got {frames.shape}")
    names, values, after, errors = _columns(shifts, rotations, scales, uncertainties,
                                            parameter_uncertainties)
    header = ["frame", *names, "quality", *after]
    blocks = [values, quality[:, None], errors]
    if raw is not None:  # the measured values: every column again, raw_ in front
        raw_shifts = np.asarray(raw.shifts, dtype=float)
        if raw_shifts.shape != shifts.shape:
            raise ValueError(f"the raw shifts must have the shape of shifts {shifts.shape}, "
                             f"got {raw_shifts.shape}")
        r_names, r_values, r_after, r_errors = _columns(
            raw_shifts, raw.rotations, raw.scales, raw.uncertainties,
            raw.parameter_uncertainties)
        header += ["raw_" + c for c in (*r_names, *r_after)]
        blocks += [r_values, r_errors]
    if columns:  # named extras, last (a non-rigid run's summary); readers ignore them
        more = {name: np.asarray(v, dtype=float) for name, v in columns.items()}
        for name, v in more.items():
            if v.shape != (n,):
                raise ValueError(f"column {name} must have one value per frame ({n}), got {v.shape}")
        header += list(more)
        blocks += [np.column_stack(list(more.values()))]
    lines = [",".join(header)]
    # repr() is the shortest text that reads back to the same float: a resumed
    # run continues from exactly the numbers it wrote (+ 0.0 turns -0.0 into 0.0)
    for f, row in zip(frames.tolist(), np.hstack(blocks).tolist()):
        lines.append(",".join([str(f), *(repr(v + 0.0) for v in row)]))
    return "\n".join(lines) + "\n"


def write_shifts_csv(path, shifts, quality=None, *, frames=None, durable: bool = True,
                     rotations=None, scales=None, uncertainties=None,
                     parameter_uncertainties=None, raw: ShiftTable | None = None,
                     columns=None) -> None:
    """Write a shift table atomically (temporary file in the same folder, then rename).

    Columns: ``frame``, ``shift_y``, ``shift_x`` (``shift_z`` first for 3D
    frames), ``quality``. Shifts follow scikit-image's convention: the shift
    that registers each frame onto the reference. With ``rotations``
    (degrees) or ``scales`` the columns ``rotation_deg`` and ``scale`` come
    before ``quality`` (the shifts are then the frame centre's). With
    ``uncertainties`` (one-sigma errors, ``(n, ndim)`` px) the columns
    ``sigma_y``, ``sigma_x`` follow ``quality`` (with ``sigma_rotation_deg``
    and ``sigma_scale`` from ``parameter_uncertainties`` for rigid and
    similarity tables). With ``raw`` (a :class:`ShiftTable` of the measured
    values, when the others are smoothed) every column but ``frame`` and
    ``quality`` follows again, as measured, named ``raw_shift_y``,
    ``raw_shift_x``, (``raw_rotation_deg``, ``raw_scale``,) ``raw_sigma_y``,
    ... ; readers take the smoothed columns unless asked for the measured
    ones (:func:`read_shift_table`). ``columns`` (name -> one value per row)
    come last (a non-rigid run's summary; readers ignore them). Floats are
    written with full precision (they read back exactly).
    """
    text = format_shifts_csv(shifts, quality, frames, rotations=rotations, scales=scales,
                             uncertainties=uncertainties,
                             parameter_uncertainties=parameter_uncertainties, raw=raw,
                             columns=columns)
    atomic_write_text(path, text, durable=durable)


def read_shifts_csv(path, n_frames: int | None = None, ndim: int | None = None):
    """Read the shifts and quality of a shift table (see :func:`read_shift_table`,
    which also reads rotation and scale): ``(shifts, quality)``."""
    table = read_shift_table(path, n_frames, ndim)
    return table.shifts, table.quality


def read_shift_table(path, n_frames: int | None = None, ndim: int | None = None, *,
                     measured: bool = False) -> ShiftTable:
    """Read a shift table written by :func:`write_shifts_csv` (or by hand).

    Columns are found by name: ``frame``, ``shift_y``, ``shift_x`` (and
    ``shift_z`` for 3D frames), optional ``rotation_deg`` and ``scale``
    (2D frames; either one makes the other default to 0 or 1), optional
    ``quality`` (NaN when absent), optional one-sigma errors ``sigma_y``,
    ``sigma_x`` (``sigma_z``), ``sigma_rotation_deg``, ``sigma_scale``; other
    columns are ignored. Rows must count
    frames ``0, 1, 2, ...`` in order.

    A smoothed table (one with ``raw_shift_*`` columns) holds the measured
    values again in ``raw_*`` columns; ``measured=True`` reads those (what a
    resumed run continues from), each column from its ``raw_`` twin where
    the table has one; a smoothed table's errors without a twin (tables
    written before those columns) are then unknown.

    Parameters
    ----------
    n_frames : int, optional
        Require exactly this many rows (one per frame of the stack).
    ndim : int, optional
        Require shifts for frames of this many dimensions.

    Returns
    -------
    ShiftTable
        ``shifts`` (n_rows, ndim), ``quality`` (n_rows,), ``rotations`` and
        ``scales`` (n_rows,) or None for a translation table;
        ``uncertainties`` (n_rows, ndim) and ``parameter_uncertainties``
        (n_rows, 2) or None when the table has no such columns.

    Raises ``ValueError`` in plain words for a table that does not fit.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such shifts file: {path}")
    name = path.name
    try:  # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the header
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise ValueError(
            f"the shifts file {name} is not a text CSV file (it holds bytes that are not UTF-8 "
            "text); give the table written by maskalign or saved as CSV"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"the shifts file {name} is not a readable CSV table: {exc}") from None
    if not rows:
        raise ValueError(f"the shifts file {name} is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "frame" not in header:
        raise ValueError(
            f"the shifts file {name} has no 'frame' column; expected columns "
            f"frame, {', '.join(shift_columns(ndim or 2))}, quality (found: {', '.join(header)})"
        )
    found = [a for a in AXIS_NAMES if f"shift_{a}" in header]
    if ndim is None:
        if "shift_y" not in header or "shift_x" not in header:
            raise ValueError(
                f"the shifts file {name} needs columns shift_y and shift_x (and shift_z for 3D "
                f"frames); found: {', '.join(header)}"
            )
        ndim = 3 if "shift_z" in header else 2
    cols = shift_columns(ndim)
    missing = [c for c in cols if c not in header]
    if missing:
        raise ValueError(
            f"the shifts file {name} lacks column(s) {', '.join(missing)} for {ndim}D frames "
            f"(it has shifts along {', '.join(found) or 'no axis'})"
        )
    extra = [a for a in found if f"shift_{a}" not in cols]
    if extra:
        raise ValueError(
            f"the shifts file {name} has shifts along {', '.join(found)} but the frames are "
            f"{ndim}D ({', '.join(cols)})"
        )
    smoothed = measured and all("raw_" + c in header for c in cols)

    def where(c):  # the column read for c: its measured twin when asked for
        return header.index("raw_" + c if smoothed and "raw_" + c in header else c)

    idx_frame = header.index("frame")
    idx_shift = [where(c) for c in cols]
    idx_q = header.index("quality") if "quality" in header else None
    idx_t = {c: where(c) for c in TRANSFORM_COLUMNS if c in header}
    if idx_t and ndim != 2:
        raise ValueError(
            f"the shifts file {name} has {', '.join(idx_t)} but the frames are {ndim}D: "
            "rotation and scale are for 2D frames"
        )
    def errors(names):  # all of them or none; a smoothed table's measured ones when asked
        names = ["raw_" + c if smoothed else c for c in names]
        return [header.index(c) for c in names] if all(c in header for c in names) else []

    idx_sig = errors(sigma_columns(ndim))
    idx_psig = errors(TRANSFORM_SIGMA_COLUMNS) if idx_t else []
    peak_names = peak_columns(ndim)  # (measured, never smoothed: no raw_ twins)
    idx_peak = [header.index(c) for c in peak_names] if all(c in header for c in peak_names) else []
    body = rows[1:]
    sig = np.full((len(body), ndim), np.nan)
    psig = np.full((len(body), 2), np.nan)
    peaks = np.full((len(body), ndim + 1), np.nan)
    shifts = np.empty((len(body), ndim))
    quality = np.full(len(body), np.nan)
    extra = {"rotation_deg": np.zeros(len(body)), "scale": np.ones(len(body))}
    for r, row in enumerate(body):
        line = r + 2
        if len(row) < len(header):
            raise ValueError(f"line {line} of {name} has {len(row)} values, expected {len(header)}")
        try:
            frame = int(row[idx_frame].strip())
        except ValueError:
            raise ValueError(
                f"line {line} of {name}: frame {row[idx_frame]!r} is not a whole number"
            ) from None
        if frame != r:
            raise ValueError(
                f"line {line} of {name} is for frame {frame}, expected frame {r}: rows must "
                "list frames 0, 1, 2, ... in order"
            )
        for k, c in enumerate(idx_shift):
            shifts[r, k] = _number(row[c], line, header[c], name)
        for c, i in idx_t.items():
            extra[c][r] = _number(row[i], line, header[i], name)
            if c == "scale" and not extra[c][r] > 0:
                raise ValueError(f"line {line} of {name}: scale must be positive, got {row[i]}")
        if idx_q is not None and row[idx_q].strip():
            quality[r] = _number(row[idx_q], line, "quality", name, allow_nan=True)
        for out, idx in ((sig, idx_sig), (psig, idx_psig), (peaks, idx_peak)):
            for k, c in enumerate(idx):
                if row[c].strip():
                    out[r, k] = _number(row[c], line, header[c], name, allow_nan=True)
    if not np.all(np.isfinite(shifts)):
        bad = int(np.argwhere(~np.isfinite(shifts))[0, 0])
        raise ValueError(f"the shifts file {name} has a NaN or infinite shift for frame {bad}")
    if n_frames is not None and len(body) != n_frames:
        raise ValueError(
            f"the shifts file {name} has {len(body)} rows but the stack has {n_frames} frames; "
            "it must have one row per frame"
        )
    sig = sig if idx_sig else None
    ties = (peaks[:, :ndim], np.where(np.isnan(peaks[:, ndim]), np.inf, peaks[:, ndim])) \
        if idx_peak else None
    if not idx_t:
        return ShiftTable(shifts, quality, uncertainties=sig, peaks=ties)
    return ShiftTable(shifts, quality, extra["rotation_deg"], extra["scale"], sig,
                      psig if idx_psig else None, ties)


def _number(text: str, line: int, column: str, name: str, allow_nan: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"line {line} of {name}: {column} {text!r} is not a number") from None
    if not allow_nan and not math.isfinite(value):
        raise ValueError(
            f"line {line} of {name}: {column} is {text.strip()}, expected a finite number"
        )
    return value
