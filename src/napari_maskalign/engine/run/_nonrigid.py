"""The non-rigid model in a stack run: a frame registrar (global translation, then
:class:`~napari_maskalign.engine.models._nonrigid_fit.NonrigidRegistrar`), the runs for
every reference mode (a fixed reference, the previous frame, the stack's own template),
and its :class:`NonrigidResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import fields as dc_fields

import numpy as np
from scipy import ndimage as ndi

from ..backends._frames import iter_frames, read_frame
from ..kernels._bspline import SplineGrid
from ..kernels._fft import default_workers
from ..models._fields import FieldStack, apply_fields
from ..models._nonrigid_fit import NonrigidRegistrar, NonrigidSettings
from ..models._translation import TRANSLATION
from ._parallel import frames_for, in_threads, register_frames
from ._registrar import FrameRegistrar, has_contrast
from ._result import Progress, RegistrationResult, build_result

__all__ = ["NonrigidFrameRegistrar", "NonrigidResult", "nonrigid_steps", "settings_of",
           "with_fields"]


class NonrigidFrameRegistrar:
    """A frame registrar for ``model="nonrigid"``: the global masked translation
    (a translation :class:`~._registrar.FrameRegistrar`, 1/20 px at least) and
    the :class:`NonrigidRegistrar` on top. Has the registrar interface the
    stack run's threads use (``register``, ``set_workers``, ``xp``)."""

    xp = np

    def __init__(self, reference, valid, options, *, dtype=None):

        glob = options.replace(model=TRANSLATION.name, refine=None,
                               upsample_factor=max(options.upsample_factor, 20.0))
        self._global = FrameRegistrar(reference, valid, glob, dtype=dtype)
        self.backend = self._global.backend  # numpy: frames are registered on the CPU
        self.shape = self._global.shape
        self.settings = settings_of(options)
        self._model = NonrigidRegistrar(reference, valid, self.settings)

    @property
    def grid(self) -> SplineGrid:
        return self._model.grid

    @property
    def patch_centres(self) -> np.ndarray:
        return self._model.patches.centres

    def set_workers(self, workers) -> None:
        self._global.set_workers(workers)

    def register(self, frame):
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"a frame has shape {frame.shape}, expected {self.shape}")
        # the global registrar checks the frame (NaN on valid pixels, contrast)
        rec = self._global.register(frame)
        nr = self._model.register(np.where(self._model.valid, frame, 0), rec.shift, rec.quality)
        return dataclasses.replace(rec, nonrigid=nr)


def settings_of(options) -> NonrigidSettings:
    """The model's settings from :class:`~._options.RegistrationOptions`."""
    return NonrigidSettings(grid_spacing=float(options.grid_spacing),
                            patch_size=int(options.patch_size),
                            patch_stride=int(options.patch_stride))


class _Table:
    """A non-rigid run's per-frame results, filled as frames finish (a few KB a frame:
    coefficients, patch shifts, the summary; never the fields themselves)."""

    def __init__(self, run, count: int, registrar: NonrigidFrameRegistrar, radius: int | None):
        self.grid = registrar.grid
        self.centres = registrar.patch_centres.copy()
        run.patch_centres = self.centres  # known before the first frame (a journal keeps them)
        ny, nx = self.grid.grid_shape
        m = len(self.centres)
        self.shifts, self.peaks = np.zeros((count, 2)), np.zeros((count, 2))
        self.quality = np.zeros(count)
        self.xcorr = None if radius is None else np.zeros((count, 2 * radius + 1, 2 * radius + 1),
                                                           np.float32)
        self.coef = np.zeros((count, 2, ny, nx), np.float32)
        self.pshift = np.full((count, m, 2), np.nan, np.float32)
        self.pq = np.zeros((count, m), np.float32)
        self.fallback = np.zeros(count, bool)
        self.d_rms, self.d_max, self.vp = np.zeros(count), np.zeros(count), np.zeros(count)

    def put(self, k: int, rec) -> None:
        self.shifts[k], self.peaks[k], self.quality[k] = rec.shift, rec.peak, rec.quality
        if self.xcorr is not None and rec.xcorr is not None:
            self.xcorr[k] = rec.xcorr
        nr = rec.nonrigid
        self.coef[k], self.pshift[k], self.pq[k] = nr.coefficients, nr.patch_shifts, nr.patch_quality
        self.fallback[k], self.d_rms[k], self.d_max[k] = nr.fallback, nr.rms, nr.max
        self.vp[k] = nr.valid_patches

    def result(self, run, given, hot, params: dict) -> NonrigidResult:
        opts = run.options
        base = build_result(
            self.shifts, self.quality, opts, peaks=self.peaks, xcorr=self.xcorr,
            params={"masked": given is not None, "start": run.start, "n_frames": run.n_frames,
                    "n_hot_pixels": 0 if hot is None else int(hot.sum()),
                    "grid": self.grid.describe(), **params},
            hot_pixels=hot, valid_mask=run.valid,
        )
        kept = {f.name: getattr(base, f.name) for f in dc_fields(RegistrationResult)}
        return NonrigidResult(**kept, coefficients=self.coef, grid=self.grid,
                              patch_centres=self.centres, patch_shifts=self.pshift,
                              patch_quality=self.pq, fallback=self.fallback,
                              deformation_rms=self.d_rms, deformation_max=self.d_max,
                              valid_patches=self.vp)


