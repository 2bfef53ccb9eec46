"""Stack registration: a run that yields after every frame, one generator per reference mode."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..backends import backend_for
from ..backends._device import namespace_for
from ..backends._frames import check_stack, is_dask, iter_frames, read_frame
from ..kernels._fft import default_workers, real_dtype_for
from ..models import Model
from ..models._transforms import similarity_transforms, transform_parameters
from ._hotpixels import mask_with_outliers
from ._lock import run_warnings
from ._masks import check_mask
from ._options import RegistrationOptions, _is_index
from ._parallel import frames_for, in_threads, register_frames
from ._registrar import FrameRegistrar, check_backend, has_contrast
from ._result import FrameRecord, Progress, RegistrationResult, Steps, build_result

__all__ = ["RegistrationRun", "iter_register_stack", "outlier_params", "register_stack"]


class _Table:
    """The per-frame results of a run, filled as frames finish."""

    def __init__(self, count: int, ndim: int, radius: int | None, model: Model):
        self.shifts = np.zeros((count, ndim))
        self.peaks = np.zeros((count, ndim))
        self.quality = np.zeros(count)
        # one-sigma errors: the shift per axis, then rotation (deg) and scale for models
        self.sigma = np.full((count, ndim if model.shift_only else ndim + 2), np.nan)
        # the correlation's second peak per frame and the first's lead over it (noise units)
        self.alternatives = np.full((count, ndim), np.nan)
        self.margins = np.full(count, np.inf)
        self.xcorr = None if radius is None else np.zeros((count, *(2 * radius + 1,) * ndim), np.float32)
        self.transforms = None
        if not model.shift_only:
            self.transforms = np.broadcast_to(np.eye(ndim + 1), (count, ndim + 1, ndim + 1)).copy()

    def put(self, k: int, record: FrameRecord) -> None:
        self.shifts[k], self.peaks[k], self.quality[k] = record.shift, record.peak, record.quality
        self.sigma[k] = np.nan if record.sigma is None else record.sigma
        if record.alternative is not None:
            self.alternatives[k], self.margins[k] = record.alternative, record.margin
        if self.xcorr is not None:
            self.xcorr[k] = record.xcorr
        if self.transforms is not None:
            self.transforms[k] = record.transform

    def parameters(self, frame_shape) -> dict:
        """``rotations``, ``scales`` and ``frame_shape`` for :func:`build_result`."""
        ndim = self.shifts.shape[1]
        if self.transforms is None:
            return {"uncertainties": self.sigma}
        _, rotations, scales = transform_parameters(self.transforms, frame_shape)
        return {"rotations": rotations, "scales": scales, "frame_shape": frame_shape,
                "uncertainties": self.sigma[:, :ndim],
                "parameter_uncertainties": self.sigma[:, ndim:]}


class RegistrationRun(Steps):
    """The registration of a stack, one frame at a time.

    An iterator of :class:`Progress` (one per frame registration: the place
    where a GUI updates a progress bar and where a cancel takes effect);
    once it is exhausted, :attr:`result` holds the
    :class:`RegistrationResult` (also the ``StopIteration`` value, so
    ``result = yield from run`` works inside a generator). :meth:`run` does
    all of it at once. Frames are read one at a time (dask stacks in small
    groups), so memory does not grow with the stack's length.

    Every argument is checked when the run is made: bad input raises
    ``ValueError`` in plain words before any frame is read. Problems found
    in the data itself (a reference without contrast, NaN on valid pixels)
    raise before the first :class:`Progress`, or when the frame is reached.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        See :func:`register_stack`.
    options : RegistrationOptions, optional
        The settings (defaults if omitted).
    mask : ndarray of bool, optional
        True on valid pixels, one frame's shape (engine convention).
    mask_name : str
        What the mask is, in the messages that refuse it (``"mask file
        block.tif"``, ``"mask 'beam block'"``).
    start, previous_shift
        Register only frames ``start..n-1`` (resuming an interrupted run);
        with ``reference="previous"``, ``previous_shift`` is the accumulated
        shift of frame ``start - 1`` (rigid and similarity models: its
        accumulated transform, a homogeneous matrix, or its centre shift,
        rotation and scale as ``(shift, rotation, scale)``).
    previous_sigma : array, optional
        With ``reference="previous"`` and ``start``: the one-sigma errors of
        frame ``start - 1`` (its row of ``uncertainties``, then for models of
        ``parameter_uncertainties``), which the chain's errors continue from.
    previous_field : array, optional
        ``model="nonrigid"``, ``reference="previous"`` and ``start``: frame
        ``start - 1``'s spline coefficients ``(2, ny, nx)``, which the chain of
        fields continues from.
    """

    def __init__(self, stack, options: RegistrationOptions | None = None, *, mask=None,
                 mask_name: str = "mask", start: int = 0, previous_shift=None,
                 previous_sigma=None, previous_field=None):
        opts = RegistrationOptions() if options is None else options
        stack, shape = check_stack(stack)
        n, frame_shape = shape[0], shape[1:]
        self.valid = check_mask(mask, frame_shape, mask_name)
        opts.check_for(n, frame_shape)
        if not _is_index(start) or not 0 <= start < n:
            raise ValueError(f"start must be a frame index in [0, {n}), got {start}")
        if opts.mode == "template" and start:
            raise ValueError(
                "template refinement cannot resume from a frame: it re-registers every frame"
            )
        ndim = len(frame_shape)
        self.previous_shift = None
        if opts.mode == "previous":
            self.previous_shift = _previous_start(previous_shift, ndim, opts.transform_model,
                                                  frame_shape)
        #: a non-rigid run against the previous frame: frame ``start - 1``'s coefficients
        self.previous_field = previous_field
        self.previous_sigma = None
        if previous_sigma is not None and opts.mode == "previous" and start:
            self.previous_sigma = np.asarray(previous_sigma, dtype=float)
        self.stack, self.options, self.start = stack, opts, int(start)
        self.n_frames, self.frame_shape = n, frame_shape
        self.dtype = real_dtype_for(stack)
        #: where the frames are registered: numpy, or CuPy for a GPU (``options.device``;
        #: unmasked registration runs on the CPU, and refuses a GPU asked for by name)
        self.xp = namespace_for(opts.device, stack if self.valid is not None else None)
        # decided here, from the arguments alone: static outliers found later in the
        # data never turn an unmasked GPU run into a masked one
        check_backend(backend_for(self.xp), self.valid is not None, opts.transform_model)
        passes = opts.template_iterations + 1 if opts.mode == "template" else 1
        #: how many :class:`Progress` steps the run yields
        self.total = passes * n if opts.mode == "template" else n - self.start
        self.result: RegistrationResult | None = None
        #: per-frame one-sigma shift uncertainties (px) a run measured, if any
        self.uncertainties: np.ndarray | None = None
        #: template refinement passes run (they stop once the shifts settle)
        self.template_passes: int | None = None
        #: a non-rigid run's patch centres (m, 2), known once its first registrar is made
        self.patch_centres: np.ndarray | None = None
        self._steps = self._run()

    def run(self) -> RegistrationResult:
        """Register every remaining frame and return the result."""
        for _ in self:
            pass
        return self.result

    # -- the steps --------------------------------------------------------------
    def _run(self):
        opts = self.options
        # static outliers (hot, dead pixels) join the mask before any registrar is made
        given = self.valid
        used, hot = mask_with_outliers(self.stack, given, opts.hot_pixels)
        # one estimator whatever is found: a masked run gets them in its mask, an unmasked
        # run stays unmasked (phase or plain correlation) with them filled in every frame
        self.valid = used if given is not None else None
        self.fill = hot if given is None and hot is not None and hot.any() else None
        if opts.transform_model.fields:
            from ._nonrigid import nonrigid_steps

            return (yield from nonrigid_steps(self, given, hot))
        count = self.n_frames - self.start
        radius = opts.xcorr_radius if opts.return_xcorr else None
        table = _Table(count, len(self.frame_shape), radius, opts.transform_model)
        if opts.mode == "previous":
            yield from self._previous(table)
        elif opts.mode == "template":
            yield from self._template(table)
        else:
            yield from self._fixed(table)
        # a resumed run's table is partial: the workflow checks the whole one
        checks = {}
        if self.start == 0:
            checks = run_warnings(self.stack, table.shifts, self.valid,
                                  opts.transform_model.shift_only)
        return build_result(
            table.shifts,
            table.quality,
            opts,
            peaks=table.peaks,
            xcorr=table.xcorr,
            params={"start": self.start, "n_frames": self.n_frames,
                    **outlier_params(given is not None, hot, opts),
                    **({} if self.template_passes is None else
                       {"template_passes": self.template_passes})},
            hot_pixels=hot,
            valid_mask=used,
            **self._parameters(table),
            **checks,
            # a "previous" run's second peaks are steps from the frame before
            **({} if opts.mode == "previous" else
               {"alternatives": table.alternatives, "margins": table.margins}),
        )

    def _parameters(self, table) -> dict:
        """The table's rotations, scales and uncertainties; a template run's own
        uncertainties (measured against its final template) replace the first pass's."""
        par = table.parameters(self.frame_shape)
        if self.uncertainties is not None:
            par["uncertainties"] = self.uncertainties
        return par

    def _reference_image(self) -> np.ndarray:
        opts, stack = self.options, self.stack
        if opts.mode == "index":
            return read_frame(stack, opts.reference_index(self.n_frames), self.dtype)
        if opts.mode == "image":
            return np.asarray(opts.reference, dtype=self.dtype)
        return mean_frame(stack, *opts.mean_range(self.n_frames), self.dtype)

    def _fixed(self, table: _Table):
        """Every frame against one reference: in threads, or on a dask cluster."""
        registrar = FrameRegistrar(self._reference_image(), self.valid, self.options, dtype=self.dtype,
                                   xp=self.xp, fill=self.fill)
        stack, start, n, total = self.stack, self.start, self.n_frames, self.total
        client = None
        if is_dask(stack):
            from ._dask import active_client

            client = active_client()
        if client is not None:
            # one task per frame chunk on the cluster; chunks finish in any order
            from ._dask import iter_register_chunks

            done = 0
            for idx, records in iter_register_chunks(stack, registrar, client, start):
                for i, rec in zip(idx, records):
                    table.put(int(i) - start, rec)
                    done += 1
                    yield Progress(done, total, int(i), rec)
            return
        threads = default_workers(self.options.workers)
        frames_in = frames_for(registrar, stack, start, n, self.dtype)
        for k, rec in enumerate(register_frames(registrar, frames_in, threads)):
            table.put(k, rec)
            yield Progress(k + 1, total, start + k, rec)

    def _previous(self, table: _Table):
        """Each frame against the one before; shifts accumulate to the first frame."""
        stack, start, n, dtype = self.stack, self.start, self.n_frames, self.dtype
        acc = self.previous_shift
        # the chain's reference: the last frame before `start` that has contrast
        first = start - 1 if start else 0
        ref0 = read_frame(stack, first, dtype)
        while first > 0 and not has_contrast(ref0, self.valid):
            first -= 1
            ref0 = read_frame(stack, first, dtype)
        registrar = FrameRegistrar(ref0, self.valid, self.options, dtype=dtype, xp=self.xp,
                                   fill=self.fill)
        model = not self.options.transform_model.shift_only
        # each step's error adds (in quadrature) to the frames after it; a resumed run
        # continues from frame start - 1's sigma (carried as the sigma itself, not its
        # square, so that it continues bit for bit)
        chain = self.previous_sigma
        for k, cur in enumerate(iter_frames(stack, start, n, dtype)):
            i = start + k
            rec = registrar.register(cur)
            if i == 0:  # the first frame is the origin of the chain
                zero = np.zeros(len(self.frame_shape))
                rec = dataclasses.replace(rec, shift=zero, peak=zero,
                                          transform=np.eye(len(zero) + 1) if model else None,
                                          sigma=None if rec.sigma is None else 0 * rec.sigma)
            if rec.sigma is not None:
                chain = rec.sigma if chain is None else np.sqrt(chain**2 + rec.sigma**2)
                rec = dataclasses.replace(rec, sigma=chain)
            if model:  # the step maps frame i onto frame i - 1, acc frame i - 1 onto the first
                acc = acc @ rec.transform
                shift = transform_parameters(acc[None], self.frame_shape)[0][0]
                rec = dataclasses.replace(rec, shift=shift, transform=acc)
            else:
                acc = acc + rec.shift
                rec = dataclasses.replace(rec, shift=acc)
            table.put(k, rec)
            if i + 1 < n and has_contrast(cur, self.valid):
                # a frame without contrast (quality 0) cannot be a reference:
                # the next frame is registered against the last one that can
                registrar.set_reference(cur)
            yield Progress(k + 1, self.total, i, rec)

    def _template(self, table: _Table):
        """Register to the mean, then to the stack's own template until it settles.

        Pass 0 registers every frame to the unaligned mean. Each later pass
        builds the template from the frames moved by their own transforms
        (:class:`~._template.TemplateSums`: Fourier shifts, ignored pixels and
        edges left out, each pixel the mean over the frames that saw it) and
        registers each frame against it with that frame's own contribution taken
        out (leave-one-out). It stops when no shift moved by more than a tenth of
        its uncertainty (up to a common offset), or after ``template_iterations``
        passes.
        """
        from ..models._template import TemplateSums

        stack, n, dtype, opts = self.stack, self.n_frames, self.dtype, self.options
        shape, ndim = self.frame_shape, len(self.frame_shape)
        cap = opts.template_iterations
        registrar = FrameRegistrar(mean_frame(stack, 0, n, dtype), self.valid, opts, dtype=dtype,
                                   xp=self.xp, fill=self.fill)
        transforms = np.empty((n, ndim + 1, ndim + 1))
        frames_in = frames_for(registrar, stack, 0, n, dtype)
        threads = default_workers(opts.workers)
        for i, rec in enumerate(register_frames(registrar, frames_in, threads)):
            table.put(i, rec)
            transforms[i] = _record_transform(rec)
            yield Progress(i + 1, self.total, i, rec, "registering to the mean")
        done = n
        sums = TemplateSums(shape, self._template_valid())
        # the first template's contributions in threads, as a pass makes them; summed in order
        for moved, w in in_threads(lambda item: sums.contribution(item[1], transforms[item[0]]),
                                   enumerate(iter_frames(stack, 0, n, dtype)), threads):
            sums.put(moved, w)
        sigma = np.full((n, ndim), np.nan)
        for p in range(1, cap + 1):
            before = table.shifts.copy()
            sums = yield from self._template_pass(table, sums, transforms, sigma, done,
                                                  f"refining template {p}/{cap}")
            done += n
            self.template_passes = p
            if _settled(table.shifts - before, sigma, table.quality):
                break
        self.uncertainties = sigma

    def _template_pass(self, table: _Table, sums, transforms, sigma, done: int, stage: str):
        """One pass against the template of ``sums``: each frame refined from its
        transform in ``transforms`` against the template without its own contribution
        (leave-one-out); ``transforms`` and ``sigma`` are updated in place, the next
        pass's sums are returned."""
        from ..models._refine import Refiner
        from ..models._template import TemplateMatch, fisher_sigma, template_gradient

        stack, n, dtype = self.stack, self.n_frames, self.dtype
        model = self.options.transform_model
        shape = self.frame_shape
        centre = (np.asarray(shape, float) - 1.0) / 2.0
        valid = self._template_valid()
        valid = valid if valid is not None else np.ones(shape, bool)
        full, full_valid = sums.template()
        match = level = grad = None
        if model.shift_only:
            match = TemplateMatch(sums, full, full_valid)
        else:
            level, grad = template_gradient(full, full_valid)
        # the strongest pixels carry the information (as FrameRegistrar and ModelRegistrar)
        select, tol = (0.3, 2e-3) if model.shift_only else (0.12, 1e-3)
        nxt = sums.fresh()

        def one(i, frame):
            """Frame ``i`` against its leave-one-out template: its record, its
            contribution to the next template and its uncertainty (any thread)."""
            reference = full
            if n > 2:  # the frame's own noise out of the template it is compared with
                loo, loo_valid = sums.template(sums.contribution(frame, transforms[i]))
                reference = np.where(loo_valid, loo, full)
            quality, t, sig = float(table.quality[i]), transforms[i], None
            if quality > 0 and match is not None:
                start = t[:-1, -1].copy()
                found, found_sig, q, ok = match.run(frame, reference, start)
                if ok and np.all(np.abs(found - start) <= 1.0) and self._inside(found, model):
                    t, quality, sig = _shift_matrix(np.round(found, 10) + 0.0), q, found_sig
            elif quality > 0:  # frames without contrast keep their zero shift
                refiner = Refiner(reference, full_valid, valid, model, select=select, tol=tol)
                start = _warp_params(t, model, centre)
                res = refiner.run(frame, start)
                moved_by = np.abs(res.params[:len(shape)] - start[:len(shape)])
                if res.converged and np.all(moved_by <= 1.0) and self._inside(res.params, model):
                    t = np.round(model.transform(res.params, centre), 12)
                    quality = res.quality
            shift = t[:-1, :-1] @ centre + t[:-1, -1] - centre
            rec = FrameRecord(np.round(shift, 10) + 0.0, quality, table.peaks[i].copy(),
                              None if table.xcorr is None else table.xcorr[i],
                              None if table.transforms is None else t.copy())
            moved, w = nxt.contribution(frame, t)
            if quality > 0 and match is None:
                sig = fisher_sigma(moved, w, level, grad, full_valid)
            return i, t, rec, moved, w, sig

        # frames in threads (the FFTs and filters release the GIL), at most a few
        # in flight; their sums are added here, in order
        threads = default_workers(self.options.workers)
        frames_in = enumerate(iter_frames(stack, 0, n, dtype))
        for k, t, rec, moved, w, sig in in_threads(lambda item: one(*item), frames_in, threads):
            transforms[k] = t
            table.put(k, rec)
            nxt.put(moved, w)
            if sig is not None:
                sigma[k] = sig
            done += 1
            yield Progress(done, self.total, k, rec, stage)
        return nxt

    def _template_valid(self):
        """The pixels the template passes use: the mask, or without one every pixel but
        the static outliers (which an unmasked run fills for its correlation)."""
        if self.valid is not None or self.fill is None:
            return self.valid
        return ~self.fill

    def _inside(self, params, model) -> bool:
        """Whether a translation stays inside the ``max_shift`` box."""
        box = self.options.max_shift
        return not model.shift_only or box is None or bool(
            np.all(np.abs(params) <= np.asarray(box)))


def _warp_params(transform, model: Model, centre) -> np.ndarray:
    """The warp parameters (``W = T^-1``: shift ``u``, then the model's own) of a
    registering transform of a rotating or scaling model."""
    t = np.asarray(transform, dtype=float)
    c = np.asarray(centre, dtype=float)
    lin = np.linalg.inv(t[:2, :2])  # W(q) = lin (q - t) = c + lin (q - c) + u
    u = lin @ (c - t[:2, 2]) - c
    theta = float(np.arctan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1]))
    return model.from_coarse(u, theta, lin)


