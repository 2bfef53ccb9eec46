"""napari_maskalign.phase_cross_correlation against scikit-image 0.26.

Differential tests on many generated cases, property tests (hypothesis), the
documented errors, and the two deliberate improvements (subpixel masked
registration; NaN/inf under a mask ignored).

How exact the agreement must be (see the function's Notes): whole-pixel
results, complex input and Fourier-space input go through the same arithmetic
as scikit-image and must be equal. For real input the subpixel refinement
samples the real cross-correlation where scikit-image samples the modulus of a
complex one (one-sided Nyquist terms), so subpixel shifts may differ by one
``1/upsample_factor`` step (for odd sizes there is no Nyquist term and they
must be equal).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation as sk_pcc

import napari_maskalign
from napari_maskalign import phase_cross_correlation as pcc

PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------------------
# helpers


def smooth(rng, shape, sigma=2.0, offset=0.0):
    """A smooth random image (band-limited enough for subpixel shifts)."""
    return ndi.gaussian_filter(rng.normal(size=shape), sigma) + offset


def fourier_shifted(img, shift):
    """``img`` moved by ``shift`` (periodic, exact for band-limited content)."""
    return np.fft.ifftn(ndi.fourier_shift(np.fft.fftn(img), shift)).real


def crop_pair(rng, shape, shift, pad=12, sigma=2.0):
    """Reference and moving crops of one larger image, moving(x) = reference(x - shift).

    Not periodic, so masked (non-circular) registration sees a real translation.
    ``shift`` may be fractional (the larger image is Fourier-shifted first).
    """
    big_shape = tuple(n + 2 * pad for n in shape)
    base = smooth(rng, big_shape, sigma)
    moved = fourier_shifted(base, shift)
    sl = tuple(slice(pad, pad + n) for n in shape)
    return base[sl], moved[sl]


def random_mask(rng, shape, kind):
    """Valid masks (True = valid) of several textures."""
    if kind == "speckle":
        return rng.random(shape) > 0.25
    if kind == "blobs":
        holes = ndi.gaussian_filter(rng.random(shape), 3) > 0.53
        return ~holes
    if kind == "block":  # a beam-block-like rod plus disk
        grid = np.indices(shape).astype(float)
        centre = np.array(shape, float)[:, None, None] / 2 if len(shape) == 2 else None
        r = np.sqrt(((grid - centre) ** 2).sum(0))
        rod = (grid[0] < shape[0] / 2) & (np.abs(grid[1] - shape[1] / 2) < 3)
        return ~((r < min(shape) / 8) | rod)
    raise AssertionError(kind)


def assert_same_shift_exactly(ours, theirs, context=""):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype, f"{context}: shift dtype {ours.dtype} != skimage {theirs.dtype}"
    np.testing.assert_array_equal(ours, theirs, err_msg=context)


def angle_diff(a, b):
    return abs(float(np.angle(np.exp(1j * (float(a) - float(b))))))


def on_grid(shift, upsample_factor, tol=1e-6):
    s = np.asarray(shift, float) * upsample_factor
    return bool(np.all(np.abs(s - np.round(s)) < tol * upsample_factor))


def unmasked_cases(seed, n, ndim=2, lo=32, hi=80, integer_shift=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        shape = tuple(int(v) for v in rng.integers(lo, hi, size=ndim))
        offset = float(rng.choice([0.0, 3.0]))  # zero-mean and positive images
        ref = smooth(rng, shape, offset=offset)
        true = rng.integers(-7, 8, size=ndim) if integer_shift else rng.uniform(-7, 7, size=ndim)
        mov = fourier_shifted(ref, true) + 0.05 * rng.normal(size=shape)
        yield ref.astype(dtype), mov.astype(dtype), true


# ---------------------------------------------------------------------------
# signature


def test_signature_and_defaults_match_skimage():
    ours = inspect.signature(pcc)
    theirs = inspect.signature(sk_pcc)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


def test_public_import_is_the_engine_function():
    from napari_maskalign.engine import phase_cross_correlation as engine_pcc

    assert napari_maskalign.phase_cross_correlation is engine_pcc


# ---------------------------------------------------------------------------
# unmasked, real input


@pytest.mark.parametrize("normalization", ["phase", None])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("integer_shift", [True, False])
def test_whole_pixel_equals_skimage(normalization, dtype, integer_shift):
    seed = 10 + 2 * integer_shift + (dtype == np.float32)
    for k, (ref, mov, _) in enumerate(unmasked_cases(seed, 25, integer_shift=integer_shift, dtype=dtype)):
        ctx = f"case {k}, shape {ref.shape}"
        s1, e1, p1 = sk_pcc(ref, mov, normalization=normalization)
        s2, e2, p2 = pcc(ref, mov, normalization=normalization)
        assert_same_shift_exactly(s2, s1, ctx)
        np.testing.assert_allclose(e2, e1, rtol=1e-9, atol=1e-4 if dtype == np.float32 else 1e-9, err_msg=ctx)
        assert angle_diff(p2, p1) < 1e-5, ctx
        assert p2 in (0.0, np.pi), f"{ctx}: phasediff of real images must be 0 or pi, got {p2}"


def test_integer_shifts_recovered_exactly_with_sign_convention():
    """moving = reference shifted by s  ->  the result is -s (scikit-image's convention)."""
    rng = np.random.default_rng(1)
    ref = smooth(rng, (64, 48))
    for s in [(3, -5), (-7, 0), (0, 11), (-15, 20)]:
        mov = np.roll(ref, s, axis=(0, 1))
        for norm in ("phase", None):
            shift, _, _ = pcc(ref, mov, normalization=norm)
            np.testing.assert_array_equal(shift, -np.array(s, float))
            shift, _, _ = pcc(ref, mov, normalization=norm, upsample_factor=20)
            np.testing.assert_allclose(shift, -np.array(s, float), atol=1e-9)


@pytest.mark.parametrize("normalization", ["phase", None])
@pytest.mark.parametrize("upsample_factor", [3, 5, 10, 20])
def test_subpixel_within_one_step_of_skimage(normalization, upsample_factor):
    u = upsample_factor
    exact = 0
    cases = list(unmasked_cases(100 + u, 30))
    for k, (ref, mov, _) in enumerate(cases):
        ctx = f"case {k}, shape {ref.shape}, upsample {u}, {normalization}"
        s1, e1, p1 = sk_pcc(ref, mov, upsample_factor=u, normalization=normalization)
        s2, e2, p2 = pcc(ref, mov, upsample_factor=u, normalization=normalization)
        assert s2.dtype == s1.dtype, ctx
        assert on_grid(s2, u), f"{ctx}: {s2} is not on the 1/{u} grid"
        diff = float(np.abs(s2 - s1).max())
        assert diff <= 1 / u + 1e-6, f"{ctx}: ours {s2}, skimage {s1}"
        exact += diff < 1e-9
        assert p2 in (0.0, np.pi), ctx
        assert angle_diff(p2, p1) < 0.1, f"{ctx}: phasediff {p2} vs {p1}"
        if diff < 1e-9:
            np.testing.assert_allclose(e2, e1, rtol=0.02, atol=2e-3, err_msg=ctx)
    # "usually exactly": measured 89-100% on these cases
    assert exact / len(cases) >= 0.8, f"only {exact}/{len(cases)} exactly equal"


@pytest.mark.parametrize("upsample_factor", [10, 100])
def test_subpixel_odd_sizes_equal_skimage(upsample_factor):
    """Odd sizes have no Nyquist term: the real and the complex correlations agree."""
    rng = np.random.default_rng(7)
    for k in range(20):
        shape = tuple(int(2 * rng.integers(16, 40) + 1) for _ in range(2))
        ref = smooth(rng, shape, offset=float(k % 2))
        mov = fourier_shifted(ref, rng.uniform(-6, 6, 2)) + 0.05 * rng.normal(size=shape)
        for norm in ("phase", None):
            s1, _, _ = sk_pcc(ref, mov, upsample_factor=upsample_factor, normalization=norm)
            s2, _, _ = pcc(ref, mov, upsample_factor=upsample_factor, normalization=norm)
            np.testing.assert_allclose(s2, s1, atol=1e-9, err_msg=f"case {k} {shape} {norm}")


def test_high_upsample_unnormalized_within_one_step_of_skimage():
    u = 100
    for k, (ref, mov, _) in enumerate(unmasked_cases(300, 20)):
        s1, _, _ = sk_pcc(ref, mov, upsample_factor=u, normalization=None)
        s2, _, _ = pcc(ref, mov, upsample_factor=u, normalization=None)
        assert on_grid(s2, u), f"case {k}: {s2}"
        assert np.abs(s2 - s1).max() <= 1 / u + 1e-6, f"case {k}: {s2} vs {s1}"


@pytest.mark.parametrize(
    "dtypes",
    [
        (np.float16, np.float16),
        (np.float32, np.float64),
        (np.float64, np.float32),
        (np.uint8, np.uint8),
        (np.int8, np.int8),
        (np.uint16, np.uint16),
        (np.int16, np.int16),
        (np.int32, np.int32),
        (np.int64, np.int64),
        (np.float32, np.uint8),
    ],
    ids=lambda d: f"{np.dtype(d[0]).name}-{np.dtype(d[1]).name}",
)
def test_dtypes_match_skimage(dtypes):
    rng = np.random.default_rng(3)
    ref = smooth(rng, (40, 52))
    lo, hi = ref.min(), ref.max()
    top = 100.0 if np.dtype(dtypes[0]).kind in "iu" and np.dtype(dtypes[0]).itemsize == 1 else 1000.0
    scaled = (ref - lo) / (hi - lo) * top
    ref_t = scaled.astype(dtypes[0])
    mov_t = np.clip(np.roll(scaled, (3, -4), (0, 1)) + rng.normal(scale=2, size=ref.shape), 0, top).astype(dtypes[1])
    for u in (1, 10):
        s1, e1, _ = sk_pcc(ref_t, mov_t, upsample_factor=u)
        s2, e2, _ = pcc(ref_t, mov_t, upsample_factor=u)
        assert s2.dtype == s1.dtype, f"upsample {u}: shift dtype {s2.dtype}, skimage {s1.dtype}"
        if u == 1:
            np.testing.assert_array_equal(s2, s1)
        else:
            assert np.abs(s2 - s1).max() <= 1 / u + 1e-6
        np.testing.assert_allclose(e2, e1, atol=2e-3)


@pytest.mark.parametrize("upsample_factor", [1, 10])
def test_3d_matches_skimage(upsample_factor):
    for k, (ref, mov, _) in enumerate(unmasked_cases(40, 6, ndim=3, lo=16, hi=30)):
        for norm in ("phase", None):
            s1, e1, _ = sk_pcc(ref, mov, upsample_factor=upsample_factor, normalization=norm)
            s2, e2, _ = pcc(ref, mov, upsample_factor=upsample_factor, normalization=norm)
            if upsample_factor == 1:
                assert_same_shift_exactly(s2, s1, f"case {k}")
            else:
                assert np.abs(s2 - s1).max() <= 1 / upsample_factor + 1e-6, f"case {k}: {s2} vs {s1}"
            np.testing.assert_allclose(e2, e1, atol=2e-3)


def test_1d_and_length_one_axes_match_skimage():
    rng = np.random.default_rng(4)
    a = smooth(rng, (70,))
    b = fourier_shifted(a, [4.3])
    for u in (1, 20):
        s1, _, _ = sk_pcc(a, b, upsample_factor=u)
        s2, _, _ = pcc(a, b, upsample_factor=u)
        assert np.abs(s2 - s1).max() <= 1 / u + 1e-6
    row = smooth(rng, (1, 64))
    moved = fourier_shifted(row, (0, -3.0))
    for u in (1, 10):
        s1, _, _ = sk_pcc(row, moved, upsample_factor=u)
        s2, _, _ = pcc(row, moved, upsample_factor=u)
        assert s2[0] == 0 == s1[0]
        assert abs(s2[1] - s1[1]) <= 1 / u + 1e-6


def test_empty_image_warns_like_skimage():
    rng = np.random.default_rng(5)
    b = smooth(rng, (32, 32))
    for u in (1, 10):
        with pytest.warns(UserWarning, match="Could not determine RMS error"):
            s1, e1, _ = sk_pcc(np.zeros_like(b), b, upsample_factor=u)
        with pytest.warns(UserWarning, match="Could not determine RMS error"):
            s2, e2, _ = pcc(np.zeros_like(b), b, upsample_factor=u)
        assert np.all(np.isfinite(s2))
        assert np.isnan(e2) == np.isnan(e1)


# ---------------------------------------------------------------------------
# complex and Fourier-space input: the same arithmetic, so exactly equal


@pytest.mark.parametrize("space", ["fourier", "Fourier", "FOURIER"])
@pytest.mark.parametrize("upsample_factor", [1, 20])
@pytest.mark.parametrize("normalization", ["phase", None])
def test_fourier_space_input_equals_skimage(space, upsample_factor, normalization):
    for k, (ref, mov, _) in enumerate(unmasked_cases(50, 8)):
        fr, fm = np.fft.fftn(ref), np.fft.fftn(mov)
        kw = dict(upsample_factor=upsample_factor, space=space, normalization=normalization)
        s1, e1, p1 = sk_pcc(fr, fm, **kw)
        s2, e2, p2 = pcc(fr, fm, **kw)
        assert_same_shift_exactly(s2, s1, f"case {k}")
        np.testing.assert_allclose(e2, e1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(p2, p1, rtol=1e-12, atol=1e-12)


def test_fourier_space_complex64_stays_single_precision():
    ref, mov, _ = next(unmasked_cases(51, 1))
    fr, fm = np.fft.fftn(ref).astype(np.complex64), np.fft.fftn(mov).astype(np.complex64)
    for u in (1, 20):
        s1, _, _ = sk_pcc(fr, fm, upsample_factor=u, space="fourier")
        s2, _, _ = pcc(fr, fm, upsample_factor=u, space="fourier")
        assert_same_shift_exactly(s2, s1)


@pytest.mark.parametrize("upsample_factor", [1, 20])
def test_complex_real_space_input_equals_skimage(upsample_factor):
    rng = np.random.default_rng(6)
    for k in range(8):
        shape = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
        ref = smooth(rng, shape) + 1j * smooth(rng, shape)
        mov = np.fft.ifftn(ndi.fourier_shift(np.fft.fftn(ref), rng.uniform(-5, 5, 2)))
        for space in ("real", "REAL", "Real"):
            s1, e1, p1 = sk_pcc(ref, mov, upsample_factor=upsample_factor, space=space)
            s2, e2, p2 = pcc(ref, mov, upsample_factor=upsample_factor, space=space)
            assert_same_shift_exactly(s2, s1, f"case {k}")
            np.testing.assert_allclose(e2, e1, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(p2, p1, rtol=1e-12, atol=1e-12)


def test_real_space_is_case_insensitive():
    ref, mov, _ = next(unmasked_cases(52, 1))
    base = pcc(ref, mov, upsample_factor=10)
    for space in ("Real", "REAL", "rEaL"):
        out = pcc(ref, mov, upsample_factor=10, space=space)
        np.testing.assert_array_equal(out[0], base[0])
        assert out[1:] == base[1:]


# ---------------------------------------------------------------------------
# disambiguate


def _large_shift_pair(rng, shape, offset):
    """Crops of one white-noise image; the true registering shift is ``offset``.

    moving(x) = reference(x + offset); with |offset| > N/2 on some axis the
    periodic peak alone gives the wrong sign there.
    """
    big = rng.normal(size=tuple(n + abs(o) + 2 for n, o in zip(shape, offset)))
    starts = [max(0, -o) for o in offset]
    ref = big[tuple(slice(s, s + n) for s, n in zip(starts, shape))]
    mov = big[tuple(slice(s + o, s + o + n) for s, o, n in zip(starts, offset, shape))]
    return ref, mov


@pytest.mark.parametrize(
    "offset", [(40, 5), (-38, 10), (6, -41), (35, 36), (-37, -20), (45, -45)], ids=str
)
def test_disambiguate_large_shifts(offset):
    rng = np.random.default_rng(abs(offset[0] * 100 + offset[1]))
    shape = (64, 64)
    ref, mov = _large_shift_pair(rng, shape, offset)
    wrapped, _, _ = pcc(ref, mov, normalization=None)
    s1, e1, p1 = sk_pcc(ref, mov, disambiguate=True, normalization=None)
    s2, e2, p2 = pcc(ref, mov, disambiguate=True, normalization=None)
    np.testing.assert_array_equal(s2, s1)
    np.testing.assert_array_equal(s2, np.array(offset, float))
    np.testing.assert_allclose([e2, p2], [e1, p1], atol=1e-6)
    # without disambiguation the answer is only right modulo the image size
    np.testing.assert_array_equal(np.mod(wrapped - np.array(offset), shape), [0, 0])
    assert not np.array_equal(wrapped, np.array(offset, float))
    # phase normalization, subpixel and Fourier-space input: as scikit-image
    for kw in (dict(), dict(upsample_factor=10), dict(upsample_factor=10, normalization=None)):
        s1, _, _ = sk_pcc(ref, mov, disambiguate=True, **kw)
        s2, _, _ = pcc(ref, mov, disambiguate=True, **kw)
        assert np.abs(s2 - s1).max() <= 0.1 + 1e-6, (kw, s2, s1)
    s2, _, _ = pcc(ref, mov, disambiguate=True, upsample_factor=10, normalization=None)
    np.testing.assert_allclose(s2, offset, atol=0.25)  # right period; little overlap, noisy peak
    fr, fm = np.fft.fftn(ref), np.fft.fftn(mov)
    s1, _, _ = sk_pcc(fr, fm, space="fourier", disambiguate=True, normalization=None)
    s2, _, _ = pcc(fr, fm, space="fourier", disambiguate=True, normalization=None)
    np.testing.assert_array_equal(s2, s1)
    np.testing.assert_array_equal(s2, np.array(offset, float))


# ---------------------------------------------------------------------------
# masked


@pytest.mark.parametrize("kind", ["speckle", "blobs", "block"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_masked_whole_pixel_equals_skimage(kind, dtype):
    rng = np.random.default_rng(["speckle", "blobs", "block"].index(kind) + 20 * (dtype == np.float32))
    for k in range(8):
        shape = (int(rng.integers(32, 64)), int(rng.integers(32, 64)))
        true = rng.integers(-8, 9, size=2)
        ref, mov = crop_pair(rng, shape, true)
        ref = (ref + 0.05 * rng.normal(size=shape)).astype(dtype)
        mov = (mov + 0.05 * rng.normal(size=shape)).astype(dtype)
        m_ref = random_mask(rng, shape, kind)
        m_mov = random_mask(rng, shape, kind) if k % 2 else None
        ctx = f"case {k}, {shape}, moving_mask {'given' if m_mov is not None else 'None'}"
        s1, e1, p1 = sk_pcc(ref, mov, reference_mask=m_ref, moving_mask=m_mov)
        s2, e2, p2 = pcc(ref, mov, reference_mask=m_ref, moving_mask=m_mov)
        assert_same_shift_exactly(s2, s1, ctx)
        assert np.isnan(e2) and np.isnan(p2)


def test_masked_only_moving_mask_given_means_both():
    """reference_mask=None with a moving_mask: used for both (scikit-image 0.26
    raises AttributeError on None.astype here)."""
    rng = np.random.default_rng(21)
    shape = (48, 40)
    ref, mov = crop_pair(rng, shape, (3, -2))
    m = random_mask(rng, shape, "blobs")
    s1, _, _ = sk_pcc(ref, mov, reference_mask=m, moving_mask=m)
    s2, _, _ = pcc(ref, mov, moving_mask=m)
    np.testing.assert_array_equal(s2, s1)
    np.testing.assert_array_equal(s2, [-3, 2])


def test_masked_different_shapes_equals_skimage():
    rng = np.random.default_rng(22)
    for k in range(10):
        ref_shape = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
        mov_shape = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
        big = smooth(rng, (80, 80))
        ref = big[:ref_shape[0], :ref_shape[1]]
        o = rng.integers(0, 15, size=2)
        mov = big[o[0]:o[0] + mov_shape[0], o[1]:o[1] + mov_shape[1]]
        m_ref = random_mask(rng, ref_shape, "speckle")
        m_mov = random_mask(rng, mov_shape, "blobs")
        s1, _, _ = sk_pcc(ref, mov, reference_mask=m_ref, moving_mask=m_mov)
        s2, _, _ = pcc(ref, mov, reference_mask=m_ref, moving_mask=m_mov)
        np.testing.assert_array_equal(s2, s1, err_msg=f"case {k}: {ref_shape} vs {mov_shape}")


def test_masked_3d_and_overlap_ratio_equal_skimage():
    rng = np.random.default_rng(23)
    shape = (20, 24, 22)
    ref, mov = crop_pair(rng, shape, (2, -3, 1), pad=6)
    m = random_mask(rng, shape, "speckle")
    s1, _, _ = sk_pcc(ref, mov, reference_mask=m)
    s2, _, _ = pcc(ref, mov, reference_mask=m)
    np.testing.assert_array_equal(s2, s1)
    np.testing.assert_array_equal(s2, [-2, 3, -1])
    ref2, mov2 = crop_pair(rng, (40, 40), (-6, 5))
    m2 = random_mask(rng, (40, 40), "blobs")
    for ratio in (0.1, 0.5, 0.9):
        s1, _, _ = sk_pcc(ref2, mov2, reference_mask=m2, overlap_ratio=ratio)
        s2, _, _ = pcc(ref2, mov2, reference_mask=m2, overlap_ratio=ratio)
        np.testing.assert_array_equal(s2, s1, err_msg=f"overlap_ratio {ratio}")


def test_masks_ignore_space_and_normalization_like_skimage():
    rng = np.random.default_rng(24)
    ref, mov = crop_pair(rng, (40, 40), (2, 3))
    m = random_mask(rng, (40, 40), "speckle")
    s1, _, _ = sk_pcc(ref, mov, reference_mask=m, space="nonsense", normalization="nonsense")
    s2, _, _ = pcc(ref, mov, reference_mask=m, space="nonsense", normalization="nonsense")
    np.testing.assert_array_equal(s2, s1)


@pytest.mark.parametrize("upsample_factor", [10, 20])
def test_masked_upsample_is_honoured(upsample_factor):
    """Improvement over scikit-image: masked registration to 1/upsample_factor px."""
    rng = np.random.default_rng(25)
    errs_ours, errs_sk = [], []
    for _ in range(8):
        shape = (64, 64)
        true = rng.uniform(-5, 5, size=2)
        ref, mov = crop_pair(rng, shape, true, sigma=3.0)
        # a static bright block in both frames: unmasked registration locks onto it
        block = ~random_mask(rng, shape, "block")
        ref = np.where(block, 5.0, ref)
        mov = np.where(block, 5.0, mov)
        valid = ~block
        s_sk, _, _ = sk_pcc(ref, mov, reference_mask=valid, upsample_factor=upsample_factor)
        s_whole, _, _ = pcc(ref, mov, reference_mask=valid)
        s_ours, _, _ = pcc(ref, mov, reference_mask=valid, upsample_factor=upsample_factor)
        np.testing.assert_array_equal(s_whole, s_sk)  # skimage ignores upsample_factor
        assert on_grid(s_ours, upsample_factor), s_ours
        assert np.abs(s_ours - s_whole).max() <= 1.0, (s_ours, s_whole)
        errs_ours.append(np.abs(s_ours + true).max())
        errs_sk.append(np.abs(s_sk + true).max())
    assert max(errs_ours) < 0.1, errs_ours
    assert np.median(errs_ours) < 0.5 * np.median(errs_sk), (errs_ours, errs_sk)


def test_masked_nan_and_inf_under_mask_are_ignored():
    """Improvement: NaN/inf on masked-out pixels give the same answer as finite values there."""
    rng = np.random.default_rng(26)
    shape = (48, 48)
    ref, mov = crop_pair(rng, shape, (4.4, -2.7))
    valid = random_mask(rng, shape, "block")
    bad_ref, bad_mov = ref.copy(), mov.copy()
    bad_ref[~valid] = np.nan
    bad_mov[~valid] = np.inf
    bad_mov[~valid & (np.arange(48)[None, :] % 2 == 0)] = -np.inf
    for u in (1, 20):
        expected, _, _ = pcc(ref, mov, reference_mask=valid, upsample_factor=u)
        got, _, _ = pcc(bad_ref, bad_mov, reference_mask=valid, upsample_factor=u)
        np.testing.assert_array_equal(got, expected)
    filled = np.where(valid, ref, 0), np.where(valid, mov, 0)
    s1, _, _ = sk_pcc(*filled, reference_mask=valid)
    got, _, _ = pcc(bad_ref, bad_mov, reference_mask=valid)
    np.testing.assert_array_equal(got, s1)


def test_masked_nan_on_valid_pixel_raises():
    rng = np.random.default_rng(27)
    ref, mov = crop_pair(rng, (40, 40), (1, 1))
    valid = random_mask(rng, (40, 40), "block")
    r = np.argwhere(valid)[100]
    bad = mov.copy()
    bad[tuple(r)] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        pcc(ref, bad, reference_mask=valid)
    bad_ref = ref.copy()
    bad_ref[tuple(r)] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        pcc(bad_ref, mov, reference_mask=valid)


def test_masked_integer_and_bool_images():
    rng = np.random.default_rng(28)
    ref, mov = crop_pair(rng, (40, 44), (3, -2))
    m = random_mask(rng, (40, 44), "speckle")
    scale = lambda a: ((a - ref.min()) / np.ptp(ref) * 200).clip(0, 255)  # noqa: E731
    for dtype in (np.uint8, np.uint16, np.int32):
        s1, _, _ = sk_pcc(scale(ref).astype(dtype), scale(mov).astype(dtype), reference_mask=m)
        s2, _, _ = pcc(scale(ref).astype(dtype), scale(mov).astype(dtype), reference_mask=m)
        np.testing.assert_array_equal(s2, s1, err_msg=np.dtype(dtype).name)
    # bool images are registered (not a TypeError)
    s2, _, _ = pcc(ref > 0, mov > 0, reference_mask=m)
    assert s2.shape == (2,) and np.all(np.isfinite(s2))


# ---------------------------------------------------------------------------
# errors: the same ValueErrors as scikit-image, in plain words


def _both_raise(match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        sk_pcc(*args, **kwargs)
    with pytest.raises(ValueError, match=match):
        pcc(*args, **kwargs)


def test_error_shape_mismatch():
    a = np.zeros((32, 32))
    a[5, 5] = 1
    _both_raise("same shape", a, a[:30])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["reference", "moving"])
def test_error_nonfinite_without_mask(bad, where):
    rng = np.random.default_rng(29)
    a = smooth(rng, (32, 32))
    b = np.roll(a, 2, 0)
    (a if where == "reference" else b)[3, 4] = bad
    for u in (1, 10):
        _both_raise("NaN values found", a, b, upsample_factor=u)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_error_nan_in_fourier_space_input():
    rng = np.random.default_rng(30)
    fa = np.fft.fftn(smooth(rng, (32, 32)))
    fb = fa.copy()
    fb[3, 3] = np.nan
    _both_raise("NaN values found", fa, fb, space="fourier")


def test_error_unknown_space():
    a = np.random.default_rng(31).random((16, 16))
    _both_raise("space argument", a, a, space="frequency")
    with pytest.raises(ValueError, match="space argument"):  # skimage: AttributeError
        pcc(a, a, space=None)


def test_error_unknown_normalization():
    a = np.random.default_rng(32).random((16, 16))
    _both_raise("normalization", a, a, normalization="whiten")
    _both_raise("normalization", a, a, normalization="Phase", upsample_factor=10)


def test_error_mask_shape_mismatch():
    a = np.random.default_rng(33).random((24, 24))
    good = np.ones((24, 24), bool)
    _both_raise("mask sizes", a, a, reference_mask=np.ones((20, 24), bool))
    _both_raise("mask sizes", a, a, reference_mask=good, moving_mask=np.ones((24, 20), bool))
    _both_raise("mask sizes", a, a[:20], reference_mask=good, moving_mask=good)


def test_error_different_shapes_need_explicit_moving_mask():
    a = np.random.default_rng(34).random((24, 24))
    _both_raise("moving_mask must be explicitly set", a, a[:20], reference_mask=np.ones((24, 24), bool))


def test_error_upsample_factor_below_one():
    a = np.random.default_rng(35).random((16, 16))
    with pytest.raises(ValueError, match="upsample_factor"):
        pcc(a, a, upsample_factor=0)
    with pytest.raises(ValueError, match="upsample_factor"):
        pcc(a, a, upsample_factor=0, reference_mask=np.ones((16, 16), bool))


def test_error_masks_that_never_overlap_say_so():
    a = np.random.default_rng(36).random((24, 24))
    with pytest.raises(ValueError, match="overlap"):
        pcc(a, a, reference_mask=np.zeros((24, 24), bool))


# ---------------------------------------------------------------------------
# inputs are never modified


def _readonly(*arrays):
    out = []
    for a in arrays:
        a = np.array(a)
        a.setflags(write=False)
        out.append(a)
    return out


def test_inputs_are_not_modified():
    rng = np.random.default_rng(37)
    ref, mov = crop_pair(rng, (40, 40), (2.5, -1.5))
    mask = random_mask(rng, (40, 40), "block")
    bad_ref = np.where(mask, ref, np.nan)
    calls = [
        ((ref, mov), dict()),
        ((ref, mov), dict(upsample_factor=20, normalization=None)),
        ((ref, mov), dict(upsample_factor=5, disambiguate=True)),
        ((ref.astype(np.float32), mov.astype(np.float32)), dict(upsample_factor=10)),
        ((np.fft.fftn(ref), np.fft.fftn(mov)), dict(space="fourier", upsample_factor=10)),
        ((np.fft.fftn(ref), np.fft.fftn(mov)), dict(space="fourier", disambiguate=True)),
        ((ref + 1j * mov, mov + 1j * ref), dict(upsample_factor=10)),
        ((bad_ref, mov), dict(reference_mask=mask)),
        ((bad_ref, mov), dict(reference_mask=mask, moving_mask=mask, upsample_factor=20)),
        (((ref * 100).astype(np.int16), (mov * 100).astype(np.int16)), dict(upsample_factor=4)),
    ]
    for args, kwargs in calls:
        frozen = _readonly(*args)
        originals = [a.copy() for a in frozen]
        kw = {k: (_readonly(v)[0] if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
        mask_copies = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
        pcc(*frozen, **kw)  # read-only arrays: an in-place write would raise
        for a, o in zip(frozen, originals):
            np.testing.assert_array_equal(a, o)
        for k, v in mask_copies.items():
            np.testing.assert_array_equal(kw[k], v)


# ---------------------------------------------------------------------------
# properties (hypothesis)


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    dy=st.integers(-12, 12),
    dx=st.integers(-12, 12),
    normalization=st.sampled_from(["phase", None]),
)
def test_property_integer_shift_recovered(seed, dy, dx, normalization):
    rng = np.random.default_rng(seed)
    ref = smooth(rng, (40, 48))
    mov = np.roll(ref, (dy, dx), axis=(0, 1))
    shift, _, _ = pcc(ref, mov, normalization=normalization)
    np.testing.assert_array_equal(shift, [-dy, -dx])
    theirs, _, _ = sk_pcc(ref, mov, normalization=normalization)
    np.testing.assert_array_equal(shift, theirs)


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    dy=st.floats(-9, 9),
    dx=st.floats(-9, 9),
    normalization=st.sampled_from(["phase", None]),
)
def test_property_subpixel_shift_recovered(seed, dy, dx, normalization):
    rng = np.random.default_rng(seed)
    ref = smooth(rng, (48, 40), sigma=2.5)
    mov = fourier_shifted(ref, (dy, dx))
    shift, _, _ = pcc(ref, mov, upsample_factor=20, normalization=normalization)
    # None: the nearest 1/20 grid point plus a little. "phase" gives the Nyquist
    # terms (which a subpixel shift of a real image cannot keep) full weight:
    # about 1/N px more, for scikit-image as well.
    tol = 0.04 if normalization is None else 0.08
    np.testing.assert_allclose(shift, [-dy, -dx], atol=tol)
    theirs, _, _ = sk_pcc(ref, mov, upsample_factor=20, normalization=normalization)
    assert np.abs(shift - theirs).max() <= 1 / 20 + 1e-6


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    dy=st.integers(-8, 8),
    dx=st.integers(-8, 8),
)
def test_property_masked_integer_shift_recovered_despite_static_block(seed, dy, dx):
    rng = np.random.default_rng(seed)
    shape = (48, 48)
    ref, mov = crop_pair(rng, shape, (dy, dx))
    block = ~random_mask(rng, shape, "block")
    ref = np.where(block, 4.0, ref)  # static, bright: what fools unmasked registration
    mov = np.where(block, 4.0, mov)
    shift, _, _ = pcc(ref, mov, reference_mask=~block)
    np.testing.assert_array_equal(shift, [-dy, -dx])
    theirs, _, _ = sk_pcc(ref, mov, reference_mask=~block)
    np.testing.assert_array_equal(shift, theirs)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), dy=st.floats(-6, 6), dx=st.floats(-6, 6))
def test_property_masked_subpixel_shift_recovered(seed, dy, dx):
    rng = np.random.default_rng(seed)
    shape = (56, 56)
    ref, mov = crop_pair(rng, shape, (dy, dx), sigma=3.0)
    block = ~random_mask(rng, shape, "block")
    ref = np.where(block, 4.0, ref)
    mov = np.where(block, 4.0, mov)
    shift, _, _ = pcc(ref, mov, reference_mask=~block, upsample_factor=20)
    np.testing.assert_allclose(shift, [-dy, -dx], atol=0.1)



@pytest.mark.parametrize("factor", [1e6, 1001, float("inf"), float("nan"), 0.5, -3])
def test_absurd_or_non_finite_upsample_factors_are_refused_with_the_range(factor):
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 32, 32))
    for kwargs in ({}, {"reference_mask": np.ones((32, 32), bool)}):
        with pytest.raises(ValueError, match=r"from 1 \(whole pixels\) to 1000"):
            pcc(a, b, upsample_factor=factor, **kwargs)


