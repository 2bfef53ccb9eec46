"""Mask helpers: the one conversion between painted masks and engine masks,
growing/shrinking the ignored region, checks, and the beam-block suggestion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_maskalign import valid_from_ignore as public_valid_from_ignore
from napari_maskalign._sample_data import make_beam_block_stack, make_sample_data
from napari_maskalign.engine import (
    check_valid_mask,
    grow_ignore,
    shrink_ignore,
    suggest_beam_block,
    valid_from_ignore,
)


def disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# ---------------------------------------------------------------------------
# valid_from_ignore


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16, bool, np.float32])
def test_valid_from_ignore_painted_convention(dtype):
    ignore = np.zeros((5, 6), dtype)
    ignore[1, 2] = 1
    ignore[3, 4] = 2 if dtype is not bool else 1  # any label value marks "ignore"
    valid = valid_from_ignore(ignore)
    assert valid.dtype == bool and valid.shape == ignore.shape
    expect = np.ones((5, 6), bool)
    expect[1, 2] = expect[3, 4] = False
    np.testing.assert_array_equal(valid, expect)


def test_valid_from_ignore_inverted_convention():
    marks = np.array([[0, 1, 3], [0, 0, 7]], np.uint8)
    np.testing.assert_array_equal(valid_from_ignore(marks, invert=True), marks != 0)
    np.testing.assert_array_equal(valid_from_ignore(marks, invert=False), marks == 0)
    np.testing.assert_array_equal(valid_from_ignore(marks), marks == 0)


def test_valid_from_ignore_is_the_public_one_and_keyword_only():
    assert public_valid_from_ignore is valid_from_ignore
    with pytest.raises(TypeError):
        valid_from_ignore(np.zeros(3), True)  # invert must be named


def test_valid_from_ignore_rejects_complex_and_keeps_input():
    with pytest.raises(ValueError, match="real"):
        valid_from_ignore(np.zeros(3, complex))
    labels = np.array([[0, 2], [1, 0]], np.uint8)
    labels.setflags(write=False)
    valid_from_ignore(labels)
    np.testing.assert_array_equal(labels, [[0, 2], [1, 0]])
    assert valid_from_ignore([[0, 1]]).tolist() == [[True, False]]  # lists work


def test_sample_labels_convert_to_the_engine_mask():
    """The napari sample's Labels layer (1 = beam block) becomes valid = not block."""
    _, labels = make_sample_data(n_frames=2, shape=(64, 64))
    valid = valid_from_ignore(labels[0])
    np.testing.assert_array_equal(valid, labels[0] == 0)
    assert 0 < (~valid).sum() < valid.sum()


# ---------------------------------------------------------------------------
# grow / shrink


def test_grow_and_shrink_ignore():
    block = disk((41, 41), (20, 20), 8)
    grown = grow_ignore(block.astype(np.uint8), 3)
    shrunk = shrink_ignore(block.astype(np.uint8), 3)
    for out in (grown, shrunk):
        assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    # growing by 3 px: every pixel within euclidean distance 3 of the block
    np.testing.assert_array_equal(grown.astype(bool), ndi.distance_transform_edt(~block) <= 3)
    # shrinking by 3 px: the block pixels farther than 3 from any non-block pixel
    np.testing.assert_array_equal(shrunk.astype(bool), ndi.distance_transform_edt(block) > 3)
    assert disk((41, 41), (20, 20), 10.5).sum() <= grown.sum() <= disk((41, 41), (20, 20), 11).sum()
    assert disk((41, 41), (20, 20), 4.5).sum() <= shrunk.sum() <= disk((41, 41), (20, 20), 5.5).sum()


def test_grow_and_shrink_zero_pixels_and_label_values():
    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 2:5] = 7
    for f in (grow_ignore, shrink_ignore):
        out = f(labels, 0)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, (labels != 0).astype(np.uint8))
    assert grow_ignore(labels, 1).sum() > 9
    assert shrink_ignore(labels, 1).sum() == 1


def test_shrink_keeps_a_block_that_touches_the_edge():
    """A rod running to the detector edge stays attached to the edge."""
    rod = np.zeros((30, 30), bool)
    rod[:20, 12:19] = True
    out = shrink_ignore(rod, 2).astype(bool)
    assert out[0].any(), "the rod was detached from the frame edge"
    np.testing.assert_array_equal(out[:18, 14:17], True)
    assert not out[:, :14].any() and not out[18:].any()


