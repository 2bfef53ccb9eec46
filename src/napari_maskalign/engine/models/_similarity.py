"""Similarity: a rotation, a uniform scale and a shift per frame (2D frames)."""

from __future__ import annotations

import numpy as np

from ._base import Model

__all__ = ["SIMILARITY", "Similarity"]


class Similarity(Model):
    """A rotation, a uniform scale and a shift; warp parameters ``(u_y, u_x, b, a)``
    with ``A = [[1 + a, -b], [b, 1 + a]]`` (linear in the parameters).

    The scale is searched within +-25 % of the reference's (0.8 to 1.25:
    ``_logpolar.MAX_LOG_SCALE``). A frame whose scale lies at or near that bound
    (the search's best match within about 3 % of its edge, or a better one
    beyond it), or whose measured scale is beyond about +-22 %, may be wrong: it
    gets an infinite scale sigma, is flagged as an outlier, and the result warns.
    """

    name = "similarity"
    label = "similarity (+ scale)"
    summary = "rotation, uniform scale (within +-25 % of the reference's) and shift; 2D frames"
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
