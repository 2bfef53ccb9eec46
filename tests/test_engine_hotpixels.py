"""Static outlier pixels (hot, dead, saturated): found by default, ignored like the block."""

from __future__ import annotations

import numpy as np
import pytest

from napari_maskalign import find_static_outliers
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import RegistrationOptions, register_stack


def plant(synth, n_pixels, seed=0):
    """Hot (80 %), dead (15 %) and saturated (5 %) pixels, static over the stack.

    Dead pixels go where the pattern is bright (a dead pixel on a dark background
    is invisible and harmless). A pixel gets at most one planted neighbour (pairs
    occur on detectors; a pixel among several outliers cannot be judged against
    its neighbours). Returns (stack, truth mask).
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    stack = synth.stack.copy()
    level = synth.stack.mean(axis=0)
    allowed = ~synth.beam_block
    if not synth.beam_block.any():  # not on the bare direct beam's steep flanks
        centre = np.array(level.shape) / 2
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(level.shape), centre)))
        allowed &= dist > 0.15 * min(level.shape)
    bright = np.percentile(level[allowed], 99.5)
    kinds = rng.choice(3, n_pixels, p=[0.8, 0.15, 0.05])
    dead_ok = allowed & (level > 0.3 * bright)
    truth = np.zeros(level.shape, bool)
    for kind in kinds:
        crowded = ndi.convolve(truth.astype(int), np.ones((3,) * truth.ndim), mode="constant") >= 2
        free = ~truth & ~ndi.binary_dilation(crowded, np.ones((3,) * truth.ndim))
        where = np.flatnonzero((dead_ok if kind == 1 else allowed) & free)
        pos = np.unravel_index(rng.choice(where), level.shape)
        truth[pos] = True
        idx = (slice(None), *pos)
        if kind == 0:
            stack[idx] += rng.uniform(0.5, 20) * bright
        elif kind == 1:
            stack[idx] = 0
        else:
            stack[idx] = 65535.0
    return stack, truth


@pytest.fixture(scope="module")
def ued():
    """A 256x256 stack drifting up to 5 px with ~1000 static outliers and a painted block."""
    synth = make_beam_block_stack(12, (256, 256), max_drift=5.0, counts=400, seed=3)
    stack, truth = plant(synth, 1000, seed=1)
    return synth, stack, truth


# ----------------------------------------------------------------------------
# finding them


@pytest.mark.parametrize("noise, counts", [("poisson", 400), ("poisson", 4000), ("gaussian", 400)])
def test_planted_pixels_found_and_nothing_else(noise, counts):
    synth = make_beam_block_stack(16, (128, 128), max_drift=4.0, noise=noise, counts=counts, seed=2)
    assert not find_static_outliers(synth.stack, valid=synth.valid).any()  # no spot, ring, edge
    stack, truth = plant(synth, 150, seed=3)
    found = find_static_outliers(stack, valid=synth.valid)
    assert not (found & ~truth).any()
    assert found[truth].mean() >= 0.97  # a pixel or two beside the block may be left


def test_moving_sharp_spots_are_not_flagged():
    """Bragg-like spots one pixel wide (sigma 1 px), bright, drifting: not outliers."""
    rng = np.random.default_rng(0)
    n, size = 12, 96
    centres = rng.uniform(8, size - 8, (60, 2))
    drift = np.cumsum(rng.normal(0, 0.4, (n, 2)), axis=0)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for d in drift:
        img = np.full((size, size), 20.0)
        for cy, cx in centres + d:
            img += 300 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
        frames.append(rng.poisson(img).astype(np.float32))
    stack = np.stack(frames)
    assert not find_static_outliers(stack).any()
    stack[:, 40, 50] += 3000  # one hot pixel among them is still found
    assert np.flatnonzero(find_static_outliers(stack)).tolist() == [40 * size + 50]


def test_pixels_beside_the_block_are_found_and_the_block_edge_is_not(ued):
    synth, stack, truth = ued
    from scipy import ndimage as ndi

    beside = truth & (ndi.distance_transform_edt(synth.valid) <= 1.5)
    assert beside.any()
    found = find_static_outliers(stack, valid=synth.valid)
    assert found[beside].all()
    assert not (found & ~synth.valid).any()  # ignored pixels are never reported


def test_nan_everywhere_is_static_but_nan_in_one_frame_is_not():
    synth = make_beam_block_stack(8, (64, 64), max_drift=2.0, seed=4)
    stack = synth.stack.copy()
    assert synth.valid[8, 8] and synth.valid[10, 40]
    stack[:, 8, 8] = np.nan
    stack[3, 10, 40] = np.nan
    found = find_static_outliers(stack, valid=synth.valid)
    assert found[8, 8] and not found[10, 40]
    assert np.flatnonzero(found).tolist() == [8 * 64 + 8]


def test_3d_frames():
    synth = make_beam_block_stack(8, (24, 48, 48), max_drift=2.0, seed=1)
    stack = synth.stack.copy()
    stack[:, 10, 20, 20] = 1e5
    stack[:, 5, 30, 10] = 0
    assert not find_static_outliers(synth.stack, valid=synth.valid).any()
    found = find_static_outliers(stack, valid=synth.valid)
    assert sorted(map(tuple, np.argwhere(found))) == [(5, 30, 10), (10, 20, 20)]


def fine_texture_stack(seed, n=9, size=512, counts=100.0):
    """A texture with every feature 4-7 px wide (a band of spatial frequencies that 4x
    binning averages away and 2x keeps), drifting by known shifts of up to 6 px, with
    200 static hot pixels. Returns (stack, shifts, truth)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fy, fx)
    spec = np.fft.rfft2(rng.normal(size=(size, size))) * ((f > 0.15) & (f < 0.23))
    shifts = rng.uniform(-6, 6, (n, 2))
    frames = []
    for s in shifts:
        t = np.fft.irfft2(spec * np.exp(-2j * np.pi * (fy * s[0] + fx * s[1])), s=(size, size))
        frames.append(counts * (1.0 + 0.27 * t / t.std()))
    stack = rng.poisson(np.clip(np.stack(frames), 0, None)).astype(np.float32)
    truth = np.zeros((size, size), bool)
    truth.flat[rng.choice(size * size, 200, replace=False)] = True
    stack[:, truth] += 10 * counts
    return stack, shifts, truth