def test_grow_works_in_3d():
    block = np.zeros((9, 9, 9), bool)
    block[4, 4, 4] = True
    out = grow_ignore(block, 1)
    assert out.sum() == 7  # the 6-neighbourhood ball of radius 1


# ---------------------------------------------------------------------------
# check_valid_mask


def test_check_valid_mask():
    check_valid_mask(np.ones((8, 8), bool), (8, 8))
    with pytest.raises(ValueError, match="shape"):
        check_valid_mask(np.ones((8, 7), bool), (8, 8))
    with pytest.raises(ValueError, match="masks every pixel"):
        check_valid_mask(np.zeros((8, 8), bool), (8, 8))
    few = np.zeros((8, 8), bool)
    few[0, :3] = True
    with pytest.raises(ValueError, match="only 3 valid pixels"):
        check_valid_mask(few, (8, 8))
    with pytest.raises(ValueError, match="beam mask"):
        check_valid_mask(np.zeros((8, 8), bool), (8, 8), what="beam mask")


# ---------------------------------------------------------------------------
# suggest_beam_block


def _coverage(suggested, block, margin):
    suggested = suggested.astype(bool)
    covered = (suggested & block).sum() / block.sum()
    # "little extra": nothing suggested farther than the margin (+1 px) from the block
    far = suggested & ~ndi.binary_dilation(block, iterations=margin + 1)
    return covered, int(far.sum())


def test_suggest_beam_block_on_the_napari_sample():
    (stack, meta, _), (labels, _, _) = make_sample_data()
    suggested = suggest_beam_block(stack)
    assert suggested.dtype == np.uint8 and suggested.shape == stack.shape[1:]
    covered, far = _coverage(suggested, labels.astype(bool), margin=2)
    assert covered == 1.0, covered
    assert far == 0, far
    assert suggested.sum() < 1.4 * labels.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", [64, 128])
def test_suggest_beam_block_covers_the_block(seed, size):
    s = make_beam_block_stack(16, (size, size), seed=seed)
    suggested = suggest_beam_block(s.stack)
    covered, far = _coverage(suggested, s.beam_block, margin=2)
    assert covered == 1.0, f"{(1 - covered) * s.beam_block.sum():.0f} block pixels missed"
    assert far == 0


def test_suggest_beam_block_margin_and_sampling():
    s = make_beam_block_stack(30, (96, 96), seed=4)
    tight = suggest_beam_block(s.stack, margin=0).astype(bool)
    wide = suggest_beam_block(s.stack, margin=4).astype(bool)
    assert tight.sum() < wide.sum()
    np.testing.assert_array_equal(wide, grow_ignore(tight, 4).astype(bool))
    few = suggest_beam_block(s.stack, n_frames=3)
    assert _coverage(few, s.beam_block, margin=2)[0] > 0.98


def test_suggest_beam_block_finds_nothing_without_a_block():
    s = make_beam_block_stack(12, (96, 96), seed=5, beam_block=False)
    assert suggest_beam_block(s.stack).sum() == 0


def test_suggest_beam_block_on_dask_and_nan():
    da = pytest.importorskip("dask.array")
    s = make_beam_block_stack(8, (64, 64), seed=6)
    eager = suggest_beam_block(s.stack)
    np.testing.assert_array_equal(suggest_beam_block(da.from_array(s.stack, chunks=(2, -1, -1))), eager)
    dead = s.stack.copy()
    dead[:, 3, 50] = np.nan  # a dead pixel does not break it
    assert suggest_beam_block(dead).shape == (64, 64)


def test_suggest_beam_block_rejects_an_empty_stack():
    with pytest.raises(ValueError, match="no frames"):
        suggest_beam_block(np.zeros((0, 16, 16)))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "got None"),
        (np.array(["a", "b"]), "numbers or booleans.*<U1"),
        (np.array([None, 1], dtype=object), "numbers or booleans.*object"),
        (np.array(1), "single value"),
    ],
)
def test_valid_from_ignore_refuses_what_is_not_a_mask(bad, message):
    with pytest.raises(ValueError, match=message):
        valid_from_ignore(bad)
