"""register_stack / iter_register_stack / FrameRegistrar / flag_outliers.

Ground truth comes from the synthetic beam-block generator: the pattern drifts
by a known amount while the beam block stays put, so registration that does
not honour the mask locks onto the block.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import (
    FrameRegistrar,
    Progress,
    RegistrationOptions,
    RegistrationResult,
    flag_outliers,
    iter_register_stack,
    register_stack,
)

SHAPE = (96, 96)


def synth(n=8, shape=SHAPE, *, drift=None, noise=None, seed=2, max_drift=3.0, **kw):
    return make_beam_block_stack(n, shape, drift=drift, noise=noise, seed=seed, max_drift=max_drift, **kw)


def integer_drift(n, seed=0, high=4):
    rng = np.random.default_rng(seed)
    d = rng.integers(-high, high + 1, size=(n, 2)).astype(float)
    d[0] = 0
    return d


def run(r):
    """Drain a registration run; return (progress list, result)."""
    progress = list(r)
    assert len(progress) == r.total  # the run says up front how many steps it takes
    return progress, r.result


def assert_same_result(a: RegistrationResult, b: RegistrationResult):
    np.testing.assert_array_equal(a.shifts, b.shifts)
    np.testing.assert_array_equal(a.raw_shifts, b.raw_shifts)
    np.testing.assert_array_equal(a.quality, b.quality)
    np.testing.assert_array_equal(a.outliers, b.outliers)
    if a.xcorr is None:
        assert b.xcorr is None
    else:
        np.testing.assert_array_equal(a.xcorr, b.xcorr)


# ---------------------------------------------------------------------------
# accuracy


def test_beam_block_stack_subpixel_accuracy_target():
    """Issue target: masked, upsample 20, median error <= 0.03 px at moderate noise."""
    s = make_beam_block_stack(16, (128, 128), noise="poisson", counts=400, seed=3, max_drift=4.0)
    truth = s.expected_shifts()
    masked = register_stack(s.stack, mask=s.valid, upsample_factor=20)
    err = np.linalg.norm(masked.shifts - truth, axis=1)[1:]
    assert np.median(err) <= 0.03, err
    assert err.max() <= 0.1, err
    assert not masked.outliers.any()
    # the mask is what makes this work: unmasked registration locks onto the static block
    unmasked = register_stack(s.stack, upsample_factor=20)
    err_unmasked = np.linalg.norm(unmasked.shifts - truth, axis=1)[1:]
    assert np.median(err_unmasked) > 5 * np.median(err)


def test_unmasked_registration_without_block_recovers_drift():
    # normalization=None (the stack default): "phase" whitening is known to fail on
    # smooth diffraction patterns (scikit-image issue 6456), so it is not asserted here
    s = synth(10, beam_block=False, noise="poisson")
    r = register_stack(s.stack, upsample_factor=20)
    np.testing.assert_allclose(r.shifts, s.expected_shifts(), atol=0.1)
    assert r.params["normalization"] is None


def test_masked_whole_pixel_integer_drift_is_exact():
    s = synth(8, drift=integer_drift(8))
    r = register_stack(s.stack, mask=s.valid)
    np.testing.assert_array_equal(r.shifts, s.expected_shifts())
    np.testing.assert_allclose(r.quality, 1.0, atol=1e-5)


def test_masked_upsampled_equals_whole_pixel_rounded_for_integer_shifts():
    s = synth(8, drift=integer_drift(8, seed=5, high=5))
    whole = register_stack(s.stack, mask=s.valid, upsample_factor=1)
    fine = register_stack(s.stack, mask=s.valid, upsample_factor=20)
    np.testing.assert_array_equal(np.round(fine.shifts), whole.shifts)
    np.testing.assert_allclose(fine.shifts, whole.shifts, atol=0.05 + 1e-9)


def test_3d_frames():
    s = make_beam_block_stack(5, (20, 28, 28), noise=None, seed=4, max_drift=2.0)
    r = register_stack(s.stack, mask=s.valid, upsample_factor=10, return_xcorr=True, xcorr_radius=4)
    assert r.shifts.shape == (5, 3) and r.ndim == 3
    np.testing.assert_allclose(r.shifts, s.expected_shifts(), atol=0.1)
    assert r.xcorr.shape == (5, 9, 9, 9)
    free = make_beam_block_stack(5, (20, 28, 28), noise=None, seed=4, max_drift=2.0, beam_block=False)
    r = register_stack(free.stack, upsample_factor=10)
    np.testing.assert_allclose(r.shifts, free.expected_shifts(), atol=0.1)


# ---------------------------------------------------------------------------
# reference modes


def test_reference_index_negative_equals_positive():
    s = synth(7, noise="poisson")
    last = register_stack(s.stack, mask=s.valid, reference=-1, upsample_factor=20)
    same = register_stack(s.stack, mask=s.valid, reference=6, upsample_factor=20)
    assert_same_result(last, same)
    np.testing.assert_allclose(last.shifts, s.expected_shifts(reference=6), atol=0.1)
    np.testing.assert_array_equal(last.shifts[6], [0, 0])
    mid = register_stack(s.stack, mask=s.valid, reference=-4, upsample_factor=20)
    np.testing.assert_allclose(mid.shifts, s.expected_shifts(reference=3), atol=0.1)


def test_reference_explicit_image_equals_index():
    s = synth(6, noise="poisson")
    by_index = register_stack(s.stack, mask=s.valid, reference=3, upsample_factor=10)
    by_image = register_stack(s.stack, mask=s.valid, reference=s.stack[3].copy(), upsample_factor=10)
    assert_same_result(by_index, by_image)
    assert by_image.params["reference"] == "image"
    assert by_index.params["reference"] == 3
    # an image that is not in the stack: the drift-free pattern
    free = synth(6, drift=np.zeros((6, 2)))
    r = register_stack(s.stack, mask=s.valid, reference=free.stack[0], upsample_factor=20)
    np.testing.assert_allclose(r.shifts, -s.drift, atol=0.1)


def test_reference_mean_with_reference_range():
    drift = np.array([[0, 0], [1.5, -1], [2.25, 0.5], [2.25, 0.5], [2.25, 0.5], [3, 2], [-1, 1]])
    s = synth(7, drift=drift)
    # frames 2..4 are identical, so their mean is frame 2
    mean = register_stack(s.stack, mask=s.valid, reference="mean", reference_range=(2, 5), upsample_factor=20)
    frame2 = register_stack(s.stack, mask=s.valid, reference=2, upsample_factor=20)
    assert_same_result(mean, frame2)
    assert mean.params["reference"] == "mean" and mean.params["reference_range"] == (2, 5)
    # the default range is every frame: a different reference
    everything = register_stack(s.stack, mask=s.valid, reference="mean", upsample_factor=20)
    assert not np.allclose(everything.shifts, frame2.shifts, atol=0.2)
    # ... whose relative shifts are still right
    rel = everything.shifts - s.expected_shifts()
    assert np.ptp(rel, axis=0).max() < 0.2


@pytest.mark.parametrize("masked", [True, False])
def test_reference_previous_accumulates(masked):
    drift = np.cumsum(integer_drift(8, seed=8, high=2), axis=0)
    s = synth(8, drift=drift, beam_block=masked)
    mask = s.valid if masked else None
    r = register_stack(s.stack, mask=mask, reference="previous")
    np.testing.assert_array_equal(r.shifts, s.expected_shifts())
    assert r.quality[1:].min() > 0.9
    sub = synth(8, noise="poisson", beam_block=masked)
    r = register_stack(sub.stack, mask=s.valid if masked else None, reference="previous", upsample_factor=20)
    np.testing.assert_allclose(r.shifts, sub.expected_shifts(), atol=0.15)
    np.testing.assert_array_equal(r.shifts[0], [0, 0])


def test_reference_template_gets_relative_shifts_right():
    s = synth(10, noise="poisson", counts=100, seed=6)
    progress, r = run(
        iter_register_stack(s.stack, mask=s.valid, reference="template", template_iterations=2, upsample_factor=20)
    )
    rel = r.shifts - s.expected_shifts()  # template shifts are relative to the template's position
    assert np.ptp(rel, axis=0).max() < 0.15, rel
    # the mean, then at most two template passes (fewer once the shifts settle)
    assert len(progress) in (2 * 10, 3 * 10)
    assert {p.total for p in progress} == {30}
    assert [p.done for p in progress] == list(range(1, len(progress) + 1))
    assert len({p.stage for p in progress}) == len(progress) // 10
    assert r.params["template_iterations"] == 2
    assert r.uncertainties.shape == (10, 2) and np.all(r.uncertainties > 0)


# ---------------------------------------------------------------------------
# resuming


@pytest.mark.parametrize("reference", [0, -1, "mean", "previous"])
def test_resume_equals_uninterrupted_tail(reference):
    s = synth(9, noise="poisson")
    kw = dict(mask=s.valid, reference=reference, upsample_factor=20)
    full = register_stack(s.stack, **kw)
    k = 5
    previous_shift = full.raw_shifts[k - 1] if reference == "previous" else None
    tail = register_stack(s.stack, start=k, previous_shift=previous_shift, **kw)
    assert tail.n_frames == 9 - k
    assert tail.params["start"] == k and tail.params["n_frames"] == 9
    np.testing.assert_allclose(tail.raw_shifts, full.raw_shifts[k:], atol=1e-9)
    np.testing.assert_allclose(tail.quality, full.quality[k:], atol=1e-9)


def test_resume_progress_counts_remaining_frames():
    s = synth(6)
    progress, r = run(iter_register_stack(s.stack, mask=s.valid, start=4))
    assert [p.frame for p in progress] == [4, 5]
    assert [(p.done, p.total) for p in progress] == [(1, 2), (2, 2)]


# ---------------------------------------------------------------------------
# max_shift


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("upsample_factor", [1, 20])
def test_max_shift_bounds_the_result(masked, upsample_factor):
    drift = np.array([[0, 0], [1, 0], [2, 0.5], [7, -1], [3, 9], [2, 2], [-3.4, 0.2]])
    s = synth(7, drift=drift, beam_block=masked)
    mask = s.valid if masked else None
    tol = 0.1 if upsample_factor > 1 else 0.5 + 1e-9
    free = register_stack(s.stack, mask=mask, upsample_factor=upsample_factor)
    np.testing.assert_allclose(free.shifts, s.expected_shifts(), atol=tol)
    for bound in (3, 2.5):
        r = register_stack(s.stack, mask=mask, max_shift=bound, upsample_factor=upsample_factor)
        assert np.all(np.abs(r.shifts) <= bound + 1e-9), (bound, r.shifts)
        inside = np.all(np.abs(s.expected_shifts()) <= bound - 0.5, axis=1)
        np.testing.assert_allclose(r.shifts[inside], s.expected_shifts()[inside], atol=tol)
    # per-axis bounds
    r = register_stack(s.stack, mask=mask, max_shift=(8, 1.5), upsample_factor=upsample_factor)
    assert np.all(np.abs(r.shifts[:, 0]) <= 8 + 1e-9) and np.all(np.abs(r.shifts[:, 1]) <= 1.5 + 1e-9)
    np.testing.assert_allclose(r.shifts[3], s.expected_shifts()[3], atol=tol)


def test_frame_registrar_max_shift_subpixel_stays_inside():
    """The subpixel refinement must not walk out of the max_shift box."""
    s = synth(2, drift=np.array([[0, 0], [3.4, -3.45]]), beam_block=False)
    for mask in (None, np.ones(SHAPE, bool)):
        reg = FrameRegistrar(s.stack[0], mask, RegistrationOptions(max_shift=3, upsample_factor=20))
        shift = reg.register(s.stack[1]).shift
        assert np.all(np.abs(shift) <= 3 + 1e-9), shift
        np.testing.assert_allclose(np.abs(shift), [3, 3], atol=0.05 + 1e-9)


# ---------------------------------------------------------------------------
# quality, constant frames, outliers


@pytest.mark.parametrize("reference", [0, "mean", "previous", "template"])
@pytest.mark.parametrize("masked", [True, False])
def test_quality_in_unit_interval(reference, masked):
    s = synth(6, noise="poisson")
    stack = s.stack.copy()
    stack[2] = stack[2].max() - stack[2]  # inverted contrast: anti-correlated
    stack[4] = np.random.default_rng(0).random(SHAPE) * 100  # unrelated
    r = register_stack(stack, mask=s.valid if masked else None, reference=reference, upsample_factor=10)
    assert np.all(np.isfinite(r.quality))
    assert np.all((r.quality >= 0) & (r.quality <= 1)), r.quality
    if reference == 0:
        assert r.quality[0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("reference", [0, "mean", "previous", "template"])
@pytest.mark.parametrize("masked", [True, False])
def test_constant_frame_gets_quality_zero(reference, masked):
    drift = np.array([[0, 0], [1, -1], [2, 0], [2, 0], [3, 1], [3, 2]], float)
    s = synth(6, drift=drift)
    stack = s.stack.copy()
    stack[3] = 7.0
    r = register_stack(stack, mask=s.valid if masked else None, reference=reference)
    assert r.quality[3] == 0.0
    assert np.all(np.isfinite(r.shifts))
    if reference == "previous":
        # the chain continues from the last frame that could be registered
        np.testing.assert_array_equal(r.shifts[3], r.shifts[2])
        if masked:
            np.testing.assert_array_equal(r.shifts[4:], s.expected_shifts()[4:])
    else:
        np.testing.assert_array_equal(r.shifts[3], [0, 0])


def test_constant_frame_registrar_returns_empty_result():
    s = synth(2)
    reg = FrameRegistrar(s.stack[0], s.valid, RegistrationOptions(return_xcorr=True, xcorr_radius=3))
    out = reg.register(np.full(SHAPE, 5.0, np.float32))
    assert out.quality == 0.0
    np.testing.assert_array_equal(out.shift, [0, 0])
    assert out.xcorr.shape == (7, 7) and not out.xcorr.any()
    # a frame constant on its valid pixels (the block may differ) too
    frame = np.where(s.valid, 3.0, 50.0)
    assert reg.register(frame).quality == 0.0


def test_garbage_frame_is_flagged_and_interpolated():
    n = 12
    t = np.arange(n)
    drift = np.stack([0.3 * t, -0.2 * t + 0.05 * t**1.5], axis=1)
    drift -= drift[0]
    s = synth(n, drift=drift, noise="poisson")
    stack = s.stack.copy()
    stack[6] = np.random.default_rng(1).poisson(50, size=SHAPE).astype(np.float32)
    r = register_stack(stack, mask=s.valid, upsample_factor=20)
    assert r.outliers[6] and r.outliers.sum() == 1, r.outliers
    np.testing.assert_array_equal(r.shifts, r.raw_shifts)  # not asked to interpolate
    fixed = register_stack(stack, mask=s.valid, upsample_factor=20, interpolate_outliers=True)
    np.testing.assert_array_equal(fixed.raw_shifts, r.raw_shifts)
    np.testing.assert_allclose(fixed.shifts[6], 0.5 * (r.raw_shifts[5] + r.raw_shifts[7]), atol=1e-12)
    keep = np.arange(n) != 6
    np.testing.assert_array_equal(fixed.shifts[keep], r.raw_shifts[keep])
    np.testing.assert_allclose(fixed.shifts[6], s.expected_shifts()[6], atol=0.1)
    assert fixed.params["interpolate_outliers"] is True


def test_outlier_thresholds_are_honoured():
    s = synth(8, noise="poisson")
    r = register_stack(s.stack, mask=s.valid, upsample_factor=10, min_quality=1.01)
    assert r.outliers.all()
    r = register_stack(s.stack, mask=s.valid, upsample_factor=10, min_quality=0.0, max_jump=1e6)
    assert not r.outliers.any()


def test_flag_outliers_directly():
    shifts = np.zeros((9, 2))
    shifts[:, 0] = np.linspace(0, 4, 9)
    quality = np.full(9, 0.95)
    assert not flag_outliers(shifts, quality).any()
    jumped = shifts.copy()
    jumped[4] += [6, -5]
    assert flag_outliers(jumped, quality).tolist() == [i == 4 for i in range(9)]
    assert not flag_outliers(jumped, quality, max_jump=10).any()
    low = quality.copy()
    low[2] = 0.1
    assert flag_outliers(shifts, low).tolist() == [i == 2 for i in range(9)]
    assert not flag_outliers(shifts, low, min_quality=0.05).any()
    assert flag_outliers(np.zeros((0, 2)), np.zeros(0)).shape == (0,)


# ---------------------------------------------------------------------------
# correlation window


@pytest.mark.parametrize("masked", [True, False])
def test_xcorr_window_peak_sits_at_the_shift(masked):
    s = synth(6, drift=integer_drift(6, seed=3, high=4) + [[0, 0]] + 0.3 * (np.arange(6) > 0)[:, None])
    radius = 6
    mask = s.valid if masked else None
    r = register_stack(s.stack, mask=mask, return_xcorr=True, xcorr_radius=radius)
    assert r.xcorr.shape == (6, 13, 13) and r.xcorr.dtype == np.float32
    for i in range(6):
        peak = np.unravel_index(np.argmax(r.xcorr[i]), r.xcorr[i].shape)
        np.testing.assert_array_equal(peak, radius + np.round(r.shifts[i]), err_msg=f"frame {i}")
    fine = register_stack(s.stack, mask=mask, return_xcorr=True, xcorr_radius=radius, upsample_factor=20)
    for i in range(6):
        peak = np.unravel_index(np.argmax(fine.xcorr[i]), fine.xcorr[i].shape)
        assert np.all(np.abs(np.array(peak) - radius - fine.shifts[i]) <= 1.0), (i, peak, fine.shifts[i])
    assert register_stack(s.stack, mask=mask).xcorr is None


# ---------------------------------------------------------------------------
# stack types


def test_numpy_memmap_and_dask_stacks_agree(tmp_path):
    da = pytest.importorskip("dask.array")
    s = synth(7, noise="poisson")
    path = tmp_path / "stack.npy"
    np.save(path, s.stack)
    memmap = np.load(path, mmap_mode="r")
    stacks = {
        "memmap": memmap,
        "dask frames": da.from_array(s.stack, chunks=(3, -1, -1)),
        "dask tiles": da.from_array(s.stack, chunks=(2, 40, 50)),
    }
    for reference in (0, "mean", "previous"):
        kw = dict(mask=s.valid, reference=reference, upsample_factor=20, return_xcorr=True, xcorr_radius=4)
        eager = register_stack(s.stack, **kw)
        for name, stack in stacks.items():
            other = register_stack(stack, **kw)
            try:
                assert_same_result(other, eager)
            except AssertionError as exc:
                raise AssertionError(f"{name}, reference={reference!r}") from exc
    tail = register_stack(stacks["dask frames"], mask=s.valid, start=4, upsample_factor=20)
    np.testing.assert_array_equal(tail.raw_shifts, register_stack(s.stack, mask=s.valid, upsample_factor=20).raw_shifts[4:])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float64, np.float16])
def test_stack_dtypes(dtype):
    s = synth(5, drift=integer_drift(5, seed=9))
    stack = s.stack.astype(dtype)
    r = register_stack(stack, mask=s.valid)
    np.testing.assert_array_equal(r.shifts, s.expected_shifts())


def test_nan_under_the_mask_is_ignored():
    s = synth(5, noise="poisson")
    clean = np.where(s.valid, s.stack, 0).astype(np.float32)
    dirty = np.where(s.valid, s.stack, np.nan).astype(np.float32)
    dirty[2][~s.valid] = np.inf
    for reference in (0, "previous", "mean"):
        a = register_stack(clean, mask=s.valid, upsample_factor=20, reference=reference)
        b = register_stack(dirty, mask=s.valid, upsample_factor=20, reference=reference)
        np.testing.assert_array_equal(b.shifts, a.shifts)
        np.testing.assert_array_equal(b.quality, a.quality)


# ---------------------------------------------------------------------------
# generator, result, registrar


def test_generator_yields_progress_per_frame_and_returns_result():
    s = synth(5, noise="poisson")
    progress, result = run(iter_register_stack(s.stack, mask=s.valid, upsample_factor=10))
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.done for p in progress] == [1, 2, 3, 4, 5]
    assert {p.total for p in progress} == {5}
    assert [p.frame for p in progress] == [0, 1, 2, 3, 4]
    for p in progress:
        np.testing.assert_array_equal(p.shift, result.shifts[p.frame])
        assert p.quality == result.quality[p.frame]
    assert isinstance(result, RegistrationResult)
    assert_same_result(result, register_stack(s.stack, mask=s.valid, upsample_factor=10))


def test_the_result_is_the_value_of_yield_from_and_of_run(drain):
    """A caller's own generator gets the result with `yield from` (no StopIteration loop)."""
    s = synth(4, noise="poisson")

    def job():
        result = yield from iter_register_stack(s.stack, mask=s.valid, upsample_factor=10)
        return result

    steps, via_yield_from = drain(job())
    assert len(steps) == 4
    assert_same_result(via_yield_from, iter_register_stack(s.stack, mask=s.valid, upsample_factor=10).run())


