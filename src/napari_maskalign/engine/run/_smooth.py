"""Smoothing over time: a beam drifts smoothly, except where someone steers it.

Independent per-frame estimates each carry their own noise; a drift that is
smooth over many frames lets neighbours share it. :func:`smooth_series`

* **finds the jumps first** (:func:`find_jumps`): at every frame boundary, one
  local cubic over the frames on both sides with a step term; the step's
  size over its standard error (from the per-frame uncertainties, times the
  fit's own residual scale when that is larger) is a z-score, and the largest
  z-scores above ``threshold`` split the series (binary segmentation, so two
  jumps close together are both found). Nothing is ever smoothed across one.
* **then smooths each segment** with a local cubic (tricube kernel, weights
  ``1 / sigma^2``) whose half-width is chosen per column by generalised
  cross-validation: the strength follows the uncertainties and the data,
  not a fixed number of frames. Near a segment's ends the window stays
  inside the segment (one-sided fits), so a jump stays sharp.
* **propagates the uncertainties**: the smoothed value is a linear
  combination ``sum_j H_ij y_j`` of the raw ones, so its variance is
  ``sum_j H_ij^2 sigma_j^2``.

Where no per-frame uncertainties are given, :func:`scatter_sigma` estimates
one per column, robustly, from the second differences of the series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Smoothed", "find_jumps", "scatter_sigma", "smooth_series"]

#: half-widths (frames each side) the cross-validation chooses from
HALF_WIDTHS = (3, 4, 5, 7, 9, 12, 15, 20, 25, 32, 40, 50)
#: the local polynomial's degree
DEGREE = 3
#: frames each side of a boundary the jump test fits
JUMP_WINDOW = 8


@dataclass(frozen=True)
class Smoothed:
    """The outcome of :func:`smooth_series`.

    Attributes
    ----------
    values : ndarray, shape (n, k)
        The smoothed series.
    sigma : ndarray, shape (n, k)
        One-sigma uncertainty of each smoothed value (propagated).
    raw_sigma : ndarray, shape (n, k)
        The uncertainties of the raw values used (given or estimated).
    jumps : ndarray of int
        Frames that start a new segment: a jump lies between ``j - 1`` and ``j``.
    half_widths : ndarray of int, shape (k,)
        The half-width the cross-validation chose per column (the largest
        over segments).
    """

    values: np.ndarray
    sigma: np.ndarray
    raw_sigma: np.ndarray
    jumps: np.ndarray
    half_widths: np.ndarray


def scatter_sigma(values) -> np.ndarray:
    """``(n, k)``: one uncertainty per column from the scatter of the series' differences.

    For independent noise of standard deviation ``s``, the ``d``-th difference
    of the series has standard deviation ``sqrt(C(2d, d)) s`` (``sqrt(6) s``
    for the second), while a drift that is smooth over a few frames adds
    little to it, the less the higher ``d``. Per column this takes the
    smallest estimate over ``d = 2, 3, 4``, each from the median absolute
    deviation (jumps and outliers count for little).
    """
    y = np.asarray(values, dtype=float)
    y2 = y.reshape(len(y), -1)
    out = np.full(y2.shape, np.nan)
    best = np.full(y2.shape[1], np.inf)
    for d, norm in ((2, 6.0), (3, 20.0), (4, 70.0)):
        if len(y2) < d + 3:
            break
        diff = np.diff(y2, n=d, axis=0)
        mad = np.median(np.abs(diff - np.median(diff, axis=0)), axis=0) / 0.6744897501960817
        best = np.minimum(best, mad / np.sqrt(norm))
    out[:] = np.where(np.isfinite(best) & (best > 0), best, np.nan)
    return out.reshape(y.shape) if y.ndim > 1 else out[:, 0]


def _tricube(u):
    u = np.clip(np.abs(u), 0.0, 1.0)
    return (1.0 - u**3) ** 3


def _design(t, degree):
    return np.vander(t, degree + 1, increasing=True)


def _hat_rows(n: int, w, h: int, degree: int = DEGREE):
    """The local polynomial of half-width ``h`` on ``n`` frames with weights ``w``
    (frames of weight 0 are predicted, not used) as a banded hat matrix:
    ``(first, rows)``, row ``i`` holding the coefficients of frames
    ``first[i] .. first[i] + width - 1``."""
    width = min(2 * h + 1, n)
    first = np.clip(np.arange(n) - h, 0, n - width)
    rows = np.zeros((n, width))
    for i in range(n):
        idx = np.arange(first[i], first[i] + width)
        t = (idx - i).astype(float)
        reach = max(abs(t[0]), abs(t[-1])) + 1.0
        k = _tricube(t / reach) * w[idx]
        x = _design(t / reach, min(degree, max(int(np.count_nonzero(k)) - 1, 0)))
        xw = x * k[:, None]
        try:
            coef = np.linalg.solve(xw.T @ x + 1e-12 * np.eye(x.shape[1]), xw.T)
        except np.linalg.LinAlgError:
            coef = np.linalg.pinv(xw.T @ x) @ xw.T
        rows[i] = coef[0]
    return first, rows


def _apply(first, rows, v) -> np.ndarray:
    """``H @ v`` for a banded hat matrix."""
    width = rows.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(v, width)[first]
    return np.sum(rows * windows, axis=1)


def _smooth_segment(y, sigma, used, full: bool = False):
    """Local cubic of the GCV-chosen half-width: ``(values, sigma, half_width)``."""
    n = len(y)
    w = np.where(used, 1.0 / sigma**2, 0.0)
    m = int(np.count_nonzero(used))
    if n < DEGREE + 3 or m < DEGREE + 3:
        first, rows = np.arange(n), np.ones((n, 1))
        return (y.copy(), sigma.copy(), 0, first, rows) if full else (y.copy(), sigma.copy(), 0)
    y0 = np.where(used, y, 0.0)
    diag_at = np.arange(n)
    best = None
    for h in HALF_WIDTHS:
        if 2 * h + 1 > n and best is not None:
            break
        first, rows = _hat_rows(n, w, h)
        fit = _apply(first, rows, y0)
        rss = float(np.sum(w * (y - fit) ** 2 * used)) / m
        dof = float(np.sum(rows[diag_at, diag_at - first] * used)) / m
        gcv = rss / max(1.0 - dof, 1e-3) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, h, first, rows, fit)
    _, h, first, rows, fit = best
    var = _apply(first, rows**2, np.where(used, sigma**2, 0.0))
    if full:
        return fit, np.sqrt(var), h, first, rows
    return fit, np.sqrt(var), h


def _speckman(y, steps, sigma, used, first, rows) -> np.ndarray:
    """The step sizes of ``y = f + steps @ delta`` for the smoother ``(first, rows)``:
    least squares on what the smoother leaves, ``(I - S) y ~ (I - S) steps delta``."""
    w = np.where(used, 1.0 / sigma**2, 0.0)
    def left(v):
        return v - _apply(first, rows, np.where(used, v, 0.0))
    yt = left(y)
    xt = np.column_stack([left(col) for col in steps.T])
    xw = xt * w[:, None]
    return np.linalg.lstsq(xw.T @ xt, xw.T @ yt, rcond=None)[0]


def _local_step(y, sigma, used, j, jumps, window: int = JUMP_WINDOW) -> float:
    """A first step size at ``j``: a cubic plus a step over ``window`` frames each side
    (not past the neighbouring jumps)."""
    others = [q for q in jumps.tolist() if q != j]
    a = max([0, *[q for q in others if q < j]])
    b = min([len(y), *[q for q in others if q > j]])
    idx = np.arange(max(a, j - window), min(b, j + window))
    idx = idx[used[idx]]
    if np.count_nonzero(idx < j) == 0 or np.count_nonzero(idx >= j) == 0:
        return 0.0
    t = (idx - (j - 0.5)) / window
    deg = max(min(DEGREE, len(idx) - 3), 0)
    x = np.column_stack([_design(t, deg), (idx >= j).astype(float)])
    wq = 1.0 / sigma[idx]
    return float(np.linalg.lstsq(x * wq[:, None], y[idx] * wq, rcond=None)[0][-1])


def find_jumps(values, sigma, used=None, *, threshold: float = 6.0,
               window: int = JUMP_WINDOW, min_gap: int = 2) -> np.ndarray:
    """Frames where the series jumps: a step between ``j - 1`` and ``j`` that a local
    cubic over ``window`` frames on each side cannot explain by the uncertainties.

    Returns the frames ``j`` (sorted) whose step's z-score exceeds ``threshold``
    in some column, found by binary segmentation: the largest first, then the
    test again inside each side, so a second jump nearby is not hidden by the
    first. Steps closer than ``min_gap`` frames to a found jump are not
    counted again (one jump, not two).
    """
    y = np.asarray(values, dtype=float).reshape(len(values), -1)
    s = np.asarray(sigma, dtype=float).reshape(y.shape)
    n = len(y)
    used = np.ones(n, bool) if used is None else np.asarray(used, bool)
    z = _step_scores(y, s, used, window)
    jumps: list[int] = []
    segments = [(0, n)]
    while segments:
        a, b = segments.pop()
        best, where = threshold, None
        for j in range(a + 1, b):
            if any(abs(j - k) < min_gap for k in jumps):
                continue
            zj = _segment_score(y, s, used, j, a, b, window) if (a, b) != (0, n) else z[j]
            if zj > best:
                best, where = zj, j
        if where is not None:
            jumps.append(where)
            segments += [(a, where), (where, b)]
    return np.array(sorted(jumps), dtype=int)


def _step_scores(y, s, used, window) -> np.ndarray:
    n = len(y)
    z = np.zeros(n)
    for j in range(1, n):
        z[j] = _segment_score(y, s, used, j, 0, n, window)
    return z


def _segment_score(y, s, used, j, a, b, window) -> float:
    """The largest z-score over columns of a step between ``j - 1`` and ``j``, from a
    cubic plus step fitted to the frames ``[j - window, j + window)`` within ``[a, b)``."""
    lo, hi = max(a, j - window), min(b, j + window)
    idx = np.arange(lo, hi)
    idx = idx[used[idx]]
    left, right = np.count_nonzero(idx < j), np.count_nonzero(idx >= j)
    if left < 3 or right < 3:  # a step beside the first or last frames is an outlier's
        return 0.0
    t = (idx - (j - 0.5)) / window
    deg = min(DEGREE, len(idx) - 3)
    if deg < 0:
        return 0.0
    x = np.column_stack([_design(t, deg), (idx >= j).astype(float)])
    best = 0.0
    for c in range(y.shape[1]):
        sig = s[idx, c]
        if not np.all(np.isfinite(sig) & (sig > 0)):
            continue
        xw = x / sig[:, None]
        yw = y[idx, c] / sig
        try:
            cov = np.linalg.inv(xw.T @ xw)
        except np.linalg.LinAlgError:
            continue
        coef = cov @ xw.T @ yw
        dof = len(idx) - x.shape[1]
        # the fit's own scatter, when larger than the uncertainties say (never smaller)
        chi2 = float(np.sum((yw - xw @ coef) ** 2)) / dof if dof > 0 else 1.0
        se = np.sqrt(cov[-1, -1] * max(1.0, chi2))
        if not (np.isfinite(se) and se > 0):  # too few frames to tell a step from the drift
            continue
        best = max(best, abs(coef[-1]) / se)
    return best


def _step_sizes(resid, sigma, used, jumps, reach: int) -> np.ndarray:
    """Per jump, the weighted mean residual just after it minus just before it
    (``reach`` frames each side, not past the neighbouring jumps)."""
    n = len(resid)
    edges = [0, *jumps.tolist(), n]
    w = np.where(used, 1.0 / sigma**2, 0.0)
    out = np.zeros(len(jumps))
    for q, j in enumerate(jumps.tolist()):
        a, b = max(edges[q], j - reach), min(edges[q + 2], j + reach)
        left, right = slice(a, j), slice(j, b)
        wl, wr = w[left].sum(), w[right].sum()
        if wl > 0 and wr > 0:
            out[q] = (w[right] @ resid[right]) / wr - (w[left] @ resid[left]) / wl
    return out


def smooth_series(values, sigma=None, used=None, *, jumps=None,
                  threshold: float = 6.0) -> Smoothed:
    """Smooth a series over time, keeping its jumps sharp.

    Parameters
    ----------
    values : array, shape (n,) or (n, k)
        One column per quantity (shift per axis, rotation, log scale).
    sigma : array of the same shape, optional
        One-sigma uncertainty of each value; estimated per column from the
        scatter of the second differences when omitted (or NaN).
    used : array of bool, shape (n,), optional
        Frames to use (outliers False): they get a smoothed value from their
        neighbours but do not pull on them.
    jumps : sequence of int, optional
        Known jumps (frames that start a segment); found with
        :func:`find_jumps` when omitted.
    threshold : float
        The jump test's z-score threshold.
    """
    y = np.asarray(values, dtype=float)
    one = y.ndim == 1
    y = y.reshape(len(y), -1)
    n, k = y.shape
    used = np.ones(n, bool) if used is None else np.asarray(used, bool).copy()
    used &= np.all(np.isfinite(y), axis=1)
    est = np.full((n, k), np.nan)
    if used.sum() >= 4:
        est[:] = scatter_sigma(y[used])[0]
    if sigma is None:
        s = est
    else:
        s = np.asarray(sigma, dtype=float).reshape(n, k).copy()
        # the reference frame's own sigma is ~0 (it is matched with itself): it says
        # nothing about the noise of the series, so it counts as unknown, as NaN does
        with np.errstate(invalid="ignore"):
            typical = np.nanmedian(np.where(s > 0, s, np.nan), axis=0)
        bad = ~(np.isfinite(s) & (s > 1e-3 * np.nan_to_num(typical)[None, :]) & (s > 0))
        s[bad] = est[bad]
    # a column without any noise estimate (constant, too short) is left as it is
    tiny = ~(np.isfinite(s) & (s > 0))
    s[tiny] = 1.0
    found = find_jumps(y, s, used, threshold=threshold) if jumps is None else np.unique(
        np.asarray(jumps, dtype=int))
    found = found[(found > 0) & (found < n)]
    out, out_sigma = y.copy(), s.copy()
    widths = np.zeros(k, int)
    steps = (np.arange(n)[:, None] >= found[None, :]).astype(float)  # (n, jumps)
    for c in range(k):
        if tiny[:, c].all():
            continue
        # the drift is smooth with a step at every jump (a partially linear model): the
        # steps are estimated and taken out before the curve is smoothed, so no window
        # ever straddles a jump and the frames beside one are as good as any
        delta = np.array([_local_step(y[:, c], s[:, c], used, j, found) for j in found])
        for _ in range(2 if len(found) else 1):
            fit, sig, h, first, rows = _smooth_segment(y[:, c] - steps @ delta, s[:, c], used,
                                                       full=True)
            if len(found):
                delta = _speckman(y[:, c], steps, s[:, c], used, first, rows)
        fit = _apply(first, rows, np.where(used, y[:, c] - steps @ delta, 0.0))
        out[:, c] = fit + steps @ delta
        out_sigma[:, c] = sig
        widths[c] = h
    s[tiny] = np.nan
    out_sigma[tiny] = np.nan
    shape = (n,) if one else (n, k)
    return Smoothed(out.reshape(shape), out_sigma.reshape(shape), s.reshape(shape), found, widths)
