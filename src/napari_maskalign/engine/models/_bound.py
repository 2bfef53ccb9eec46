"""The Cramer-Rao bound for the shift between two noisy frames: the measuring stick.

No unbiased estimate of a shift can beat it. For a frame whose expected
pixel values ``lambda(x)`` move by ``d``, the Fisher information about ``d``
is ``F = sum_x g(x) g(x)^T / var(x)`` over the pixels used, with ``g`` the
derivative of ``lambda`` with respect to the shift and ``var`` the noise
variance per pixel: ``sigma^2`` for Gaussian noise, ``lambda`` for Poisson
counts. Two noisy frames each carry their own information, and the shift
between them is the difference of two positions, so its covariance is at
least ``F_moving^-1 + F_reference^-1`` (``2 F^-1`` when both frames are
alike: the textbook ``var >= 2 / sum (dI/dx)^2 / sigma^2``). The median
absolute error of a Gaussian estimate is 0.6745 standard deviations.

References
----------
Robinson D, Milanfar P. "Fundamental performance limits in image
registration." IEEE Transactions on Image Processing 13(9):1185-1199 (2004).
https://doi.org/10.1109/TIP.2004.832923
"""

from __future__ import annotations

import numpy as np

__all__ = ["MEDIAN_ABS", "fisher_information", "gradient_of", "shift_bound"]

#: the median of |N(0, 1)|: median absolute error per standard deviation
MEDIAN_ABS = 0.6744897501960817


def gradient_of(image) -> np.ndarray:
    """``(ndim, *shape)``: the derivative of a noiseless image along each axis
    (fourth-order central differences; the edges second order)."""
    image = np.asarray(image, dtype=np.float64)
    out = np.empty((image.ndim, *image.shape))
    for ax in range(image.ndim):
        g = np.gradient(image, axis=ax)
        if image.shape[ax] >= 5:
            a = np.moveaxis(image, ax, 0)
            inner = (a[:-4] - 8 * a[1:-3] + 8 * a[3:-1] - a[4:]) / 12.0
            np.moveaxis(g, ax, 0)[2:-2] = inner
        out[ax] = g
    return out


def fisher_information(gradient, variance, valid=None) -> np.ndarray:
    """``(ndim, ndim)`` Fisher information about a shift, from the derivative of
    the expected image with respect to it (``gradient``, shape ``(ndim, *shape)``;
    the sign does not matter) and the noise variance per pixel (an array of
    the frame's shape, or one number), over the ``valid`` pixels (True = used)."""
    g = np.asarray(gradient, dtype=np.float64)
    shape = g.shape[1:]
    var = np.broadcast_to(np.asarray(variance, dtype=np.float64), shape)
    keep = np.ones(shape, bool) if valid is None else np.asarray(valid, bool)
    if keep.shape != shape:
        raise ValueError(f"valid has shape {keep.shape}, expected {shape}")
    v = var[keep]
    if np.any(v <= 0):
        raise ValueError("the noise variance must be positive on every pixel used")
    gv = g[:, keep]
    return (gv / v) @ gv.T


def shift_bound(
    gradient,
    variance,
    valid=None,
    *,
    reference_gradient=None,
    reference_variance=None,
    median: bool = True,
) -> np.ndarray:
    """The Cramer-Rao bound per axis for the shift between two noisy frames.

    Parameters
    ----------
    gradient : array, shape (ndim, *frame_shape)
        How the moving frame's expected values change per pixel of shift
        along each axis (the derivative of the noiseless frame; e.g.
        ``SyntheticStack.gradient(i)`` or :func:`gradient_of`).
    variance : array of the frame's shape, or float
        The moving frame's noise variance per pixel: the expected counts
        for Poisson noise, ``sigma**2`` for Gaussian noise.
    valid : ndarray of bool, optional
        Pixels used (True = valid, the engine's masks).
    reference_gradient, reference_variance : optional
        The same for the reference; by default it is taken to be as
        informative as the moving frame (bound ``2 F^-1``). A nearly
        noiseless reference (the mean of many frames: a tiny variance) adds
        almost nothing to the moving frame's ``F^-1``.
    median : bool
        Return the median absolute error the bound allows (0.6745 standard
        deviations, default) instead of the standard deviation.

    Returns
    -------
    ndarray, shape (ndim,)
        Per axis, the smallest median absolute error (or standard deviation)
        an unbiased estimate can have.
    """
    cov = np.linalg.inv(fisher_information(gradient, variance, valid))
    if reference_gradient is None and reference_variance is None:
        cov = 2 * cov
    else:
        ref_g = gradient if reference_gradient is None else reference_gradient
        ref_v = variance if reference_variance is None else reference_variance
        cov = cov + np.linalg.inv(fisher_information(ref_g, ref_v, valid))
    std = np.sqrt(np.diag(cov))
    return MEDIAN_ABS * std if median else std
