"""Stack registration: a generator core that yields after every frame."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ._correlators import MaskedCorrelator, PhaseCorrelator
from ._fft import default_workers, real_dtype_for
from ._masks import check_valid_mask
from ._result import Progress, RegistrationResult

__all__ = [
    "FrameRegistrar",
    "FrameResult",
    "flag_outliers",
    "iter_register_stack",
    "register_stack",
]

REFERENCE_MODES = ("mean", "previous", "template")


@dataclass
class FrameResult:
    shift: np.ndarray
    quality: float
    xcorr: np.ndarray | None = None


class FrameRegistrar:
    """Registers single frames against one reference; picklable.

    Everything that depends only on the reference and the mask (their FFTs,
    the overlap of valid pixels, the accepted shifts, the FFT size) is
    computed here once.

    Parameters
    ----------
    reference_image : ndarray
        The image frames are registered onto.
    valid_mask : ndarray of bool, optional
        True on pixels to use (engine convention; a painted beam-block mask,
        nonzero = ignore, converts with ``valid_from_ignore``). The same static
        mask applies to the reference and to every frame. None: plain phase
        correlation of whole frames.
    reference_mask : ndarray of bool, optional
        A different valid mask for the reference (template refinement uses
        this); defaults to ``valid_mask``.
    upsample_factor, max_shift, overlap_ratio, normalization, workers
        As in :func:`register_stack`.
    xcorr_radius : int, optional
        Keep the correlation window of this radius around zero shift.
    """

    def __init__(
        self,
        reference_image,
        *,
        valid_mask=None,
        reference_mask=None,
        upsample_factor=1,
        max_shift=None,
        overlap_ratio=0.3,
        normalization=None,
        xcorr_radius=None,
        workers=None,
        dtype=None,
    ):
        ref = np.asarray(reference_image)
        self.dtype = np.dtype(dtype) if dtype is not None else real_dtype_for(ref)
        ref = ref.astype(self.dtype, copy=False)
        self.shape = ref.shape
        self.xcorr_radius = xcorr_radius
        self.masked = valid_mask is not None
        if self.masked:
            valid = np.asarray(valid_mask, dtype=bool)
            ref_valid = valid if reference_mask is None else np.asarray(reference_mask, bool)
            check_valid_mask(ref_valid, self.shape, "reference's valid area")
            self.valid = valid
            self.ref_valid = ref_valid
            self._check_reference(ref)
            self._corr = MaskedCorrelator(
                ref,
                ref_valid,
                valid,
                overlap_ratio=overlap_ratio,
                upsample_factor=upsample_factor,
                max_shift=max_shift,
                shrink=True,
                workers=workers,
                dtype=self.dtype,
            )
        else:
            self.valid = None
            self.ref_valid = None
            self._check_reference(ref)
            self._corr = PhaseCorrelator(
                ref,
                normalization=normalization,
                upsample_factor=upsample_factor,
                zero_mean=True,
                max_shift=max_shift,
                workers=workers,
            )

    def _check_reference(self, ref):
        vals = ref[self.ref_valid] if self.masked else ref
        if not np.all(np.isfinite(vals)):
            where = "valid pixels" if self.masked else "pixels"
            raise ValueError(
                f"the reference has NaN or inf {where}: paint them into the mask"
            )
        if vals.max() == vals.min():
            raise ValueError("the reference has no contrast: all its valid pixels are equal")

    def set_reference(self, reference_image) -> None:
        """Register against a new reference of the same shape (same mask): the
        mask geometry and FFT sizes are kept, only the reference's spectra are
        recomputed. Used by the "previous" mode."""
        ref = np.asarray(reference_image).astype(self.dtype, copy=False)
        if ref.shape != self.shape:
            raise ValueError(f"the reference has shape {ref.shape}, expected {self.shape}")
        self._check_reference(ref)
        self._corr.set_reference(ref)

    def set_workers(self, workers) -> None:
        """Threads each FFT may use (1 when frames are registered in parallel)."""
        self._corr.workers = default_workers(workers)

    @property
    def fft_shape(self) -> tuple[int, ...]:
        return tuple(self._corr.pad) if self.masked else tuple(self.shape)

    def _empty(self) -> FrameResult:
        window = None
        if self.xcorr_radius is not None:
            window = np.zeros((2 * self.xcorr_radius + 1,) * len(self.shape), np.float32)
        return FrameResult(np.zeros(len(self.shape)), 0.0, window)

    def register(self, frame) -> FrameResult:
        """Register one frame; a frame without contrast gets quality 0, shift 0."""
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"a frame has shape {frame.shape}, expected {self.shape}")
        frame = frame.astype(self.dtype, copy=False)
        if self.masked:
            all_finite = bool(np.isfinite(frame).all())
            # min/max over the valid pixels without copying them out
            if not all_finite and not np.isfinite(frame[self.valid]).all():
                raise ValueError(
                    "a frame has NaN or inf pixels outside the mask: paint them into the mask"
                )
            src = frame if all_finite else np.where(self.valid, frame, 0)
            hi = np.max(src, where=self.valid, initial=-np.inf)
            lo = np.min(src, where=self.valid, initial=np.inf)
        else:
            hi, lo = frame.max(), frame.min()  # NaN and inf show up in these
            if not (np.isfinite(hi) and np.isfinite(lo)):
                raise ValueError(
                    "a frame has NaN or inf pixels: give a mask that excludes them"
                )
        if not hi > lo:
            return self._empty()
        if self.masked:
            peak = self._corr.register(
                frame, xcorr_radius=self.xcorr_radius, checked=True, finite=all_finite
            )
        else:
            peak = self._corr.register(frame, xcorr_radius=self.xcorr_radius)
        # grid positions are sums of 1/upsample_factor steps: round away the
        # float dust (0.09999999999999998) so shift tables read as measured
        shift = np.round(np.asarray(peak.shift, dtype=np.float64), 10) + 0.0
        return FrameResult(shift, float(peak.quality), peak.xcorr)

    def register_block(self, block) -> np.ndarray:
        """Register a block of frames; rows of ``[shift..., quality]``."""
        block = np.asarray(block)
        out = np.empty((block.shape[0], len(self.shape) + 1))
        for i, frame in enumerate(block):
            r = self.register(frame)
            out[i, :-1] = r.shift
            out[i, -1] = r.quality
        return out


# ----------------------------------------------------------------------------
# validation


def _in_threads(fn, items, threads):
    """``map(fn, items)`` on ``threads`` threads, in order, at most
    ``threads + 1`` items in flight (memory stays bounded). Closing the
    generator cancels what has not started; exceptions reach the caller."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="maskalign") as pool:
        pending = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def _is_dask(stack) -> bool:
    return type(stack).__module__.startswith("dask.") and hasattr(stack, "to_delayed")