def test_options_object_and_keywords_give_the_same_run():
    s = synth(5)
    opts = RegistrationOptions(upsample_factor=10, max_shift=6)
    a = iter_register_stack(s.stack, mask=s.valid, options=opts).run()
    b = register_stack(s.stack, mask=s.valid, upsample_factor=10, max_shift=6)
    c = iter_register_stack(s.stack, mask=s.valid, options=opts, reference=2).run()
    assert_same_result(a, b)
    assert c.params["reference"] == 2 and c.params["max_shift"] == 6


def test_peaks_are_the_correlation_peaks_of_each_comparison():
    """With reference="previous" the peak is the step from the frame before (where the
    preview window peaks); against a fixed reference it is the shift itself."""
    s = synth(6, noise="poisson")
    fixed = register_stack(s.stack, mask=s.valid, upsample_factor=20)
    np.testing.assert_array_equal(fixed.peaks, fixed.raw_shifts)
    chain = register_stack(s.stack, mask=s.valid, upsample_factor=20, reference="previous")
    np.testing.assert_allclose(np.cumsum(chain.peaks, axis=0), chain.raw_shifts, atol=1e-9)
    steps = s.expected_shifts()[1:] - s.expected_shifts()[:-1]
    np.testing.assert_allclose(chain.peaks[1:], steps, atol=0.15)
    np.testing.assert_array_equal(chain.peaks[0], [0, 0])


