"""Synthetic stacks with known non-rigid fields under a static beam block.

Frame ``i`` is the content warped by a global shift (within +-``max_shift``)
plus a smooth field, with the static block (painted dark) where it is in the
reference, and Poisson noise. The truth is the field in the engine's
convention: ``fields[i]`` (2, H, W), (row, col), such that
``frame_i(x + fields[i](x)) == reference(x)`` without noise. Diffraction-like
content is rendered analytically at every warped coordinate (no
interpolation); the camera image is warped with cubic interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ._sample_data import _beam_block, _lattice

__all__ = ["CONTENTS", "NonrigidStack", "make_nonrigid_stack"]

CONTENTS = ("diffraction", "pattern", "camera")


@dataclass(frozen=True)
class NonrigidStack:
    """``stack`` (n, H, W) float32 counts, ``beam_block`` (True = ignore),
    ``fields`` (n, 2, H, W) the true fields (frame 0: zero), ``shifts`` (n, 2)
    the global part in scikit-image's registration sign (``fields`` = -shift +
    the smooth part)."""

    stack: np.ndarray
    beam_block: np.ndarray
    fields: np.ndarray
    shifts: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return ~self.beam_block


def _sinusoid(rng, shape, amplitude):
    h, w = shape
    lam = min(shape) / 3.0
    comps = []
    for _ in range(2):
        t = rng.uniform(0, 2 * np.pi)
        k = np.array([np.cos(t), np.sin(t)]) * 2 * np.pi / lam
        phase = rng.uniform(0, 2 * np.pi)
        comps.append((k, phase))

    def field(y, x):
        return np.stack([amplitude * np.sin(k[0] * y + k[1] * x + p) for k, p in comps])
    return field


def _random_field(rng, shape, amplitude):
    h, w = shape
    corr = min(shape) / 8.0
    grid = []
    for _ in range(2):
        g = ndi.gaussian_filter(rng.normal(size=shape), corr, mode="wrap")
        grid.append(g)
    grid = np.stack(grid)
    grid *= amplitude / np.sqrt((grid**2).sum(axis=0).mean())
    spl = [ndi.spline_filter(g, 3) for g in grid]

    def field(y, x):
        return np.stack([ndi.map_coordinates(s, [y, x], order=3, prefilter=False, mode="nearest")
                         for s in spl])
    return field


def _diffraction(shape, rng):
    """Analytic diffraction-like content: a ring pattern and a dense lattice of sharp spots."""
    h, w = shape
    centre = np.array([h / 2 + 0.37, w / 2 - 0.21])
    half = min(shape) / 2
    spacing = max(10.0, min(shape) / 28)
    # the sample generator's hexagonal lattice, over the whole frame
    pts = centre + _lattice(2, spacing, 0.3, int(1.6 * max(shape) / spacing) + 2)
    keep = np.all((pts > -10) & (pts < np.array(shape) + 10), axis=1)
    pts = pts[keep]
    amp = rng.uniform(0.4, 1.6, len(pts))
    sigma = 1.3

    def render(y, x):
        """The content at coordinates (y, x) (dense arrays)."""
        r = np.hypot(y - centre[0], x - centre[1])
        img = 0.15 + 0.3 * np.exp(-r / half)
        for frac, amp_r in ((0.3, 0.5), (0.55, 0.35), (0.8, 0.25)):
            img = img + amp_r * np.exp(-0.5 * ((r - frac * half) / 2.5) ** 2)
        # spots: each in a window around it (coordinates stay within `reach` px of
        # their pixel: the field and the shift are smaller than that)
        reach = int(np.ceil(5 * sigma)) + 14
        h_, w_ = y.shape
        for p, a_ in zip(pts, amp):
            lo = np.maximum(np.floor(p).astype(int) - reach, 0)
            hi = np.minimum(np.floor(p).astype(int) + reach + 1, (h_, w_))
            if np.any(hi <= lo):
                continue
            sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
            d2 = (y[sl] - p[0]) ** 2 + (x[sl] - p[1]) ** 2
            img[sl] += a_ * np.exp(-0.5 * d2 / sigma**2)
        return img
    return render


def _pattern(shape):
    """The sample generator's diffraction pattern (rings, a lattice of Bragg spots, the
    direct beam), warped with cubic interpolation."""
    from ._sample_data import make_beam_block_stack

    img = make_beam_block_stack(1, shape, noise=None, beam_block=False, counts=1.0,
                                dtype=np.float64).stack[0]
    return _interpolated(img)


def _interpolated(img):
    spl = ndi.spline_filter(img, 3)

    def render(y, x):
        return ndi.map_coordinates(spl, [y, x], order=3, prefilter=False, mode="reflect")
    return render


def _camera(shape):
    from skimage import data, transform

    cam = data.camera().astype(np.float64)
    if cam.shape != tuple(shape):
        cam = transform.resize(cam, shape, order=3, anti_aliasing=True)
    return _interpolated(cam / cam.mean())


def _invert(field, shape, iterations=20):
    """psi with psi(z) + v(psi(z)) = z, the inverse of x -> x + v(x), on the pixel grid."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    py, px = y.copy(), x.copy()
    for _ in range(iterations):
        v = field(py, px)
        py, px = y - v[0], x - v[1]
    return py, px


