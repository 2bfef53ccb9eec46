"""Similarity: a rotation, a uniform scale and a shift per frame (2D frames)."""

from __future__ import annotations

import numpy as np

from ._base import Model

__all__ = ["SIMILARITY", "Similarity"]


class Similarity(Model):
    """A rotation, a uniform scale and a shift; warp parameters ``(u_y, u_x, b, a)``
    with ``A = [[1 + a, -b], [b, 1 + a]]`` (linear in the parameters)."""

    name = "similarity"
    label = "similarity (+ scale)"
    summary = "rotation, uniform scale and shift; 2D frames"
    columns = ("rotation_deg", "scale")
    scales = True

    def fits_table(self, rotations, scales) -> bool:
        return rotations is not None or scales is not None

    def n_params(self, ndim: int) -> int:
        return 4

    def warp_matrix(self, params) -> np.ndarray:
        b, a = params[2], params[3]
        return np.array([[1 + a, -b], [b, 1 + a]])

    def jacobian(self, params, grad, d, cols) -> None:
        cols[:, 2] = grad[1] * d[0] - grad[0] * d[1]
        cols[:, 3] = grad[0] * d[0] + grad[1] * d[1]

    def from_coarse(self, u, theta: float, lin) -> np.ndarray:
        return np.array([u[0], u[1], lin[1, 0], lin[0, 0] - 1.0])


SIMILARITY = Similarity()