@pytest.mark.parametrize("seed", [0, 1])
def test_a_pattern_too_fine_for_the_4x_binned_search_is_searched_2x_binned(seed):
    """From 512 px the whole-pixel search runs on 4x binned frames; a pattern with
    nothing wider than 7 px is gone there, so it lands anywhere (one frame of the sample
    with seed 0, two with seed 1). Those frames fit far worse than the best one and are
    searched again on 2x binned frames: every sampled frame is registered to its true
    shift and kept, and the hot pixels are found, nothing else."""
    stack, shifts, truth = fine_texture_stack(seed)
    details = {}
    found = find_static_outliers(stack, details=details)
    picks = details["frames"]
    assert len(picks) == 5
    middle = shifts[picks[2]]
    np.testing.assert_allclose(details["shifts"], middle - shifts[picks], atol=0.05)
    assert np.array_equal(found, truth)


def test_a_lazy_stack_is_sampled_not_read(ued):
    """Only a bounded sample of frames is read, so a 100 GB stack costs 5 frames."""
    synth, stack, truth = ued

    class Counting:
        shape, dtype = (600, *stack.shape[1:]), stack.dtype
        reads: list = []

        def __getitem__(self, i):
            self.reads.append(i)
            return stack[i % len(stack)]

    found = find_static_outliers(Counting(), valid=synth.valid)
    assert len(Counting.reads) == 5 and len(set(Counting.reads)) == 5
    assert found[truth].mean() >= 0.99
    # another sample of the same frames: at most a stray pixel beside the mask, where a
    # pixel has only 3 neighbours to be judged against
    from scipy import ndimage as ndi

    extra = found & ~truth
    assert extra.sum() <= 2 and (ndi.distance_transform_edt(synth.valid)[extra] <= 1.5).all()


# ----------------------------------------------------------------------------
# registering with them