def _record_transform(rec: FrameRecord) -> np.ndarray:
    return rec.transform if rec.transform is not None else _shift_matrix(rec.shift)


def _settled(moved, sigma, quality, fraction: float = 0.1) -> bool:
    """Whether no frame's shift moved by more than ``fraction`` of its uncertainty
    between two passes, up to a common offset (the template's own position is free)."""
    use = (quality > 0) & np.all(np.isfinite(sigma) & (sigma > 0), axis=1)
    if not use.any():
        return True
    d = moved[use] - np.median(moved[use], axis=0)
    return bool(np.all(np.abs(d) <= fraction * sigma[use]))


def outlier_params(masked: bool, hot, options) -> dict:
    """What a run did with the mask and the static outliers, for ``result.params``:
    ``masked`` (a mask was given), ``n_hot_pixels``, ``hot_pixels_masked`` (added to
    the mask) or ``hot_pixels_filled`` (filled from their neighbourhood in an unmasked
    run), and ``correlator``: the estimator that ran, which outliers never change
    (``"masked"``: masked NCC; ``"phase"`` or ``"plain"``: unmasked correlation; the
    model's name for rigid and similarity)."""
    n = 0 if hot is None else int(np.count_nonzero(hot))
    if not options.transform_model.shift_only:
        correlator = options.model
    elif masked:
        correlator = "masked"
    else:
        correlator = "phase" if options.normalization == "phase" else "plain"
    return {"masked": bool(masked), "n_hot_pixels": n, "hot_pixels_masked": n if masked else 0,
            "hot_pixels_filled": 0 if masked else n, "correlator": correlator}


