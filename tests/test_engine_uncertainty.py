"""The per-frame error bar: ``result.uncertainties`` against the generator's known drift."""

import numpy as np
import pytest

from napari_maskalign import make_beam_block_stack, register_stack


def _z_scores(counts, size=128, stacks=8, frames=5, **kw):
    """Measured error / claimed sigma, over independent stacks (frames of one stack
    share their reference's noise, so only separate stacks average it out)."""
    z = []
    for seed in range(stacks):
        s = make_beam_block_stack(frames, (size, size), max_drift=3.0, seed=100 + seed,
                                  noise="poisson", counts=counts)
        r = register_stack(s.stack, mask=s.valid, upsample_factor=20, **kw)
        assert r.uncertainties.shape == r.shifts.shape
        err = r.raw_shifts[1:] - s.expected_shifts(0)[1:]
        z.append(err / r.uncertainties[1:])
    return np.concatenate(z).ravel()


@pytest.mark.parametrize("counts", [20.0, 200.0])
def test_refined_uncertainties_scatter_like_a_unit_normal(counts):
    z = _z_scores(counts)
    assert np.all(np.isfinite(z))
    rms = float(np.sqrt(np.mean(z**2)))
    assert 0.7 <= rms <= 1.4, rms  # measured: 1.0-1.25


def test_uncertainties_shrink_with_dose():
    kw = dict(max_drift=2.0, noise="poisson", seed=3)
    low, high = (make_beam_block_stack(4, (96, 96), counts=c, **kw) for c in (20.0, 2000.0))
    low, high = (register_stack(s.stack, mask=s.valid, upsample_factor=20, hot_pixels="off")
                 for s in (low, high))
    # Poisson: the error falls as 1/sqrt(dose), 10x over 100x the counts
    ratio = np.median(low.uncertainties[1:]) / np.median(high.uncertainties[1:])
    assert 5 < ratio < 20, ratio


def test_peak_uncertainties_without_refinement_cover_the_grid():
    s = make_beam_block_stack(4, (96, 96), max_drift=2.0, seed=5, counts=400.0)
    whole = register_stack(s.stack, mask=s.valid, hot_pixels="off")
    fine = register_stack(s.stack, mask=s.valid, upsample_factor=20, refine=False,
                          hot_pixels="off")
    # a whole-pixel shift is at least the quantization's 1/sqrt(12) px off, on average
    assert np.all(whole.uncertainties[1:] >= 1 / np.sqrt(12))
    assert np.all(fine.uncertainties[1:] < whole.uncertainties[1:])
    err = np.abs(whole.shifts[1:] - s.expected_shifts(0)[1:])
    assert np.all(err < 3 * whole.uncertainties[1:])


def test_rigid_runs_report_rotation_and_scale_uncertainties():
    s = make_beam_block_stack(3, (128, 128), max_drift=2.0, max_rotation=2.0, seed=2,
                              counts=400.0)
    r = register_stack(s.stack, mask=s.valid, model="similarity", hot_pixels="off")
    assert r.parameter_uncertainties.shape == (3, 2)
    assert np.all(np.isfinite(r.uncertainties[1:])) and np.all(r.uncertainties[1:] > 0)
    rot, scale = r.parameter_uncertainties[1:].T
    assert np.all((rot > 0) & (rot < 0.5)) and np.all((scale > 0) & (scale < 0.01))
    assert register_stack(s.stack, mask=s.valid, upsample_factor=20).parameter_uncertainties is None


def test_previous_mode_adds_the_steps_errors():
    s = make_beam_block_stack(4, (96, 96), max_drift=2.0, seed=6, counts=400.0)
    r = register_stack(s.stack, mask=s.valid, reference="previous", upsample_factor=20,
                       hot_pixels="off")
    assert r.uncertainties[0].tolist() == [0.0, 0.0]
    assert np.all(np.diff(r.uncertainties, axis=0) > 0)
