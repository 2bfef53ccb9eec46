"""Rigid: a rotation and a shift per frame (2D frames)."""

from __future__ import annotations

import numpy as np

from ._base import Model

__all__ = ["RIGID", "Rigid"]


class Rigid(Model):
    """A rotation and a shift; warp parameters ``(u_y, u_x, angle)``, the angle in
    radians."""

    name = "rigid"
    label = "rigid (rotation + shift)"
    summary = "rotation and shift"
    columns = ("rotation_deg", "scale")

    def fits_table(self, rotations, scales) -> bool:
        return rotations is not None and (
            scales is None or np.allclose(scales, 1, rtol=0, atol=1e-9))

    def n_params(self, ndim: int) -> int:
        return 3

    def warp_matrix(self, params) -> np.ndarray:
        t = params[2]
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

    def jacobian(self, params, grad, d, cols) -> None:
        t = params[2]
        turn = np.array([[-np.sin(t), -np.cos(t)], [np.cos(t), -np.sin(t)]]) @ d
        cols[:, 2] = grad[0] * turn[0] + grad[1] * turn[1]

    def from_coarse(self, u, theta: float, lin) -> np.ndarray:
        return np.array([u[0], u[1], theta])


RIGID = Rigid()
