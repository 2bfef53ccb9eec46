"""The stack's own template: aligned frames averaged, each frame left out of its own.

A frame registered against one other noisy frame cannot beat the two-frame
Cramer-Rao bound (``2 F^-1``). Against the mean of the other ``n - 1``
aligned frames the reference's share of the noise falls to ``1 / (n - 1)``
of a frame's, so the bound becomes ``(1 + 1 / (n - 1)) F^-1``: about 0.72x
the two-frame bound's median error at 20 frames.

Two things make the template reach that:

* **it stays band-limited and clean.** A frame's contribution is the frame
  moved by its own transform: translations by a Fourier phase ramp (exact
  for band-limited content; no spline blur), after the ignored pixels (the
  beam block, static outliers) are filled smoothly and the edges mirrored so
  neither rings. Its weight is 1 only where the moved pixel came from a
  valid pixel at least ``margin`` pixels from any ignored pixel and from
  the frame's edge; each template pixel is the mean over the frames whose
  weight is 1 there.
* **leave-one-out.** A frame's own noise in the template it is compared
  with correlates with itself and pulls its shift towards the template's
  position (towards "no change"). Each frame is registered against the
  template minus its own contribution: the sums minus one term, cheap.
"""

from __future__ import annotations

import copy

import numpy as np
from scipy import ndimage as ndi

from ._fill import smooth_filler
from ._refine import pearson, wiener_estimate
from ._shift import MirroredSpectrum
from ._transforms import is_translation

__all__ = ["TemplateMatch", "TemplateSums", "fisher_sigma", "template_gradient"]

#: pixels from an ignored pixel or the edge that a contribution leaves out
MARGIN = 3


