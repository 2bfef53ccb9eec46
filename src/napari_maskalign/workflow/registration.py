"""The one registration call both faces make: :func:`register`.

The Register dock and ``maskalign register`` hand it the same things -- the
stack, one :class:`~napari_maskalign.engine.RegistrationOptions`, and the
mask in the engine's convention (True = valid; a painted mask or a mask file,
nonzero = ignore, is converted once by the face with
:func:`~napari_maskalign.engine.valid_from_ignore`) -- and get the same
thing back: an iterator of the engine's
:class:`~napari_maskalign.engine.Progress` whose end value is the
:class:`~napari_maskalign.engine.RegistrationResult`. The dock runs it in a
napari worker, the command line follows it with a progress bar.

The mask is checked once, by the engine's run when :func:`register` makes
it (before any frame is read). The result carries the mask registration
actually used (``valid_mask``: the given one with the static outliers
found on top), and applying takes the result
(:func:`~napari_maskalign.workflow.write_outputs`), so nothing sends a mask
back down.

With a :class:`~napari_maskalign.workflow.journal.ShiftJournal` the
finished frames are written to the shifts table as they come and a resumed
run registers only the frames the table lacks; with a ``dask.distributed``
client the frames go to the cluster as one task per chunk.
"""

from __future__ import annotations

import numpy as np

from ..engine import (
    RegistrationOptions,
    RegistrationResult,
    RegistrationRun,
    build_result,
    mask_with_outliers,
    run_warnings,
    transform_parameters,
)
from ..engine.models import model_for_table
from ..engine.run._masks import check_mask
from ..engine.run._result import Steps
from ..engine.run._stack import outlier_params
from ..io import ShiftTable, write_shifts_csv
from .run import cluster_guard, cluster_stack

__all__ = ["Registration", "register", "table_result"]


