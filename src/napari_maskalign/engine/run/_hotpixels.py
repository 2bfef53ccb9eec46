"""Static outlier pixels: hot, dead, stuck and saturated detector pixels, alone or in clusters.

They are a second static object, like the beam block: pixels far above (or
below) the pattern, at the same detector position in every frame, so they
pull a correlation towards zero shift. On a real detector a quarter of them
sit in clusters of 2 to a dozen pixels. What tells them from the pattern is
the physics: **they stay put in detector coordinates while the content
moves**. :func:`find_static_outliers` uses that on a small sample of frames
(a few frames' worth of work, however long the stack):

1. *Candidates* (a cheap, generous first pass): up to ``n_frames`` frames
   spread over the stack are read; the per-pixel minimum over them keeps
   what is bright in every frame (hot pixels; a moving spot is gone from it
   once it has moved by its width), the maximum what is dark in every frame
   (dead pixels). Whatever stands out from its 7-pixel neighbourhood there
   (a grey-level top hat: narrower than 7 px, so clusters of a dozen pixels
   too) by 5 noise levels, and keeps its value from frame to frame (within
   35 % of its excess: a spot that moves less than its width does not), is a
   candidate.
2. *Coarse registration*: the sampled frames are registered onto the
   middle one by masked correlation of binned frames (4x from 512 px, 2x
   below) with the candidates and ignored pixels masked, so nothing static
   pulls them to zero, then by Gauss-Newton steps (shift, gain, offset) on
   smoothed frames at half resolution: a few hundredths of a pixel. A frame
   that then fits far worse than the best one, and either leaves more than a
   tenth of the reference's variance (a match in the wrong place: a pattern
   with nothing wider than 8 px is averaged away at 4x) or had a runner-up
   peak nearly as high (a lattice), is searched again 2x binned.
3. *Residuals in detector coordinates*: the frames, candidates filled with the
   mean of their nearest clean neighbours, are moved onto the middle one and averaged
   in Fourier space (a static pixel lands on a different place in each);
   that content, without the frame's own share, is moved back onto each
   frame (with a fitted gain and offset) and subtracted from the frame as it
   was read. The median of these residuals over the frames, pixel by pixel,
   is noise on the moving pattern and the outlier's own excess where a static
   pixel sits: it piles up there and nowhere else. A frame takes no part at a
   pixel whose content came from outside the frame or beside ignored pixels.
4. *Final pass*: pixels whose median residual is ``threshold`` noise levels
   (measured on the residual map itself, by brightness, so Poisson and
   Gaussian noise both work; above the brightest level measured, growing as
   its square root) and half the local level from zero (unless 30 noise
   levels: a hot pixel on a bright direct beam), on that
   side of zero in every frame that votes (content misplaced by a local,
   non-rigid motion, or a lattice spot that lands there in most frames by
   coincidence, is not there in all of them), and more
   than twice any neighbour of the opposite sign (a sharp feature of the
   content slightly misplaced leaves a dipole), are static outliers when the
   group of connected pixels beyond 3 noise levels they belong to has at
   most ``max_cluster`` pixels: a larger static object (an unpainted beam
   block, its edge) is not an outlier pixel and is left alone (paint it into
   the mask). Where too few frames could judge a pixel (the frame's edge,
   which moved frames wrap around; beside the block), a candidate far above
   its background (three times it; dead: below a fifth of it) is taken.

The cost, for 5 frames of 512 x 512: about 10 Fourier transforms of a frame
(each frame forward once, the content moved back onto each) and the binned
search; everything else is a few passes over the sampled frames, the tests
beyond a noise level made only at the pixels that can pass them, and no
distance transform of the whole frame (the candidates' neighbours are looked
up around each).

Pixels that are NaN or inf in (nearly) every sampled frame are static
outliers too (a NaN in one frame is not static: registration refuses it).
Pixels the mask already ignores take no part and are never reported.
Without drift between the sampled frames nothing is static *relative to the
content*, and nothing but non-finite pixels is reported.

References
----------
The search itself is this project's own (see above); it rests on
Hampel FR. "The influence curve and its role in robust estimation." Journal
of the American Statistical Association 69(346):383-393 (1974).
https://doi.org/10.1080/01621459.1974.10482962 (the
median absolute deviation, the robust spread the thresholds are in units of),
and on the Gauss-Newton (Lucas-Kanade) steps of Lucas BD, Kanade T. "An
iterative image registration technique with an application to stereo vision."
IJCAI 1981, 674-679.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from ..backends._frames import check_pixel_dtype, read_frame, spread_indices
from ..backends._memory import warm_heap
from ..kernels._fft import default_workers
from ..kernels._grid import dot64, moved_mask
from ..kernels._masked import MaskedCorrelator
from ..models._fill import nearest_fill_index
from ._parallel import in_threads

__all__ = ["find_static_outliers", "mask_with_outliers"]

#: a pixel NaN or inf in at least this fraction of the sampled frames is static
CONSISTENCY = 0.75
#: a static outlier's median residual is at least this fraction of the local level
RELATIVE = 0.5
#: ... unless it is this many noise levels from zero
FAR = 30.0
#: the sampled frames take at most this much memory (float32)
SAMPLE_BYTES = 64 * 2**20
#: a candidate's value over the sampled frames spans less than this fraction of its excess
STEADY = 0.35
#: the width of the top hat that finds candidates (clusters narrower than it)
HAT = 7
#: frames at least this large (every axis) are searched 4x binned for whole pixels ...
COARSE_FROM = 512
#: ... and a frame that fits far worse than the best one is searched again 2x binned when
#: the fit leaves more than this fraction of the reference's variance (a match in the
#: wrong place: a fine pattern's features blur together at 4x) ...
WRONG_PLACE = 0.1
#: ... or its peak had a runner-up at least this fraction of its height (a lattice's
#: neighbouring match). A frame pulled by an unpainted static object fails by less, and
#: whatever the binning: not searched again.
AMBIGUOUS = 0.7



def _together(pool, *calls) -> list:
    """The results of ``calls`` (functions of nothing), all but the first on ``pool``'s
    threads while the first runs here; one after another when ``pool`` is None."""
    if pool is None:
        return [call() for call in calls]
    later = [pool.submit(call) for call in calls[1:]]
    return [calls[0](), *(f.result() for f in later)]


def _sample(stack, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, frames)``: up to ``n_frames`` frames spread over the stack, float32."""
    n = int(stack.shape[0])
    per_frame = max(1, int(np.prod(stack.shape[1:]))) * 4
    k = int(max(1, min(n, n_frames, SAMPLE_BYTES // per_frame)))
    picks = spread_indices(n, k)
    return picks, np.stack([read_frame(stack, int(i), np.float32) for i in picks])


def _binned_spread(values: np.ndarray, levels: np.ndarray, where: np.ndarray,
                   bins: int = 12) -> tuple:
    """``(centres, sigmas)``: the robust spread (1.4826 MAD about the median) of
    ``values[where]`` in bins of ``levels[where]``, for :func:`np.interp` (from at most
    ~30000 of them, evenly strided: plenty for a spread, and cheap on large frames:
    only the strided pixels are gathered, not every pixel of ``where``). The bins are
    runs of the pixels sorted by level (one sort instead of a comparison per bin)."""
    at = np.flatnonzero(where)
    if at.size < 30:  # nothing to measure: nothing stands out
        return np.array([0.0]), np.array([np.inf])
    at = at[:: max(1, at.size // 30000)]
    # (the search's maps are float32; the medians below sort float32 keys)
    levels = levels.ravel()[at].astype(np.float32, copy=False)
    values = values.ravel()[at].astype(np.float32, copy=False)
    order = _argsort(levels)  # (ties are in one bin, whatever their order)
    levels, values = levels[order], values[order]
    edges = np.unique(_quantiles(levels, np.linspace(0, 1, bins + 1)))
    # bin b holds edges[b] <= level < edges[b + 1], the last one its right edge too
    starts = np.searchsorted(levels, edges[:-1], side="left")
    counts = np.append(starts[1:], levels.size) - starts
    # every bin's medians at once: the values sorted within their bins (one sort of keys),
    # the middle ones picked; the same numbers as a median per bin
    good = counts >= 30
    if not good.any():
        return np.array([0.0]), np.array([np.inf])
    number = np.repeat(np.arange(counts.size, dtype=np.uint64), counts)
    lo, hi = (starts + (counts - 1) // 2)[good], (starts + counts // 2)[good]
    centres = ((levels[lo] + levels[hi]) / 2).astype(np.float64)
    ranked = _sorted_within(values, number)
    middle = (ranked[lo] + ranked[hi]) / 2
    deviation = np.abs(ranked - np.repeat(_spread_back(middle, good), counts))
    ranked = _sorted_within(deviation, number)
    sigmas = 1.4826 * ((ranked[lo] + ranked[hi]) / 2).astype(np.float64)
    positive = sigmas[sigmas > 0]
    # discrete low counts can give a spread of 0: no level is quieter than the quietest measured
    return np.asarray(centres), np.maximum(sigmas, positive.min() if positive.size else np.inf)


def _quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile(ordered, q)`` (its default "linear" method, the same numbers) of
    a sorted flat array without NaN, read off at the neighbours of each quantile's
    position: np.quantile partitions the data first, 15x the time on sorted data."""
    n = ordered.size
    position = (n - 1) * q
    before = np.floor(position)
    after = before + 1
    last = position >= n - 1
    before[last] = after[last] = -1
    t = position - before
    a, b = ordered[before.astype(np.intp)], ordered[after.astype(np.intp)]
    rise = b - a
    out = a + rise * t
    np.subtract(b, rise * (1 - t), out=out, where=t >= 0.5, casting="unsafe", dtype=out.dtype)
    return out


def _spread_back(part: np.ndarray, good: np.ndarray) -> np.ndarray:
    """``part`` (one value per True of ``good``) at the Trues of ``good``, 0 elsewhere."""
    out = np.zeros(good.size, part.dtype)
    out[good] = part
    return out


def _key32(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` (no NaN) as uint32 that sort as the numbers do."""
    bits = x.view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def _sorted_within(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """float32 ``x`` sorted within each run of equal ``group`` (uint64, ascending, below
    2**32): one sort of 64-bit keys, the group above the value's sortable bits."""
    key = (group << np.uint64(32)) | _key32(x).astype(np.uint64)
    key.sort()
    bits = (key & np.uint64(2**32 - 1)).astype(np.uint32)
    return np.where(bits >> 31, bits ^ np.uint32(1 << 31), ~bits).view(np.float32)


def _argsort(x: np.ndarray) -> np.ndarray:
    """An order that sorts the flat array ``x`` (no NaN; ties in any order). For float32,
    one sort of 64-bit keys, the level's bits made to sort as unsigned integers above the
    position: numpy's vectorised sort of plain numbers, 3x faster than ``argsort`` here."""
    if x.dtype != np.float32 or x.size >= 2**32:
        return np.argsort(x)
    key = _key32(x).astype(np.uint64) << np.uint64(32)
    key |= np.arange(x.size, dtype=np.uint64)
    key.sort()
    return (key & np.uint64(2**32 - 1)).astype(np.intp)


def _nearest_fill(valid: np.ndarray):
    """:func:`nearest_fill_index` of ``valid`` (not all True), its distance transform
    taken over the box around the invalid pixels only (one pixel wider): the
    nearest valid pixel of an invalid one always lies there (the pixel one step
    from it towards the invalid one is nearer, so invalid). A beam block covers
    a part of the frame: a part of the transform."""
    bad = np.nonzero(~valid)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in bad)
    sub = valid[box].shape
    if np.prod(sub) > 0.6 * valid.size:
        return nearest_fill_index(valid)
    holes, src = nearest_fill_index(valid[box])

    def full(flat):
        return np.ravel_multi_index(tuple(i + b.start for i, b in zip(np.unravel_index(flat, sub), box)),
                                    valid.shape)

    return full(holes), full(src)


def _above(x, levels, centres, sigmas, factor: float, where) -> np.ndarray:
    """The flat indices of the pixels of ``where`` whose ``x`` exceeds ``factor`` times
    the spread at their level, ``np.interp(levels, centres, sigmas)``: interpolated only
    where ``x`` exceeds ``factor`` times the smallest spread (nowhere else can it)."""
    at = np.flatnonzero(where & (x > factor * sigmas.min()) if factor > 0 else where)
    return at[x.flat[at] > factor * np.interp(levels.flat[at], centres, sigmas)]


def _filler(valid: np.ndarray, spots=None, nearest=None):
    """``fill(frames)``: frames (..., *shape) whose invalid pixels hold their nearest valid
    value. With ``spots`` (small groups of invalid pixels scattered among the valid
    ones: the candidates) invalid too, those first take the mean of their nearest
    valid pixels (every one at the nearest distance: no arbitrary pick among them;
    looked up around each, :func:`_nearest_among`, instead of a distance transform of
    the whole frame), then the other invalid pixels (the block) their nearest pixel
    outside the block's (filled) value. ``nearest``: :func:`_nearest_fill` of ``valid``,
    when at hand."""
    spotted = None
    if spots is not None and spots.any():
        holes = np.flatnonzero(spots)
        which, src = _nearest_among(valid & ~spots, holes)
        if which is None:  # (a group wider than the look-around: rare)
            return _filler(valid & ~spots)
        order = np.argsort(which, kind="stable")
        src = src[order]
        counts = np.bincount(which, minlength=holes.size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        spotted = holes, src, starts, counts
    block = None if valid.all() else (_nearest_fill(valid) if nearest is None else nearest)
    if spotted is None and block is None:
        return lambda frames: frames

    def fill(frames):
        out = frames.reshape(*frames.shape[: frames.ndim - valid.ndim], -1).copy()
        if spotted is not None:
            holes, src, starts, counts = spotted
            out[..., holes] = np.add.reduceat(out[..., src], starts, axis=-1) / counts.astype(out.dtype)
        if block is not None:
            out[..., block[0]] = out[..., block[1]]
        return out.reshape(frames.shape)

    return fill


#: :func:`_nearest_among` looks this far (px) around a pixel
LOOK_AROUND = 4


def _nearest_among(valid: np.ndarray, at: np.ndarray) -> tuple:
    """``(which, sources)``: for the flat indices ``at``, the flat indices of the pixels
    where ``valid`` nearest to each (Euclidean, every one at that distance), within
    ``LOOK_AROUND`` px, as pairs (``which``: the position in ``at``); ``(None, None)``
    when a pixel has none there. The offsets shell by shell, each shell tried on the
    pixels not yet matched."""
    shape = valid.shape
    span = np.arange(-LOOK_AROUND, LOOK_AROUND + 1)
    offsets = np.stack(np.meshgrid(*[span] * valid.ndim, indexing="ij"), -1).reshape(-1, valid.ndim)
    d2 = (offsets**2).sum(axis=1)
    coords = np.stack(np.unravel_index(at, shape), -1)
    todo = np.arange(at.size)
    flat = valid.reshape(-1)
    which, sources = [], []
    for shell in np.unique(d2[(d2 > 0) & (d2 <= LOOK_AROUND**2)]):
        matched = np.zeros(todo.size, bool)
        for off in offsets[d2 == shell]:
            c = coords[todo] + off
            inside = ((c >= 0) & (c < shape)).all(axis=1)
            idx = np.ravel_multi_index(tuple(np.clip(c, 0, np.array(shape) - 1).T), shape)
            hit = inside & flat[idx]
            which.append(todo[hit])
            sources.append(idx[hit])
            matched |= hit
        todo = todo[~matched]
        if todo.size == 0:
            return np.concatenate(which), np.concatenate(sources)
    return None, None


def _small_groups(core: np.ndarray, loose: np.ndarray, max_cluster: int) -> np.ndarray:
    """The pixels of ``core`` whose connected group in ``loose`` (which holds
    ``core``) has at most ``max_cluster`` pixels."""
    if not core.any():
        return core
    labels, n = ndi.label(loose, np.ones((3,) * core.ndim, bool))
    if n == 0:
        return core
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_cluster
    small[0] = False
    return core & small[labels]


def find_static_outliers(stack, *, valid=None, n_frames: int = 5, threshold: float = 6.0,
                         max_cluster: int = 40, workers=None, details: dict | None = None
                         ) -> np.ndarray:
    """Find hot, dead, stuck and saturated pixels, alone or in clusters: static in
    detector coordinates while the content drifts.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        2D or 3D frames (numpy, memory-mapped, dask or any per-frame
        indexable stack); only a sample of frames spread over it is read.
    valid : ndarray of bool, optional
        True on pixels registration uses (engine convention). Ignored pixels
        (the beam block) take no part and are never reported.
    n_frames : int
        How many frames to sample at most (fewer when frames are large).
    threshold : float
        How many noise levels a pixel's median residual must reach.
    max_cluster : int
        The largest group of connected static pixels reported; larger static
        objects (an unpainted beam block) are not outlier pixels.
    workers : int, optional
        Threads for the FFTs.
    details : dict, optional
        Filled with what the search did: ``frames`` (the sampled indices),
        ``shifts`` (their coarse registration onto the middle one),
        ``candidates`` (how many pixels the first pass proposed) and
        ``judged`` (how many pixels a residual judged).

    Returns
    -------
    outliers : ndarray of bool, one frame's shape
        True on static outlier pixels: pixels to ignore, like the block.
    """
    # (the search's few dozen frame-sized arrays, freed and allocated again, reuse the
    # process's memory instead of faulting in fresh pages: 5,500 faults a call before)
    warm_heap()
    n = int(stack.shape[0])
    frame_shape = tuple(int(s) for s in stack.shape[1:])
    if n < 1:
        raise ValueError("the stack has no frames")
    dt = np.dtype(getattr(stack, "dtype", None) or np.asarray(stack[0]).dtype)
    check_pixel_dtype(dt)  # before any frame is read (an object array may unpickle)
    ndim = len(frame_shape)
    workers = default_workers(workers)
    picks, frames = _sample(stack, n_frames)
    k = len(picks)
    finite = np.isfinite(frames)
    base = np.ones(frame_shape, bool) if valid is None else np.asarray(valid, bool)
    if finite.all():  # (the usual case: one pass over the flags)
        nonfinite, use = np.zeros(frame_shape, bool), base.copy()
    else:
        nonfinite = (~finite).mean(axis=0) >= CONSISTENCY  # NaN or inf in (nearly) every frame
        use = base & finite.all(axis=0)
    outliers = nonfinite & base
    if details is not None:
        details.update(frames=picks, shifts=np.zeros((k, ndim)), candidates=0, judged=0)
    if use.sum() < 50 or k < 3:
        return outliers
    frames[:, ~use] = 0  # (the sample is this search's own copy)
    # (a second thread for the independent halves of the work: see _together)
    with ThreadPoolExecutor(1, "maskalign") if workers > 1 else contextlib.nullcontext() as pool:
        found = _static(frames, use, threshold, max_cluster, workers, pool, picks, details)
    return outliers | (found & base)


def _static(frames, use, threshold, max_cluster, workers, pool, picks, details) -> np.ndarray:
    """The static outliers among the pixels ``use`` of the sampled ``frames`` (their
    ``picks``) that are not NaN or inf: :func:`find_static_outliers` from its first step
    on; ``pool``, an executor for a second thread (or None)."""
    k, frame_shape = len(frames), frames.shape[1:]
    ndim = len(frame_shape)
    nothing = np.zeros(frame_shape, bool)

    # 1. candidates: bright in every frame (minimum) or dark in every frame (maximum)
    block = None if use.all() else _nearest_fill(use)
    fill_use = _filler(use, nearest=block)
    # (each against its neighbourhood with the opposite kind taken out first: a hot
    # cluster's neighbours are not dead, nor a dead pixel's neighbours hot)
    # (a closing then an opening: the two erosions in the middle are one erosion twice
    # as wide, exactly, for flat symmetric windows: three filters instead of four)
    mx, mn, twice = np.maximum, np.minimum, 2 * HAT - 1

    def top_hat(hot):
        """(extreme, background, top hat, its noise by level, the pixels beyond 5 of it)
        of the hot (minimum) or the dead (maximum) kind."""
        ext = fill_use(frames.min(axis=0) if hot else frames.max(axis=0))
        a, z = (mx, mn) if hot else (mn, mx)
        bg = _flat_filter(_flat_filter(_flat_filter(ext, HAT, a), twice, z), HAT, a)
        hat = ext - bg if hot else bg - ext
        # the noise by the level of the background around a pixel (not the pixel's own)
        c_, s_ = _binned_spread(hat, bg, use)
        return ext, bg, hat, c_, s_, _above(hat, bg, c_, s_, 5.0, use)

    # (the two kinds side by side: whole-frame passes, which let go of the interpreter)
    (lo, bg_lo, hat_hot, c_hot, s_hot, at_hot), (hi, bg_hi, hat_dead, c_dead, s_dead, at_dead) = \
        _together(pool, lambda: top_hat(True), lambda: top_hat(False))
    # ... and steady: a static pixel keeps its value from frame to frame (its own noise
    # aside), a spot of the pattern that moves less than its width does not
    # (its own counting noise allowed: the noise's growth with the level, from the top hat's)
    ok = c_hot > 0
    gain = float(np.median(s_hot[ok] ** 2 / c_hot[ok])) if ok.any() else 0.0
    # (looked at only where a pixel stands out: a few thousand)
    at = np.union1d(at_hot, at_dead)
    lo_at = lo.flat[at]
    wobble = 3 * np.sqrt(gain * np.abs(lo_at)) if np.isfinite(gain) else 0.0
    steady = (hi.flat[at] - lo_at) < STEADY * np.maximum(hat_hot.flat[at], hat_dead.flat[at]) + wobble
    candidates = np.zeros(frame_shape, bool)
    candidates.flat[at[steady]] = True
    clean = use & ~candidates

    # 2. coarse registration of the sampled frames onto the middle one: masked correlation
    # of binned frames (4x from 512 px, else 2x) with the candidates (and the block) ignored,
    # so nothing static pulls it to zero; then Gauss-Newton steps on the smoothed frames, at
    # half resolution (smoothed, they carry nothing finer)
    r = k // 2
    b = 2 if min(frame_shape) >= 64 else 1
    bc = 4 if min(frame_shape) >= COARSE_FROM else b
    clean_b = _binned(clean[None].astype(np.float32), b)[0] > 0.999
    searches: dict = {}

    def search(f):
        """(frames binned ``f`` times, their whole-pixel correlator), made when first asked."""
        if f not in searches:
            clean_f = clean_b if f == b else _binned(clean[None].astype(np.float32), f)[0] > 0.999
            binned = _binned(frames, f)
            # (drifts up to a quarter of the frame between sampled frames: smaller transforms)
            reach = [max(8, n // 4) for n in binned.shape[1:]]
            searches[f] = binned, MaskedCorrelator(binned[r], clean_f, clean_f, shrink=True,
                                                   workers=workers, dtype=np.float32,
                                                   max_shift=reach)
        return searches[f]

    axes = tuple(range(1, ndim + 1))

    # (the frames filled beside the binned search's set-up: neither waits on the other;
    # then their transforms, on the workers)
    filled, _ = _together(pool, lambda: _filler(use, candidates, block)(frames), lambda: search(bc))
    spectra = sfft.rfftn(filled, axes=axes, workers=workers)
    del filled
    grids = _grids(frame_shape)
    small, keep, low = _low_band(frame_shape, b)
    # the gradient of a noisy frame is mostly noise: the steps are taken on smoothed frames
    smooth = np.exp(-2 * np.pi**2 * 1.5**2 * sum(g * g for g in low)).astype(np.float32)
    lows = spectra[(slice(None), *keep)] * smooth
    ref = sfft.irfftn(lows[r], s=small, workers=workers)
    grad = [sfft.irfftn(lows[r] * (2j * np.pi * g).astype(np.complex64), s=small, workers=workers)
            for g in low]
    basis = np.stack([*grad, ref, np.ones_like(ref)])  # shift, gain, offset
    inner = _box_eroded(clean_b, 5)
    threads = min(workers, k)

    # (the weights and normal equations of the fit depend only on the whole-pixel step, the
    # basis being the reference's: made once per step, shared by every frame and iteration)
    normals: dict = {}

    def normal(step):
        key = tuple(int(d) for d in step)
        if key not in normals:  # (two threads may both make one: the same arrays)
            w = inner & moved_mask(inner, step)
            normals[key] = (w, _normal(basis, w))
        return normals[key]

    def register(js, f=bc):
        """[(shift, misfit, ambiguous)] of the frames ``js`` (not the middle one): the
        misfit is what the fit leaves of the reference's variance; ambiguous, whether the
        whole-pixel peak had a runner-up nearly as high. (The frames at once: one batched
        search, and each step's transforms in one call on the workers.)"""
        binned, corr = search(f)
        peaks = corr.register_batch(binned[list(js)])
        shifts = [np.asarray(peak.shift, float) * f for peak in peaks]
        last = [None] * len(js)
        todo = list(range(len(js)))
        for _ in range(5):
            backs = sfft.irfftn(np.stack([lows[js[i]] * _phase(low, -shifts[i]) for i in todo]),
                                s=small, axes=axes, workers=workers)
            going = []
            for i, back in zip(todo, backs):
                w, equations = normal(np.round(shifts[i] / b).astype(int))
                coef = _solve(basis, back - ref, normal=equations)
                shifts[i] += np.clip(coef[:ndim], -f, f)
                last[i] = back, coef, w
                if not np.abs(coef[:ndim]).max() < 0.02:
                    going.append(i)
            todo = going
            if not todo:
                break
        out, variance = [], {}  # (the reference's variance by weights: frames share them)
        for shift, (back, coef, w), peak in zip(shifts, last, peaks):
            left = back - ref
            for c, part in zip(coef, basis):
                left -= np.float32(c) * part
            left = left[w]
            if id(w) not in variance:
                spread = ref[w]
                spread = spread - spread.mean()
                variance[id(w)] = max(dot64(spread, spread), 1e-30)
            misfit = dot64(left, left) / variance[id(w)]
            out.append((shift, misfit, bool(peak.runner_up >= AMBIGUOUS * peak.peak_value)))
        return out

    others = [j for j in range(k) if j != r]
    fits = register(others)
    fits.insert(r, (np.zeros(ndim), 0.0, False))
    # a frame the search could not register (a periodic pattern can match a lattice
    # vector away at low resolution) fits far worse than the others: it takes no part
    shifts = np.array([sh for sh, _, _ in fits])
    misfit = np.array([m for _, m, _ in fits])

    def failed():
        return ~(misfit <= 2 * np.median(np.delete(misfit, r)) + 1e-3)  # (NaN: failed)

    if bc > b:  # (against the best frame: several may have gone wrong)
        worse = ~(misfit <= 2 * np.delete(misfit, r).min() + 1e-3)
        again = worse & ((misfit > WRONG_PLACE) | np.array([a for _, _, a in fits]))
        again = np.flatnonzero(again)
        for j, (sh, m, _) in zip(again, register(again, b) if again.size else []):
            if m < misfit[j]:
                shifts[j], misfit[j] = sh, m
    keep = ~failed()
    if keep.sum() < 3:
        return nothing
    if not keep.all():
        shifts = shifts[keep]
        frames, spectra, k = frames[keep], spectra[keep], int(keep.sum())
        r = int(np.flatnonzero(np.flatnonzero(keep) == r)[0])
        picks = picks[keep]

    # 3. the content: the sampled frames aligned onto the middle one and averaged (in
    # Fourier space, from the spectra at hand: a static pixel lands on a different place
    # in each); data where at most one frame had ignored pixels or the frame's edge there
    # (a candidate's fill is its neighbour's value, good enough at one part in k)
    # (the middle frame stays where it is: no factor of ones)
    aligned = [None if j == r else _phase(grids, -sh) for j, sh in enumerate(shifts)]
    total_f = spectra[0].copy() if aligned[0] is None else spectra[0] * aligned[0]
    for j in range(1, k):
        total_f += spectra[j] if aligned[j] is None else spectra[j] * aligned[j]
    total_f /= k - 1  # (each frame's model: the others' mean, below)
    trusted = _box_eroded(use, 5)
    steps = np.round(shifts).astype(int)
    cover = sum(moved_mask(trusted, st).astype(np.int16) for st in steps)
    content_ok = cover >= k - 1
    # ... moved onto every frame: residuals in detector coordinates (the middle frame's
    # model is the level of the content)
    # (every frame's model transformed back at once: one call that runs on ``workers``
    # threads, where frame by frame in threads the calls queued on each other)
    loo = np.empty_like(spectra)
    for j in range(k):
        # the content from the other frames (its own fill and noise are not its model)
        if aligned[j] is None:
            loo[j] = total_f
        else:
            np.multiply(total_f, aligned[j].conj(), out=loo[j])
        loo[j] -= spectra[j] * np.float32(1 / (k - 1))
    resid = sfft.irfftn(loo, s=frame_shape, axes=axes, workers=workers)
    del loo
    level = resid[r].copy()
    ok_counts = np.zeros(frame_shape, np.int16)
    lock = threading.Lock()

    def residual(j):
        ok = moved_mask(content_ok, -steps[j]) & use  # model(p) = content(p + shift)
        out = resid[j]  # (the model, made the residual in place)
        gain, offset = _fit_gain(out, frames[j], ok & clean)
        np.multiply(out, np.float32(gain), out=out)
        out += np.float32(offset)
        np.subtract(frames[j], out, out=out)
        out[~ok] = np.inf  # no vote
        with lock:
            np.add(ok_counts, ok, out=ok_counts)

    for _ in in_threads(residual, range(k), threads):
        pass
    votes = ok_counts
    # the votes first (no vote is inf); their median (every frame votes at most pixels),
    # the lowest and the highest vote; where fewer vote, those of the votes (the
    # residuals sorted there only)
    med, lowest, top = _middle(resid)
    fewer = np.flatnonzero(votes < k)
    if fewer.size:
        some = np.stack(_sorted_frames(resid.reshape(k, -1)[:, fewer]))
        half = np.maximum(votes.flat[fewer] - 1, 0)
        med.flat[fewer] = 0.5 * (np.take_along_axis(some, (half // 2)[None], 0)[0]
                                 + np.take_along_axis(some, ((half + 1) // 2)[None], 0)[0])
        top.flat[fewer] = np.take_along_axis(some, half[None], 0)[0]
    # the frame's edge is static too: moved frames ring there (they wrap around)
    edge = int(np.ceil(np.abs(shifts).max())) + 6
    inside = np.zeros(frame_shape, bool)
    inside[tuple(slice(edge, n - edge) for n in frame_shape)] = True
    judged = use & inside & (votes >= max(3, k // 2 + 1))  # a majority of the frames
    med = np.where(judged, med, 0.0)
    # every voting frame on the median's side: a static pixel's excess is there in each
    # frame, content misplaced by a local (non-rigid) motion or a lattice's coincidences in
    # only some of them

    # 4. the final pass: beyond the noise of the median residual, in small groups
    c, s = _binned_spread(med, level, judged & clean)
    least = min(3.0, threshold)
    # (only where a residual can pass the smallest factor used, ``least`` times the quietest
    # level's spread: elsewhere nothing stands out, whatever its level)
    lit = np.flatnonzero(judged & (np.abs(med) > least * s.min()) if least > 0 else judged)
    med_at, level_at = med.flat[lit], level.flat[lit]
    sigma_at = np.interp(level_at, c, s)
    # above the brightest bin (a few pixels: the direct beam of a pattern without a block)
    # the counting noise grows as the square root of the level, not flat: read flat, a bright
    # moving spot's own residual stood out as a large static object hiding the hot pixels on it
    above = level_at > c[-1]
    if above.any() and c[-1] > 0:
        sigma_at[above] *= np.sqrt(level_at[above] / c[-1])
    # (and far beyond that noise the level does not hold a pixel back: a hot pixel on the
    # direct beam is less than half the beam's level)
    rel_at = np.where(np.abs(med_at) > FAR * sigma_at, 0.0, RELATIVE * np.abs(level_at))
    found = np.zeros(frame_shape, bool)
    strides = np.cumprod((1,) + frame_shape[:0:-1])[::-1]  # (flat index steps per axis)
    neighbours = [int(np.dot(np.subtract(step, 1), strides)) for step in np.ndindex(*(3,) * ndim)]
    for sign in (1.0, -1.0):
        e_at = sign * med_at
        # a static outlier stands alone; a residual beside an opposite one is the content
        # misplaced (a dipole at a sharp feature) or the echo of a strong outlier the first
        # pass missed, ringing when the frames were moved
        # (a pixel whose value itself stays put, a dead one beside a hot one, is no echo)
        steady = (lowest.flat[lit] > 0) if sign > 0 else (top.flat[lit] < 0)
        pick = (e_at > threshold * sigma_at) & (e_at > rel_at) & steady
        at = lit[pick]
        if at.size == 0:
            continue
        # (the neighbours' largest opposite residual: judged pixels are inside the frame)
        echo = np.zeros(at.size, med.dtype)
        for off in neighbours:
            np.maximum(echo, -(sign * med.flat[at + off]), out=echo)
        e = e_at[pick]
        alone = (e > 2 * echo) | (hi.flat[at] - lo.flat[at] < STEADY * e)
        core = np.zeros(frame_shape, bool)
        core.flat[at[alone]] = True
        loose = core.copy()
        loose.flat[lit[e_at > 3 * sigma_at]] = True
        found |= _small_groups(core, loose, max_cluster)
    # nor is anything beside a large static object (an unpainted block: its edge, of
    # either sign, breaks up into small groups along it)
    large = np.zeros(frame_shape, bool)
    if found.any():
        loud = np.zeros(frame_shape, bool)
        loud.flat[lit[np.abs(med_at) > 3 * sigma_at]] = True
        large = loud & ~_small_groups(np.ones(frame_shape, bool), loud, max_cluster)
    if large.any():  # (an outlier far above the level there is no edge: it stays)
        weak = np.abs(med) < 3 * np.abs(level)
        found &= ~(_box_dilated(large, 7) & weak)
    # pixels too few frames could judge (the frame's edge under a large drift, beside the
    # block): the top hat alone, far beyond the noise and the level
    blind = use & ~judged & candidates
    at = np.flatnonzero(blind)
    if at.size:  # (looked at on those candidates only)
        hot, dead = hat_hot.flat[at], hat_dead.flat[at]
        sig_hot = np.interp(bg_lo.flat[at], c_hot, s_hot)
        sig_dead = np.interp(bg_hi.flat[at], c_dead, s_dead)
        far = (((hot > threshold * sig_hot) & (hot > 3 * np.abs(bg_lo.flat[at])))
               | ((dead > threshold * sig_dead) & (hi.flat[at] < 0.2 * bg_hi.flat[at])))
        strong = np.zeros(frame_shape, bool)
        strong.flat[at[far]] = True
        found |= _small_groups(strong, blind, max_cluster)
    if details is not None and "debug" in details:
        details["debug"] = dict(locals())
    if details is not None:
        details.update(frames=picks, shifts=shifts, candidates=int(candidates.sum()),
                       judged=int(judged.sum()))
    return found


def _flat_filter(image: np.ndarray, width: int, op, outside=None) -> np.ndarray:
    """The maximum (``op=np.maximum``) or minimum (``np.minimum``) over a centred box
    ``width`` pixels wide (odd), the image mirrored at its edges (or, ``outside``
    given, that value beyond them): exactly ``ndi.maximum_filter(image, width)`` (its
    ``"reflect"`` mode), and ``grey_dilation`` / ``grey_erosion``. Along each axis,
    windows of 2, 4, 8... pixels from pairs of the previous ones, the last from two
    overlapping ones: a few whole-array passes (scipy's running filter took 4x
    longer)."""
    out = image
    for ax in range(image.ndim):
        out = _along(_padded(out, ax, width // 2, outside), ax, width, op)
    return out


def _along(run: np.ndarray, ax: int, width: int, op) -> np.ndarray:
    """The box filter of :func:`_flat_filter` along axis ``ax`` of ``run``, ``width - 1``
    longer there than the result (padded, or its neighbours at hand)."""
    n = run.shape[ax]
    keep = n - (width - 1)
    span = 1
    while 2 * span <= width:
        lead = [slice(None)] * run.ndim
        tail = [slice(None)] * run.ndim
        lead[ax], tail[ax] = slice(0, n - span), slice(span, n)
        run = op(run[tuple(lead)], run[tuple(tail)])
        n -= span
        span *= 2
    rest = width - span  # two windows of ``span`` overlapping to cover ``width``
    lead = [slice(None)] * run.ndim
    tail = [slice(None)] * run.ndim
    lead[ax], tail[ax] = slice(0, keep), slice(rest, rest + keep)
    return op(run[tuple(lead)], run[tuple(tail)]) if rest else run[tuple(lead)]


def _padded(image: np.ndarray, ax: int, half: int, outside=None) -> np.ndarray:
    """``image`` with ``half`` more pixels at both ends of axis ``ax``: mirrored (numpy's
    ``"symmetric"`` mode: the edge pixel repeated first) or ``outside``; the same as
    ``np.pad``, which took 3x a whole-array pass for its bookkeeping."""
    n = image.shape[ax]
    if half > n:  # (a mirror of a mirror: left to numpy)
        pad = [(0, 0)] * image.ndim
        pad[ax] = (half, half)
        return (np.pad(image, pad, mode="symmetric") if outside is None
                else np.pad(image, pad, constant_values=outside))
    shape = list(image.shape)
    shape[ax] += 2 * half
    out = np.empty(shape, image.dtype)

    def at(part):
        index = [slice(None)] * image.ndim
        index[ax] = part
        return tuple(index)

    out[at(slice(half, half + n))] = image
    if outside is None:
        if half:
            out[at(slice(0, half))] = image[at(slice(half - 1, None, -1))]
            out[at(slice(half + n, None))] = image[at(slice(n - 1, n - 1 - half if half < n else None, -1))]
    else:
        out[at(slice(0, half))] = outside
        out[at(slice(half + n, None))] = outside
    return out


def _box_dilated(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` dilated by a ``width``-wide box (odd), nothing outside the frame: the same
    as ``binary_dilation`` with a full box, one axis at a time (ORs of shifted views;
    scipy's took 10 ms a frame with a 7 px box)."""
    return ~_box_eroded(~mask, width, outside=True)


def _box_eroded(mask: np.ndarray, width: int, outside: bool = False) -> np.ndarray:
    """``mask`` eroded by a ``width``-wide box (odd), outside the frame ``outside``
    (False: the same as ``binary_erosion`` with a full box): the box minimum of
    :func:`_flat_filter` (scipy's minimum filter took 30x longer on a frame)."""
    return _flat_filter(np.asarray(mask, bool), width, np.minimum, outside=bool(outside))


def _middle(a: np.ndarray) -> tuple:
    """``(median, lowest, highest)`` over the first axis of ``a`` (k, *shape), pixel by
    pixel (no NaN), the median as ``0.5 * (sorted[(k - 1) // 2] + sorted[k // 2])``; ``a``
    is left as it was. Five frames (the search's usual sample): the two middle values of
    four (the larger of the pairs' minima, the smaller of their maxima) and the fifth,
    their middle one, and the extremes from the pairs': 14 elementwise passes instead of
    the 20 of a full sort, the same values (a minimum or a maximum picks an input)."""
    k = a.shape[0]
    if k != 5:
        ranked = _sorted_frames(a.copy())
        return 0.5 * (ranked[(k - 1) // 2] + ranked[k // 2]), ranked[0], ranked[k - 1]
    lo, hi = np.minimum(a[0], a[1]), np.maximum(a[0], a[1])
    lo2, hi2 = np.minimum(a[2], a[3]), np.maximum(a[2], a[3])
    lowest = np.minimum(np.minimum(lo, lo2), a[4])
    highest = np.maximum(np.maximum(hi, hi2), a[4])
    f, g = np.maximum(lo, lo2, out=lo), np.minimum(hi, hi2, out=hi)
    x, y = np.minimum(f, g, out=lo2), np.maximum(f, g, out=hi2)
    m = np.maximum(x, np.minimum(y, a[4], out=y), out=x)
    return 0.5 * (m + m), lowest, highest


def _sorted_frames(a: np.ndarray) -> list:
    """The frames of ``a`` (k, *shape) sorted pixel by pixel, as a list of k arrays (``a``
    is used up): for the few frames of the search an odd-even transposition network of
    elementwise minima and maxima (each a contiguous pass, the outputs swapped by
    reference: two passes a comparison; ``np.sort`` along the first axis strides
    through memory, 5x slower), the same values in the same order (no NaN here)."""
    k = a.shape[0]
    if k > 8:
        a.sort(axis=0)
        return list(a)
    rows, spare = list(a), np.empty_like(a[0])
    for p in range(k):
        for i in range(p % 2, k - 1, 2):
            lo, hi = rows[i], rows[i + 1]
            np.minimum(lo, hi, out=spare)
            np.maximum(lo, hi, out=hi)
            rows[i], spare = spare, lo
    return rows


def _binned(frames: np.ndarray, b: int) -> np.ndarray:
    """Frames (k, *shape) averaged over b-pixel blocks along every frame axis (the sum
    of the b**ndim strided views: a mean over the split axes strides through memory,
    10x slower)."""
    if b == 1:
        return frames
    shape = frames.shape[1:]
    cut = frames[(slice(None), *(slice(0, n - n % b) for n in shape))]
    out = None
    for offsets in np.ndindex(*(b,) * len(shape)):
        part = cut[(slice(None), *(slice(o, None, b) for o in offsets))]
        out = part.copy() if out is None else np.add(out, part, out=out)
    out /= b ** len(shape)
    return out


def _grids(shape) -> list:
    """Sparse frequency grids (cycles per pixel) of an rfftn half spectrum."""
    freqs = [np.fft.fftfreq(m) for m in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    return np.meshgrid(*freqs, indexing="ij", sparse=True)


def _low_band(shape, b: int):
    """``(small, keep, grids)``: the shape of frames downsampled ``b`` times, the index of
    their band in the half spectrum of ``shape``, and its frequencies in cycles per
    pixel of the full frame."""
    small = tuple(n // b for n in shape)
    idx = [np.r_[0:(m + 1) // 2, n - m // 2:n] for n, m in zip(shape[:-1], small[:-1])]
    idx.append(np.arange(small[-1] // 2 + 1))
    freqs = [np.fft.fftfreq(n)[i] for n, i in zip(shape[:-1], idx[:-1])]
    freqs.append(np.fft.rfftfreq(shape[-1])[idx[-1]])
    return small, np.ix_(*idx), np.meshgrid(*freqs, indexing="ij", sparse=True)


def _phase(grids, shift) -> np.ndarray:
    """The half spectrum's factor that moves an image by ``-shift``: ``f(x + shift)``
    (one exponential per axis, their outer product)."""
    out = np.ones((), np.complex64)
    for g, d in zip(grids, shift):
        out = out * np.exp((2j * np.pi * float(d)) * g).astype(np.complex64)
    return out


def _normal(basis: np.ndarray, weight=None) -> tuple:
    """``(weighted basis, normal matrix)`` of the least squares of :func:`_solve`."""
    flat = basis.reshape(len(basis), -1)
    wb = flat if weight is None else flat * weight.reshape(-1)
    return wb, (wb @ flat.T).astype(np.float64)


def _solve(basis: np.ndarray, target: np.ndarray, weight=None, normal=None) -> np.ndarray:
    """Least-squares coefficients of ``target ~ sum(c[i] * basis[i])`` over the pixels
    where ``weight`` (all pixels when None); ``normal``: :func:`_normal` of them, when
    at hand (the same numbers)."""
    wb, h = _normal(basis, weight) if normal is None else normal
    try:
        # (float32 sums, as BLAS makes them, but without BLAS: see kernels._grid.dot64)
        return np.linalg.solve(h, np.einsum("ij,j->i", wb, target.reshape(-1)).astype(np.float64))
    except np.linalg.LinAlgError:
        return np.zeros(len(basis))


def _fit_gain(model: np.ndarray, target: np.ndarray, where: np.ndarray) -> tuple:
    """``(gain, offset)``: least squares of ``target ~ gain * model + offset`` over the
    pixels ``where`` (the normal equations from five sums: each row's in float32, the
    rows' in float64; float64 sums of every product took 3x as long, for a gain the same
    to a few parts in 10**8 on the sample's stacks (at worst, a nearly flat model far
    above zero, 10**-5): a residual changed by far less than its noise)."""
    w = where.astype(model.dtype)
    mw = model * w
    rows = (model.shape[0], -1)
    mw, w, model, target = (a.reshape(rows) for a in (mw, w, model, target))

    def total(a, b):
        return float(np.einsum("ij,ij->i", a, b).sum(dtype=np.float64))

    n, sm, st = float(np.count_nonzero(where)), float(mw.sum(axis=1).sum(dtype=np.float64)), total(target, w)
    h = np.array([[total(mw, model), sm], [sm, n]])
    try:
        gain, offset = np.linalg.solve(h, [total(mw, target), st])
    except np.linalg.LinAlgError:
        return 0.0, 0.0
    return float(gain), float(offset)


def mask_with_outliers(stack, valid, hot_pixels) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(mask, outliers)``: the engine mask registration uses and the static outliers
    added to it, for the ``hot_pixels`` setting ("auto", "off" or a boolean mask).

    ``mask`` is ``valid`` (True = valid, or None for no mask) without the
    outliers; ``outliers`` is None when ``hot_pixels`` is "off". With no
    outlier found (or given), ``mask`` is ``valid`` itself.
    """
    if isinstance(hot_pixels, str) and hot_pixels == "off":
        return valid, None
    if isinstance(hot_pixels, str):
        outliers = find_static_outliers(stack, valid=valid)
    else:
        outliers = np.asarray(hot_pixels, bool) & (True if valid is None else valid)
    if not outliers.any():
        return valid, outliers
    base = np.ones(outliers.shape, bool) if valid is None else valid
    return base & ~outliers, outliers
