"""The reference's set-up terms of an error bar: the peak's curvature and the unmasked
Newton step's noise spread, against plain implementations of their definitions, and
the unmasked error bar's calibration against the generator's known drift."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine.models._refine import (
    noise_spread,
    peak_curvature,
    unmasked_terms,
    wiener_estimate,
)


def _plain_curvature(ref, valid):
    """The definition: gradient energy of the 3-px box mean over the variance, on the
    pixels the cross's 2-fold erosion keeps (all valid ones when it keeps none)."""
    ref = np.asarray(ref, np.float64)
    smooth = ndi.uniform_filter(ref, 3, mode="nearest")
    inner = ndi.binary_erosion(valid, iterations=2, border_value=0)
    inner = inner if inner.any() else valid
    vals = ref[inner]
    spread = np.sum((vals - vals.mean()) ** 2)
    kappa = [np.sum(np.gradient(smooth, axis=ax)[inner] ** 2) / spread for ax in range(ref.ndim)]
    return np.array(kappa), int(vals.size)


def _cases():
    rng = np.random.default_rng(4)
    s = make_beam_block_stack(1, (96, 80), counts=200.0, seed=1)
    yield s.stack[0], np.ones(s.valid.shape, bool)
    yield s.stack[0], s.valid
    yield rng.poisson(50, (12, 20, 17)).astype(np.float32), rng.random((12, 20, 17)) > 0.1
    yield rng.random((30, 30)), rng.random((30, 30)) > 0.7  # nothing left after erosion
    yield rng.random((4, 30)), np.ones((4, 30), bool)  # too thin for the interior


@pytest.mark.parametrize("case", range(5))
def test_peak_curvature_is_the_box_gradients_energy(case):
    ref, valid = list(_cases())[case]
    kappa, n = peak_curvature(ref, valid)
    want, want_n = _plain_curvature(ref, valid)
    assert n == want_n
    np.testing.assert_allclose(kappa, want, rtol=1e-12)
    if valid.all():  # no mask and an all-valid one are the same
        assert n == peak_curvature(ref)[1]
        np.testing.assert_allclose(peak_curvature(ref)[0], kappa, rtol=1e-15)


