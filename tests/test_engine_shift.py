"""apply_shifts: eager and dask-lazy aligned copies of a stack."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import apply_shifts, register_stack


def smooth_periodic(rng, shape, keep=0.25):
    """A band-limited periodic image (Fourier shifts of it are exact)."""
    spec = np.fft.fftn(rng.normal(size=shape))
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    spec[np.sqrt(sum(f * f for f in freqs)) > keep * 0.5] = 0
    return np.fft.ifftn(spec).real


def fourier_shifted(img, shift):
    return np.fft.ifftn(ndi.fourier_shift(np.fft.fftn(img), shift)).real


def test_integer_shift_moves_content_by_the_shift():
    rng = np.random.default_rng(0)
    frame = rng.random((20, 24))
    stack = np.stack([frame, frame])
    out = apply_shifts(stack, [[0, 0], [3, -2]], method="spline")
    np.testing.assert_allclose(out[0], frame, atol=1e-12)
    # output pixel (y, x) comes from input (y - 3, x + 2)
    np.testing.assert_allclose(out[1, 3:, :-2], frame[:-3, 2:], atol=1e-6)
    assert np.isnan(out[1, :3]).all() and np.isnan(out[1, :, -2:]).all()
    assert np.isfinite(out[1, 3:, :-2]).all()


@pytest.mark.parametrize("method", ["spline", "fourier"])
def test_applying_registered_shifts_aligns_the_stack(method):
    """The round trip: register, apply, and every frame matches the reference."""
    rng = np.random.default_rng(1)
    base = smooth_periodic(rng, (64, 64))
    true = np.array([[0, 0], [1.5, -2.25], [-3.0, 0.5], [2.7, 3.1]])
    stack = np.stack([fourier_shifted(base, s) for s in true])
    result = register_stack(stack, upsample_factor=100)
    np.testing.assert_allclose(result.shifts, -true, atol=0.02)
    aligned = apply_shifts(stack, result.shifts, method=method, fill_value=None)
    interior = (slice(6, -6), slice(6, -6))
    for i in range(len(true)):
        err = np.abs(aligned[i][interior] - base[interior]).max()
        assert err < 0.05 * np.ptp(base), (i, err)


def test_fourier_method_is_exact_for_band_limited_frames():
    rng = np.random.default_rng(2)
    base = smooth_periodic(rng, (48, 40))
    shifts = np.array([[0.0, 0.0], [2.3, -1.7], [-4.5, 0.25]])
    stack = np.stack([fourier_shifted(base, -s) for s in shifts])  # applying s undoes it
    out = apply_shifts(stack, shifts, method="fourier", fill_value=None)
    for i in range(3):
        np.testing.assert_allclose(out[i], base, atol=1e-9)
    filled = apply_shifts(stack, shifts, method="fourier")
    inside = np.isfinite(filled)
    np.testing.assert_allclose(filled[inside], out[inside])


def test_spline_orders():
    rng = np.random.default_rng(3)
    frame = ndi.gaussian_filter(rng.random((32, 32)), 2)
    stack = np.stack([frame] * 2)
    shifts = [[0, 0], [1.5, 0.5]]
    exact = ndi.shift(frame, shifts[1], order=3, mode="nearest")
    out = apply_shifts(stack, shifts, order=3, fill_value=None)
    np.testing.assert_allclose(out[1], exact, atol=1e-12)
    nearest = apply_shifts(stack, [[0, 0], [2, 1]], order=0, fill_value=None)
    np.testing.assert_array_equal(nearest[1, 2:, 1:], frame[:-2, :-1])
    linear = apply_shifts(stack, shifts, order=1, fill_value=None)
    np.testing.assert_allclose(linear[1, 10, 10], 0.25 * (frame[8, 9] + frame[8, 10] + frame[9, 9] + frame[9, 10]))


def test_fill_value():
    stack = np.ones((2, 10, 12), np.float32)
    shifts = [[0, 0], [-2.5, 1]]
    nan = apply_shifts(stack, shifts)
    assert np.isnan(nan[1, -3:]).all() and np.isnan(nan[1, :, :1]).all()
    assert np.isfinite(nan[1, :-3, 1:]).all() and np.isfinite(nan[0]).all()
    zero = apply_shifts(stack, shifts, fill_value=0.0)
    assert (zero[1, -3:] == 0).all() and (zero[1, :-3, 1:] == 1).all()
    kept = apply_shifts(stack, shifts, fill_value=None)
    assert np.isfinite(kept).all()


def test_zero_shift_is_an_equal_copy():
    stack = np.random.default_rng(4).random((3, 8, 8)).astype(np.float32)
    out = apply_shifts(stack, np.zeros((3, 2)))
    np.testing.assert_array_equal(out, stack)
    assert out is not stack and not np.shares_memory(out, stack)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.uint8, np.float32),
        (np.uint16, np.float32),
        (np.int32, np.float32),
        (bool, np.float32),
        (np.float16, np.float16),
        (np.float32, np.float32),
        (np.float64, np.float64),
    ],
)
def test_output_dtype(dtype, expected):
    stack = (np.random.default_rng(5).random((2, 12, 12)) * 200).astype(dtype)
    out = apply_shifts(stack, [[0, 0], [1, 1]])
    assert out.dtype == expected
    np.testing.assert_array_equal(out[0], stack[0].astype(expected))
    np.testing.assert_allclose(out[1, 1:, 1:], stack[1, :-1, :-1].astype(expected), rtol=1e-3 if expected == np.float16 else 1e-5, atol=1e-4)


def test_valid_mask_is_shifted_with_the_frame():
    valid = np.ones((16, 20), bool)
    valid[5:9, 6:10] = False  # a block
    stack = np.ones((3, 16, 20), np.float32)
    shifts = np.array([[0, 0], [2, -3], [-1.5, 0.5]])
    out, moved = apply_shifts(stack, shifts, valid_mask=valid, return_valid=True)
    assert moved.dtype == bool and moved.shape == stack.shape
    np.testing.assert_array_equal(moved[0], valid)
    expect = np.zeros_like(valid)
    expect[2:, :-3] = valid[:-2, 3:]
    np.testing.assert_array_equal(moved[1], expect)
    # subpixel (-1.5, 0.5): output (y, x) interpolates input rows y+1, y+2 and
    # columns x-1, x; it is valid only if all of them are valid and inside
    expect = np.ones_like(valid)
    expect[3:8, 6:11] = False  # touches the block
    expect[14:] = False  # row y+2 is outside the frame
    expect[:, 0] = False  # column x-1 is outside the frame
    np.testing.assert_array_equal(moved[2], expect)
    # everything valid is finite in the aligned stack
    assert np.isfinite(out[moved]).all()
    # no valid_mask: only the frame edges are invalid
    _, edges = apply_shifts(stack, shifts, return_valid=True)
    np.testing.assert_array_equal(edges[1], np.pad(np.ones((14, 17), bool), ((2, 0), (0, 3))))


def test_3d_frames():
    rng = np.random.default_rng(6)
    stack = rng.random((2, 6, 8, 10))
    out = apply_shifts(stack, [[0, 0, 0], [1, -2, 3]])
    np.testing.assert_allclose(out[1, 1:, :-2, 3:], stack[1, :-1, 2:, :-3], atol=1e-12)
    assert np.isnan(out[1, 0]).all()


# ---------------------------------------------------------------------------
# dask


@pytest.mark.parametrize("method", ["spline", "fourier"])
def test_dask_in_dask_out_equals_eager(method):
    da = pytest.importorskip("dask.array")
    s = make_beam_block_stack(7, (40, 48), seed=7, noise="poisson")
    shifts = s.expected_shifts()
    eager, eager_valid = apply_shifts(s.stack, shifts, method=method, valid_mask=s.valid, return_valid=True)
    for chunks in ((3, -1, -1), (2, 20, 24), (1, -1, -1)):
        lazy_in = da.from_array(s.stack, chunks=chunks)
        lazy = apply_shifts(lazy_in, shifts, method=method, valid_mask=s.valid)
        assert isinstance(lazy, da.Array)
        assert lazy.shape == s.stack.shape and lazy.dtype == eager.dtype
        np.testing.assert_array_equal(lazy.compute(), eager)
        lazy, lazy_valid = apply_shifts(lazy_in, shifts, method=method, valid_mask=s.valid, return_valid=True)
        assert isinstance(lazy_valid, da.Array) and lazy_valid.dtype == bool
        np.testing.assert_array_equal(lazy_valid.compute(), eager_valid)
        # lazily: one frame alone
        np.testing.assert_array_equal(lazy[4].compute(), eager[4])


def test_dask_stays_lazy_until_computed():
    da = pytest.importorskip("dask.array")
    calls = []

    def frames(block):
        calls.append(1)
        return block

    stack = da.from_array(np.ones((4, 8, 8), np.float32), chunks=(1, -1, -1)).map_blocks(frames)
    calls.clear()
    out = apply_shifts(stack, np.zeros((4, 2)))
    assert calls == [] and isinstance(out, da.Array)
    out.compute()
    assert len(calls) >= 4


def test_dask_int_stack_gives_float32():
    da = pytest.importorskip("dask.array")
    stack = da.from_array((np.arange(2 * 6 * 6).reshape(2, 6, 6)).astype(np.uint16), chunks=(1, 6, 6))
    out = apply_shifts(stack, [[0, 0], [1, 0]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.compute()[1, 1:], np.asarray(stack[1, :-1], np.float32))


# ---------------------------------------------------------------------------
# errors and inputs


@pytest.mark.parametrize(
    "shifts, kwargs, match",
    [
        (np.zeros((2, 2)), {}, "one row per frame"),
        (np.zeros((3, 3)), {}, "columns"),
        (np.zeros(3), {}, "one row per frame"),
        (np.full((3, 2), np.nan), {}, "NaN"),
        (np.zeros((3, 2)), dict(method="bicubic"), "method"),
        (np.zeros((3, 2)), dict(order=7), "order"),
        (np.zeros((3, 2)), dict(order=1.5), "order"),
        (np.zeros((3, 2)), dict(valid_mask=np.ones((5, 5), bool)), "valid_mask"),
    ],
)
def test_bad_input_raises_value_error(shifts, kwargs, match):
    stack = np.zeros((3, 8, 9))
    with pytest.raises(ValueError, match=match):
        apply_shifts(stack, shifts, **kwargs)


def test_bad_stack_shape_raises():
    with pytest.raises(ValueError, match="stack"):
        apply_shifts(np.zeros(5), np.zeros((5, 0)))


def test_bad_input_raises_for_dask_too():
    da = pytest.importorskip("dask.array")
    stack = da.zeros((3, 8, 9), chunks=(1, 8, 9))
    with pytest.raises(ValueError, match="one row per frame"):
        apply_shifts(stack, np.zeros((4, 2)))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(8)
    stack = rng.random((3, 10, 10))
    shifts = rng.normal(size=(3, 2))
    valid = rng.random((10, 10)) > 0.2
    for a in (stack, shifts, valid):
        a.setflags(write=False)
    copies = stack.copy(), shifts.copy(), valid.copy()
    for method in ("spline", "fourier"):
        apply_shifts(stack, shifts, method=method, valid_mask=valid, return_valid=True)
    np.testing.assert_array_equal(stack, copies[0])
    np.testing.assert_array_equal(shifts, copies[1])
    np.testing.assert_array_equal(valid, copies[2])


def test_apply_shifts_refuses_complex_frames_instead_of_dropping_the_imaginary_part():
    stack = np.ones((2, 8, 8), complex)
    with pytest.raises(ValueError, match="real-valued frames.*complex128.*real and imaginary"):
        apply_shifts(stack, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="real-valued frames.*<U1"):
        apply_shifts(np.full((2, 4, 4), "a"), np.zeros((2, 2)))


def test_apply_shifts_takes_a_list_of_frames():
    rng = np.random.default_rng(0)
    f0, f1 = rng.random((2, 16, 16))
    shifts = np.array([[0.0, 0.0], [1.5, -2.0]])
    np.testing.assert_array_equal(apply_shifts([f0, f1], shifts),
                                  apply_shifts(np.stack([f0, f1]), shifts))


@pytest.mark.parametrize("how", ["spline", "fourier", "rotation"])
def test_ignored_pixels_do_not_reach_the_valid_ones(how):
    """A hot pixel 50x the pattern and NaN painted under the mask: with the mask given, the
    valid output is what the clean frame gives (no ringing, no NaN spreading); without it, the
    hot pixel rings into its neighbours."""
    from napari_maskalign.engine import apply_transforms, similarity_transforms

    rng = np.random.default_rng(5)
    clean = ndi.gaussian_filter(rng.random((64, 64)), 2.0).astype(np.float32)
    clean = (clean - clean.min()) / np.ptp(clean)
    valid = np.ones(clean.shape, bool)
    valid[30, 30] = False  # a hot pixel
    valid[5:12, 40:50] = False  # a painted patch holding NaN
    dirty = clean.copy()
    dirty[30, 30] = 50.0
    dirty[5:12, 40:50] = np.nan
    before = dirty.copy()
    stack, shift = np.stack([clean, dirty]), [[0.0, 0.0], [1.37, -2.61]]

    def move(frames, **kw):
        if how == "rotation":
            t = similarity_transforms(np.array(shift), np.array([0.0, 2.5]), np.ones(2),
                                      clean.shape)
            return apply_transforms(frames, t, **kw)
        return apply_shifts(frames, shift, method=how, **kw)

    got, data = move(stack, valid_mask=valid, return_valid=True)
    np.testing.assert_array_equal(stack[1], before)  # the input is not modified
    want = move(np.stack([clean, clean]))
    near = data[1] & np.isfinite(want[1])
    assert near.sum() > 0.8 * clean.size and np.isfinite(got[1][near]).all()
    assert np.abs(got[1][near] - want[1][near]).max() < 0.05  # of a pattern spanning 0..1
    # without the mask the hot pixel rings into the valid pixels next to it
    ringing = move(np.stack([clean, np.nan_to_num(dirty)]))
    assert np.nanmax(np.abs(ringing[1] - want[1])[near & ~ndi.binary_dilation(~valid, iterations=1)]) > 0.5


def test_fill_index_is_made_once_per_mask_and_follows_its_content(monkeypatch):
    """The nearest-valid fill of a mask is computed once however many frames are aligned
    with it (one call per frame, as the mean's pass makes them), and a mask changed in
    place is filled as it is now, not as it was."""
    from napari_maskalign.engine.models import _fill

    _fill._FILL_CACHE.clear()
    calls = []
    edt = _fill.ndi.distance_transform_edt

    def counted(*args, **kwargs):
        calls.append(1)
        return edt(*args, **kwargs)

    monkeypatch.setattr(_fill.ndi, "distance_transform_edt", counted)
    rng = np.random.default_rng(9)
    frame = ndi.gaussian_filter(rng.random((48, 48)), 2.0).astype(np.float32)
    valid = np.ones(frame.shape, bool)
    valid[10:20, 10:20] = False
    frame_hot = frame.copy()
    frame_hot[10:20, 10:20] = 100.0  # behind the mask: must not ring into valid pixels
    shift = [[0.4, -1.3]]
    first = apply_shifts(frame_hot[None], shift, valid_mask=valid)
    for _ in range(4):
        np.testing.assert_array_equal(apply_shifts(frame_hot[None], shift, valid_mask=valid),
                                      first)
    assert len(calls) == 1
    index = _fill.nearest_fill_index(valid)
    assert not index[0].flags.writeable and not index[1].flags.writeable
    # the same mask changed in place: a new fill, and its new hot patch does not ring either
    valid[30:40, 25:35] = False
    frame_hot[30:40, 25:35] = -100.0
    again, data = apply_shifts(frame_hot[None], shift, valid_mask=valid, return_valid=True)
    assert len(calls) == 2
    clean = apply_shifts(frame[None], shift)
    near = data[0] & np.isfinite(clean[0])
    assert np.abs(again[0][near] - clean[0][near]).max() < 0.05 * np.ptp(frame)
    # an index too large to keep is still right, only not kept
    monkeypatch.setattr(_fill._FILL_CACHE, "max_item_bytes", 0)
    _fill._FILL_CACHE.clear()
    targets, sources = _fill.nearest_fill_index(valid)
    assert not _fill._FILL_CACHE
    np.testing.assert_array_equal(np.sort(targets), np.flatnonzero(~valid))
    assert valid.ravel()[sources].all()
