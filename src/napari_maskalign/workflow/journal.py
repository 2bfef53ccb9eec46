"""The shift table of a run on disk, written as frames finish, and resuming it.

A long run writes its shifts table (``SHIFTS.csv``) while it goes, next to a
settings file (``SHIFTS.csv.json``) that says what decided those shifts: the
input, its frame count, shape and dtype, the mask's digest and the
registration options' :meth:`~napari_maskalign.engine.RegistrationOptions.fingerprint`.
A run that is killed leaves a table that is always a valid prefix (frames
``0..k-1``, written atomically), and :func:`resume_rows` continues it only
when the settings match.

A table that exists when a run starts (``--overwrite``) is kept until the new
one is complete: the new rows go to ``.SHIFTS.csv.partial`` (with its own
settings file, :func:`pending_path`), which is renamed over the old table
after the last frame; a killed run's partial table is what ``--resume``
continues.
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path

import numpy as np

from ..engine.models import DEFAULT_MODEL, model_named
from ..engine.run._options import array_digest
from ..io import (
    ShiftTable,
    WriteFailed,
    is_glob,
    read_shift_table,
    source_file,
    write_json_atomic,
    write_shifts_csv,
)
from ..io.tables import peak_values

__all__ = ["ShiftJournal", "continue_run", "pending_path", "resume_rows", "run_settings",
           "sidecar_path"]


def sidecar_path(shifts_path) -> Path:
    """The settings file next to a shifts table: ``NAME.csv.json``."""
    p = Path(os.fspath(shifts_path))
    return p.with_name(p.name + ".json")


def pending_path(shifts_path) -> Path:
    """Where a run writes its table while an older table exists: ``.NAME.csv.partial``."""
    p = Path(os.fspath(shifts_path))
    return p.with_name(f".{p.name}.partial")


def _current(shifts_path) -> Path:
    """The table a resumed run continues: an unfinished replacement if there is one."""
    pending = pending_path(shifts_path)
    return pending if pending.exists() else Path(os.fspath(shifts_path))


def run_settings(source, stack, valid, options) -> dict:
    """What decides a run's shifts, JSON-serializable: a resumed run must match it.

    ``source`` is the input as given (a glob stays a pattern, a path becomes
    absolute); ``valid`` the engine mask (True = valid) or None, named by
    :func:`~napari_maskalign.engine.run._options.array_digest` as the options name
    their images.
    """
    digest = None if valid is None else array_digest(np.asarray(valid, bool))
    text = os.fspath(source)
    file = source_file(text)  # run.h5:/entry/data: the file resolved, the dataset kept
    return {
        "input": text if is_glob(text) else str(Path(file).expanduser().resolve()) + text[len(file):],
        "frames": int(stack.shape[0]),
        "frame_shape": [int(s) for s in stack.shape[1:]],
        "dtype": str(np.dtype(stack.dtype)),
        "mask_sha256": digest,
        **options.fingerprint(),
    }


def resume_rows(shifts_path, settings: dict, n_frames: int, ndim: int) -> ShiftTable:
    """The rows an earlier run with the same settings left in ``shifts_path``.

    Returns a :class:`~napari_maskalign.io.ShiftTable` ``(shifts, quality,
    rotations, scales)``, the last two for rigid and similarity runs only
    (empty when there is no table yet). Raises
    ``ValueError`` in plain words when the table cannot be continued: its
    settings file is missing or unreadable, the settings differ (each
    difference is named), or the table does not fit the input.
    """
    path = _current(shifts_path)
    side = sidecar_path(path)
    if not side.exists() and path != Path(os.fspath(shifts_path)):
        side = sidecar_path(shifts_path)  # killed between the settings' rename and the table's
    moves = not model_named(settings.get("model", DEFAULT_MODEL)).shift_only
    if not path.exists():
        return ShiftTable(np.zeros((0, ndim)), np.zeros(0), *((np.zeros(0), np.ones(0)) if moves
                                                             else ()))
    if not side.exists():
        raise ValueError(
            f"cannot resume: {side.name} (the run's parameters) is missing next to "
            f"{path.name}; was it written by 'maskalign register'?"
        )
    try:
        saved = json.loads(side.read_text())["registration"]
        if not isinstance(saved, dict):
            raise TypeError(f"its 'registration' section is {saved!r}, not a table of settings")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ValueError(f"cannot resume: {side} is not readable ({exc})") from None
    diffs = [
        f"{k}: earlier {saved.get(k)!r}, now {v!r}" for k, v in settings.items() if saved.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume: {path.name} was made with different settings ("
            + "; ".join(diffs)
            + ")"
        )
    try:  # a smoothed table: continue from what was measured, not smoothed
        table = read_shift_table(path, ndim=ndim, measured=True)
    except ValueError as exc:
        raise ValueError(f"cannot resume from {path}: {exc}") from None
    if len(table.shifts) > n_frames:
        raise ValueError(
            f"cannot resume: {path.name} has {len(table.shifts)} rows but the input has "
            f"{n_frames} frames"
        )
    if moves and table.rotations is None:
        raise ValueError(
            f"cannot resume: {path.name} has no rotation_deg and scale columns, which a "
            f"{settings['model']} run writes"
        )
    if moves:
        return table
    return ShiftTable(table.shifts, table.quality, uncertainties=table.uncertainties,
                      peaks=table.peaks)


def continue_run(shifts_path, settings: dict, n_frames: int, ndim: int, *, outputs: dict,
                 overwrite: bool = False):
    """What ``--resume`` continues: ``(rows, nothing_to_do)``.

    ``rows`` are the earlier run's ``(shifts, quality)`` (see
    :func:`resume_rows`); ``outputs`` the other outputs asked for, by what
    they are. Outputs are written only after the last frame, so one that
    exists now is an earlier run's: it is replaced only with ``overwrite``
    (an interrupted ``--overwrite`` run resumes with ``--resume
    --overwrite``), else ``FileExistsError`` names it -- unless the table
    is complete and every output exists (``nothing_to_do``). Rewrites of the
    table that a kill cut short (temporary files) are removed.
    """
    path = Path(os.fspath(shifts_path))
    from ..io.fields import partial_fields_path

    # (a non-rigid run's partial fields file too)
    for name in (path.name, pending_path(path).name, partial_fields_path(path).name):
        for tmp in path.parent.glob(f".{glob.escape(name)}.*.tmp"):
            tmp.unlink()  # a rewrite cut short by the kill; the table itself is whole
    rows = resume_rows(path, settings, n_frames, ndim)
    existing = {what: p for what, p in outputs.items() if p is not None and Path(p).exists()}
    if (len(rows[0]) == n_frames and len(existing) == sum(p is not None for p in outputs.values())
            and _fields_written(path, settings)):
        return rows, True
    if existing and not overwrite:
        what, p = next(iter(existing.items()))
        raise FileExistsError(f"the {what} {p} exists (from an earlier run)")
    return rows, False


def _fields_written(path: Path, settings: dict) -> bool:
    """Whether a complete table's fields file exists, for a model with fields (non-rigid:
    a kill after the table's last rewrite and before the fields file leaves it to do)."""
    if not getattr(model_named(settings.get("model", DEFAULT_MODEL)), "fields", False):
        return True
    from ..io.fields import fields_path_for

    return fields_path_for(path).exists()


