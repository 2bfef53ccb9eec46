"""Static outliers as a real detector has them: clusters of 1 to 12 pixels, found by
what stays put in detector coordinates, and handled without changing the estimator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_maskalign import find_static_outliers
from napari_maskalign._sample_data import DETECTOR_CLUSTERS, make_beam_block_stack
from napari_maskalign.engine import register_stack
from napari_maskalign.engine.run import _registrar

SIZE_CLASSES = {"1": (1, 1), "2": (2, 2), "3": (3, 3), "4": (4, 4), "5-12": (5, 12)}


@pytest.fixture(scope="module")
def clustered():
    """25 frames of 256 x 256, drifting up to 5 px, ~15 counts of background and a
    real detector's static outliers; only the beam block is given as the mask."""
    return make_beam_block_stack(25, (256, 256), max_drift=5.0, counts=100, seed=3,
                                 outliers="detector")


def _classes(synth):
    """{size class: mask of the planted pixels outside the block in clusters of that size}."""
    labels = np.where(synth.valid, synth.outlier_labels, 0)
    sizes = np.bincount(synth.outlier_labels.ravel())
    out = {}
    for name, (lo, hi) in SIZE_CLASSES.items():
        ids = [i for i in np.unique(labels[labels > 0]) if lo <= sizes[i] <= hi]
        out[name] = np.isin(labels, ids)
    return out


# ----------------------------------------------------------------------------
# the sample


def test_the_detector_mix_is_planted_and_the_rest_of_the_stack_is_unchanged(clustered):
    labels = clustered.outlier_labels
    sizes = np.bincount(labels.ravel())[1:]
    expected = dict(DETECTOR_CLUSTERS)
    for size in (1, 2, 3, 4):
        # dead pixels add ~20 singles and 3 pairs
        extra = {1: 20, 2: 3}.get(size, 0)
        assert np.count_nonzero(sizes == size) == expected[size] + extra
    assert np.count_nonzero((sizes >= 5) & (sizes <= 12)) == expected[(5, 12)]
    # clusters never touch: each label is one 8-connected group and no two are adjacent
    groups, n = ndi.label(labels > 0, np.ones((3, 3), bool))
    assert n == labels.max()
    plain = make_beam_block_stack(25, (256, 256), max_drift=5.0, counts=100, seed=3)
    off = ~clustered.static_outliers
    np.testing.assert_array_equal(clustered.stack[:, off], plain.stack[:, off])
    np.testing.assert_array_equal(clustered.drift, plain.drift)
    hot = clustered.stack[:, clustered.static_outliers & clustered.valid]
    assert np.median(plain.stack[0][clustered.valid]) < 30  # a local median of ~15-20
    assert (hot.max(axis=0) >= 100).mean() > 0.9  # hot ones: 100 to 30000 counts above


def test_the_mix_scales_with_the_frame_area():
    big = make_beam_block_stack(1, (512, 512), noise=None, outliers="detector", seed=1)
    small = make_beam_block_stack(1, (256, 256), noise=None, outliers="detector", seed=1)
    ratio = big.outlier_labels.max() / small.outlier_labels.max()
    assert 3.8 < ratio < 4.2


def test_defaults_and_the_bragg_pattern():
    a = make_beam_block_stack(3, (64, 64), seed=1)
    b = make_beam_block_stack(3, (64, 64), seed=1, pattern="rings", outliers=None)
    np.testing.assert_array_equal(a.stack, b.stack)
    assert a.outlier_labels is None and not a.static_outliers.any()
    def sharp_spots(img):
        """Local maxima whose 4 neighbours reach less than 60 % of their height."""
        med = np.median(img)
        peaks = (img == ndi.maximum_filter(img, size=5)) & (img > 2 * med)
        nb = ndi.convolve(img, np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]]))
        return int((peaks & (nb - med < 0.6 * (img - med))).sum())

    bragg = make_beam_block_stack(1, (256, 256), noise=None, pattern="bragg", beam_block=False)
    rings = make_beam_block_stack(1, (256, 256), noise=None, beam_block=False)
    assert sharp_spots(bragg.stack[0]) > 300 and sharp_spots(rings.stack[0]) == 0
    with pytest.raises(ValueError, match="pattern must be"):
        make_beam_block_stack(1, (32, 32), pattern="crystal")
    with pytest.raises(ValueError, match="outliers must be"):
        make_beam_block_stack(1, (32, 32), outliers="hot")