def test_auto_recovers_the_drift_as_well_as_masking_them_by_hand(ued):
    synth, stack, truth = ued
    expected = synth.expected_shifts()

    def error(result):
        return np.median(np.abs(result.shifts - expected)[1:])

    off = register_stack(stack, mask=synth.valid, upsample_factor=20, hot_pixels="off")
    by_hand = register_stack(stack, mask=synth.valid & ~truth, upsample_factor=20, hot_pixels="off")
    auto = register_stack(stack, mask=synth.valid, upsample_factor=20)
    given = register_stack(stack, mask=synth.valid, upsample_factor=20, hot_pixels=truth)
    assert error(off) > 1.0  # the old behaviour: locked onto the static pixels
    assert error(by_hand) < 0.05
    assert abs(error(auto) - error(by_hand)) < 0.05
    np.testing.assert_array_equal(given.shifts, by_hand.shifts)
    assert auto.params["hot_pixels"] == "auto"
    assert auto.hot_pixels[truth].mean() >= 0.99 and (auto.hot_pixels & ~truth).sum() <= 2
    assert auto.params["hot_pixels_masked"] == auto.n_hot_pixels and auto.params["correlator"] == "masked"
    np.testing.assert_array_equal(auto.valid_mask, synth.valid & ~auto.hot_pixels)
    assert off.hot_pixels is None
    np.testing.assert_array_equal(off.valid_mask, synth.valid)
    assert f"hot pixels={auto.n_hot_pixels}" in repr(auto)


def test_clean_stacks_register_exactly_as_before():
    """Nothing found, nothing changed: a masked beam-block stack, and an unmasked stack
    with nothing static in it."""
    masked = make_beam_block_stack(8, (96, 96), max_drift=3.0, seed=6)
    free = make_beam_block_stack(8, (96, 96), max_drift=3.0, seed=6, beam_block=False)
    for stack, mask in ((masked.stack, masked.valid), (free.stack, None)):
        auto = register_stack(stack, mask=mask, upsample_factor=20)
        off = register_stack(stack, mask=mask, upsample_factor=20, hot_pixels="off")
        np.testing.assert_array_equal(auto.shifts, off.shifts)
        np.testing.assert_array_equal(auto.quality, off.quality)
        assert auto.n_hot_pixels == 0


def test_without_a_mask_the_hot_pixels_are_still_ignored():
    synth = make_beam_block_stack(12, (128, 128), max_drift=4.0, seed=7, beam_block=False)
    stack, truth = plant(synth, 200, seed=2)
    off = register_stack(stack, upsample_factor=20, hot_pixels="off")
    auto = register_stack(stack, upsample_factor=20)
    expected = synth.expected_shifts()
    assert np.abs(expected).max() > 2 and np.abs(off.shifts).max() < 0.5  # locked at zero
    assert np.median(np.abs(auto.shifts - expected)) < 0.05
    assert not (auto.hot_pixels & ~truth).any() and auto.hot_pixels[truth].mean() >= 0.98
    # the run stayed unmasked: the pixels were filled, not masked
    assert auto.params["masked"] is False and auto.params["correlator"] == "plain"
    assert auto.params["hot_pixels_filled"] == auto.n_hot_pixels > 0
    assert auto.params["hot_pixels_masked"] == 0


@pytest.mark.parametrize("reference", ["mean", "previous", "template"])
def test_every_reference_mode_ignores_them(ued, reference):
    synth, stack, truth = ued
    r = register_stack(stack[:6], mask=synth.valid, upsample_factor=10, reference=reference)
    expected = synth.expected_shifts()[:6]
    rel = r.shifts - expected
    # right up to a constant (mean/template); the unaligned mean is a blurred reference
    # (frames 5 px apart averaged), against which the refinement on every valid pixel
    # lands 0.4 px apart at worst here, where the 1000 pixels left in lock it (3-5 px)
    tolerance = 0.6 if reference == "mean" else 0.25
    assert np.ptp(rel, axis=0).max() < tolerance, rel
    assert r.n_hot_pixels > 900


