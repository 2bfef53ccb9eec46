"""Synthetic beam-block diffraction stacks with known subpixel drift.

One generator serves the napari sample, the tests, the benchmarks, the demo
and the docs, so every one of them measures against the same ground truth.

The pattern is rendered analytically at every frame's drifted centre (no
interpolation), so the true drift is exact to floating-point precision:

* Debye-Scherrer rings (Gaussian radial profiles) and a lattice of Bragg spots,
* a very bright direct beam at the centre and a diffuse background,
* a static beam block that does *not* drift: a rod from the edge of the
  detector to the centre plus a disk over the direct beam,
* Poisson (counting) or Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticStack", "make_beam_block_stack", "make_sample_data"]


@dataclass(frozen=True)
class SyntheticStack:
    """A synthetic stack and its ground truth.

    Attributes
    ----------
    stack : ndarray, shape (n_frames, *frame_shape)
        The frames (detector counts).
    beam_block : ndarray of bool, shape frame_shape
        True where the static beam block shadows the detector: the pixels a
        user paints in napari and registration must ignore.
    drift : ndarray, shape (n_frames, ndim)
        Displacement of the diffraction pattern in each frame, in pixels,
        relative to frame 0 (``drift[0]`` is zero).
    """

    stack: np.ndarray
    beam_block: np.ndarray
    drift: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Engine-convention mask: True on pixels registration may use."""
        return ~self.beam_block

    def expected_shifts(self, reference: int = 0) -> np.ndarray:
        """Shifts that register each frame onto frame ``reference``.

        scikit-image's sign convention: the shift that moves the frame back
        onto the reference, i.e. minus the frame's drift relative to it.
        """
        return -(self.drift - self.drift[reference])


def _random_drift(rng: np.random.Generator, n_frames: int, ndim: int, max_drift: float):
    """A smooth random walk with subpixel steps, largest excursion ``max_drift``."""
    if n_frames == 1 or max_drift == 0:
        return np.zeros((n_frames, ndim))
    steps = rng.normal(size=(n_frames - 1, ndim))
    walk = np.vstack([np.zeros((1, ndim)), np.cumsum(steps, axis=0)])
    # add a slow linear component: beams usually drift one way
    walk += np.linspace(0, 1, n_frames)[:, None] * rng.normal(size=ndim) * np.sqrt(n_frames)
    peak = np.abs(walk).max()
    return walk * (max_drift / peak) if peak > 0 else walk


def _lattice_points(ndim: int, spacing: float, radius: float, angle: float):
    """Points of a (hexagonal in 2D, cubic otherwise) lattice within ``radius``."""
    if ndim == 2:
        c, s = np.cos(angle), np.sin(angle)
        basis = spacing * np.array([[c, s], [c * 0.5 - s * np.sqrt(3) / 2, s * 0.5 + c * np.sqrt(3) / 2]])
    else:
        basis = spacing * np.eye(ndim)
    n = int(np.ceil(radius / spacing * 1.3)) + 1
    grids = np.meshgrid(*[np.arange(-n, n + 1)] * ndim, indexing="ij")
    coeffs = np.stack([g.ravel() for g in grids], axis=1)
    pts = coeffs @ basis
    r = np.linalg.norm(pts, axis=1)
    keep = (r > spacing * 0.5) & (r < radius)
    return pts[keep], r[keep]