def test_result_fields():
    s = synth(5)
    r = register_stack(s.stack, mask=s.valid, upsample_factor=4)
    assert r.model == "translation"
    assert r.n_frames == 5 and r.ndim == 2
    assert r.shifts.shape == r.raw_shifts.shape == (5, 2)
    assert r.quality.shape == r.outliers.shape == (5,)
    assert r.outliers.dtype == bool
    assert r.params["masked"] is True and r.params["upsample_factor"] == 4
    assert "RegistrationResult(n_frames=5" in repr(r)


def test_frame_registrar_is_picklable():
    s = synth(3, noise="poisson")
    for mask in (s.valid, None):
        opts = RegistrationOptions(upsample_factor=20, return_xcorr=True, xcorr_radius=3)
        reg = FrameRegistrar(s.stack[0], mask, opts)
        clone = pickle.loads(pickle.dumps(reg))
        a, b = reg.register(s.stack[2]), clone.register(s.stack[2])
        np.testing.assert_array_equal(a.shift, b.shift)
        np.testing.assert_array_equal(a.peak, a.shift)
        assert a.quality == b.quality
        np.testing.assert_array_equal(a.xcorr, b.xcorr)


# ---------------------------------------------------------------------------
# bad input: ValueError in plain words, before the first yield


def _bad_cases():
    s = synth(4)
    st = s.stack
    nan_ref_valid = st.copy()
    nan_ref_valid[0][s.valid] = np.nan
    flat_ref = st.copy()
    flat_ref[0] = 1.0
    return [
        ("frame", dict(stack=st[0])),
        ("frame", dict(stack=np.zeros((2, 2, 8, 8, 8)))),
        ("no frames", dict(stack=np.zeros((0, 16, 16)))),
        ("too small", dict(stack=np.zeros((3, 1, 16)))),
        ("dtype", dict(stack=st.astype(np.complex64))),
        ("shape", dict(mask=np.ones((50, 50), bool))),
        ("valid_from_ignore", dict(mask=s.beam_block.astype(np.uint8))),
        ("masks every pixel", dict(mask=np.zeros(SHAPE, bool))),
        ("out of range", dict(reference=4)),
        ("out of range", dict(reference=-5)),
        ("reference must be", dict(reference="median")),
        ("reference image has shape", dict(reference=np.ones((10, 10)))),
        ("real numbers", dict(reference=st[0].astype(np.complex64))),
        ("reference_range", dict(reference="mean", reference_range=(3, 3))),
        ("reference_range", dict(reference="mean", reference_range=(0, 9))),
        ("upsample_factor", dict(upsample_factor=0)),
        ("upsample_factor", dict(upsample_factor=np.nan)),
        ("max_shift", dict(max_shift=-1)),
        ("overlap_ratio", dict(overlap_ratio=1.0)),
        ("normalization", dict(normalization="whiten")),
        ("start", dict(start=4)),
        ("start", dict(start=-1)),
        ("template", dict(reference="template", start=1)),
        ("template_iterations", dict(reference="template", template_iterations=0)),
        ("xcorr_radius", dict(return_xcorr=True, xcorr_radius=0)),
        ("previous_shift", dict(reference="previous", start=1, previous_shift=[1, 2, 3])),
        ("NaN", dict(stack=nan_ref_valid, mask=s.valid)),
        ("no contrast", dict(stack=flat_ref)),
        ("no contrast", dict(stack=flat_ref, mask=s.valid)),
    ]