def nonrigid_steps(run, given, hot):
    """The stack run for ``model="nonrigid"``, every reference mode: yields
    :class:`~._result.Progress` per frame registration, returns a
    :class:`NonrigidResult`.

    A fixed reference (a frame, an image, the mean) registers every frame against
    it in threads. ``"previous"`` registers each frame against the one before and
    composes the fields onto the first frame's grid. ``"template"`` registers to
    the mean, then to the mean of the frames aligned by their own fields, until
    the fields settle.
    """
    opts = run.options
    radius = opts.xcorr_radius if opts.return_xcorr else None
    params = {}
    if opts.mode == "previous":
        table = yield from _previous(run, radius)
    elif opts.mode == "template":
        table = yield from _template(run, radius)
        params["template_passes"] = run.template_passes
    else:
        registrar = NonrigidFrameRegistrar(run._reference_image(), run.valid, opts, dtype=run.dtype)
        table = _Table(run, run.n_frames - run.start, registrar, radius)
        yield from _all_frames(run, registrar, table, run.start, 0)
    return table.result(run, given, hot, params)


def _all_frames(run, registrar, table: _Table, start: int, done: int, stage: str = ""):
    """Frames ``start..n-1`` against ``registrar``'s reference, in threads, into
    ``table`` (row 0 is frame ``start``)."""
    threads = default_workers(run.options.workers)
    frames_in = frames_for(registrar, run.stack, start, run.n_frames, run.dtype)
    for k, rec in enumerate(register_frames(registrar, frames_in, threads)):
        table.put(k, rec)
        yield Progress(done + k + 1, run.total, start + k, rec, stage)


def _previous(run, radius):
    """Each frame against the one before (the last one with contrast); the fields
    compose onto the first frame's grid: if frame ``i - 1`` aligns by ``V`` and
    frame ``i`` onto frame ``i - 1`` by ``w``, frame ``i`` aligns by
    ``V(x) + w(x + V(x))``, refitted on the spline grid. The global shifts add up
    as for a translation run. A resumed run continues from ``run.previous_field``
    (frame ``start - 1``'s coefficients) and ``run.previous_shift``."""
    stack, start, n, dtype, opts = run.stack, run.start, run.n_frames, run.dtype, run.options
    first = start - 1 if start else 0
    ref = read_frame(stack, first, dtype)
    while first > 0 and not has_contrast(ref, run.valid):
        first -= 1
        ref = read_frame(stack, first, dtype)
    registrar = NonrigidFrameRegistrar(ref, run.valid, opts, dtype=dtype)
    table = _Table(run, n - start, registrar, radius)
    grid = registrar.grid
    h, w = grid.shape
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    acc_shift = np.asarray(run.previous_shift, float)
    acc = getattr(run, "previous_field", None)
    if acc is None:
        if start:
            raise ValueError("resuming a non-rigid run against the previous frame needs the "
                             "field of the frame before the first one (previous_field)")
        acc = np.zeros((2, *grid.grid_shape))
    acc = np.asarray(acc, np.float64)
    if acc.shape != (2, *grid.grid_shape):
        raise ValueError(f"previous_field must be coefficients of shape {(2, *grid.grid_shape)}, "
                         f"got {acc.shape}")
    centres = table.centres
    for k, cur in enumerate(iter_frames(stack, start, n, dtype)):
        i = start + k
        rec = registrar.register(cur)
        nr = rec.nonrigid
        if i == 0:  # the origin of the chain: the registration against itself falls back
            acc_shift = np.zeros(2)
            coef = np.zeros((2, *grid.grid_shape))
            rec = dataclasses.replace(rec, shift=acc_shift.copy(), peak=np.zeros(2), sigma=None,
                                      nonrigid=dataclasses.replace(
                                          nr, coefficients=coef.astype(np.float32), rms=0.0,
                                          max=0.0))
        else:
            at = grid.evaluate_at(acc, centres[:, 0], centres[:, 1]).T  # the chain so far
            before = grid.evaluate(acc)
            step = grid.evaluate(nr.coefficients)
            landed = [rows + before[0], cols + before[1]]
            field = before + np.stack([ndi.map_coordinates(s, landed, order=3, mode="nearest")
                                       for s in step])
            # the chain goes on from the stored (float32) coefficients: a resumed run, which
            # has only those, continues bit for bit
            acc = grid.fit_field(field).astype(np.float32).astype(np.float64)
            acc_shift = acc_shift + rec.shift
            rms, mx = _deformation(grid.evaluate(acc), acc_shift, run.valid)
            nr = dataclasses.replace(nr, coefficients=acc.astype(np.float32),
                                     # the patches' view of the chain: its field at
                                     # each centre so far plus the step measured there
                                     patch_shifts=(nr.patch_shifts + at).astype(np.float32),
                                     rms=rms, max=mx)
            rec = dataclasses.replace(rec, shift=acc_shift.copy(), sigma=None, nonrigid=nr)
        table.put(k, rec)
        if i + 1 < n and has_contrast(cur, run.valid):
            registrar = NonrigidFrameRegistrar(cur, run.valid, opts, dtype=dtype)
        yield Progress(k + 1, run.total, i, rec)
    return table


