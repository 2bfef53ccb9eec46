"""Synthetic beam-block diffraction stacks with known subpixel drift, rotation and scale.

One generator serves the napari sample, the tests, the benchmarks, the demo
and the docs, so every one of them measures against the same ground truth.

The pattern is rendered analytically at every frame's geometry (drifted
centre, and for 2D frames rotated and magnified about that centre; no
interpolation), so the true transform is exact to floating-point precision:

* Debye-Scherrer rings (Gaussian radial profiles) and a lattice of Bragg spots,
* a very bright direct beam at the centre and a diffuse background,
* a static beam block that does *not* drift: a rod from the edge of the
  detector to the centre plus a disk over the direct beam,
* Poisson (counting) or Gaussian noise,
* optionally (``outliers="detector"``) static hot and dead pixels in clusters of
  1 to 12 pixels with the size and brightness mix of a real detector,
* optionally (``pattern="bragg"``) a crystal's pattern: many sharp Bragg spots
  (about a pixel wide) over faint rings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
        Displacement of the diffraction pattern's centre in each frame, in
        pixels, relative to frame 0 (``drift[0]`` is zero).
    rotation : ndarray, shape (n_frames,)
        Rotation of the pattern about its centre in each frame, in degrees,
        counterclockwise as seen in napari (rows down, columns right),
        relative to frame 0. Zero for 3D frames.
    scale : ndarray, shape (n_frames,)
        Magnification of the pattern about its centre relative to frame 0.
    outlier_labels : ndarray of int, shape frame_shape, or None
        The planted static outliers (``outliers="detector"``): 0 elsewhere, one
        label per cluster of hot or dead pixels (clusters never touch).
    """

    stack: np.ndarray
    beam_block: np.ndarray
    drift: np.ndarray
    rotation: np.ndarray | None = None
    scale: np.ndarray | None = None
    _render_args: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    outlier_labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        n = len(self.drift)
        if self.rotation is None:
            object.__setattr__(self, "rotation", np.zeros(n))
        if self.scale is None:
            object.__setattr__(self, "scale", np.ones(n))

    @property
    def static_outliers(self) -> np.ndarray:
        """True on the planted hot and dead pixels (none unless ``outliers`` was asked for)."""
        if self.outlier_labels is None:
            return np.zeros(self.beam_block.shape, bool)
        return self.outlier_labels > 0

    @property
    def valid(self) -> np.ndarray:
        """Engine-convention mask: True on pixels registration may use."""
        return ~self.beam_block

    def expected_shifts(self, reference: int = 0) -> np.ndarray:
        """Shifts that register each frame onto frame ``reference``.

        scikit-image's sign convention: the shift that moves the frame back
        onto the reference, i.e. minus the frame's drift relative to it.
        (With rotation or scale this is the shift of the pattern's centre;
        :meth:`expected_transforms` is then the whole truth.)
        """
        return -(self.drift - self.drift[reference])

    def _to_pattern(self) -> np.ndarray:
        """Per frame: the matrix mapping a pixel to frame 0's coordinate of its content."""
        n, ndim = self.drift.shape
        centre = np.asarray(self._centre(), float)
        out = np.broadcast_to(np.eye(ndim + 1), (n, ndim + 1, ndim + 1)).copy()
        for i in range(n):
            inv = np.linalg.inv(pattern_linear(ndim, self.rotation[i], self.scale[i]))
            out[i, :ndim, :ndim] = inv
            out[i, :ndim, ndim] = centre - inv @ (centre + self.drift[i])
        return out

    def _centre(self):
        if self._render_args is not None:
            return self._render_args["centre0"]
        shape = self.stack.shape[1:]
        return np.array(shape) / 2.0 + np.array([0.37, -0.21, 0.13][: len(shape)])

    def expected_transforms(self, reference: int = 0) -> np.ndarray:
        """Homogeneous matrices ``(n_frames, ndim + 1, ndim + 1)`` that register each
        frame onto frame ``reference``: in data-axis (row, col) order like napari's
        ``affine``, each maps a pixel of frame i to the coordinate in the reference
        where that content is. Pure shifts ``[[1, 0, sy], [0, 1, sx], [0, 0, 1]]``
        (``expected_shifts``) when nothing rotates or scales."""
        m = self._to_pattern()
        return np.linalg.inv(m[reference]) @ m

    # -- the noiseless truth (what the Cramer-Rao bound is computed from) -----
    def noiseless(self, i: int) -> np.ndarray:
        """Frame ``i`` without noise (the expected counts), float64."""
        return self._noiseless(i, np.zeros(self.drift.shape[1]))

    def _noiseless(self, i: int, offset) -> np.ndarray:
        a = self._render_args
        if a is None:
            raise ValueError("this SyntheticStack was not made by make_beam_block_stack")
        linear = pattern_linear(len(a["shape"]), self.rotation[i], self.scale[i])
        img = _render(a["shape"], a["centre0"] + self.drift[i] + offset, a["spots"], a["spot_r"],
                      a["half"], a["sigma_spot"], linear, a.get("spot_amp", 0.8),
                      a.get("rings", 1.0))
        if a["beam_block"]:
            img = np.where(self.beam_block, 0.01 + 0.002 * img, img)
        return img * a["counts"]

    def gradient(self, i: int, step: float = 1e-3) -> np.ndarray:
        """``(ndim, *frame_shape)``: how frame ``i``'s expected counts change when its
        pattern moves by one pixel along each axis (central differences of the
        analytic pattern; the derivative along an axis of the noiseless image, sign
        reversed). Inside the static block it is that of the block's faint glow."""
        ndim = self.drift.shape[1]
        out = np.empty((ndim, *self.stack.shape[1:]))
        for ax in range(ndim):
            e = np.zeros(ndim)
            e[ax] = step
            out[ax] = (self._noiseless(i, e) - self._noiseless(i, -e)) / (2 * step)
        return out

    def noise_variance(self, i: int) -> np.ndarray | float:
        """The variance of frame ``i``'s noise per pixel: the expected counts for
        Poisson noise, ``(sigma * counts)**2`` for Gaussian, 0 without noise."""
        a = self._render_args
        if a is None:
            raise ValueError("this SyntheticStack was not made by make_beam_block_stack")
        if a["noise"] == "poisson":
            return self.noiseless(i)
        if a["noise"] == "gaussian":
            return float((a["sigma"] * a["counts"]) ** 2)
        return 0.0