def _plain_spread(ref, level, grad):
    """``(K, P)`` by their definition, every pass in float64: the noise variance
    ``alpha * level + beta`` fitted to the squared residual's means in 16 level bins
    (edges: quantiles of a strided sample of the levels)."""
    lv, e2 = level.ravel(), ((ref - level) ** 2).ravel()
    sample = np.sort(lv[:: max(1, lv.size // 40000)])
    cuts = sample[(np.arange(1, 16) * sample.size) // 16]
    which = np.searchsorted(cuts, lv, side="right")
    counts = np.bincount(which, minlength=16)
    full = counts > 0
    x = np.bincount(which, lv, 16)[full] / counts[full]
    var = np.bincount(which, e2, 16)[full] / counts[full]
    alpha, beta = np.polyfit(x, var, 1)
    if alpha < 0:
        alpha, beta = 0.0, var.mean()
    v = np.maximum(alpha * lv + beta, 1e-12 * var.max())
    g = grad.reshape(len(grad), -1)
    return (g * v) @ g.T, v.sum()


@pytest.mark.parametrize("counts, pattern", [(20.0, "rings"), (2000.0, "bragg")])
def test_unmasked_terms_match_float64_passes(counts, pattern):
    ref = make_beam_block_stack(1, (128, 112), counts=counts, seed=3, beam_block=False,
                                pattern=pattern).stack[0]
    (kappa, n), (spread, power) = unmasked_terms(ref)
    ref64 = ref.astype(np.float64)
    level, grad, _ = wiener_estimate(ref64)  # float64 copies of the same estimate
    want_k, want_p = _plain_spread(ref64, level, grad)
    centred = ref64 - ref64.mean()
    want_kappa = (grad.reshape(2, -1) ** 2).sum(axis=1) / np.sum(centred**2)
    assert n == ref.size
    # single precision, summed in float64: the same terms to 1e-6 (an error bar's scale)
    np.testing.assert_allclose(kappa, want_kappa, rtol=1e-5)
    np.testing.assert_allclose(spread, want_k, rtol=1e-5, atol=1e-5 * np.abs(want_k).max())
    assert power == pytest.approx(want_p, rel=1e-5)
    # the masked entry point, every pixel valid, agrees too
    k2, p2 = noise_spread(ref)
    np.testing.assert_allclose(k2, spread, rtol=1e-5, atol=1e-5 * np.abs(want_k).max())
    assert p2 == pytest.approx(power, rel=1e-5)


def test_single_precision_estimate_keeps_the_values():
    s = make_beam_block_stack(1, (64, 72), counts=100.0, seed=2)
    for valid in (None, s.valid):
        level, grad, noise = wiener_estimate(s.stack[0], valid)
        level32, grad32, noise32 = wiener_estimate(s.stack[0], valid, single=True)
        assert level32.dtype == np.float32 and grad32[0].dtype == np.float32
        assert noise32 == noise
        np.testing.assert_allclose(level32, level, rtol=0, atol=1e-5 * np.abs(level).max())
        for a, b in zip(grad32, grad):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("counts", [20.0, 2000.0])
def test_unmasked_newton_uncertainties_are_calibrated(counts):
    z = []
    for seed in range(8):
        s = make_beam_block_stack(5, (128, 128), max_drift=3.0, seed=100 + seed,
                                  counts=counts, beam_block=False)
        r = register_stack(s.stack, upsample_factor=20, normalization=None, hot_pixels="off")
        z.append((r.raw_shifts[1:] - s.expected_shifts(0)[1:]) / r.uncertainties[1:])
    rms = float(np.sqrt(np.mean(np.concatenate(z) ** 2)))
    assert 0.7 <= rms <= 1.4, rms  # measured: 1.21 at 20 counts, 1.04 at 2000


def test_a_whitened_peak_away_from_the_plain_correlation_says_so():
    """normalization="phase" on the sample's pattern without a block (200 counts, 256 px):
    whitening weighs the noise at every frequency as much as the pattern, and the peaks
    land 0.1-2 px off. Their error bars used to claim ~0.015 px (errors over error bars:
    RMS 85); each now reaches at least to the plain correlation's maximum (the Newton
    step that would leave its cell), measured RMS 0.99, and the run says why in its
    warnings. The plain correlation (normalization=None) is right and says nothing."""
    z, warned = [], []
    for seed in range(3):
        s = make_beam_block_stack(5, (256, 256), counts=200.0, max_drift=3.0, seed=seed,
                                  beam_block=False)
        r = register_stack(s.stack, upsample_factor=20, normalization="phase")
        e = (r.raw_shifts - s.expected_shifts(0))[1:]
        assert np.abs(e).max() > 0.1  # the case this is about: the whitened peaks are off
        z.append(e / r.uncertainties[1:])
        warned.append(any("normalization='phase'" in w for w in r.warnings))
        plain = register_stack(s.stack, upsample_factor=20)
        assert not plain.warnings and np.abs(plain.shifts - s.expected_shifts(0)).max() < 0.05
    rms = float(np.sqrt(np.mean(np.concatenate(z) ** 2)))
    assert 0.5 <= rms <= 2.0, rms
    assert all(warned)
    # with a mask the option is unused (masked correlation ran): whole-pixel error bars of
    # 0.2-0.3 px are no reason to blame it
    m = make_beam_block_stack(6, (256, 256), counts=20.0, max_drift=3.0, seed=1)
    masked = register_stack(m.stack, mask=m.valid, normalization="phase")
    assert np.nanmax(masked.uncertainties) > 0.1  # wide enough that the option was the test
    assert not any("normalization='phase'" in w for w in masked.warnings)