class Registration(Steps):
    """A registration under way: what :func:`register` returns.

    An iterator of :class:`~napari_maskalign.engine.Progress`, one per frame
    registration (where a progress bar moves and a cancel takes effect); when
    it is exhausted, :attr:`result` holds the
    :class:`~napari_maskalign.engine.RegistrationResult`, which is also the
    ``StopIteration`` value (``result = yield from registration``).
    :meth:`close` stops it at the frame under way (a journal keeps the
    finished frames).

    Attributes
    ----------
    options : RegistrationOptions
    n_frames : int
    frame_shape : tuple of int
    mask : ndarray of bool or None
        The mask as given, checked (True = valid); the result's
        ``valid_mask`` adds the static outliers found.
    start : int
        The first frame registered here (a journal's saved frames come
        before it).
    total : int
        How many :class:`~napari_maskalign.engine.Progress` steps it yields.
    """

    def __init__(self, stack, options: RegistrationOptions | None = None, *, mask=None,
                 mask_name: str = "mask", journal=None, client=None, chunk_frames: int = 16):
        self.options = RegistrationOptions() if options is None else options
        self.stack, self.journal, self.client = stack, journal, client
        self.n_frames = int(stack.shape[0])
        self.frame_shape = tuple(int(s) for s in stack.shape[1:])
        self.start = 0 if journal is None else journal.saved
        self.result: RegistrationResult | None = None
        self._run: RegistrationRun | None = None
        #: the model's result carries fields (non-rigid); with a journal they are kept
        #: beside the table as frames finish, and a resumed run continues from them
        self._fields = bool(getattr(self.options.transform_model, "fields", False))
        self._rows = None
        if self._fields and journal is not None:
            self._rows = _field_rows(journal, self.options, self.frame_shape)
            self.start = journal.saved
        if self.start == self.n_frames and self.n_frames:  # the journal holds every frame
            self.options.check_for(self.n_frames, self.frame_shape)
            self.mask = check_mask(mask, self.frame_shape, mask_name)
            self.total = 0
        else:
            self._run = self._engine_run(mask, mask_name, chunk_frames)
            self.mask, self.total = self._run.valid, self._run.total
        self._steps = self._steps_of_run() if journal is None else self._steps_to_journal()

    def _engine_run(self, mask, mask_name: str, chunk_frames: int) -> RegistrationRun:
        """The engine's run over the frames left; it checks every argument (the mask too)."""
        stack, options, client, journal = self.stack, self.options, self.client, self.journal
        if client is not None:
            with cluster_guard(client):
                stack, options = cluster_stack(stack, options, client, chunk_frames)
        previous = previous_sigma = None
        if journal is not None and options.mode == "previous" and self.start:
            previous = journal.shifts[self.start - 1]
            previous_sigma = journal.sigma[self.start - 1]  # the chain's error goes on too
            if not options.transform_model.shift_only:  # frames turn: its whole transform
                previous = (previous, journal.rotations[self.start - 1],
                            journal.scales[self.start - 1])
        chain = {} if previous_sigma is None else {"previous_sigma": previous_sigma}
        if previous is not None and self._rows is not None:  # the chain of fields goes on
            chain["previous_field"] = self._rows.arrays["coefficients"][self.start - 1]
        return RegistrationRun(stack, options, mask=mask, mask_name=mask_name, start=self.start,
                               previous_shift=previous, **chain)

    # -- the steps --------------------------------------------------------------
    def _steps_of_run(self):
        with cluster_guard(self.client):
            return (yield from self._run)

    def _steps_to_journal(self):
        """Every finished frame recorded in the journal (the table on disk follows);
        whatever stops the run, the finished leading frames are saved first. Template
        refinement's shifts are final only after its last pass: recorded then."""
        journal, run, start, rows = self.journal, self._run, self.start, self._rows
        turns = not self.options.transform_model.shift_only
        # each frame's second correlation peak and the first's lead over it (kept in the
        # journal's table, read back on resume): a tie on a periodic pattern is flagged
        # over the whole table as the engine does ("previous" runs' peaks are steps)
        if run is None:  # nothing left to register; the outputs still need the mask it used
            used, hot = mask_with_outliers(self.stack, self.mask, self.options.hot_pixels)
        else:
            template = self.options.mode == "template"
            try:
                with cluster_guard(self.client):
                    for p in run:
                        if rows is not None and not template:
                            rows.patch_centres = run.patch_centres
                            rows.record(p.frame, p.record.nonrigid)
                        rec = p.record
                        if rec.alternative is not None and self.options.mode != "previous":
                            journal.record_peak(p.frame, rec.alternative, rec.margin)
                        if not template:  # (the row and its peaks saved together)
                            journal.record([p.frame], p.shift[None], [p.quality],
                                           *_rotation_scale(rec.transform, self.frame_shape),
                                           sigma=rec.sigma)
                            journal.save()
                        yield p
                if template:
                    res = run.result
                    if rows is not None:
                        rows.record_result(res)
                    sigma = res.uncertainties
                    if turns:
                        psig = res.parameter_uncertainties
                        if psig is None:  # the template run measures the shifts' errors only
                            psig = np.full((len(sigma), 2), np.nan)
                        sigma = np.column_stack([sigma, psig])
                    journal.record(np.arange(start, self.n_frames), res.raw_shifts, res.quality,
                                   *_rotation_scale(res.raw_transforms if turns else None,
                                                    self.frame_shape), sigma=sigma)
            finally:
                if journal.prefix() > journal.saved:  # keep what finished, however the run ends
                    journal.save(force=True)
            used, hot = run.result.valid_mask, run.result.hot_pixels
        journal.save(force=True)
        # the lock check over the whole table (a resumed engine run saw only its part)
        checks = run_warnings(self.stack, journal.shifts, used,
                              self.options.transform_model.shift_only)
        result = _over_table(journal.shifts, journal.quality, journal.rotations, journal.scales,
                             self.options, self.frame_shape, used=used, hot=hot,
                             masked=self.mask is not None, start=start,
                             uncertainties=journal.uncertainties,
                             parameter_uncertainties=journal.parameter_uncertainties,
                             alternatives=journal.second_peaks, margins=journal.peak_leads,
                             **checks)
        if rows is not None:  # the table holds the global shifts, the fields file the rest
            from ..io.fields import fields_path_for

            rows.finish(fields_path_for(journal.path))
            result = rows.result(result)
            result.params["grid"] = rows.grid.describe()
        if result.jumps is not None:  # smoothed: the table holds both, the smoothed shifts first
            write_shifts_csv(journal.path, result.shifts, result.quality,
                             rotations=result.rotations if turns else None,
                             scales=result.scales if turns else None,
                             uncertainties=result.smoothed_uncertainties,
                             parameter_uncertainties=(result.smoothed_parameter_uncertainties
                                                      if turns else None),
                             raw=ShiftTable(journal.shifts, journal.quality,
                                            journal.rotations, journal.scales,
                                            journal.uncertainties,
                                            journal.parameter_uncertainties),
                             columns=journal.columns(len(result.shifts)))
        return result