def _iter_frames(stack, start, stop, dtype, group_bytes=32 * 2**20):
    """Frames ``start..stop-1`` in order, one at a time.

    A dask stack is read in groups of frames (up to ``group_bytes``), since
    every dask compute costs time in proportion to the array's chunk count
    (a folder of 100,000 files is 100,000 chunks); others frame by frame.
    """
    if not _is_dask(stack):
        for i in range(start, stop):
            yield _frame(stack, i, dtype)
        return
    frame_bytes = max(1, int(np.prod(stack.shape[1:])) * np.dtype(stack.dtype).itemsize)
    group = int(max(1, min(64, group_bytes // frame_bytes)))
    for a in range(start, stop, group):
        block = np.asarray(stack[a : min(a + group, stop)].compute(), dtype=dtype)
        yield from block


def _frame(stack, i, dtype) -> np.ndarray:
    f = stack[int(i)]
    if hasattr(f, "compute"):
        f = f.compute()
    return np.asarray(f, dtype=dtype)


def _check_stack(stack):
    if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
        stack = np.asarray(stack)
    shape = tuple(stack.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"expected a stack of 2D or 3D frames (frames along the first axis), got an "
            f"array of shape {shape}"
        )
    if shape[0] < 1:
        raise ValueError("the stack has no frames")
    if any(n < 2 for n in shape[1:]):
        raise ValueError(f"frames of shape {shape[1:]} are too small to register")
    dt = np.dtype(stack.dtype)
    if dt.kind not in "biuf":
        raise ValueError(f"cannot register images of dtype {dt}: expected real numbers")
    return stack, shape


def _check_mask(mask, frame_shape):
    if mask is None:
        return None
    valid = np.asarray(mask)
    if valid.dtype != bool:
        raise ValueError(
            "mask must be a boolean array with True on valid pixels (engine convention); "
            "convert a painted mask (nonzero = ignore) with valid_from_ignore()"
        )
    check_valid_mask(valid, frame_shape)
    return valid


def _check_params(upsample_factor, max_shift, overlap_ratio, normalization):
    if not np.isfinite(upsample_factor) or upsample_factor < 1:
        raise ValueError(f"upsample_factor must be a number >= 1, got {upsample_factor}")
    if max_shift is not None and (not np.all(np.isfinite(max_shift)) or np.any(np.asarray(max_shift) < 0)):
        raise ValueError(f"max_shift must be a non-negative number of pixels, got {max_shift}")
    if not 0 <= overlap_ratio < 1:
        raise ValueError(f"overlap_ratio must be in [0, 1), got {overlap_ratio}")
    if normalization not in ("phase", None):
        raise ValueError(f"normalization must be 'phase' or None, got {normalization!r}")


# ----------------------------------------------------------------------------
# outliers


def flag_outliers(shifts, quality, *, max_jump=None, min_quality=None) -> np.ndarray:
    """Flag frames whose quality or shift jump is implausible.

    A frame is flagged when its quality is 0 (it could not be registered),
    below ``min_quality`` (default: 6 robust standard deviations below the
    median quality, and at most 0.5 of it), or when its shift departs from the median of its neighbours
    (5-frame window) by more than ``max_jump`` pixels (default: 6 robust
    standard deviations of those departures, at least 1 pixel).
    """
    shifts = np.asarray(shifts, float)
    quality = np.asarray(quality, float)
    n = len(shifts)
    flagged = np.zeros(n, bool)
    if n == 0:
        return flagged
    if min_quality is None:
        med = np.median(quality)
        mad = 1.4826 * np.median(np.abs(quality - med))
        min_quality = min(med - 6 * mad, 0.5 * med)
    # a frame that could not be registered at all (quality 0) is always flagged
    flagged |= (quality < min_quality) | (quality <= 0)
    if n >= 3:
        pad = np.pad(shifts, ((2, 2), (0, 0)), mode="edge")
        windows = np.stack([pad[i : i + n] for i in range(5)])
        local = np.median(windows, axis=0)
        dev = np.linalg.norm(shifts - local, axis=1)
        if max_jump is None:
            mad = 1.4826 * np.median(np.abs(dev - np.median(dev)))
            max_jump = max(1.0, np.median(dev) + 6 * mad)
        flagged |= dev > max_jump
    return flagged


def interpolate_flagged(shifts, flagged) -> np.ndarray:
    """Replace flagged frames' shifts by linear interpolation from good ones."""
    shifts = np.array(shifts, float)
    good = ~np.asarray(flagged, bool)
    if good.sum() == 0 or good.all():
        return shifts
    idx = np.arange(len(shifts))
    for ax in range(shifts.shape[1]):
        shifts[~good, ax] = np.interp(idx[~good], idx[good], shifts[good, ax])
    return shifts


# ----------------------------------------------------------------------------
# the generator core


def iter_register_stack(
    stack,
    *,
    reference=0,
    mask=None,
    upsample_factor=1,
    max_shift=None,
    overlap_ratio=0.3,
    normalization=None,
    reference_range=None,
    template_iterations=2,
    max_jump=None,
    min_quality=None,
    interpolate_outliers=False,
    return_xcorr=False,
    xcorr_radius=16,
    start=0,
    previous_shift=None,
    workers=None,
) -> Generator[Progress, None, RegistrationResult]:
    """Register every frame of a stack; yield after each frame.

    The generator form of :func:`register_stack` (same arguments): it yields a
    :class:`Progress` after every frame registration -- the place where a
    GUI updates a progress bar and where a cancel takes effect -- and returns
    the :class:`RegistrationResult` (``StopIteration.value``). Frames are read
    one at a time, so memory does not grow with stack length. Bad input raises
    ``ValueError`` before the first yield.
    """
    stack, shape = _check_stack(stack)
    n, frame_shape = shape[0], shape[1:]
    ndim = len(frame_shape)
    valid = _check_mask(mask, frame_shape)
    _check_params(upsample_factor, max_shift, overlap_ratio, normalization)
    if not 0 <= start < n:
        raise ValueError(f"start must be a frame index in [0, {n}), got {start}")
    dtype = real_dtype_for(stack)
    mode, ref_index = _parse_reference(reference, n, frame_shape)
    if mode == "template" and start:
        raise ValueError("template refinement cannot resume from a frame: it re-registers every frame")
    radius = int(xcorr_radius) if return_xcorr else None
    if radius is not None and radius < 1:
        raise ValueError(f"xcorr_radius must be at least 1, got {xcorr_radius}")

    params = dict(
        reference=reference if isinstance(reference, (int, str, np.integer)) else "image",
        masked=valid is not None,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        overlap_ratio=overlap_ratio,
        normalization=normalization,
        reference_range=reference_range,
        template_iterations=template_iterations if mode == "template" else None,
        start=start,
        n_frames=n,
    )
    make = dict(
        valid_mask=valid,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        overlap_ratio=overlap_ratio,
        normalization=normalization,
        xcorr_radius=radius,
        workers=workers,
        dtype=dtype,
    )
    frames = range(start, n)
    count = len(frames)
    shifts = np.zeros((count, ndim))
    quality = np.zeros(count)
    xcorr = np.zeros((count, *(2 * radius + 1,) * ndim), np.float32) if radius else None

    if mode in ("index", "image", "mean"):
        if mode == "index":
            ref_img = _frame(stack, ref_index, dtype)
        elif mode == "image":
            ref_img = np.asarray(reference, dtype=dtype)
        else:
            ref_img = _mean_frame(stack, reference_range, n, dtype)
        registrar = FrameRegistrar(ref_img, **make)
        if _is_dask(stack):
            # one task per frame chunk, on whatever dask scheduler is active
            # (a dask.distributed Client included); results arrive per chunk
            from ._dask import iter_register_chunks

            done = 0
            for idx, c_shifts, c_quality, c_xcorr in iter_register_chunks(stack, registrar, start):
                for j, i in enumerate(idx):
                    k = int(i) - start
                    shifts[k], quality[k] = c_shifts[j], c_quality[j]
                    if xcorr is not None:
                        xcorr[k] = c_xcorr[j]
                    done += 1
                    yield Progress(done, count, int(i), shifts[k].copy(), quality[k])
        else:
            threads = default_workers(workers)
            frames_in = _iter_frames(stack, start, n, dtype)
            with contextlib.ExitStack() as scope:
                if threads > 1 and count > 1:
                    # frames are independent against a fixed reference: register
                    # `threads` frames at once, each with single-threaded FFTs and
                    # BLAS (two threads calling a threaded BLAS contend), so the
                    # elementwise work between FFTs runs in parallel too
                    from threadpoolctl import threadpool_limits

                    scope.enter_context(threadpool_limits(limits=1, user_api="blas"))
                    registrar.set_workers(1)
                    results = _in_threads(registrar.register, frames_in, threads)
                else:
                    results = map(registrar.register, frames_in)
                for k, (i, r) in enumerate(zip(frames, results)):
                    shifts[k], quality[k] = r.shift, r.quality
                    if xcorr is not None:
                        xcorr[k] = r.xcorr
                    yield Progress(k + 1, count, i, shifts[k].copy(), quality[k])
    elif mode == "previous":
        acc = np.zeros(ndim) if previous_shift is None else np.asarray(previous_shift, float)
        if acc.shape != (ndim,):
            raise ValueError(f"previous_shift must have {ndim} values, got {acc.shape}")
        # the chain's reference: the last frame before `start` that has contrast
        first = start - 1 if start else 0
        ref0 = _frame(stack, first, dtype)
        while first > 0 and not _has_contrast(ref0, valid):
            first -= 1
            ref0 = _frame(stack, first, dtype)
        registrar = FrameRegistrar(ref0, **make)
        for k, (i, cur) in enumerate(zip(frames, _iter_frames(stack, start, n, dtype))):
            r = registrar.register(cur)
            if i == 0:  # the first frame is the origin of the chain
                r.shift = np.zeros(ndim)
            acc = acc + r.shift
            shifts[k], quality[k] = acc, r.quality
            if xcorr is not None:
                xcorr[k] = r.xcorr
            if i + 1 < n and _has_contrast(cur, valid):
                # a frame without contrast (quality 0) cannot be a reference:
                # the next frame is registered against the last one that can
                registrar.set_reference(cur)
            yield Progress(k + 1, count, i, acc.copy(), quality[k])
    else:  # template
        yield from _template(stack, n, dtype, valid, make, template_iterations, shifts, quality, xcorr)

    raw = shifts.copy()
    outliers = flag_outliers(raw, quality, max_jump=max_jump, min_quality=min_quality)
    final = interpolate_flagged(raw, outliers) if interpolate_outliers else raw
    params["interpolate_outliers"] = interpolate_outliers
    return RegistrationResult(
        shifts=final, quality=quality, outliers=outliers, raw_shifts=raw, xcorr=xcorr, params=params
    )


def _has_contrast(frame, valid) -> bool:
    vals = frame if valid is None else frame[valid]
    return vals.size > 0 and bool(vals.max() > vals.min())


def _parse_reference(reference, n, frame_shape):
    if isinstance(reference, str):
        if reference not in REFERENCE_MODES:
            raise ValueError(
                f"reference must be a frame index, an image, or one of {REFERENCE_MODES}, "
                f"got {reference!r}"
            )
        return reference, None
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        idx = int(reference)
        if not -n <= idx < n:
            raise ValueError(f"reference frame {idx} is out of range: the stack has {n} frames")
        return "index", idx % n
    arr = np.asarray(reference)
    if arr.shape != tuple(frame_shape):
        raise ValueError(
            f"the reference image has shape {arr.shape} but one frame has shape {tuple(frame_shape)}"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"the reference image must be real numbers, got dtype {arr.dtype}")
    return "image", None


def _mean_frame(stack, reference_range, n, dtype):
    a, b = (0, n) if reference_range is None else reference_range
    a, b = int(a), int(b)
    if not (0 <= a < b <= n):
        raise ValueError(
            f"reference_range must be (first, stop) with 0 <= first < stop <= {n}, got {reference_range}"
        )
    acc = np.zeros(tuple(stack.shape[1:]))
    for f in _iter_frames(stack, a, b, np.float64):
        acc += f
    return (acc / (b - a)).astype(dtype)


def _template(stack, n, dtype, valid, make, iterations, shifts, quality, xcorr):
    """Iterative template refinement: register, average the aligned frames, repeat."""
    from ._shift import shift_frame

    if int(iterations) < 1:
        raise ValueError(f"template_iterations must be at least 1, got {iterations}")
    passes = int(iterations) + 1
    total = passes * n
    template = _mean_frame(stack, None, n, dtype)
    template_valid = valid
    # each frame's weight in the next template: its valid pixels (all without a mask)
    w = np.ones(template.shape) if valid is None else valid.astype(np.float64)
    done = 0
    for p in range(passes):
        registrar = FrameRegistrar(template, reference_mask=template_valid, **make)
        acc = np.zeros(template.shape)
        weight = np.zeros(template.shape)
        stage = "registering to the mean" if p == 0 else f"refining template {p}/{passes - 1}"
        for i, frame in enumerate(_iter_frames(stack, 0, n, dtype)):
            r = registrar.register(frame)
            shifts[i], quality[i] = r.shift, r.quality
            if xcorr is not None:
                xcorr[i] = r.xcorr
            if p < passes - 1:
                acc += shift_frame(np.where(w > 0, frame, 0) * w, r.shift, fill_value=0.0)
                weight += shift_frame(w, r.shift, fill_value=0.0)
            done += 1
            yield Progress(done, total, i, shifts[i].copy(), quality[i], stage)
        if p < passes - 1:
            # the template is where most aligned frames saw valid pixels
            template_valid = weight >= 0.5 * n
            template = np.where(template_valid, acc / np.maximum(weight, 1e-12), 0).astype(dtype)
            if valid is None:
                template_valid = None if template_valid.all() else template_valid
                if template_valid is not None:
                    make = {**make, "valid_mask": np.ones(template.shape, bool)}


def register_stack(
    stack,
    *,
    reference=0,
    mask=None,
    upsample_factor=1,
    max_shift=None,
    overlap_ratio=0.3,
    normalization=None,
    reference_range=None,
    template_iterations=2,
    max_jump=None,
    min_quality=None,
    interpolate_outliers=False,
    return_xcorr=False,
    xcorr_radius=16,
    start=0,
    previous_shift=None,
    workers=None,
) -> RegistrationResult:
    """Register every frame of a stack against a reference.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        Frames along the first axis, 2D or 3D each: numpy, memory-mapped,
        dask, or anything indexable per frame with ``shape`` and ``dtype``.
    reference : int, ndarray or {"mean", "previous", "template"}
        A frame index (default 0); an explicit image; ``"mean"`` of the frames
        in ``reference_range``; ``"previous"``: each frame against the one
        before, shifts accumulated to the first frame; ``"template"``:
        register to the mean, average the aligned frames, register again
        (``template_iterations`` times) -- for noisy data. Template shifts
        register each frame onto the final template; they are not re-centred,
        but since the first template is the plain mean of the frames, they sit
        near the frames' average position rather than near frame 0.
    mask : ndarray of bool, optional
        True on valid pixels (engine convention), one frame's shape; static
        over the stack. A painted beam-block mask (nonzero = ignore) converts
        with :func:`valid_from_ignore`. With a mask the masked normalized
        cross-correlation is used, without one phase correlation.
    upsample_factor : float
        Refine shifts to ``1/upsample_factor`` pixel (masked or not).
    max_shift : float, optional
        Largest shift to look for, per axis, in pixels. Bounding it also
        makes masked registration faster (smaller FFTs).
    overlap_ratio : float
        Masked only: reject shifts whose overlap of valid pixels is below this
        fraction of the largest.
    normalization : {None, "phase"}
        Unmasked only. None (default here) suits smooth images such as
        diffraction patterns; "phase" whitens the spectrum.
    reference_range : (first, stop), optional
        Frames averaged for ``reference="mean"`` (default: all).
    template_iterations : int
        Refinement passes for ``reference="template"``.
    max_jump, min_quality : float, optional
        Outlier thresholds (see :func:`flag_outliers`); defaults are robust
        statistics of the run.
    interpolate_outliers : bool
        Replace flagged frames' shifts by interpolation from good neighbours
        (``raw_shifts`` keeps the measured ones).
    return_xcorr : bool
        Keep each frame's correlation window (for a preview).
    xcorr_radius : int
        Window radius: the window covers shifts -radius..radius, zero shift at
        its centre.
    start, previous_shift
        Register only frames ``start..n-1`` (resuming an interrupted run);
        with ``reference="previous"``, ``previous_shift`` is the accumulated
        shift of frame ``start - 1``.
    workers : int, optional
        Threads for the FFTs (default: all cores).

    Returns
    -------
    RegistrationResult
    """
    gen = iter_register_stack(
        stack,
        reference=reference,
        mask=mask,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        overlap_ratio=overlap_ratio,
        normalization=normalization,
        reference_range=reference_range,
        template_iterations=template_iterations,
        max_jump=max_jump,
        min_quality=min_quality,
        interpolate_outliers=interpolate_outliers,
        return_xcorr=return_xcorr,
        xcorr_radius=xcorr_radius,
        start=start,
        previous_shift=previous_shift,
        workers=workers,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