def _template(run, radius):
    """Register to the mean, then to the stack's own template: the mean of the frames
    aligned by their fields (each pixel over the frames that hold data there, kept
    where at least half of them do), each frame against the template without its own
    contribution (leave-one-out: with few frames a frame's own noise and its old
    alignment would pull it), until no frame's field moves by more than 0.05 px RMS
    over the valid pixels between passes (up to a common field: the template's own
    position is free), at most ``template_iterations`` passes."""
    stack, n, dtype, opts = run.stack, run.n_frames, run.dtype, run.options
    mean = np.zeros(run.frame_shape)
    for frame in iter_frames(stack, 0, n, np.float64):
        mean += frame
    registrar = NonrigidFrameRegistrar((mean / n).astype(dtype), run.valid, opts, dtype=dtype)
    table = _Table(run, n, registrar, radius)
    yield from _all_frames(run, registrar, table, 0, 0, "registering to the mean")
    done = n
    cap = opts.template_iterations
    threads = default_workers(opts.workers)
    for p in range(1, cap + 1):
        use = table.quality > 0
        acc, count = _template_sums(stack, table.coef, table.grid, run.valid, use, dtype)
        need = max(1.0, 0.5 * (int(use.sum()) - 1))
        before = table.coef.copy()

        def one(item, acc=acc, count=count, need=need, use=use):
            i, frame = item
            a, c = acc, count
            if use[i] and n > 2:  # the frame's own contribution out
                own, ok = _aligned(frame, table.coef[i], table.grid, run.valid)
                a, c = acc - np.where(ok, own, 0.0), count - ok
            seen = c >= need
            if run.valid is not None:
                seen &= run.valid
            fill = float(np.mean(a[seen] / c[seen])) if seen.any() else 0.0
            template = np.where(seen, a / np.maximum(c, 1), fill).astype(dtype)
            reg = NonrigidFrameRegistrar(template, seen, opts, dtype=dtype)
            reg.set_workers(1)
            return i, reg.register(frame)

        frames_in = enumerate(iter_frames(stack, 0, n, dtype))
        stage = f"refining template {p}/{cap}"
        for i, rec in in_threads(one, frames_in, threads):
            table.put(i, rec)
            done += 1
            yield Progress(done, run.total, i, rec, stage)
        run.template_passes = p
        if _fields_settled(table.coef - before, use, table.grid, run.valid):
            break
    return table


def _aligned(frame, coefficients, grid: SplineGrid, valid):
    """``(frame(x + v(x)), where it holds data)``: the frame aligned by its field, the
    block and the frame's edges out."""
    v = grid.evaluate(coefficients)[None]
    aligned, ok = apply_fields(np.asarray(frame)[None], v, valid_mask=valid, return_valid=True)
    ok = ok[0] & np.isfinite(aligned[0])
    return np.where(ok, aligned[0], 0.0), ok


def _template_sums(stack, coefficients, grid: SplineGrid, valid, use, dtype):
    """``(sum, count)`` per pixel of the frames ``use`` aligned by their fields."""
    acc = np.zeros(grid.shape)
    count = np.zeros(grid.shape)
    for i, frame in enumerate(iter_frames(stack, 0, len(coefficients), dtype)):
        if use[i]:
            own, ok = _aligned(frame, coefficients[i], grid, valid)
            acc += own
            count += ok
    return acc, count