def _field_rows(journal, options, frame_shape):
    """A non-rigid run's :class:`~napari_maskalign.io.fields.FieldRows`, attached to the
    journal; a resumed run's saved frames are loaded, and the journal goes back to the
    frames whose fields were saved (a kill between the two files)."""
    from ..engine.kernels._bspline import SplineGrid
    from ..io.fields import FieldRows

    if len(frame_shape) != 2:
        return None  # the run refuses such frames in its own words
    rows = FieldRows(journal.path, journal.n_frames, SplineGrid(frame_shape, options.grid_spacing))
    kept = rows.load(journal.saved)
    if kept < journal.saved:
        journal.done[kept:] = False
        journal.saved = kept
    journal.fields = rows
    return rows


def register(stack, options: RegistrationOptions | None = None, *, mask=None,
             mask_name: str = "mask", journal=None, client=None,
             chunk_frames: int = 16) -> Registration:
    """Register a stack: the call the Register dock and ``maskalign register`` share.

    Every argument is checked now (``ValueError`` in plain words, before any
    frame is read); iterating the returned :class:`Registration` registers
    the frames, one :class:`~napari_maskalign.engine.Progress` per frame, and
    its end value (``result = yield from register(...)``) is the
    :class:`~napari_maskalign.engine.RegistrationResult`.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        The frames (numpy, memory-mapped, dask, or a lazy stack from
        :func:`~napari_maskalign.io.open_stack`).
    options : RegistrationOptions, optional
        Every setting (defaults if omitted).
    mask : ndarray of bool, optional
        The engine mask: True on the pixels to use, one frame's shape. The
        static outliers the options look for are added to it; the result's
        ``valid_mask`` is the mask used.
    mask_name : str
        What the mask is, for the messages that refuse it (``"mask file
        block.tif"``, ``"mask 'beam block'"``).
    journal : ShiftJournal, optional
        Record every finished frame there (the shifts table on disk follows)
        and register only the frames it lacks; the result then covers the
        whole table, with outliers flagged over all of it.
    client : distributed.Client, optional
        Register on a dask cluster, one task per ``chunk_frames`` frames.
        Losing the cluster raises
        :class:`~napari_maskalign.workflow.ClusterLost`.

    Returns
    -------
    Registration
    """
    return Registration(stack, options, mask=mask, mask_name=mask_name, journal=journal,
                        client=client, chunk_frames=chunk_frames)


def table_result(stack, table, options: RegistrationOptions | None = None, *, mask=None,
                 mask_name: str = "mask") -> RegistrationResult:
    """The result that applies a saved shift table to ``stack`` (``maskalign apply``).

    ``table`` is a :class:`~napari_maskalign.io.ShiftTable` (rows as
    measured; a rigid or similarity table turns the frames too). The mask is
    checked and the static outliers of ``options.hot_pixels`` are added to it,
    as :func:`register` does: the pixels registration ignored are ignored
    here too. The model is the one the table's columns describe; outliers are
    flagged with the options' thresholds.
    """
    options = RegistrationOptions() if options is None else options
    options = options.replace(model=model_for_table(table.rotations, table.scales).name)
    frame_shape = tuple(int(s) for s in stack.shape[1:])
    options.check_for(int(stack.shape[0]), frame_shape)
    given = check_mask(mask, frame_shape, mask_name)
    used, hot = mask_with_outliers(stack, given, options.hot_pixels)
    return _over_table(table.shifts, table.quality, table.rotations, table.scales, options,
                       frame_shape, used=used, hot=hot, masked=given is not None, start=0,
                       uncertainties=table.uncertainties,
                       parameter_uncertainties=table.parameter_uncertainties)


def _over_table(shifts, quality, rotations, scales, options, frame_shape, *, used, hot,
                masked: bool, start: int, **more) -> RegistrationResult:
    """The result over a whole table of measured rows, with the mask the run used;
    ``more``: the rows' uncertainties, the run's warnings (see :func:`build_result`)."""
    n = len(shifts)
    return build_result(
        shifts,
        quality,
        options,
        params={"start": start, "n_frames": n, **outlier_params(masked, hot, options)},
        rotations=rotations,
        scales=scales,
        frame_shape=frame_shape,
        hot_pixels=hot,
        valid_mask=used,
        **more,
    )


def _rotation_scale(transforms, frame_shape):
    """``(rotations, scales)`` of one transform or a stack of them; ``(None, None)``
    for a translation run."""
    if transforms is None:
        return None, None
    t = np.asarray(transforms, dtype=float)
    _, rotations, scales = transform_parameters(t.reshape(-1, *t.shape[-2:]), frame_shape)
    return rotations, scales