class TemplateSums:
    """The running sums of aligned frames and of their weights.

    What the mask decides (where a contribution counts, the fill's weights) is
    computed once per run: :meth:`fresh` gives empty sums that share it, for
    the next pass.

    Parameters
    ----------
    frame_shape : tuple of int
    valid : ndarray of bool or None
        The mask registration uses (True = valid; the beam block and the
        static outliers are False), or None for every pixel.
    """

    def __init__(self, frame_shape, valid=None, margin: int = MARGIN):
        self.shape = tuple(frame_shape)
        self.valid = np.ones(self.shape, bool) if valid is None else np.asarray(valid, bool)
        # a contribution's weight: the source pixel is valid and far from the invalid
        # ones and the frame's edge (where fills and the mirrored edge could ring)
        inside = np.pad(self.valid, 1, constant_values=False)
        core = ndi.binary_erosion(inside, iterations=margin + 1, border_value=0)
        self.core = core[(slice(1, -1),) * len(self.shape)].astype(np.float64)
        self.pad = max(8, min(32, min(self.shape) // 8))
        #: the frame (float64) with its ignored pixels filled smoothly from the valid
        #: pixels nearby, so a Fourier shift does not ring (the mask is static)
        self.filled = smooth_filler(self.valid)
        self._empty()

    def _empty(self) -> None:
        self.acc = np.zeros(self.shape)
        self.weight = np.zeros(self.shape)
        self.count = 0

    def fresh(self) -> TemplateSums:
        """Empty sums for the same frames and mask (what the mask decides is shared)."""
        new = copy.copy(self)
        new._empty()
        return new

    def contribution(self, frame, transform) -> tuple[np.ndarray, np.ndarray]:
        """``(moved, weight)``: the frame on the template's pixels and where it counts
        (1) or not (0)."""
        t = np.asarray(transform, dtype=float)
        ndim = len(self.shape)
        work = self.filled(frame)
        if is_translation(t[None])[0]:
            shift = t[:ndim, ndim]
            moved = MirroredSpectrum(work, self.pad).moved(shift)
            w = ndi.shift(self.core, shift, order=1, mode="constant", cval=0.0)
        else:
            inv = np.linalg.inv(t)
            m, o = inv[:ndim, :ndim], inv[:ndim, ndim]
            moved = ndi.affine_transform(work, m, offset=o, order=3, mode="mirror")
            w = ndi.affine_transform(self.core, m, offset=o, order=1, mode="constant", cval=0.0)
        w = (w > 0.999).astype(np.float64)
        return moved * w, w

    def put(self, moved, weight) -> None:
        """Add a frame's :meth:`contribution` (made in any thread)."""
        self.acc += moved
        self.weight += weight
        self.count += 1

    def template(self, leave_out=None) -> tuple[np.ndarray, np.ndarray]:
        """``(template, valid)``: the mean of the contributions, without ``leave_out``
        (a ``(moved, weight)`` pair that was added) when given. Valid where at least
        half of the frames (at least one) counted."""
        acc, weight, count = self.acc, self.weight, self.count
        if leave_out is not None:
            acc, weight, count = acc - leave_out[0], weight - leave_out[1], count - 1
        valid = weight >= max(0.5 * count, 1.0) - 1e-9
        mean = np.where(valid, acc / np.maximum(weight, 1.0), 0.0)
        if valid.any():
            # ignored pixels hold the valid pixels' mean: no edge for a filter to ring on
            mean[~valid] = float(mean[valid].mean())
        return mean, valid


def fisher_sigma(moved, weight, level, grad, template_valid) -> np.ndarray:
    """One-sigma uncertainty per axis of a frame's shift against a template, from the
    curvature of the match scaled by the residual noise.

    ``moved`` is the frame on the template's pixels (as registered), ``weight`` where
    it holds data. ``level`` and ``grad`` are the template's noiseless level and
    gradient (Wiener estimates, :func:`template_gradient`);
    the residual ``moved - (gain * level + offset)`` gives the noise model
    ``alpha * level + beta`` (Poisson, Gaussian or both), which already holds the
    template's own noise. ``F = sum g g^T / var`` over the pixels both see; the
    result is ``sqrt(diag(F^-1))``.
    """
    use = (weight > 0) & template_valid
    ndim = level.ndim
    if use.sum() < 16:
        return np.full(ndim, np.nan)
    lv, mv = level[use], moved[use]
    a = np.stack([lv, np.ones_like(lv)], axis=1)
    coef, *_ = np.linalg.lstsq(a, mv, rcond=None)
    e2 = (mv - a @ coef) ** 2
    alpha, beta, floor = _noise_model(lv, e2)
    var = np.maximum(alpha * lv + beta, floor)
    g = grad[:, use] * coef[0]
    fisher = (g / var) @ g.T
    try:
        cov = np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        return np.full(ndim, np.nan)
    return np.sqrt(np.maximum(np.diag(cov), 0.0))


def template_gradient(template, valid) -> tuple[np.ndarray, np.ndarray]:
    """``(level, gradient)``: Wiener estimates of a template's noiseless values and of
    their derivative along each axis (see :func:`~._refine.wiener_estimate`)."""
    level, grad, _ = wiener_estimate(template, valid)
    return level, grad


def _noise_model(level, e2) -> tuple[float, float, float]:
    """``(alpha, beta, floor)``: the residual variance as ``alpha * level + beta``,
    fitted to the median squared residual in 16 quantile bins of the level (robust
    to a few hot pixels); Poisson counts, Gaussian noise, or both."""
    order = np.argsort(level, kind="stable")
    xs, ys = [], []
    for chunk in np.array_split(order, 16):
        if chunk.size:
            xs.append(level[chunk].mean())
            ys.append(np.median(e2[chunk]) / 0.4549364231195724)  # median of chi2(1)
    xs, ys = np.array(xs), np.array(ys)
    alpha, beta = np.polyfit(xs, ys, 1) if np.ptp(xs) > 0 else (0.0, float(ys.mean()))
    if alpha < 0:
        alpha, beta = 0.0, float(ys.mean())
    return float(alpha), float(beta), max(1e-3 * float(ys.max()), 1e-300)


class TemplateMatch:
    """A frame's shift against a template by Gauss-Newton on the frame's own pixels.

    The model is the template moved onto the frame, ``frame(y) = gain * T(y + s) +
    offset``: the noisy frame stays on its pixel grid (its noise white, its
    weights exact), and the template, nearly noiseless, is moved by a Fourier
    phase ramp (no interpolation error). The Jacobian's columns are the
    template's Wiener-estimated gradient and level (a clean regressor: no
    errors in variables). Weights come from the noise model fitted to the
    residuals (``alpha * level + beta``). The uncertainty is the inverse
    curvature ``(J^T W J)^-1`` of the weighted fit: the residual noise already
    holds the template's own noise.

    Built once per pass from the whole template (its level and gradient); each
    frame then brings its own leave-one-out template.
    """

    def __init__(self, sums: TemplateSums, full, full_valid, margin: int = MARGIN):
        self.shape, self.pad = sums.shape, sums.pad
        self.full_valid = np.asarray(full_valid, bool)
        level, grad = template_gradient(full, full_valid)
        self.columns = [MirroredSpectrum(g, self.pad) for g in grad]
        self.columns.append(MirroredSpectrum(level, self.pad))
        self.valid = sums.valid  # the frame's own pixels: not moved, so all of them count
        v = self.full_valid
        # the template where its fill cannot ring into it: its valid area, eroded
        self.trusted = ndi.binary_erosion(v, iterations=margin, border_value=0).astype(np.float64)
        #: the template with its invalid pixels filled smoothly from the valid ones
        self._filled = smooth_filler(v)

    def run(self, frame, template, start, *, max_iter: int = 10, tol: float = 1e-3):
        """``(shift, sigma, quality, converged)`` for ``frame`` (the shift that registers
        it onto ``template``) from the shift ``start``."""
        ndim = len(self.shape)
        frame = np.asarray(frame, dtype=np.float64)
        t_spec = MirroredSpectrum(self._filled(template), self.pad)
        s = np.array(start, dtype=np.float64)
        gain, offset, noise, converged = 1.0, 0.0, None, False
        cov = None
        quality = 0.0
        for it in range(max_iter):
            d = -s
            inside = ndi.shift(self.trusted, d, order=1, mode="constant", cval=0.0) > 0.999
            use = self.valid & inside
            if use.sum() < 8 * (ndim + 2):
                return s, np.full(ndim, np.nan), 0.0, False
            f = frame[use]
            model_t = t_spec.moved(d)[use]
            cols = [c.moved(d)[use] for c in self.columns]
            level = cols[-1]
            jac = np.stack([gain * c for c in cols[:ndim]] + [level, np.ones_like(level)], axis=1)
            e = f - gain * model_t - offset
            if it > 0:
                noise = _noise_model(np.maximum(gain * level + offset, 0.0), e * e)
            w = np.ones_like(f) if noise is None else 1.0 / np.maximum(
                noise[0] * np.maximum(gain * level + offset, 0.0) + noise[1], noise[2])
            jw = jac * w[:, None]
            normal = jw.T @ jac
            try:
                step = np.linalg.solve(normal, jw.T @ e)
                cov = np.linalg.inv(normal)
            except np.linalg.LinAlgError:
                return s, np.full(ndim, np.nan), 0.0, False
            if not np.all(np.isfinite(step)):
                return s, np.full(ndim, np.nan), 0.0, False
            s += step[:ndim]
            gain += step[ndim]
            offset += step[ndim + 1]
            quality = pearson(f, model_t)
            moved = float(np.linalg.norm(step[:ndim]))
            if noise is not None and moved < tol:
                converged = True
                break
        else:  # the weights still settling: close enough is far below any noise
            converged = noise is not None and moved < 10 * tol
        sigma = np.sqrt(np.maximum(np.diag(cov)[:ndim], 0.0)) if noise is not None else \
            np.full(ndim, np.nan)
        return s, sigma, quality, converged