def test_zero_dimensional_images_are_a_plain_error():
    with pytest.raises(ValueError, match="reference image is a single value"):
        pcc(np.float64(1.0), np.float64(2.0))
    with pytest.raises(ValueError, match="moving image is a single value"):
        pcc(np.ones(4), np.float64(2.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_and_phasediff_are_numpy_floats_like_scikit_image(dtype):
    rng = np.random.default_rng(2)
    a = rng.random((32, 32)).astype(dtype)
    b = np.roll(a, (2, -3), axis=(0, 1))
    for upsample in (1, 10):
        ours = pcc(a, b, upsample_factor=upsample)
        theirs = sk_pcc(a, b, upsample_factor=upsample)
        for mine, ref in zip(ours[1:], theirs[1:]):
            assert isinstance(mine, np.floating) and type(mine) is type(ref), (mine, ref)


def test_empty_image_warnings_point_at_the_caller_in_scikit_images_order():
    import warnings

    image = np.random.default_rng(3).random((32, 32))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        shift, error, phasediff = pcc(image, image * 0, disambiguate=True)
    assert [r.filename for r in records] == [__file__, __file__]
    assert [r.lineno for r in records] == [line, line]
    assert "Could not determine real-space shift" in str(records[0].message)
    assert "Could not determine RMS error" in str(records[1].message)
    assert np.isnan(error) and phasediff == 0.0