def _centred_grids(shape, centre):
    """Sparse per-axis pixel offsets from ``centre`` and the distance to it."""
    axes = [np.arange(n, dtype=np.float64) - c for n, c in zip(shape, centre)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return grids, np.sqrt(sum(g * g for g in grids))


def _render(shape, centre, spots, spot_r, half, sigma_spot):
    """The noiseless pattern, centred at ``centre`` (continuous coordinates)."""
    _, r = _centred_grids(shape, centre)
    # detector pedestal plus diffuse inelastic background
    img = 0.08 + 0.2 * np.exp(-r / (0.5 * half))
    for frac, width, amp in ((0.22, 0.012, 1.0), (0.36, 0.015, 0.7), (0.5, 0.02, 0.45),
                             (0.63, 0.02, 0.35), (0.78, 0.025, 0.25)):
        img = img + amp * np.exp(-0.5 * ((r - frac * half) / (width * half + 0.8)) ** 2)
    img = img + 40.0 * np.exp(-0.5 * (r / (0.03 * half + 1.0)) ** 2)  # direct beam
    # Bragg spots, each rendered in a small window around it
    w = int(np.ceil(4 * sigma_spot))
    for p, pr in zip(spots, spot_r):
        pos = np.asarray(centre) + p
        lo = np.maximum(np.floor(pos).astype(int) - w, 0)
        hi = np.minimum(np.floor(pos).astype(int) + w + 1, shape)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        local = np.meshgrid(*[np.arange(a, b) - q for a, b, q in zip(lo, hi, pos)], indexing="ij", sparse=True)
        d2 = sum(g * g for g in local)
        img[sl] += 0.8 * np.exp(-pr / half) * np.exp(-0.5 * d2 / sigma_spot**2)
    return img


def _beam_block(shape, centre, half):
    """Rod from the detector edge to the centre plus a disk over the direct beam."""
    ndim = len(shape)
    grids, r = _centred_grids(shape, centre)
    disk = r <= 0.1 * half + 2
    u = np.ones(ndim) / np.sqrt(ndim)  # rod direction: towards the far corner
    u[0] = 0.6
    u /= np.linalg.norm(u)
    along = sum(g * ui for g, ui in zip(grids, u))
    perp2 = np.maximum(r * r - along * along, 0.0)
    rod = (along >= 0) & (perp2 <= (0.035 * half + 1.5) ** 2)
    return disk | rod


def make_beam_block_stack(
    n_frames: int = 20,
    shape: tuple[int, ...] = (256, 256),
    *,
    max_drift: float = 3.0,
    noise: str | None = "poisson",
    counts: float = 400.0,
    sigma: float = 0.02,
    beam_block: bool = True,
    drift: np.ndarray | None = None,
    seed: int = 0,
    dtype=np.float32,
) -> SyntheticStack:
    """Make a drifting diffraction-like stack with a static beam block.

    Parameters
    ----------
    n_frames : int
        Number of frames.
    shape : tuple of int
        Shape of one frame (2D or 3D).
    max_drift : float
        Largest drift of the pattern, in pixels, over the stack (ignored when
        ``drift`` is given).
    noise : {"poisson", "gaussian", None}
        ``"poisson"``: counting noise with ``counts`` counts at the brightest
        ring. ``"gaussian"``: additive noise of standard deviation ``sigma``
        times the brightest ring. ``None``: noiseless.
    counts : float
        Counts at the brightest ring for Poisson noise (lower is noisier).
    sigma : float
        Relative standard deviation of Gaussian noise.
    beam_block : bool
        Whether to draw the static beam block (False gives the same drifting
        pattern with nothing static, for comparing masked against unmasked
        registration).
    drift : array, optional
        Explicit drift per frame, shape (n_frames, ndim).
    seed : int
        Seed of the random drift and the noise.
    dtype : numpy dtype
        Output dtype.

    Returns
    -------
    SyntheticStack
        ``.stack``, ``.beam_block`` (True = ignore), ``.drift`` and
        ``.expected_shifts()``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"frames must be 2D or 3D, got shape {shape}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if noise not in ("poisson", "gaussian", None):
        raise ValueError(f"noise must be 'poisson', 'gaussian' or None, got {noise!r}")
    rng = np.random.default_rng(seed)
    if drift is None:
        drift = _random_drift(rng, n_frames, ndim, max_drift)
    else:
        drift = np.asarray(drift, dtype=np.float64)
        if drift.shape != (n_frames, ndim):
            raise ValueError(f"drift must have shape {(n_frames, ndim)}, got {drift.shape}")
    half = min(shape) / 2.0
    # a fixed subpixel offset so the pattern centre is not on the pixel grid
    centre0 = np.array(shape) / 2.0 + np.array([0.37, -0.21, 0.13][:ndim])
    spots, spot_r = _lattice_points(ndim, 0.2 * half, 0.92 * half, angle=0.3)
    sigma_spot = max(1.0, 0.012 * half)
    block = _beam_block(shape, centre0, half) if beam_block else np.zeros(shape, bool)

    out = np.empty((n_frames, *shape), dtype=dtype)
    for i in range(n_frames):
        img = _render(shape, centre0 + drift[i], spots, spot_r, half, sigma_spot)
        if beam_block:
            # the block is metal: it lets almost nothing through, and it does not move
            img = np.where(block, 0.01 + 0.002 * img, img)
        if noise == "poisson":
            img = rng.poisson(img * counts).astype(np.float64)
        elif noise == "gaussian":
            img = (img + rng.normal(scale=sigma, size=shape)) * counts
        else:
            img = img * counts
        out[i] = img
    return SyntheticStack(stack=out, beam_block=block, drift=drift)


def make_sample_data(n_frames: int = 20, shape: tuple[int, int] = (256, 256)):
    """napari sample: a small drifting stack and its beam-block mask.

    Returns layer data tuples for an Image layer (the stack) and a Labels
    layer (the beam block: nonzero = pixels registration ignores).
    """
    synth = make_beam_block_stack(n_frames=n_frames, shape=shape, seed=1)
    name = "UED sample"
    # frames to the contrast a person expects: rings visible, direct beam saturated
    hi = float(np.percentile(synth.stack[0], 99.5))
    image_meta = {
        "name": name,
        "colormap": "magma",
        "contrast_limits": (0.0, hi),
        "metadata": {"expected_shifts": synth.expected_shifts(0), "drift": synth.drift},
    }
    labels_meta = {"name": f"{name} mask", "opacity": 0.5}
    return [
        (synth.stack, image_meta, "image"),
        (synth.beam_block.astype(np.uint8), labels_meta, "labels"),
    ]
