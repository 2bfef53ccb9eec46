"""Static outlier pixels: hot, dead, stuck and saturated detector pixels.

They are a second static object, like the beam block: single pixels far above
(or below) their neighbourhood in every frame, at the same place, so they pull
a correlation towards zero shift. :func:`find_static_outliers` finds them
from a bounded sample of frames:

1. up to ``n_frames`` frames spread over the stack are read (fewer for large
   frames, so memory stays bounded), and their per-pixel median ``M`` is taken
   (a cosmic ray in one frame does not survive it; the moving pattern is
   blurred by it, a static outlier is not);
2. the noise is measured from one frame as the robust spread of each pixel's
   difference from the median of its neighbours, in bins of brightness, so
   the threshold follows Poisson counts (noise growing with the level) and
   Gaussian noise (constant) alike; the noise of ``M`` is that over the
   square root of the number of frames;
3. candidates are pixels of ``M`` that stand out from the median of their
   5x5 neighbourhood; each is then tested in every sampled frame: it must be
   beyond all but one of its 8 neighbours (a pair of adjacent hot pixels is
   still found) and *sharp* -- its neighbours sit near the background, not
   near it, which is what tells a single pixel from a Bragg spot or a ring a
   few pixels wide -- in at least 3/4 of the frames, and its median excess
   must be ``threshold`` noise levels and 10 % of the local level; its value
   (dead, stuck, saturated) or its excess (hot) must stay put from frame to
   frame (within 3 noise levels or 20 %). Beside the
   mask, with 3 to 5 valid neighbours, a pixel must instead be beyond every
   valid neighbour by most of its excess, and its excess twice the spread of
   its 5x5 neighbourhood; candidates
   beside a found outlier are judged once more with it set aside;
4. pixels that are NaN or inf in (nearly) every sampled frame are static
   outliers too (a NaN in one frame is not static: registration refuses it).

Pixels the mask already ignores take no part (so the block's edge is not an
outlier) and are never reported.

References
----------
The search itself is this project's own (see above); it rests on
Hampel FR. "The influence curve and its role in robust estimation." Journal
of the American Statistical Association 69(346):383-393 (1974).
https://doi.org/10.1080/01621459.1974.10482962 (the
median absolute deviation, the robust spread the thresholds are in units of).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage as ndi

from ..backends._frames import read_frame

__all__ = ["find_static_outliers", "mask_with_outliers"]

#: a sharp pixel's neighbours rise above the background by less than this
#: fraction of the pixel's own excess (a Bragg spot 1 px wide reaches ~0.4)
SHARPNESS = 0.3
#: ... in at least this fraction of the sampled frames
CONSISTENCY = 0.75
#: and its excess is at least this fraction of the local level
RELATIVE = 0.1
#: the sampled frames take at most this much memory (float32) ...
SAMPLE_BYTES = 64 * 2**20
#: ... and the neighbourhoods of the candidates tested at once about this much
CHUNK_BYTES = 8 * 2**20


def _ring(radius: int, ndim: int) -> np.ndarray:
    fp = np.ones((2 * radius + 1,) * ndim, bool)
    fp[(radius,) * ndim] = False
    return fp


def _noise_model(frame: np.ndarray, use: np.ndarray, bins: int = 16):
    """(levels, sigmas): the single-frame noise by brightness, from each pixel's
    difference to the median of its neighbours (robust spread per level bin)."""
    fill = np.where(use, frame, np.nanmedian(frame[use]) if use.any() else 0.0)
    nb = ndi.median_filter(fill, footprint=_ring(1, frame.ndim), mode="reflect")
    levels, resid = nb[use], (fill - nb)[use]
    if levels.size < 50:
        return np.array([0.0]), np.array([np.inf])
    edges = np.unique(np.quantile(levels, np.linspace(0, 1, bins + 1)))
    centres, sigmas = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (levels >= lo) & (levels <= hi)
        if sel.sum() < 50:
            continue
        r = resid[sel]
        centres.append(float(np.median(levels[sel])))
        sigmas.append(1.4826 * float(np.median(np.abs(r - np.median(r)))))
    if not centres:
        return np.array([0.0]), np.array([np.inf])
    sigmas = np.asarray(sigmas)
    positive = sigmas[sigmas > 0]
    # discrete low counts can give a spread of 0: no level is quieter than the quietest measured
    return np.asarray(centres), np.maximum(sigmas, positive.min() if positive.size else np.inf)


def _neighbourhoods(frames: np.ndarray, points: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame and point: the value, its 8 (26 in 3D) neighbours and its 5x5 ring
    (mirrored at the frame's edge)."""
    ndim = frames.ndim - 1
    offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    cheb = np.abs(offsets).max(axis=1)
    idx = []
    for k, p in enumerate(points):
        i = np.asarray(p)[:, None] + offsets[:, k][None, :]
        n = frames.shape[k + 1]
        idx.append(np.abs(np.where(i >= n, 2 * (n - 1) - i, i)))  # reflect, as np.pad does
    patches = frames[(slice(None), *idx)]  # (K, n_points, 5**ndim)
    centre = patches[..., cheb == 0][..., 0]
    return centre, patches[..., cheb == 1], patches[..., cheb >= 1]


