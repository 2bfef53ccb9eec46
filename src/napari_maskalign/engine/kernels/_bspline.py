"""Separable cubic B-spline fields on a regular control grid (the non-rigid model's kernel).

A field component on an ``(H, W)`` frame is ``By @ C @ Bx.T``: ``By`` (H, ny) and
``Bx`` (W, nx) hold the 1D cubic B-spline basis (four nonzero entries a row), ``C``
(ny, nx) the coefficients. Everything here works with these two small matrices,
never with the dense ``(H * W, ny * nx)`` Kronecker product:

* evaluating a field: two matrix products;
* the gradient of a pixel sum with respect to ``C``: ``By.T @ image @ Bx``;
* the Gram matrix ``sum_x w(x) b_k(x) b_l(x)`` of a weighted pixel sum (a
  Gauss-Newton normal matrix): banded, because a basis function overlaps only
  its six neighbours along each axis; :func:`weighted_gram` builds it from the
  ``7 n`` products of overlapping 1D basis functions along each axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SplineGrid", "cubic_bspline"]

#: a cubic B-spline overlaps its neighbours up to three knots away
BAND = 3


def cubic_bspline(t) -> np.ndarray:
    """The centred cubic B-spline at ``t`` (support ``|t| < 2``, sums to 1 over knots)."""
    a = np.abs(np.asarray(t, dtype=np.float64))
    out = np.zeros_like(a)
    inner = a < 1
    outer = (a >= 1) & (a < 2)
    out[inner] = (4.0 - 6.0 * a[inner] ** 2 + 3.0 * a[inner] ** 3) / 6.0
    out[outer] = (2.0 - a[outer]) ** 3 / 6.0
    return out


def _knots(length: int, spacing: float) -> np.ndarray:
    """Knot positions covering ``[0, length - 1]`` with one knot beyond each end,
    centred on the frame."""
    inner = max(1, int(np.ceil((length - 1) / spacing)))
    origin = ((length - 1) - inner * spacing) / 2.0
    return origin + spacing * (np.arange(inner + 3) - 1)


def _basis(positions, knots, spacing) -> np.ndarray:
    return cubic_bspline((np.asarray(positions, float)[:, None] - knots[None, :]) / spacing)


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(k, l)`` of overlapping basis functions, ``|k - l| <= BAND``."""
    k, d = np.meshgrid(np.arange(n), np.arange(-BAND, BAND + 1), indexing="ij")
    l_ = k + d
    keep = (l_ >= 0) & (l_ < n)
    return k[keep], l_[keep]


