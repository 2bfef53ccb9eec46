"""The unmasked kernel's per-frame shortcuts against what they replace.

The matrix-multiply DFT builds its kernels from cached grid steps times one phase per
frequency, and the Newton step contracts the spectrum axis by axis: both are checked
here against direct double-precision sums over the spectrum (the textbook formulas,
written out), so a faster path can never drift from the arithmetic it stands for.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_maskalign.engine.kernels._correlators import PhaseCorrelator, argmax_abs
from napari_maskalign.engine.kernels._fft import half_spectrum_weights, upsampled_real


def _direct_upsampled(spectrum, full_shape, starts, region, u):
    """``irfftn(spectrum)`` at the grid points, one double-precision sum per point."""
    spectrum = np.asarray(spectrum, np.complex128)
    grids = [s + np.arange(region) / u for s in starts]
    freqs = [np.fft.fftfreq(n) * n for n in full_shape[:-1]]
    freqs.append(np.arange(full_shape[-1] // 2 + 1, dtype=float))
    q = np.meshgrid(*freqs, indexing="ij")
    weighted = spectrum * half_spectrum_weights(full_shape[-1])
    out = np.empty((region,) * len(full_shape))
    for idx in np.ndindex(out.shape):
        phase = sum(qa * grids[a][i] / n for a, (qa, i, n) in enumerate(zip(q, idx, full_shape)))
        out[idx] = np.sum(weighted * np.exp(2j * np.pi * phase)).real
    return out / np.prod(full_shape)


def _smooth_pair(rng, shape, shift):
    from scipy import ndimage as ndi

    ref = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    axes = tuple(range(len(shape)))
    mov = np.fft.irfftn(ndi.fourier_shift(np.fft.rfftn(ref), shift, n=shape[-1]), shape, axes)
    return ref, mov


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("shape", [(48, 40), (33, 27), (12, 10, 14), (64,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("region", "u", "offset"), [(6, 4.0, 0.0), (11, 20.0, 0.35), (7, 3.0, -0.6),
                                                     (1, 1.0, 0.123)])
def test_the_upsampled_dft_equals_the_direct_sum_at_every_grid_point(shape, dtype, region, u, offset,
                                                                      separable):
    rng = np.random.default_rng(len(shape) + region)
    a = rng.normal(size=shape).astype(dtype)
    b = np.roll(a, 2, axis=0) + 0.1 * rng.normal(size=shape).astype(dtype)
    spectrum = np.fft.rfftn(a) * np.conj(np.fft.rfftn(b))
    spectrum = spectrum.astype(np.complex64 if dtype == np.float32 else np.complex128)
    starts = np.array([2.0 + offset - 0.25 * ax for ax in range(len(shape))])
    got = upsampled_real((spectrum,), shape, starts, region, u, separable=separable)[0]
    want = _direct_upsampled(spectrum, shape, starts, region, u)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    # the kernels are cached per grid spacing: asking again (another start) stays exact
    again = upsampled_real((spectrum,), shape, starts + 1.5, region, u, separable=separable)[0]
    np.testing.assert_allclose(again, _direct_upsampled(spectrum, shape, starts + 1.5, region, u),
                               rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("separable", [True, False])
def test_the_upsampled_dft_at_whole_pixels_is_the_inverse_transform(separable):
    rng = np.random.default_rng(5)
    shape = (40, 36)
    spectrum = np.fft.rfftn(rng.normal(size=shape))
    full = np.fft.irfftn(spectrum, shape, (0, 1))
    got = upsampled_real(np.stack([spectrum, 2 * spectrum]), shape, np.array([-3.0, 5.0]), 4, 1.0,
                         separable=separable)
    idx = np.ix_(np.arange(-3, 1) % 40, np.arange(5, 9) % 36)
    np.testing.assert_allclose(got[0], full[idx], atol=1e-12)
    np.testing.assert_allclose(got[1], 2 * full[idx], atol=1e-12)


def _direct_newton(corr, raw, shift, mov_energy):
    """The Newton step written out: value, gradient and Hessian of the plain
    cross-correlation as double sums over the whole half spectrum."""
    shape = corr.shape
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    k = np.meshgrid(*[2 * np.pi * f for f in freqs], indexing="ij")
    w = half_spectrum_weights(shape[-1])
    t = np.asarray(raw, np.complex128) * w * np.exp(1j * sum(ka * s for ka, s in zip(k, shift)))
    nd = len(shape)
    value = np.sum(t).real
    grad = np.array([-np.sum(t * k[a]).imag for a in range(nd)])
    hess = np.array([[-np.sum(t * k[a] * k[b]).real for b in range(nd)] for a in range(nd)])
    step = -np.linalg.solve(hess, grad)
    curv = np.linalg.inv(-hess)
    n = float(np.prod(shape))
    gain = value / corr.ref_energy
    residual = max(mov_energy - value * value / corr.ref_energy, 0.0) / n
    return shift + step, np.sqrt(np.diag(residual / gain * curv))


@pytest.mark.parametrize("shape", [(64, 64), (45, 52), (16, 18, 20), (96,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_newton_step_equals_the_direct_sums_over_the_spectrum(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    true = np.array([1.23, -0.71, 0.4][: len(shape)])
    ref, mov = _smooth_pair(rng, shape, true)
    mov = mov + 0.001 * rng.normal(size=shape)
    ref, mov = ref.astype(dtype), mov.astype(dtype)
    corr = PhaseCorrelator(ref, normalization=None, upsample_factor=20, zero_mean=True, newton=True)
    ref_f = corr._ref_f
    mov_f = np.fft.rfftn(mov).astype(ref_f.dtype)
    mov_f.flat[0] = 0
    raw = ref_f * mov_f.conj()
    mov_energy = float(np.sum(np.abs(mov_f) ** 2 * half_spectrum_weights(shape[-1])))
    # the frame moved by ``true``: the shift that registers it back is ``-true``
    start = np.round(-true * 20) / 20
    got, sigma = corr.newton_step(raw, start.copy(), mov_energy)
    want, want_sigma = _direct_newton(corr, raw, start, mov_energy)
    assert sigma is not None
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-7)
    # and the step found the shift the frames were made with
    np.testing.assert_allclose(got, -true, atol=1e-2)


@pytest.mark.parametrize("case", ["random", "negative peak", "tie", "tie reversed", "repeats",
                                  "zeros", "nan", "float64"])
def test_argmax_abs_is_the_first_index_of_the_largest_magnitude(case):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(31, 17)).astype(np.float32)
    if case == "negative peak":
        x.flat[200] = -50.0
    elif case == "tie":  # +v before -v: abs picks the first
        x.flat[40], x.flat[300] = 50.0, -50.0
    elif case == "tie reversed":
        x.flat[40], x.flat[300] = -50.0, 50.0
    elif case == "repeats":
        x.flat[[90, 10, 400]] = -50.0
        x.flat[[30, 500]] = 49.0
    elif case == "zeros":
        x[:] = 0.0
        x.flat[3] = -0.0
    elif case == "nan":
        x.flat[[77, 20]] = np.nan
    elif case == "float64":
        x = x.astype(np.float64)
        x.flat[5] = -np.inf
    assert argmax_abs(x) == int(np.argmax(np.abs(x)))


def test_the_masked_fine_grids_kernels_stay_the_exponentials_of_every_grid_point():
    """``separable=False`` (the masked correlator's fine grid) keeps the arithmetic its
    shifts were pinned with: kernels exp(2 pi i f x / n) of every frequency and grid
    point, contracted with tensordot, to the last bit."""
    rng = np.random.default_rng(11)
    shape, starts, region, u = (40, 34), np.array([1.35, -2.6]), 11, 20.0
    spectrum = np.fft.rfftn(rng.normal(size=shape)).astype(np.complex64)
    data = spectrum
    for ax in (1, 0):
        n = shape[ax]
        freqs = np.arange(n // 2 + 1.0) if ax == 1 else np.fft.fftfreq(n) * n
        kernel = np.exp((2j * np.pi / n) * np.outer(freqs, starts[ax] + np.arange(region) / u))
        if ax == 1:
            kernel *= half_spectrum_weights(n)[:, None]
        data = np.moveaxis(np.tensordot(data, kernel.astype(np.complex64), axes=([ax], [0])), -1, ax)
    want = np.real(data) * (1.0 / (40 * 34))
    got = upsampled_real((spectrum,), shape, starts, region, u)[0]
    assert np.array_equal(got, want)


def test_large_grids_steps_are_not_kept_between_calls():
    from napari_maskalign.engine.kernels import _fft

    rng = np.random.default_rng(3)
    shape = (2048, 64)
    spectrum = np.fft.rfftn(rng.normal(size=shape)).astype(np.complex64)
    _fft._GRID_STEPS.clear()
    starts = np.array([0.3, -0.2])
    got = upsampled_real((spectrum,), shape, starts, 81, 100.0, separable=True)[0]
    # the 2048-row axis's steps (2048 x 81 complex, 2.6 MB) were computed, not kept
    assert len(_fft._GRID_STEPS) == 1
    want = upsampled_real((spectrum,), shape, starts, 81, 100.0, separable=False)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