def pattern_linear(ndim: int, rotation_deg: float, scale: float) -> np.ndarray:
    """The pattern's linear change in (row, col) order: ``scale`` times a rotation by
    ``rotation_deg`` counterclockwise as seen in napari (rows point down)."""
    if ndim != 2:
        return float(scale) * np.eye(ndim)
    t = np.deg2rad(rotation_deg)
    c, s = np.cos(t), np.sin(t)
    return float(scale) * np.array([[c, -s], [s, c]])


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


def _lattice(ndim: int, spacing: float, angle: float, n: int) -> np.ndarray:
    """The points of a (hexagonal in 2D, cubic otherwise) lattice about the origin
    whose coefficients lie within +-``n``, in their coefficients' order."""
    if ndim == 2:
        c, s = np.cos(angle), np.sin(angle)
        basis = spacing * np.array([[c, s], [c * 0.5 - s * np.sqrt(3) / 2, s * 0.5 + c * np.sqrt(3) / 2]])
    else:
        basis = spacing * np.eye(ndim)
    grids = np.meshgrid(*[np.arange(-n, n + 1)] * ndim, indexing="ij")
    coeffs = np.stack([g.ravel() for g in grids], axis=1)
    return coeffs @ basis


def _lattice_points(ndim: int, spacing: float, radius: float, angle: float):
    """Points of a (hexagonal in 2D, cubic otherwise) lattice within ``radius``."""
    pts = _lattice(ndim, spacing, angle, int(np.ceil(radius / spacing * 1.3)) + 1)
    r = np.linalg.norm(pts, axis=1)
    keep = (r > spacing * 0.5) & (r < radius)
    return pts[keep], r[keep]