@pytest.mark.parametrize("match, kwargs", _bad_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_raises_value_error(match, kwargs):
    kwargs = dict(kwargs)
    stack = kwargs.pop("stack", synth(4).stack)
    with pytest.raises(ValueError, match=match):
        next(iter_register_stack(stack, **kwargs))
    with pytest.raises(ValueError, match=match):
        register_stack(stack, **kwargs)


def test_nonfinite_frame_outside_the_mask_raises_when_reached():
    s = synth(4)
    stack = s.stack.copy()
    stack[2, 10, 10] = np.nan
    gen = iter_register_stack(stack)
    next(gen), next(gen)  # frames 0 and 1 are fine
    with pytest.raises(ValueError, match="NaN or inf"):
        next(gen)
    stack[2, 10, 10] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        register_stack(stack, reference="previous")
    r = register_stack(stack, mask=np.isfinite(stack[2]))  # masked out: fine
    assert np.all(np.isfinite(r.shifts))


def test_bad_input_never_yields_first():
    """Errors in the arguments come before any progress (a GUI shows no half-run)."""
    s = synth(4)
    with pytest.raises(ValueError):  # already when the run is made: nothing is read
        iter_register_stack(s.stack, mask=s.valid, reference="mean", reference_range=(2, 1))


# ---------------------------------------------------------------------------
# inputs are never modified


def test_inputs_are_not_modified():
    s = synth(5, noise="poisson")
    stack = s.stack.copy()
    stack[1][~s.valid] = np.nan
    stack.setflags(write=False)
    mask = s.valid.copy()
    mask.setflags(write=False)
    ref_img = s.stack[2].copy()
    ref_img.setflags(write=False)
    before = stack.copy(), mask.copy(), ref_img.copy()
    for kw in (
        dict(reference=0),
        dict(reference=ref_img),
        dict(reference="mean"),
        dict(reference="previous", interpolate_outliers=True),
        dict(reference="template", template_iterations=1),
    ):
        register_stack(stack, mask=mask, upsample_factor=10, return_xcorr=True, xcorr_radius=3, **kw)
    clean = np.nan_to_num(s.stack)
    clean.setflags(write=False)
    register_stack(clean, upsample_factor=10, reference="template", template_iterations=1)
    np.testing.assert_array_equal(stack, before[0])
    np.testing.assert_array_equal(mask, before[1])
    np.testing.assert_array_equal(ref_img, before[2])


def test_a_frame_that_cannot_be_registered_is_always_flagged():
    # unmasked, with quality spread wide enough that the robust default
    # threshold would fall below zero: the constant frame must still be flagged
    synth = make_beam_block_stack(10, (64, 64), seed=4, counts=20)
    stack = synth.stack.copy()
    stack[3] = 7.0
    stack[6] = np.random.default_rng(0).random((64, 64)).astype(np.float32) * 50
    result = register_stack(stack, upsample_factor=4)
    assert result.quality[3] == 0.0
    assert result.outliers[3]


def test_resume_previous_after_a_constant_frame_uses_the_last_frame_with_contrast():
    synth = make_beam_block_stack(8, (64, 64), seed=5)
    stack = synth.stack.copy()
    stack[4] = 0.0  # a blank frame just before the resume point
    full = register_stack(stack, reference="previous", mask=synth.valid, upsample_factor=10)
    tail = register_stack(
        stack,
        reference="previous",
        mask=synth.valid,
        upsample_factor=10,
        start=5,
        previous_shift=full.raw_shifts[4],
    )
    np.testing.assert_allclose(tail.raw_shifts, full.raw_shifts[5:])


@pytest.mark.parametrize("masked", [True, False])
def test_frames_registered_in_parallel_give_the_same_result(masked):
    synth = make_beam_block_stack(9, (64, 64), seed=6)
    kw = dict(mask=synth.valid if masked else None, upsample_factor=20, return_xcorr=True)
    one = register_stack(synth.stack, workers=1, **kw)
    two = register_stack(synth.stack, workers=2, **kw)
    np.testing.assert_array_equal(one.shifts, two.shifts)
    np.testing.assert_array_equal(one.quality, two.quality)
    np.testing.assert_array_equal(one.xcorr, two.xcorr)


def test_cancelling_a_parallel_run_restores_blas_threads():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    synth = make_beam_block_stack(8, (64, 64), seed=7)
    gen = iter_register_stack(synth.stack, mask=synth.valid, upsample_factor=4, workers=2)
    first = next(gen)
    assert first.frame == 0
    gen.close()  # what a GUI cancel does
    assert blas_threads() == before


def test_reference_true_is_a_plain_error_not_a_shape_complaint():
    synth = make_beam_block_stack(3, (32, 32), seed=1)
    with pytest.raises(ValueError, match="reference must be a frame index.*got True"):
        register_stack(synth.stack, reference=True)