def test_the_setting_is_checked_and_fingerprinted():
    mask = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="hot_pixels must be 'auto', 'off' or a boolean mask"):
        RegistrationOptions(hot_pixels="on")
    with pytest.raises(ValueError, match="boolean mask"):
        RegistrationOptions(hot_pixels=mask.astype(np.uint8))
    with pytest.raises(ValueError, match=r"hot_pixels mask has shape \(8, 8\)"):
        register_stack(np.zeros((3, 16, 16)), hot_pixels=mask)
    fp = {v: RegistrationOptions(hot_pixels=v).fingerprint()["hot_pixels"] for v in ("auto", "off")}
    assert fp == {"auto": "auto", "off": "off"}
    assert RegistrationOptions(hot_pixels=mask).fingerprint()["hot_pixels"].startswith("mask sha256:")


def test_search_helpers_match_independent_implementations():
    """The search's hand-made whole-array helpers equal numpy's and scipy's own: the box
    filters (scipy's, mirrored edges; binary erosion and dilation), the padding (np.pad),
    the sort order of float32 levels (np.sort, negative zero and ties included) and the
    per-bin robust spread (np.median over the pixels of each bin, found by comparison)."""
    from scipy import ndimage as ndi

    from napari_maskalign.engine.run import _hotpixels as hp

    rng = np.random.default_rng(5)
    for nd in (1, 2, 3):
        for _ in range(6):
            shape = tuple(int(x) for x in rng.integers(1, 16, nd))
            a = rng.random(shape).astype(np.float32)
            b = a > 0.3
            for w in (1, 3, 7, 13):
                assert np.array_equal(hp._flat_filter(a, w, np.maximum), ndi.maximum_filter(a, w))
                assert np.array_equal(hp._flat_filter(a, w, np.minimum), ndi.minimum_filter(a, w))
                box = np.ones((w,) * nd, bool)
                assert np.array_equal(hp._box_eroded(b, w), ndi.binary_erosion(b, box))
                assert np.array_equal(hp._box_dilated(b, w), ndi.binary_dilation(b, box))
            for ax in range(nd):
                for half in (0, 1, 3, 20):
                    pad = [(0, 0)] * nd
                    pad[ax] = (half, half)
                    assert np.array_equal(hp._padded(a, ax, half), np.pad(a, pad, mode="symmetric"))
                    assert np.array_equal(hp._padded(b, ax, half, True), np.pad(b, pad, constant_values=True))
    # the median, lowest and highest of 3-9 frames' residuals (no vote: inf)
    for k in (3, 4, 5, 6, 9):
        r = np.round(rng.normal(size=(k, 30, 20)) * 3).astype(np.float32)
        r[rng.random(r.shape) < 0.2] = np.inf
        before = r.copy()
        med, low, high = hp._middle(r)
        assert np.array_equal(r, before)
        assert np.array_equal(med, np.median(r, axis=0).astype(np.float32))
        assert np.array_equal(low, r.min(axis=0)) and np.array_equal(high, r.max(axis=0))
    x = np.round(rng.normal(size=5000) * 20).astype(np.float32)
    x[::9] = -0.0
    assert np.array_equal(x[hp._argsort(x)], np.sort(x))
    levels = np.round(rng.random((300, 300)) * 50).astype(np.float32)
    values = rng.normal(size=(300, 300)).astype(np.float32) * (1 + levels / 10)
    where = rng.random((300, 300)) > 0.2
    centres, sigmas = hp._binned_spread(values, levels, where)
    at = np.flatnonzero(where)
    at = at[:: max(1, at.size // 30000)]
    lv, vv = levels.ravel()[at], values.ravel()[at]
    edges = np.unique(np.quantile(lv, np.linspace(0, 1, 13)))
    expect_c, expect_s = [], []
    for i in range(edges.size - 1):
        inside = (lv >= edges[i]) & ((lv < edges[i + 1]) if i < edges.size - 2 else True)
        if inside.sum() >= 30:
            v = vv[inside]
            expect_c.append(np.median(lv[inside]))
            expect_s.append(1.4826 * np.median(np.abs(v - np.median(v))))
    np.testing.assert_allclose(centres, expect_c, rtol=0, atol=0)
    np.testing.assert_allclose(sigmas, expect_s, rtol=1e-6)
