"""Beyond the two-frame bound: the stack's own template and smoothing over time.

Ground truth from the sample generator (its drift is known) and from synthetic
shift series with known truth and noise; fixed seeds.
"""

import numpy as np
import pytest

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine import shift_bound
from napari_maskalign.engine.run._smooth import find_jumps, scatter_sigma, smooth_series


def _errors(shifts, truth):
    """Errors up to a common offset (a template sits at the frames' mean position)."""
    e = shifts - truth
    return e - np.median(e, axis=0)


def _two_frame_bound(s):
    return np.median([shift_bound(s.gradient(i), s.noise_variance(i), s.valid)
                      for i in range(1, len(s.stack))])


@pytest.mark.parametrize(("counts", "seeds"), [(20, (0, 1)), (200, (0,))])
def test_template_beats_the_two_frame_bound(counts, seeds):
    """Sharp spots drifting under a static block, 20 frames, Poisson: the template run's
    median error is at most 0.8x the two-frame bound (20 counts: two stacks pooled, the
    median of 38 errors alone scatters by +-15 %), and its uncertainties are calibrated."""
    ratios, z = [], []
    for seed in seeds:
        s = make_beam_block_stack(20, (192, 192), counts=counts, seed=seed)
        r = register_stack(s.stack, mask=s.valid, upsample_factor=20, hot_pixels="off",
                           reference="template")
        e = _errors(r.shifts, s.expected_shifts(0))
        ratios.append(np.abs(e) / _two_frame_bound(s))
        z.append(e / r.uncertainties)
        assert 1 <= r.params["template_passes"] <= r.params["template_iterations"]
    ratio = np.median(np.concatenate(ratios))
    assert ratio <= 0.8, ratio
    rms_z = np.sqrt(np.mean(np.concatenate(z) ** 2))
    assert 0.7 <= rms_z <= 1.4, rms_z


def test_template_leave_one_out_keeps_a_frames_noise_from_pulling_it():
    """Without leave-one-out a frame's own noise in the template pulls its shift toward
    the template's position: the errors shrink against the truth's spread. Checked by
    the calibration of the spread: shifts keep their full relative motion."""
    s = make_beam_block_stack(12, (128, 128), counts=50, seed=5, max_drift=2.0)
    r = register_stack(s.stack, mask=s.valid, upsample_factor=20, hot_pixels="off",
                       reference="template")
    truth = s.expected_shifts(0)
    slope = np.polyfit((truth - truth.mean(0)).ravel(), (r.shifts - r.shifts.mean(0)).ravel(), 1)[0]
    assert abs(slope - 1.0) < 0.01, slope


def test_template_rigid_converges_too():
    s = make_beam_block_stack(10, (160, 160), counts=200, seed=2, max_rotation=1.0)
    r = register_stack(s.stack, mask=s.valid, model="rigid", reference="template",
                       hot_pixels="off")
    rot = r.rotations - r.rotations[0]
    truth = -(s.rotation - s.rotation[0])
    assert np.abs(rot - truth).max() < 0.05, rot - truth
    e = _errors(r.shifts, s.expected_shifts(0))
    assert np.abs(e).max() < 0.2


# ---------------------------------------------------------------------------
# smoothing on synthetic shift series (fast)


def _series(seed, n=100, sigma=0.0125, jump_at=50, jump=2.0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    truth = np.stack([0.8 * np.sin(2 * np.pi * t / 100) + 0.01 * t,
                      0.5 * np.cos(2 * np.pi * t / 150) - 0.01 * t], axis=1)
    if jump_at is not None:
        truth[jump_at:, 1] += jump
    return truth, truth + rng.normal(scale=sigma, size=truth.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_halves_the_error_and_keeps_the_jump_sharp(seed):
    truth, y = _series(seed)
    sm = smooth_series(y, np.full_like(y, 0.0125))
    assert sm.jumps.tolist() == [50]
    err, raw = np.abs(sm.values - truth), np.abs(y - truth)
    assert np.median(err) <= 0.5 * np.median(raw)
    at_jump = np.sqrt(np.mean(err[[49, 50]] ** 2))
    assert at_jump <= 3 * np.median(err), (at_jump, np.median(err))
    z = (sm.values - truth) / sm.sigma
    assert 0.7 <= np.sqrt(np.mean(z**2)) <= 1.4
    assert np.all(sm.sigma < sm.raw_sigma)


def test_no_jump_is_found_in_a_smooth_series_and_sigma_is_estimated():
    truth, y = _series(4, jump_at=None)
    assert find_jumps(y, np.full_like(y, 0.0125)).size == 0
    est = scatter_sigma(y)
    np.testing.assert_allclose(est[0], 0.0125, rtol=0.35)  # 98 correlated differences: +-15 %
    sm = smooth_series(y)  # no uncertainties given: estimated from the scatter
    assert sm.jumps.size == 0
    assert np.median(np.abs(sm.values - truth)) <= 0.5 * np.median(np.abs(y - truth))


def test_two_jumps_close_together_are_both_found_and_outliers_do_not_pull():
    truth, y = _series(5)
    truth[70:, 0] -= 1.0
    y[70:, 0] -= 1.0
    y[30, 1] += 0.5  # a bad frame, flagged
    used = np.ones(len(y), bool)
    used[30] = False
    sm = smooth_series(y, np.full_like(y, 0.0125), used)
    assert sm.jumps.tolist() == [50, 70]
    assert abs(sm.values[30, 1] - truth[30, 1]) < 0.02


def test_register_stack_smoothing_keeps_raw_shifts_and_reports_jumps():
    n, t = 40, np.arange(40)
    drift = np.stack([0.5 * np.sin(2 * np.pi * t / 60), 0.01 * t], axis=1)
    drift[20:, 0] += 1.5
    s = make_beam_block_stack(n, (96, 96), counts=50, drift=drift, seed=1)
    off = register_stack(s.stack, mask=s.valid, upsample_factor=20, hot_pixels="off")
    on = register_stack(s.stack, mask=s.valid, upsample_factor=20, hot_pixels="off",
                        smoothing="auto")
    np.testing.assert_array_equal(on.raw_shifts, off.raw_shifts)
    assert off.jumps is None and off.smoothed_uncertainties is None
    assert on.jumps.tolist() == [20]
    truth = s.expected_shifts(0)
    assert np.median(np.abs(_errors(on.shifts, truth))) < np.median(np.abs(_errors(off.shifts, truth)))
    assert np.all(on.smoothed_uncertainties < on.uncertainties)
    with pytest.raises(ValueError, match="smoothing"):
        register_stack(s.stack, smoothing="yes")