def find_static_outliers(stack, *, valid=None, n_frames: int = 16, threshold: float = 8.0) -> np.ndarray:
    """Find hot, dead, stuck and saturated pixels: outliers in (nearly) every frame.

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
        How many noise levels a pixel's median excess over its neighbourhood
        must reach.

    Returns
    -------
    outliers : ndarray of bool, one frame's shape
        True on static outlier pixels: pixels to ignore, like the block.

    Notes
    -----
    Moving content is not flagged: Bragg spots and rings a pixel wide or
    more are not *sharp* (their neighbours are bright too), and the
    beam block's edge takes no part when it is masked. Without a mask,
    isolated bright corners of an unpainted static object can be flagged;
    they are static too. Pixels stuck at the level of their neighbours are
    not found (and do not pull a registration).
    """
    n = int(stack.shape[0])
    frame_shape = tuple(int(s) for s in stack.shape[1:])
    if n < 1:
        raise ValueError("the stack has no frames")
    per_frame = max(1, int(np.prod(frame_shape))) * 4
    k = int(max(1, min(n, n_frames, SAMPLE_BYTES // per_frame)))
    picks = np.unique(np.linspace(0, n - 1, k).round().astype(int))
    frames = np.stack([read_frame(stack, i, np.float32) for i in picks])
    finite = np.isfinite(frames)
    nonfinite = (~finite).mean(axis=0) >= CONSISTENCY  # NaN or inf in (nearly) every frame
    use = finite if valid is None else finite & np.asarray(valid, bool)
    frames = np.where(use, frames, np.nan)  # ignored pixels take no part
    if (use == use[0]).all():  # the usual case: the same pixels ignored in every frame
        med = np.median(np.where(use[0], frames, 0), axis=0)  # twice as fast as nanmedian
        med[~use[0]] = np.nan
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels (the block)
            med = np.nanmedian(frames, axis=0)
    usable = np.isfinite(med)
    outliers = nonfinite.copy()
    if usable.sum() < 50:
        return outliers & (True if valid is None else np.asarray(valid, bool))
    levels, sigmas = _noise_model(frames[len(picks) // 2], use[len(picks) // 2])
    filled = np.where(usable, med, np.median(med[usable]))
    bg = ndi.median_filter(filled, footprint=_ring(2, len(frame_shape)), mode="reflect")
    nb = ndi.median_filter(filled, footprint=_ring(1, len(frame_shape)), mode="reflect")
    excess = filled - bg
    sigma_frame = np.interp(bg, levels, sigmas)
    sigma_med = 1.2533 * sigma_frame / np.sqrt(len(picks))
    # candidates: half way to the final thresholds on the median frame, loosely sharp
    candidates = (
        usable
        & (np.abs(excess) > 0.5 * np.maximum(threshold * sigma_med, RELATIVE * np.abs(bg)))
        & (np.sign(excess) * (nb - bg) < 0.6 * np.abs(excess))
    )
    limit = np.stack([threshold * sigma_med, sigma_frame])
    found = _test(frames, frames, candidates, limit)
    # a second look at the candidates beside what was found, with those set aside: an
    # outlier next to another (a dead pair beside the block, say) is judged against its
    # real neighbours, and a pixel that only beat its outlier neighbours is dropped
    near = candidates & ndi.binary_dilation(found, np.ones((3,) * len(frame_shape), bool))
    near &= ~found | ndi.binary_dilation(found, _ring(1, len(frame_shape))) & found
    if near.any():
        again = _test(np.where(found, np.nan, frames), frames, near, limit)
        found = np.where(near, again, found)
    outliers |= found
    return outliers & (True if valid is None else np.asarray(valid, bool))


def _test(around: np.ndarray, frames: np.ndarray, candidates: np.ndarray,
          limit: np.ndarray) -> np.ndarray:
    """The candidates confirmed as static outliers (a mask), a bounded chunk at a time:
    each pixel of ``frames`` against its neighbours in ``around``."""
    found = np.zeros(candidates.shape, bool)
    points = np.nonzero(candidates)
    step = max(1, CHUNK_BYTES // (frames.shape[0] * 5 ** candidates.ndim * 4))
    for lo in range(0, points[0].size, step):  # bounded memory, however many candidates
        chunk = tuple(p[lo : lo + step] for p in points)
        centre = frames[(slice(None), *chunk)]
        found[chunk] = _confirmed(centre, *_neighbourhoods(around, chunk)[1:],
                                  *limit[(slice(None), *chunk)])
    return found


def _confirmed(centre: np.ndarray, inner: np.ndarray, ring: np.ndarray, limit: np.ndarray,
               noise: np.ndarray) -> np.ndarray:
    """Which points are static outliers, from their value and neighbourhood in every
    sampled frame: ``centre`` (K, n), ``inner`` and ``ring`` (K, n, neighbours);
    ``limit`` the excess they need, ``noise`` one frame's noise there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bg = np.nanmedian(ring, axis=-1)
        nb = np.nanmedian(inner, axis=-1)
        e = centre - bg
        excess = np.nanmedian(e, axis=0)
        level = np.abs(np.nanmedian(bg, axis=0))
    hot = excess > 0
    high = np.sort(np.where(np.isnan(inner), -np.inf, inner), axis=-1)
    low = np.sort(np.where(np.isnan(inner), np.inf, inner), axis=-1)
    # beyond all but one neighbour (a pair of hot pixels), and sharp
    peak = np.where(hot, centre >= high[..., -2], centre <= low[..., 1])
    sharp = np.where(hot, nb - bg < SHARPNESS * e, bg - nb < SHARPNESS * -e)
    usual = (peak & sharp & np.isfinite(e)).mean(axis=0) >= CONSISTENCY
    # beside the mask: beyond every valid neighbour by most of its excess, and far beyond
    # the spread of its 5x5 neighbourhood (a ridge of the pattern running under the block is not)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = 1.4826 * np.nanmedian(np.abs(ring - bg[..., None]), axis=-1)
    gap = np.where(hot, centre - high[..., -1], low[..., 0] - centre)
    alone = (gap > 0.5 * np.abs(e)) & (np.abs(e) > 2 * spread) & np.isfinite(e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gap_med = np.nanmedian(np.where(np.isfinite(gap), gap, np.nan), axis=0)
    beside = (alone.mean(axis=0) >= CONSISTENCY) & (gap_med > limit)
    n_valid = np.isfinite(inner[0]).sum(axis=-1)
    strong = np.abs(excess) > np.maximum(limit, RELATIVE * level)
    # and static: its value (dead, stuck, saturated) or its excess over its neighbours (hot)
    # stays put from frame to frame; a bright pixel of the moving pattern at the corner of
    # an unpainted block changes in both as the pattern moves past
    def wobble(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return 1.4826 * np.nanmedian(np.abs(x - np.nanmedian(x, axis=0)), axis=0)

    allowed = np.maximum(3 * noise, 0.2 * np.abs(excess))
    strong &= (wobble(centre) <= allowed) | (wobble(centre - nb) <= allowed)
    return strong & np.where(n_valid >= 6 * inner.shape[-1] // 8, usual, (n_valid >= 3) & beside)


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