def make_nonrigid_stack(
    n_frames: int = 4,
    shape: tuple[int, int] = (256, 256),
    *,
    content: str = "diffraction",
    field: str = "sinusoid",
    amplitude: float = 2.0,
    max_shift: float = 3.0,
    counts: float = 100.0,
    seed: int = 0,
) -> NonrigidStack:
    """A stack whose frames are the content warped by a known field.

    Parameters
    ----------
    content : {"diffraction", "pattern", "camera"}
        A diffraction-like pattern with a dense lattice of sharp spots (rendered
        analytically), the sample generator's pattern (rings and a sparse lattice
        of spots; :func:`make_beam_block_stack`), or scikit-image's camera image;
        the beam block (rod and disk) is painted dark and stays still.
    field : {"sinusoid", "random"}
        The smooth part: a sinusoid of wavelength 1/3 frame in each component,
        or a Gaussian random field; its vector RMS is ``amplitude`` px.
    max_shift : float
        The global shift of each frame is uniform in ``[-max_shift, max_shift]``.
    counts : float
        Mean counts per pixel (Poisson noise); 0 or None for noiseless frames.
    """
    shape = (int(shape[0]), int(shape[1]))
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    if field not in ("sinusoid", "random"):
        raise ValueError(f"field must be 'sinusoid' or 'random', got {field!r}")
    rng = np.random.default_rng(seed)
    if content == "diffraction":
        render = _diffraction(shape, rng)
    else:
        render = _pattern(shape) if content == "pattern" else _camera(shape)
    centre = np.array(shape) / 2.0 + np.array([0.37, -0.21])
    block = _beam_block(shape, centre, min(shape) / 2.0)
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    ref = render(y, x)
    scale = 1.0 / ref[~block].mean()
    dark = 0.03
    frames = np.empty((n_frames, *shape), np.float32)
    fields = np.zeros((n_frames, 2, *shape), np.float32)
    shifts = np.zeros((n_frames, 2))
    for i in range(n_frames):
        if i == 0:
            img = ref
        else:
            d = rng.uniform(-max_shift, max_shift, 2)
            smooth = (_sinusoid if field == "sinusoid" else _random_field)(rng, shape, amplitude)

            def v(yy, xx, d=d, smooth=smooth):
                return smooth(yy, xx) + d[:, None, None] if np.ndim(yy) == 2 else smooth(yy, xx) + d[:, None]

            fields[i] = v(y, x)
            shifts[i] = -d
            py, px = _invert(v, shape)
            img = render(py, px)
        img = np.where(block, dark, np.maximum(img, 0.0) * scale) * float(counts or 1.0)
        if counts:
            img = rng.poisson(img).astype(np.float64)
        frames[i] = img
    return NonrigidStack(frames, block, fields, shifts)