def _fields_settled(moved, use, grid: SplineGrid, valid, tol: float = 0.05) -> bool:
    """Whether no frame's field moved by more than ``tol`` px RMS over the valid pixels
    between two passes, up to a field common to all frames (coefficients outside the
    frame or under the block are free and do not count)."""
    if not use.any():
        return True
    d = moved[use].astype(np.float64)
    d = d - np.median(d, axis=0)
    where = np.ones(grid.shape, bool) if valid is None else valid
    rms = [np.sqrt(np.mean((grid.evaluate(dk) ** 2).sum(axis=0)[where])) for dk in d]
    return bool(np.all(np.asarray(rms) <= tol))


def _deformation(field, shift, valid) -> tuple[float, float]:
    """RMS and maximum of a field beyond the global shift over valid pixels (px)."""
    d = field + np.asarray(shift, float)[:, None, None]
    mag = np.sqrt((d * d).sum(axis=0))
    if valid is not None:
        mag = mag[valid]
    return (float(np.sqrt(np.mean(mag**2))), float(mag.max())) if mag.size else (0.0, 0.0)


@dataclass(repr=False)
class NonrigidResult(RegistrationResult):
    """A non-rigid registration: :class:`RegistrationResult` (``shifts`` and
    ``transforms`` are the global translation) plus each frame's field.

    Attributes
    ----------
    coefficients : ndarray (n, 2, ny, nx) float32
        The cubic B-spline coefficients of each frame's whole field (global part
        included) on :attr:`grid`.
    grid : SplineGrid
    patch_centres : ndarray (m, 2)
        Where the patches sit (row, col) on the reference grid.
    patch_shifts : ndarray (n, m, 2) float32
        Each patch's field at its centre (NaN: no usable match).
    patch_quality : ndarray (n, m) float32
        Each patch's peak masked NCC.
    fallback : ndarray of bool (n,)
        Frames that kept the global translation: their field did not fit the
        data better (or could not be measured).
    deformation_rms, deformation_max : ndarray (n,)
        The field beyond the global shift over valid pixels, px.
    valid_patches : ndarray (n,)
        The fraction of patches that matched.
    """

    coefficients: np.ndarray | None = None
    grid: SplineGrid | None = None
    patch_centres: np.ndarray | None = None
    patch_shifts: np.ndarray | None = None
    patch_quality: np.ndarray | None = None
    fallback: np.ndarray | None = None
    deformation_rms: np.ndarray | None = None
    deformation_max: np.ndarray | None = None
    valid_patches: np.ndarray | None = None

    @property
    def field_stack(self) -> FieldStack:
        return FieldStack(self.coefficients, self.grid)

    def field(self, i: int) -> np.ndarray:
        """Frame ``i``'s field ``(2, H, W)`` float32: the aligned frame is
        ``frame(x + v(x))``, (row, col), on the reference grid."""
        n = self.n_frames
        if not (isinstance(i, (int, np.integer)) and -n <= i < n):
            raise ValueError(f"frame {i} does not exist: the result has {n} frames")
        return self.field_stack[int(i) % n]

    def fields(self):
        """All fields as a lazy dask array ``(n, 2, H, W)`` float32 (one chunk a frame)."""
        return self.field_stack.to_dask()

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return (f"{base}, grid={self.grid.spacing:g} px, "
                f"fallback={int(np.sum(self.fallback))}, "
                f"median deformation rms={np.median(self.deformation_rms) if self.n_frames else 0:.3f} px)")


def with_fields(result: RegistrationResult, fields: FieldStack, extras: dict) -> NonrigidResult:
    """A table's result (its global shifts) with the fields read back from a fields
    file (``maskalign apply``): what aligns the frames is then the fields."""
    kept = {f.name: getattr(result, f.name) for f in dc_fields(RegistrationResult)}
    kept["model"] = "nonrigid"
    n = result.n_frames
    return NonrigidResult(
        **kept, coefficients=fields.coefficients, grid=fields.grid,
        patch_centres=extras.get("patch_centres"), patch_shifts=extras.get("patch_shifts"),
        patch_quality=extras.get("patch_quality"),
        fallback=np.asarray(extras.get("fallback", np.zeros(n, bool)), bool),
        deformation_rms=np.asarray(extras.get("deformation_rms", np.zeros(n)), float),
        deformation_max=np.asarray(extras.get("deformation_max", np.zeros(n)), float),
        valid_patches=np.asarray(extras.get("valid_patches", np.zeros(n)), float),
    )
