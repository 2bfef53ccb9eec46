"""The non-rigid model in a stack run: a frame registrar (global translation, then
:class:`~napari_maskalign.engine.models._nonrigid_fit.NonrigidRegistrar`), the run over a
fixed reference, and its :class:`NonrigidResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import fields as dc_fields

import numpy as np

from ..kernels._bspline import SplineGrid
from ..kernels._fft import default_workers
from ..models._fields import FieldStack
from ..models._nonrigid_fit import NonrigidRegistrar, NonrigidSettings
from ..models._translation import TRANSLATION
from ._parallel import frames_for, register_frames
from ._registrar import FrameRegistrar
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


def nonrigid_steps(run, given, hot):
    """The stack run for ``model="nonrigid"`` (fixed references: a frame, an image, the
    mean): yields :class:`~._result.Progress` per frame, returns a
    :class:`~._fields.NonrigidResult`."""
    opts = run.options
    registrar = NonrigidFrameRegistrar(run._reference_image(), run.valid, opts, dtype=run.dtype)
    start, n, total = run.start, run.n_frames, run.total
    count = n - start
    ndim = 2
    shifts, peaks, quality = np.zeros((count, ndim)), np.zeros((count, ndim)), np.zeros(count)
    radius = opts.xcorr_radius if opts.return_xcorr else None
    xcorr = None if radius is None else np.zeros((count, 2 * radius + 1, 2 * radius + 1), np.float32)
    ny, nx = registrar.grid.grid_shape
    m = len(registrar.patch_centres)
    coef = np.zeros((count, 2, ny, nx), np.float32)
    pshift = np.full((count, m, 2), np.nan, np.float32)
    pq = np.zeros((count, m), np.float32)
    fallback = np.zeros(count, bool)
    d_rms, d_max, vp = np.zeros(count), np.zeros(count), np.zeros(count)
    threads = default_workers(opts.workers)
    frames_in = frames_for(registrar, run.stack, start, n, run.dtype)
    for k, rec in enumerate(register_frames(registrar, frames_in, threads)):
        shifts[k], peaks[k], quality[k] = rec.shift, rec.peak, rec.quality
        if xcorr is not None and rec.xcorr is not None:
            xcorr[k] = rec.xcorr
        nr = rec.nonrigid
        coef[k], pshift[k], pq[k] = nr.coefficients, nr.patch_shifts, nr.patch_quality
        fallback[k], d_rms[k], d_max[k], vp[k] = nr.fallback, nr.rms, nr.max, nr.valid_patches
        yield Progress(k + 1, total, start + k, rec)
    base = build_result(
        shifts, quality, opts, peaks=peaks, xcorr=xcorr,
        params={"masked": given is not None, "start": start, "n_frames": n,
                "n_hot_pixels": 0 if hot is None else int(hot.sum()),
                "grid": registrar.grid.describe()},
        hot_pixels=hot, valid_mask=run.valid,
    )
    kept = {f.name: getattr(base, f.name) for f in dc_fields(RegistrationResult)}
    return NonrigidResult(**kept, coefficients=coef, grid=registrar.grid,
                          patch_centres=registrar.patch_centres.copy(), patch_shifts=pshift,
                          patch_quality=pq, fallback=fallback, deformation_rms=d_rms,
                          deformation_max=d_max, valid_patches=vp)


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