def _centred_grids(shape, centre):
    """Sparse per-axis pixel offsets from ``centre`` and the distance to it."""
    axes = [np.arange(n, dtype=np.float64) - c for n, c in zip(shape, centre)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return grids, np.sqrt(sum(g * g for g in grids))


def _render(shape, centre, spots, spot_r, half, sigma_spot, linear=None, spot_amp=0.8, rings=1.0):
    """The noiseless pattern, centred at ``centre`` (continuous coordinates), changed
    by the matrix ``linear`` (a rotation times a scale) about that centre; the rings'
    brightness times ``rings``, the spots' ``spot_amp``."""
    scale = 1.0 if linear is None else float(abs(np.linalg.det(linear)) ** (1.0 / len(shape)))
    _, r = _centred_grids(shape, centre)
    r = r / scale  # the radius in the pattern's own coordinates
    # detector pedestal plus diffuse inelastic background
    img = 0.08 + 0.2 * np.exp(-r / (0.5 * half))
    for frac, width, amp in ((0.22, 0.012, 1.0), (0.36, 0.015, 0.7), (0.5, 0.02, 0.45),
                             (0.63, 0.02, 0.35), (0.78, 0.025, 0.25)):
        img = img + rings * amp * np.exp(-0.5 * ((r - frac * half) / (width * half + 0.8)) ** 2)
    img = img + 40.0 * np.exp(-0.5 * (r / (0.03 * half + 1.0)) ** 2)  # direct beam
    # Bragg spots, each rendered in a small window around it
    sigma_spot = sigma_spot * scale
    w = int(np.ceil(4 * sigma_spot))
    for p, pr in zip(spots, spot_r):
        pos = np.asarray(centre) + (p if linear is None else linear @ p)
        lo = np.maximum(np.floor(pos).astype(int) - w, 0)
        hi = np.minimum(np.floor(pos).astype(int) + w + 1, shape)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        local = np.meshgrid(*[np.arange(a, b) - q for a, b, q in zip(lo, hi, pos)], indexing="ij", sparse=True)
        d2 = sum(g * g for g in local)
        img[sl] += spot_amp * np.exp(-pr / half) * np.exp(-0.5 * d2 / sigma_spot**2)
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
    max_rotation: float = 0.0,
    rotation=None,
    max_scale: float = 0.0,
    scale=None,
    seed: int = 0,
    dtype=np.float32,
    pattern: str = "rings",
    outliers: str | None = None,
    spots: bool = True,
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
    max_rotation : float
        2D only: largest rotation of the pattern about its centre, in degrees,
        a smooth random walk like the drift (ignored when ``rotation`` is given).
    rotation : array, optional
        Explicit rotation per frame, in degrees, counterclockwise as seen in
        napari; shape (n_frames,).
    max_scale : float
        Largest relative change of the pattern's size, e.g. 0.02 for 2 %
        (ignored when ``scale`` is given).
    scale : array, optional
        Explicit magnification per frame (1 = frame 0's size); shape (n_frames,).
    seed : int
        Seed of the random drift, rotation, scale and the noise.
    dtype : numpy dtype
        Output dtype.
    pattern : {"rings", "bragg"}
        ``"rings"``: rings and a sparse lattice of smooth spots (the default).
        ``"bragg"``: a single crystal's pattern, a dense lattice of sharp, bright
        Bragg spots (about a pixel wide) over faint rings: content that looks
        like hot pixels in one frame but moves with the drift.
    outliers : {None, "detector"}
        ``"detector"``: static hot and dead pixels with a real detector's mix,
        per 256 x 256 pixels (scaled to the frame's area): ~360 single, ~70
        pairs, ~25 of 3, ~12 of 4 and ~15 clusters of 5-12 pixels, each pixel
        100 to 30000 counts above the pattern (log-uniform, Poisson per frame
        with Poisson noise), plus ~20 dead pixels (0) and 3 dead pairs. Placed
        anywhere (the block too), clusters never touch; ``.outlier_labels``
        says where. Drawn from their own random stream: the rest of the stack
        is the same as without them.
    spots : bool
        Draw the Bragg spots (sharp features; default). False leaves the smooth
        rings, the direct beam and the background.

    Returns
    -------
    SyntheticStack
        ``.stack``, ``.beam_block`` (True = ignore), ``.drift``,
        ``.rotation``, ``.scale``, ``.expected_shifts()`` and
        ``.expected_transforms()``; ``.noiseless(i)``, ``.gradient(i)`` and
        ``.noise_variance(i)`` give the truth behind frame ``i``'s noise.
    """
    spots_wanted = bool(spots)
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"frames must be 2D or 3D, got shape {shape}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if pattern not in ("rings", "bragg"):
        raise ValueError(f"pattern must be 'rings' or 'bragg', got {pattern!r}")
    if outliers not in (None, "detector"):
        raise ValueError(f"outliers must be None or 'detector', got {outliers!r}")
    if noise not in ("poisson", "gaussian", None):
        raise ValueError(f"noise must be 'poisson', 'gaussian' or None, got {noise!r}")
    rng = np.random.default_rng(seed)
    if drift is None:
        drift = _random_drift(rng, n_frames, ndim, max_drift)
    else:
        drift = np.asarray(drift, dtype=np.float64)
        if drift.shape != (n_frames, ndim):
            raise ValueError(f"drift must have shape {(n_frames, ndim)}, got {drift.shape}")
    rotation = _per_frame(rng, "rotation", rotation, max_rotation, n_frames, 0.0)
    scale = _per_frame(rng, "scale", scale, max_scale, n_frames, 1.0)
    if ndim != 2 and np.any(rotation):
        raise ValueError("rotation is for 2D frames only")
    if np.any(scale <= 0):
        raise ValueError("scale must be positive")
    half = min(shape) / 2.0
    # a fixed subpixel offset so the pattern centre is not on the pixel grid
    centre0 = np.array(shape) / 2.0 + np.array([0.37, -0.21, 0.13][:ndim])
    if pattern == "bragg":  # a crystal: many sharp bright spots, faint rings
        spots, spot_r = _lattice_points(ndim, 0.09 * half, 0.95 * half, angle=0.3)
        sigma_spot, spot_amp, rings = 0.7, 2.5, 0.3
    else:
        spots, spot_r = _lattice_points(ndim, 0.2 * half, 0.92 * half, angle=0.3)
        sigma_spot, spot_amp, rings = max(1.0, 0.012 * half), 0.8, 1.0
    if not spots_wanted:
        spots, spot_r = spots[:0], spot_r[:0]
    block = _beam_block(shape, centre0, half) if beam_block else np.zeros(shape, bool)
    args = dict(shape=shape, centre0=centre0, spots=spots, spot_r=spot_r, half=half,
                sigma_spot=sigma_spot, beam_block=beam_block, counts=float(counts),
                noise=noise, sigma=float(sigma), spot_amp=spot_amp, rings=rings)
    synth = SyntheticStack(np.empty((n_frames, *shape), dtype=dtype), block, drift, rotation,
                           scale, args)
    out = synth.stack
    for i in range(n_frames):
        img = synth.noiseless(i)
        if noise == "poisson":
            img = rng.poisson(img).astype(np.float64)
        elif noise == "gaussian":
            img = img + rng.normal(scale=sigma, size=shape) * counts
        out[i] = img
    if outliers == "detector":
        labels, excess = _detector_outliers(shape, np.random.default_rng([seed, 18]))
        object.__setattr__(synth, "outlier_labels", labels)
        hot, dead = excess > 0, excess < 0
        for i in range(n_frames):
            img = out[i].astype(np.float64)
            level = excess[hot]
            if noise == "poisson":  # a hot pixel's dark current counts too
                level = rng.poisson(level).astype(np.float64)
            img[hot] += level
            img[dead] = 0.0
            out[i] = img
    return synth


#: a real detector's static outliers per 256 x 256 pixels: (cluster size, count)
DETECTOR_CLUSTERS = ((1, 360), (2, 70), (3, 25), (4, 12), ((5, 12), 15))


def _grow_cluster(rng, size: int, ndim: int) -> np.ndarray:
    """Offsets ``(size, ndim)`` of a connected cluster grown pixel by pixel."""
    pts = [np.zeros(ndim, int)]
    steps = np.array([s for s in np.ndindex(*(3,) * ndim) if any(v != 1 for v in s)]) - 1
    while len(pts) < size:
        nxt = pts[rng.integers(len(pts))] + steps[rng.integers(len(steps))]
        if not any((nxt == p).all() for p in pts):
            pts.append(nxt)
    return np.array(pts)


def _detector_outliers(shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, excess)``: clusters of static outliers (labels 1..n, never touching)
    and each pixel's excess counts (negative: dead)."""

    ndim = len(shape)
    area = float(np.prod(shape)) / 256.0**2
    sizes = []
    for size, count in DETECTOR_CLUSTERS:
        k = int(round(count * area))
        sizes += ([size] * k if isinstance(size, int)
                  else list(rng.integers(size[0], size[1] + 1, k)))
    dead = [1] * int(round(20 * area)) + [2] * int(round(3 * area))
    kinds = [1] * len(sizes) + [-1] * len(dead)
    sizes += dead
    labels = np.zeros(shape, np.int32)
    taken = np.zeros(shape, bool)  # a cluster and the ring around it
    excess = np.zeros(shape)
    lo = np.array([2] * ndim)
    hi = np.array(shape) - 3
    for n, (size, kind) in enumerate(zip(sizes, kinds), start=1):
        offsets = _grow_cluster(rng, int(size), ndim)
        for _ in range(100):
            pos = offsets + rng.integers(lo, hi, ndim)
            if (pos >= 0).all() and (pos < np.array(shape)).all() and not taken[tuple(pos.T)].any():
                break
        else:
            continue
        idx = tuple(pos.T)
        labels[idx] = n
        if kind > 0:  # 100 to 30000 counts, log-uniform; dimmer around the brightest pixel
            peak = np.exp(rng.uniform(np.log(100.0), np.log(30000.0)))
            excess[idx] = peak * np.r_[1.0, rng.uniform(0.3, 1.0, len(offsets) - 1)]
            excess[idx] = np.maximum(excess[idx], 100.0)
        else:
            excess[idx] = -1.0
        for p in pos:  # its 3x3 neighbourhood is taken (a dilation of this cluster alone)
            taken[tuple(slice(max(c - 1, 0), c + 2) for c in p)] = True
    return labels, excess


def _per_frame(rng, name, values, largest, n_frames, neutral) -> np.ndarray:
    """Rotation or scale per frame: explicit ``values``, or a smooth random walk of
    excursion ``largest`` around ``neutral`` (nothing drawn when it is 0)."""
    if values is not None:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n_frames,):
            raise ValueError(f"{name} must have one value per frame ({n_frames}), got {values.shape}")
        return values
    if not largest:
        return np.full(n_frames, neutral)
    return neutral + _random_drift(rng, n_frames, 1, float(largest))[:, 0]


def make_sample_data(n_frames: int = 20, shape: tuple[int, int] = (256, 256)):
    """napari sample: a small drifting stack and its beam-block mask.

    Returns layer data tuples for an Image layer (the stack) and a Labels
    layer (the beam block: nonzero = pixels registration ignores).
    """
    from ._display import mask_colormap, pattern_limits

    synth = make_beam_block_stack(n_frames=n_frames, shape=shape, seed=1)
    name = "UED sample"
    image_meta = {
        "name": name,
        "colormap": "magma",
        # percentiles of the pixels beside the block, as every layer the plugin makes
        "contrast_limits": pattern_limits(synth.stack, synth.valid),
        "axis_labels": ("frame", "y", "x"),
        "metadata": {"expected_shifts": synth.expected_shifts(0), "drift": synth.drift},
    }
    # the colours `maskalign demo` and the mask dock paint with (napari's default
    # colour for label 1 is a dark brown, nearly invisible on magma)
    labels_meta = {"name": f"{name} mask", "opacity": 0.5, "colormap": mask_colormap(),
                   "axis_labels": ("y", "x")}
    return [
        (synth.stack, image_meta, "image"),
        (synth.beam_block.astype(np.uint8), labels_meta, "labels"),
    ]