def _shift_matrix(shift) -> np.ndarray:
    return similarity_transforms(np.asarray(shift, float)[None])[0]


def _previous_start(previous, ndim: int, model: Model, frame_shape):
    """The accumulated shift (translation) or transform (rigid, similarity) of the
    frame before ``start``; zero / identity when not given."""
    if model.shift_only:
        prev = np.zeros(ndim) if previous is None else np.asarray(previous, float)
        if prev.shape != (ndim,):
            raise ValueError(f"previous_shift must have {ndim} values, got {prev.shape}")
        return prev
    if previous is None:
        return np.eye(ndim + 1)
    if isinstance(previous, tuple) and len(previous) == 3:
        shift, rotation, scale = previous
        return similarity_transforms(np.asarray(shift, float)[None], [rotation], [scale],
                                     frame_shape)[0]
    prev = np.asarray(previous, float)
    if prev.shape != (ndim + 1, ndim + 1):
        raise ValueError(
            f"previous_shift must be the previous frame's transform, a ({ndim + 1}, {ndim + 1}) "
            f"matrix, or (shift, rotation, scale); got shape {prev.shape}"
        )
    return prev


def mean_frame(stack, first: int, stop: int, dtype) -> np.ndarray:
    """The mean of frames ``first..stop-1`` (accumulated in float64)."""
    acc = np.zeros(tuple(stack.shape[1:]))
    for f in iter_frames(stack, first, stop, np.float64):
        acc += f
    return (acc / (stop - first)).astype(dtype)