class ShiftJournal:
    """Keeps the shifts of a run and rewrites the table atomically as frames arrive.

    Only the leading run of finished frames is written (frames ``0..k-1``),
    so a file left by a killed run is always a valid prefix to resume from,
    even when frames finish out of order (a dask cluster). The file is
    rewritten at most every ``interval`` seconds, and never more often than
    10x the time the last rewrite took, so saving costs a bounded fraction of
    the run however long the table grows.

    Parameters
    ----------
    path : path
        The shifts table (CSV).
    n_frames, ndim : int
        The stack's frame count and frame dimensionality.
    settings : dict
        What decides the shifts (see :func:`run_settings`); written to the
        settings file before the first rows.
    interval : float
        Seconds between rewrites at most; 0 rewrites whenever the finished
        prefix grew (every frame).
    note : dict, optional
        More to keep in the settings file (e.g. the output's name).
    """

    def __init__(self, path, n_frames: int, ndim: int, settings: dict, *, interval: float = 1.0,
                 note: dict | None = None):
        self.path = Path(os.fspath(path))
        #: the file the rows go to: the table, or beside an older table until this one is complete
        pending = pending_path(self.path)
        self.writing = pending if self.path.exists() or pending.exists() else self.path
        self.sidecar = sidecar_path(self.writing)
        self.info = {
            "registration": settings,
            **(note or {}),
            "note": "parameters of the maskalign register run that wrote "
            f"{self.path.name}; --resume continues only a run with the same registration settings",
        }
        self.shifts = np.zeros((n_frames, ndim))
        self.quality = np.zeros(n_frames)
        self.done = np.zeros(n_frames, bool)
        #: rigid and similarity runs: rotation (degrees) and scale per frame, else None
        self.rotations = self.scales = None
        if not model_named(settings.get("model", DEFAULT_MODEL)).shift_only:
            self.rotations, self.scales = np.zeros(n_frames), np.ones(n_frames)
        #: one-sigma errors: the shifts (px per axis), then rotation and scale for models
        self.sigma = np.full((n_frames, ndim + (2 if self.rotations is not None else 0)), np.nan)
        #: each frame's second correlation peak (NaN: none) and the first's lead over it
        #: (noise sigmas, inf: none): kept in the table, so that a resumed run judges a
        #: lattice's ties over every frame as one uninterrupted run does
        self.second_peaks = np.full((n_frames, ndim), np.nan)
        self.peak_leads = np.full(n_frames, np.inf)
        self.interval = float(interval)
        #: a non-rigid run's per-frame field data (:class:`~napari_maskalign.io.fields.FieldRows`):
        #: saved beside the table before each rewrite, its summary columns in the table
        self.fields = None
        self.saved = 0  # rows on disk
        self.writes = 0
        self._started = False
        self._last = time.monotonic()
        self._last_cost = 0.0

    @property
    def n_frames(self) -> int:
        return len(self.done)

    def preload(self, shifts, quality, rotations=None, scales=None, uncertainties=None,
                parameter_uncertainties=None, peaks=None) -> None:
        """Rows already on disk from an earlier run (frames ``0..k-1``; the fields of a
        :class:`~napari_maskalign.io.ShiftTable`, in its order)."""
        k = len(shifts)
        if k and not pending_path(self.path).exists():  # a resumed table continues in place
            self.writing, self.sidecar = self.path, sidecar_path(self.path)
        self.shifts[:k], self.quality[:k], self.done[:k] = shifts, quality, True
        self._put(slice(0, k), rotations, scales)
        ndim = self.shifts.shape[1]
        if uncertainties is not None:
            self.sigma[:k, :ndim] = uncertainties
        if parameter_uncertainties is not None and self.rotations is not None:
            self.sigma[:k, ndim:] = parameter_uncertainties
        if peaks is not None:  # (second peaks, leads)
            self.second_peaks[:k], self.peak_leads[:k] = peaks
        self.saved = k

    def record(self, frames, shifts, quality, rotations=None, scales=None, sigma=None) -> None:
        """Frames that finished (any order); ``sigma``: their one-sigma errors (shift
        per axis, then rotation and scale for models), when known."""
        self.shifts[frames], self.quality[frames], self.done[frames] = shifts, quality, True
        self._put(frames, rotations, scales, sigma)

    def record_peak(self, frame: int, second_peak, lead: float) -> None:
        """A frame's second correlation peak and the first's lead over it."""
        self.second_peaks[frame], self.peak_leads[frame] = second_peak, lead

    def _put(self, where, rotations, scales, sigma=None) -> None:
        if self.rotations is not None and rotations is not None:
            self.rotations[where] = rotations
        if self.scales is not None and scales is not None:
            self.scales[where] = scales
        if sigma is not None:
            self.sigma[where] = sigma

    @property
    def uncertainties(self) -> np.ndarray:
        """The shifts' one-sigma errors ``(n_frames, ndim)`` (NaN where unknown)."""
        return self.sigma[:, :self.shifts.shape[1]]

    @property
    def parameter_uncertainties(self) -> np.ndarray | None:
        """Rotation and scale one-sigma errors ``(n_frames, 2)``; None for translation."""
        return None if self.rotations is None else self.sigma[:, self.shifts.shape[1]:]

    def columns(self, k: int) -> dict:
        """The table's columns after the errors, for its first ``k`` rows: a non-rigid
        run's summary, then the second peaks and leads."""
        return {**({} if self.fields is None else self.fields.columns(k)),
                **peak_values(self.second_peaks[:k], self.peak_leads[:k])}

    def prefix(self) -> int:
        """How many leading frames are finished: what may be written."""
        not_done = np.flatnonzero(~self.done)
        return int(not_done[0]) if not_done.size else self.n_frames

    def save(self, force: bool = False) -> None:
        """Rewrite the table with the finished prefix, if due (or ``force``)."""
        # called after every frame: the clock first, the O(n) scan only when due
        if not force and self.interval > 0 and (
            time.monotonic() - self._last < max(self.interval, 10 * self._last_cost)
        ):
            return
        k = self.prefix()
        if k == self.saved and not force:
            return
        if not self._started:
            # first save of this run: the settings file goes first, and an unfinished
            # table left by an earlier run goes, so that a table never sits next to
            # the settings of another run (an older complete table waits at self.path)
            if self.saved == 0 and self.writing.exists():
                self.writing.unlink()
            write_json_atomic(self.sidecar, self.info)
            self._started = True
        t0 = time.perf_counter()
        moves = self.rotations is not None
        try:
            if self.fields is not None:  # first: the table never has rows without their fields
                self.fields.save(k)
            write_shifts_csv(self.writing, self.shifts[:k], self.quality[:k],
                             rotations=self.rotations[:k] if moves else None,
                             scales=self.scales[:k] if moves else None,
                             uncertainties=self.uncertainties[:k],
                             parameter_uncertainties=(self.parameter_uncertainties[:k]
                                                      if moves else None),
                             columns=self.columns(k))
        except OSError as exc:  # a full disk: the last table written is whole, and says how far
            raise WriteFailed(
                exc.errno,
                f"cannot write {self.writing}: {exc.strerror or exc}; {self.saved} of "
                f"{self.n_frames} frames are saved in {self.writing}; make room and run the same "
                "command with --resume to continue",
                self.writing,
            ) from exc
        self._last_cost = time.perf_counter() - t0
        self.writes += 1
        self._last = time.monotonic()
        self.saved = k
        if k == self.n_frames and self.writing != self.path:
            self._replace_old_table()

    def _replace_old_table(self) -> None:
        """The table is complete: it and its settings take the older table's place. A kill
        between the two renames leaves the new settings and the complete new table at
        :func:`pending_path`, which ``--resume`` reads and ends the swap."""
        final_side = sidecar_path(self.path)
        os.replace(self.sidecar, final_side)
        os.replace(self.writing, self.path)
        self.writing, self.sidecar = self.path, final_side