@dataclass(frozen=True)
class SplineGrid:
    """A cubic B-spline control grid over a 2D frame (row, col)."""

    shape: tuple[int, int]
    spacing: float

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", float(self.spacing))
        if self.spacing < 4:
            raise ValueError(f"grid_spacing must be at least 4 pixels, got {self.spacing:g}")
        ky, kx = (_knots(n, self.spacing) for n in self.shape)
        object.__setattr__(self, "knots", (ky, kx))
        by = _basis(np.arange(self.shape[0]), ky, self.spacing)
        bx = _basis(np.arange(self.shape[1]), kx, self.spacing)
        object.__setattr__(self, "by", by)
        object.__setattr__(self, "bx", bx)
        object.__setattr__(self, "_bxt", np.ascontiguousarray(bx.T))
        object.__setattr__(self, "_byt", np.ascontiguousarray(by.T))
        object.__setattr__(self, "_pair_y", _pairs(len(ky)))
        object.__setattr__(self, "_pair_x", _pairs(len(kx)))
        py, px = self._pair_y, self._pair_x
        object.__setattr__(self, "_pby", by[:, py[0]] * by[:, py[1]])
        object.__setattr__(self, "_pbx", bx[:, px[0]] * bx[:, px[1]])
        nx = len(kx)
        rows = (py[0][:, None] * nx + px[0][None, :]).ravel()
        cols = (py[1][:, None] * nx + px[1][None, :]).ravel()
        object.__setattr__(self, "_gram_index", (rows, cols))

    # -- sizes ----------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """Control points per axis ``(ny, nx)``."""
        return self.by.shape[1], self.bx.shape[1]

    @property
    def size(self) -> int:
        return self.by.shape[1] * self.bx.shape[1]

    def describe(self) -> dict:
        """The grid as plain values (what a reader needs to rebuild it)."""
        ky, kx = self.knots
        return {"shape": list(self.shape), "spacing": self.spacing,
                "grid_shape": list(self.grid_shape),
                "origin": [float(ky[0]), float(kx[0])]}

    # -- fields ---------------------------------------------------------------
    def evaluate(self, coefficients) -> np.ndarray:
        """The field ``(k, H, W)`` of coefficients ``(k, ny, nx)`` (two matrix products)."""
        c = np.asarray(coefficients, dtype=np.float64)
        return np.stack([self.by @ (ck @ self._bxt) for ck in c])

    def evaluate_at(self, coefficients, rows, cols) -> np.ndarray:
        """The field ``(k, m)`` at scattered points."""
        ky, kx = self.knots
        by = _basis(rows, ky, self.spacing)
        bx = _basis(cols, kx, self.spacing)
        c = np.asarray(coefficients, dtype=np.float64)
        return np.einsum("mi,kij,mj->km", by, c, bx, optimize=True)

    def point_basis(self, rows, cols) -> np.ndarray:
        """``(m, ny * nx)`` basis values at scattered points (for fitting to them)."""
        ky, kx = self.knots
        by = _basis(rows, ky, self.spacing)
        bx = _basis(cols, kx, self.spacing)
        return (by[:, :, None] * bx[:, None, :]).reshape(len(by), -1)

    def project(self, image) -> np.ndarray:
        """``By.T @ image @ Bx``: the gradient of ``sum(image * field)`` w.r.t. ``C``."""
        return (self._byt @ image) @ self.bx

    def weighted_gram(self, weight) -> np.ndarray:
        """``G[k, l] = sum_x weight(x) B_k(x) B_l(x)`` as a dense ``(n, n)`` matrix,
        built from the banded 1D products (``7 ny x H`` times ``H x W`` times
        ``W x 7 nx``)."""
        g = self._pby.T @ (np.asarray(weight, np.float64) @ self._pbx)
        out = np.zeros((self.size, self.size))
        rows, cols = self._gram_index
        out[rows, cols] = g.ravel()
        return out

    def membrane(self) -> np.ndarray:
        """``(n, n)``: the sum of squared first differences of the coefficients along
        both axes (a membrane energy on the control grid)."""
        ny, nx = self.grid_shape
        dy = np.diff(np.eye(ny), axis=0)
        dx = np.diff(np.eye(nx), axis=0)
        return np.kron(dy.T @ dy, np.eye(nx)) + np.kron(np.eye(ny), dx.T @ dx)

    def matern_precision(self, length: float, sd: float) -> np.ndarray:
        """``(n, n)``: the precision matrix of a Matern field (smoothness 1) on the
        control grid, ``tau (kappa**2 I + L)**2`` with ``L`` the grid's Laplacian
        (:meth:`membrane`), whose correlation falls to about 0.1 at ``length`` px and
        whose standard deviation is about ``sd`` px away from the grid's edges
        (Lindgren, Rue & Lindstrom 2011, doi:10.1111/j.1467-9868.2011.00777.x):
        a prior that pulls toward its mean as well as penalising the field's first
        and second differences, so that where the data say nothing a field bends
        smoothly back to the mean instead of carrying its last value on."""
        kappa2 = 8.0 * (self.spacing / float(length)) ** 2
        tau = 1.0 / (4.0 * np.pi * kappa2 * float(sd) ** 2)
        a = kappa2 * np.eye(self.size) + self.membrane()
        return tau * (a.T @ a)

    def fit_field(self, field) -> np.ndarray:
        """Least-squares coefficients ``(k, ny, nx)`` of a dense field ``(k, H, W)``
        (separable: two small solves per axis)."""
        py = np.linalg.solve(self.by.T @ self.by, self.by.T)
        px = np.linalg.solve(self.bx.T @ self.bx, self.bx.T)
        return np.einsum("ih,khw,jw->kij", py, np.asarray(field, float), px, optimize=True)
