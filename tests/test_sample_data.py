"""The synthetic beam-block generator: the ground truth every other test uses."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from skimage.registration import phase_cross_correlation as sk_pcc

import napari_maskalign
from napari_maskalign._sample_data import SyntheticStack, make_beam_block_stack, make_sample_data
from napari_maskalign.engine import gradient_of, phase_cross_correlation, register_stack


def test_shapes_dtypes_and_fields():
    s = make_beam_block_stack(5, (48, 64), seed=1)
    assert isinstance(s, SyntheticStack)
    assert s.stack.shape == (5, 48, 64) and s.stack.dtype == np.float32
    assert s.beam_block.shape == (48, 64) and s.beam_block.dtype == bool
    np.testing.assert_array_equal(s.valid, ~s.beam_block)
    assert s.drift.shape == (5, 2)
    assert make_beam_block_stack(2, (16, 16), dtype=np.float64).stack.dtype == np.float64
    assert napari_maskalign.make_beam_block_stack is make_beam_block_stack


def test_seed_makes_it_reproducible():
    a = make_beam_block_stack(4, (32, 32), seed=3)
    b = make_beam_block_stack(4, (32, 32), seed=3)
    c = make_beam_block_stack(4, (32, 32), seed=4)
    np.testing.assert_array_equal(a.stack, b.stack)
    np.testing.assert_array_equal(a.drift, b.drift)
    assert not np.array_equal(a.drift, c.drift)


@pytest.mark.parametrize("max_drift", [0.5, 3.0, 10.0])
def test_random_drift_starts_at_zero_and_reaches_max_drift(max_drift):
    s = make_beam_block_stack(15, (32, 32), max_drift=max_drift, seed=2, noise=None)
    np.testing.assert_array_equal(s.drift[0], [0, 0])
    assert np.abs(s.drift).max() == pytest.approx(max_drift)
    # a smooth walk: no step larger than the whole excursion allows
    assert np.abs(np.diff(s.drift, axis=0)).max() < max_drift
    still = make_beam_block_stack(4, (32, 32), max_drift=0, noise=None)
    np.testing.assert_array_equal(still.drift, 0)
    np.testing.assert_array_equal(still.stack[0], still.stack[3])


def test_explicit_drift_and_expected_shifts():
    drift = np.array([[0.0, 0.0], [1.25, -0.5], [-2.0, 3.0]])
    s = make_beam_block_stack(3, (32, 32), drift=drift, noise=None)
    np.testing.assert_array_equal(s.drift, drift)
    np.testing.assert_array_equal(s.expected_shifts(), -drift)
    np.testing.assert_array_equal(s.expected_shifts(reference=1), -(drift - drift[1]))
    np.testing.assert_array_equal(s.expected_shifts(reference=2)[2], [0, 0])


def test_expected_shifts_sign_matches_scikit_image():
    """Independent check: scikit-image (no mask needed without a block) recovers
    expected_shifts()[i] when registering frame i onto frame 0."""
    s = make_beam_block_stack(6, (96, 96), seed=7, noise=None, beam_block=False, max_drift=4)
    for i in range(1, 6):
        shift, _, _ = sk_pcc(s.stack[0], s.stack[i], upsample_factor=100, normalization=None)
        np.testing.assert_allclose(shift, s.expected_shifts()[i], atol=0.03, err_msg=f"frame {i}")


def test_expected_shifts_sign_with_the_beam_block_and_our_engine():
    s = make_beam_block_stack(6, (96, 96), seed=8, noise=None, max_drift=4)
    for i in range(1, 6):
        shift, _, _ = phase_cross_correlation(
            s.stack[0], s.stack[i], reference_mask=s.valid, upsample_factor=50
        )
        np.testing.assert_allclose(shift, s.expected_shifts()[i], atol=0.05, err_msg=f"frame {i}")
    r = register_stack(s.stack, mask=s.valid, reference=3, upsample_factor=50)
    np.testing.assert_allclose(r.shifts, s.expected_shifts(reference=3), atol=0.05)


def test_the_beam_block_is_static_and_dark():
    a = make_beam_block_stack(4, (64, 64), seed=1, noise=None, max_drift=5)
    b = make_beam_block_stack(4, (64, 64), seed=9, noise=None, max_drift=5)
    np.testing.assert_array_equal(a.beam_block, b.beam_block)  # does not depend on the drift
    block = a.beam_block
    assert 0.02 < block.mean() < 0.2
    # a rod reaching the detector edge plus a disk near the centre
    assert block[0].any() or block[-1].any() or block[:, 0].any() or block[:, -1].any()
    assert block[32, 32]
    for frame in a.stack:
        # dark behind the block (the direct beam leaks a little), bright around it
        assert np.median(frame[block]) < 0.2 * np.median(frame[~block])
    # the block pixels barely change while the pattern moves
    diff_block = np.abs(a.stack[3] - a.stack[0])[block].mean()
    diff_free = np.abs(a.stack[3] - a.stack[0])[~block].mean()
    assert diff_block < 0.1 * diff_free


def test_without_a_beam_block():
    s = make_beam_block_stack(3, (48, 48), beam_block=False, noise=None, seed=1)
    assert not s.beam_block.any()
    assert s.valid.all()


def test_noise_models():
    quiet = make_beam_block_stack(2, (48, 48), noise=None, seed=1)
    poisson = make_beam_block_stack(2, (48, 48), noise="poisson", counts=50, seed=1)
    gaussian = make_beam_block_stack(2, (48, 48), noise="gaussian", sigma=0.05, seed=1)
    assert np.all(poisson.stack >= 0)
    np.testing.assert_array_equal(poisson.stack, np.round(poisson.stack))  # counts
    # gaussian: additive, sigma times the counts scale (default 400)
    resid = gaussian.stack - quiet.stack
    assert abs(resid.mean()) < 1.0
    assert resid.std() == pytest.approx(0.05 * 400, rel=0.1)
    # fewer counts: relatively noisier
    rel = []
    for counts in (50, 5000):
        p = make_beam_block_stack(1, (48, 48), noise="poisson", counts=counts, seed=1).stack[0]
        q = make_beam_block_stack(1, (48, 48), noise=None, counts=counts, seed=1).stack[0]
        rel.append(np.std(p - q) / q.mean())
    assert rel[0] > 3 * rel[1]


def test_3d_frames():
    s = make_beam_block_stack(3, (16, 20, 24), seed=1, noise=None, max_drift=1.5)
    assert s.stack.shape == (3, 16, 20, 24)
    assert s.beam_block.shape == (16, 20, 24) and s.beam_block.any()
    assert s.drift.shape == (3, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(32,)), "2D or 3D"),
        (dict(shape=(8, 8, 8, 8)), "2D or 3D"),
        (dict(n_frames=0), "n_frames"),
        (dict(noise="speckle"), "noise"),
        (dict(n_frames=3, drift=np.zeros((2, 2))), "drift"),
    ],
)
def test_bad_arguments(kwargs, match):
    kw = dict(n_frames=3, shape=(16, 16))
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_beam_block_stack(**kw)


def test_napari_sample_layers():
    (stack, image_meta, image_kind), (labels, labels_meta, labels_kind) = make_sample_data(
        n_frames=6, shape=(64, 64)
    )
    assert (image_kind, labels_kind) == ("image", "labels")
    assert stack.shape == (6, 64, 64)
    assert image_meta["name"] == "UED sample" and labels_meta["name"] == "UED sample mask"
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}  # 1 = beam block
    expected = image_meta["metadata"]["expected_shifts"]
    assert expected.shape == (6, 2)
    np.testing.assert_array_equal(expected, -image_meta["metadata"]["drift"])
    lo, hi = image_meta["contrast_limits"]
    assert lo < hi <= stack.max()
    # the shifts in the metadata are the truth for this stack
    r = register_stack(stack, mask=labels == 0, upsample_factor=20)
    np.testing.assert_allclose(r.shifts, expected, atol=0.1)


def test_manifest_offers_the_sample():
    import importlib.resources

    manifest = yaml.safe_load(
        importlib.resources.files("napari_maskalign").joinpath("napari.yaml").read_text()
    )
    samples = manifest["contributions"]["sample_data"]
    assert [s["key"] for s in samples] == ["beam_block"]
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    assert commands[samples[0]["command"]] == "napari_maskalign._sample_data:make_sample_data"


def test_rotation_and_scale_with_ground_truth_transforms():
    s = make_beam_block_stack(5, (64, 64), seed=2, max_rotation=3.0, max_scale=0.02, noise=None)
    assert s.rotation[0] == 0 and s.scale[0] == 1
    assert np.abs(s.rotation).max() == pytest.approx(3.0)
    assert np.abs(s.scale - 1).max() == pytest.approx(0.02)
    t = s.expected_transforms(0)
    np.testing.assert_allclose(t[0], np.eye(3), atol=1e-12)
    # relative to another reference: the composition through frame 0
    np.testing.assert_allclose(s.expected_transforms(2), np.linalg.inv(t[2]) @ t, atol=1e-12)
    # the block does not turn with the pattern
    np.testing.assert_array_equal(s.beam_block, make_beam_block_stack(2, (64, 64)).beam_block)
    # without rotation or scale the transforms are the expected shifts, and the frames
    # are what they always were (same random numbers)
    plain = make_beam_block_stack(4, (32, 32), seed=6)
    np.testing.assert_allclose(plain.expected_transforms(1)[:, :2, 2], plain.expected_shifts(1))
    again = make_beam_block_stack(4, (32, 32), seed=6, rotation=np.zeros(4), scale=np.ones(4))
    np.testing.assert_array_equal(again.stack, plain.stack)


def test_explicit_rotation_turns_the_pattern_about_its_centre():
    """Turning a frame back by its ground-truth transform gives frame 0 (interpolation
    error aside): the truth is what the pixels show."""
    from scipy import ndimage as ndi

    s = make_beam_block_stack(2, (96, 96), noise=None, beam_block=False, max_drift=0,
                              rotation=[0.0, 4.0], scale=[1.0, 1.03], dtype=np.float64)
    inv = np.linalg.inv(s.expected_transforms(0)[1])
    back = ndi.affine_transform(s.stack[1], inv[:2, :2], offset=inv[:2, 2], order=3)
    inner = (slice(16, -16), slice(16, -16))
    before = np.abs(s.stack[1] - s.stack[0])[inner].mean()
    after = np.abs(back - s.stack[0])[inner].mean()
    assert after < 0.05 * before


def test_noiseless_gradient_and_noise_variance():
    s = make_beam_block_stack(3, (64, 64), seed=4, counts=200)
    clean = s.noiseless(1)
    assert clean.dtype == np.float64 and clean.shape == (64, 64)
    # the frame is a Poisson draw around the noiseless one
    z = (s.stack[1] - clean) / np.sqrt(clean)
    assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.1
    np.testing.assert_array_equal(s.noise_variance(1), clean)
    # the gradient is minus the spatial derivative of the noiseless frame (the pattern
    # moving by +1 px along an axis), checked away from the block's edges
    g = s.gradient(1)
    spatial = gradient_of(clean)
    far = ndi_far(s.valid, 3)
    for ax in range(2):  # (finite differences are coarse on 1 px spots: correlate)
        assert np.corrcoef(g[ax][far], -spatial[ax][far])[0, 1] > 0.99
    gauss = make_beam_block_stack(2, (32, 32), noise="gaussian", sigma=0.05, counts=100)
    assert gauss.noise_variance(0) == pytest.approx(25.0)
    assert make_beam_block_stack(1, (16, 16), noise=None).noise_variance(0) == 0.0


def ndi_far(valid, pixels):
    from scipy import ndimage as ndi

    return ndi.binary_erosion(valid, iterations=pixels, border_value=0)


def test_rings_only_leaves_the_spots_out():
    """``spots=False``: the same rings, beam and block without the sharp Bragg spots
    (the benchmarks' smooth content): the difference is the spots alone, all positive,
    on a minority of the pixels."""
    with_spots = make_beam_block_stack(1, (96, 96), noise=None, seed=2)
    rings = make_beam_block_stack(1, (96, 96), noise=None, seed=2, spots=False)
    diff = with_spots.noiseless(0) - rings.noiseless(0)
    assert diff.min() >= -1e-12 and diff.max() > 0
    # spots are small: they touch a minority of the pixels
    assert 0 < np.mean(diff > 0.01 * diff.max()) < 0.5
