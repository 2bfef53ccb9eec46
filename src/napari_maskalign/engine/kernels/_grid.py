"""Index grids, peak geometry and float64 sums shared by the kernels, the models and the search."""

from __future__ import annotations

import numpy as np

__all__ = ["dot64", "moved_mask", "outer_and", "parabola_vertex"]


def outer_and(flags):
    """Broadcast per-axis boolean vectors to their n-dimensional AND."""
    nd = len(flags)
    out = np.ones(tuple(len(f) for f in flags), dtype=bool)
    for ax, f in enumerate(flags):
        out &= np.asarray(f, dtype=bool).reshape([-1 if i == ax else 1 for i in range(nd)])
    return out


def moved_mask(mask: np.ndarray, step) -> np.ndarray:
    """``mask`` moved by whole pixels ``step``: ``out[x] = mask[x - step]``, False where
    it moved in from outside (all False once a step reaches across the frame)."""
    out = np.zeros_like(mask)
    src, dst = [], []
    for d, m in zip(step, mask.shape):
        d = int(d)
        if abs(d) >= m:
            return out
        src.append(slice(max(0, -d), m - max(0, d)))
        dst.append(slice(max(0, d), m - max(0, -d)))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def parabola_vertex(a, b, c):
    """The offset from the middle sample ``b`` (within half a sample) of the vertex of
    the parabola through three equally spaced samples ``a, b, c``; 0 where they lie on
    a line. Elementwise on arrays. For a peak (``b`` the highest) the vertex is its
    subpixel position: the whole-pixel peaks of the masked correlation, of the
    nonrigid patches and of the log-polar surface."""
    den = a - 2 * b + c
    flat = den == 0
    return np.where(flat, 0.0, np.clip(0.5 * (a - c) / np.where(flat, -1.0, den), -0.5, 0.5))


def dot64(*arrays) -> float:
    """The sum of the arrays' elementwise product (all of one shape), accumulated in
    float64 (single precision inputs cast in buffers, no copies) and without BLAS (a
    threaded BLAS call from worker threads waits for its own threads to be scheduled:
    6 ms for one 512 px frame's dot product on a busy machine, where this takes
    0.2-0.5)."""
    index = "ijklmnop"[: arrays[0].ndim]
    subscripts = ",".join([index] * len(arrays)) + "->"
    return float(np.einsum(subscripts, *arrays, dtype=np.float64))