def iter_register_stack(
    stack,
    *,
    mask=None,
    options: RegistrationOptions | None = None,
    start: int = 0,
    previous_shift=None,
    previous_field=None,
    **settings,
) -> RegistrationRun:
    """Register every frame of a stack, one frame per step: a :class:`RegistrationRun`.

    Takes the arguments of :func:`register_stack`. Iterating yields a
    :class:`Progress` after every frame; the result is then in
    ``run.result`` (and is the value of ``yield from run``). Bad arguments
    raise ``ValueError`` here, before anything is read.
    """
    options = (RegistrationOptions() if options is None else options).replace(**settings)
    return RegistrationRun(stack, options, mask=mask, start=start, previous_shift=previous_shift,
                           previous_field=previous_field)


def register_stack(stack, **arguments) -> RegistrationResult:
    """Register every frame of a stack against a reference.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        Frames along the first axis, 2D or 3D each: numpy, memory-mapped,
        dask, or anything indexable per frame with ``shape`` and ``dtype``.
    **arguments : Any
        Keywords only, those of :func:`iter_register_stack` (which runs the
        same registration one frame per step):

        * ``mask`` -- ndarray of bool, True on valid pixels (engine
          convention), one frame's shape; static over the stack. A painted
          beam-block mask (nonzero = ignore) converts with
          :func:`valid_from_ignore`. With a mask the masked normalized
          cross-correlation is used, without one phase correlation;
        * ``options`` -- the settings as one :class:`RegistrationOptions`;
          the keywords below override its fields;
        * ``start``, ``previous_shift`` -- register only frames
          ``start..n-1`` (resuming an interrupted run); with
          ``reference="previous"``, ``previous_shift`` is the accumulated
          shift of frame ``start - 1`` (and, for ``model="nonrigid"``,
          ``previous_field`` its spline coefficients);
        * any field of :class:`RegistrationOptions`, which holds every
          default and check:

            * ``reference`` -- a frame index (default 0), an image, ``"mean"`` (of
              the frames in ``reference_range``), ``"previous"`` (each frame
              against the one before, shifts accumulated to the first frame) or
              ``"template"`` (register to the mean, then to the stack's own
              template, each frame left out of its own, until the shifts settle,
              at most ``template_iterations`` passes; for noisy data -- template
              shifts register each frame onto the final template, which sits near
              the frames' average position rather than frame 0);
            * ``upsample_factor`` -- shifts to ``1/upsample_factor`` pixel, masked
              or not (1 to 1000; default 1);
            * ``max_shift`` -- largest shift to look for, per axis, in pixels;
              bounding it also makes masked registration faster;
            * ``overlap_ratio`` -- masked: reject shifts whose overlap of valid
              pixels is below this fraction of the largest (default 0.3);
            * ``normalization`` -- unmasked: None (default; smooth images such as
              diffraction patterns) or "phase" (whitened spectrum);
            * ``max_jump``, ``min_quality``, ``interpolate_outliers`` -- outlier
              thresholds (see :func:`flag_outliers`; default: robust statistics
              of the run) and whether flagged frames get interpolated shifts
              (``raw_shifts`` keeps the measured ones);
            * ``smoothing`` -- "off" (default) or "auto": smooth the shifts (and
              rotation and scale) over time with a strength that follows their
              uncertainties, never across a jump it finds; ``raw_shifts`` keeps
              the measured ones, ``jumps`` and ``smoothed_uncertainties`` say
              what it did;
            * ``return_xcorr``, ``xcorr_radius`` -- keep each frame's correlation
              window, shifts -radius..radius with zero shift at its centre;
            * ``workers`` -- threads (default: all cores);
            * ``device`` -- "cpu", "gpu" (CuPy, the ``gpu`` extra) or None (default:
              where the stack is: CuPy stacks on their GPU, others on the CPU).

    Returns
    -------
    RegistrationResult

    See Also
    --------
    iter_register_stack : the same, one frame per step (progress, cancel).

    References
    ----------
    1. Padfield D. "Masked object registration in the Fourier domain." IEEE
       Transactions on Image Processing 21(5):2706-2718 (2012).
       https://doi.org/10.1109/TIP.2011.2181402
    2. Guizar-Sicairos M, Thurman ST, Fienup JR. "Efficient subpixel image
       registration algorithms." Optics Letters 33(2):156-158 (2008).
       https://doi.org/10.1364/OL.33.000156
    """
    return iter_register_stack(stack, **arguments).run()