# ----------------------------------------------------------------------------
# finding them


def test_clusters_of_every_size_are_found_and_nothing_on_the_pattern(clustered):
    details = {}
    found = find_static_outliers(clustered.stack, valid=clustered.valid, details=details)
    for name, truth in _classes(clustered).items():
        assert found[truth].mean() >= 0.95, name
    assert not (found & ~clustered.valid).any()
    # nothing on spots, rings or the block's edge: a stray pixel at most, beside a cluster
    # (the echo of one)
    far = ndi.distance_transform_edt(~clustered.static_outliers) > 3
    assert (found & far).sum() <= 1
    assert (found & ~clustered.static_outliers).sum() <= 8
    # the coarse registration of the sampled frames
    picks = details["frames"]
    truth = clustered.expected_shifts()[picks]
    middle = picks[len(picks) // 2]
    got = details["shifts"] + clustered.expected_shifts()[middle]
    assert np.abs(got - truth).max() < 0.1


def test_a_moving_pattern_alone_gives_nothing():
    for kw in (dict(counts=100), dict(counts=4000), dict(noise="gaussian")):
        synth = make_beam_block_stack(16, (128, 128), max_drift=4.0, seed=2, **kw)
        assert not find_static_outliers(synth.stack, valid=synth.valid).any(), kw


def test_content_moved_by_a_smooth_field_is_not_an_outlier():
    """A non-rigid stack (a dense lattice of sharp spots bent by a 2 px field, no hot
    pixels): the search's rigid model leaves the spots misplaced, and a spot that happens
    to land on the same detector pixel in most sampled frames piled up there like a static
    pixel (532 pixels, 0.8 % of the frame); a static pixel's excess is there in every frame."""
    from napari_maskalign._nonrigid_sample import make_nonrigid_stack

    synth = make_nonrigid_stack(6, (256, 256), content="diffraction", amplitude=2.0, seed=3)
    found = find_static_outliers(synth.stack, valid=synth.valid)
    assert found.sum() < 0.0025 * synth.valid.sum()


def test_an_unpainted_block_is_not_an_outlier():
    """Without a mask the static block is a large static object: not outlier pixels."""
    synth = make_beam_block_stack(16, (128, 128), max_drift=4.0, seed=2, counts=400)
    assert find_static_outliers(synth.stack).sum() <= 2


# ----------------------------------------------------------------------------
# registering with them


def test_only_the_block_painted_registers_as_well_as_every_outlier_masked(clustered):
    expected = clustered.expected_shifts()

    def error(result):
        return float(np.median(np.abs(result.shifts - expected)[1:]))

    off = register_stack(clustered.stack, mask=clustered.valid, upsample_factor=20,
                         hot_pixels="off")
    auto = register_stack(clustered.stack, mask=clustered.valid, upsample_factor=20)
    assert error(off) > 0.5  # locked onto the static pixels
    assert error(auto) <= 0.05
    assert auto.params["correlator"] == "masked" and auto.params["masked"] is True
    assert auto.params["hot_pixels_masked"] == auto.n_hot_pixels > 700
    np.testing.assert_array_equal(auto.valid_mask, clustered.valid & ~auto.hot_pixels)


@pytest.mark.parametrize("case", ["masked rings", "rings at high dose", "no block",
                                  "sharp spots, phase"])
def test_clean_stacks_give_exactly_what_off_gives(case):
    kw, mask, reg = dict(max_drift=4.0, seed=6), True, dict(upsample_factor=20)
    if case == "rings at high dose":
        kw["counts"] = 4000
    elif case == "no block":
        kw["beam_block"], mask = False, False
    elif case == "sharp spots, phase":
        kw.update(pattern="bragg", beam_block=False, counts=400)
        kw["drift"] = np.vstack([[0, 0], np.random.default_rng(2).integers(-4, 5, (9, 2))])
        kw.pop("max_drift")
        mask, reg = False, dict(normalization="phase")
    synth = make_beam_block_stack(10, (128, 128), **kw)
    valid = synth.valid if mask else None
    auto = register_stack(synth.stack, mask=valid, **reg)
    off = register_stack(synth.stack, mask=valid, hot_pixels="off", **reg)
    assert auto.n_hot_pixels == 0
    assert np.array_equal(auto.shifts, off.shifts) and np.array_equal(auto.quality, off.quality)
    assert auto.params["correlator"] == off.params["correlator"]


def test_outliers_found_never_switch_the_estimator(monkeypatch):
    """Unmasked: the correlator the user chose (phase or plain), the pixels filled in
    the reference and every frame; the masked correlator is never built."""
    built = []

    class Masked(_registrar.MaskedCorrelator):
        def __init__(self, *a, **k):
            built.append("masked")
            super().__init__(*a, **k)

    class Phase(_registrar.PhaseCorrelator):
        def __init__(self, *a, **k):
            built.append(k.get("normalization"))
            super().__init__(*a, **k)

    monkeypatch.setattr(_registrar, "MaskedCorrelator", Masked)
    monkeypatch.setattr(_registrar, "PhaseCorrelator", Phase)
    synth = make_beam_block_stack(12, (128, 128), max_drift=4.0, counts=100, seed=7,
                                  beam_block=False, outliers="detector")
    expected = synth.expected_shifts()
    for normalization in ("phase", None):
        built.clear()
        auto = register_stack(synth.stack, upsample_factor=20, normalization=normalization)
        assert built == [normalization]
        assert auto.n_hot_pixels > 100 and auto.params["hot_pixels_filled"] == auto.n_hot_pixels
        assert auto.params["masked"] is False
        assert auto.params["correlator"] == ("phase" if normalization else "plain")
        if normalization is None:  # plain correlation of smooth patterns is accurate
            assert np.median(np.abs(auto.shifts - expected)) < 0.05
    off = register_stack(synth.stack, upsample_factor=20, hot_pixels="off")
    assert np.abs(off.shifts).max() < 0.5 < np.abs(expected).max()  # locked without the search


def test_the_registrar_fills_only_unmasked_runs():
    ref = np.random.default_rng(0).random((32, 32))
    hot = np.zeros((32, 32), bool)
    hot[5, 5] = True
    with pytest.raises(ValueError, match="join the mask"):
        _registrar.FrameRegistrar(ref, np.ones((32, 32), bool), fill=hot)
    reg = _registrar.FrameRegistrar(ref, fill=hot)
    frame = ref.copy()
    frame[5, 5] = 1e6
    rec = reg.register(frame)
    np.testing.assert_array_equal(rec.shift, [0.0, 0.0])
    assert rec.quality > 0.99  # the hot pixel was filled before the correlation


def test_hot_pixels_on_an_unblocked_direct_beam_are_found():
    """A pattern without a block keeps its bright direct beam: hot pixels on it are
    less than the beam's level, and the beam's own residual is loud against a noise
    level read at dimmer pixels. Missed, they locked an unmasked run 0.16 px off (512
    px, the detector mix); found, it is back at the 0.01 px of a hand-made mask."""
    synth = make_beam_block_stack(10, (256, 256), counts=400.0, max_drift=4.0, seed=2,
                                  outliers="detector", beam_block=False)
    stack = np.array(synth.stack)
    mean = stack.mean(axis=0)
    yc, xc = np.unravel_index(np.argmax(ndi.uniform_filter(mean, 9)), mean.shape)
    beam = mean[yc, xc]
    planted = [(yc + 1, xc - 2, 0.9), (yc - 3, xc + 2, 0.4), (yc + 4, xc + 3, 0.3)]
    for y, x, f in planted:  # static: the same excess in every frame, at detector pixels
        stack[:, y, x] += f * beam
    found = find_static_outliers(stack)
    assert all(found[y, x] for y, x, _ in planted)
    false = found & ~synth.static_outliers
    for y, x, _ in planted:
        false[y, x] = False
    assert not false.any()  # nothing of the beam itself
    res = register_stack(stack, upsample_factor=20, normalization=None)
    err = np.abs(res.shifts - synth.expected_shifts())[1:]
    assert np.median(err) < 0.05
