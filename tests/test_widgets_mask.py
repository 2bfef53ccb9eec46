"""Beam-block mask widget, on a ViewerModel (no canvas needed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("magicgui", reason="the widget tests need magicgui: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

from napari.layers import Labels

from napari_maskalign.engine import grow_ignore, shrink_ignore
from napari_maskalign.widgets import MaskWidget


@pytest.fixture
def widget(qtbot, viewer_model):
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    return w


def test_help_says_painted_pixels_are_ignored(widget):
    from qtpy.QtWidgets import QLabel

    text = " ".join(label.text() for label in widget.findChildren(QLabel))
    assert "ignored" in text and "nonzero" in text


def test_new_mask_is_one_frame_aligned_selected_and_painting(qtbot, viewer_model, small_stack):
    image = viewer_model.add_image(
        small_stack.stack, name="run 7", scale=(0.5, 2.0, 3.0), translate=(4.0, 10.0, -6.0)
    )
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.image_combo.value == image
    layer = w.new_mask()
    assert isinstance(layer, Labels)
    assert layer.name == "run 7 mask"
    assert layer.data.shape == (128, 128)  # one frame, not the whole stack
    assert not layer.data.any()
    np.testing.assert_allclose(layer.scale, (2.0, 3.0))
    np.testing.assert_allclose(layer.translate, (10.0, -6.0))
    assert viewer_model.layers.selection.active == layer
    assert layer.mode == "paint"
    assert layer.selected_label == 1
    assert 3 <= layer.brush_size <= 60
    assert w.mask_combo.value == layer
    # painting it (nonzero) does not touch the image
    before = image.data.copy()
    layer.data[10:20, 10:20] = 1
    np.testing.assert_array_equal(image.data, before)


def test_new_mask_picks_the_existing_mask(widget, loaded_model, small_stack):
    existing = loaded_model.layers["stack mask"]
    layer = widget.new_mask()
    assert layer == existing
    assert len(loaded_model.layers) == 2
    np.testing.assert_array_equal(layer.data, small_stack.beam_block)  # not wiped


def test_new_mask_for_3d_frames(qtbot, viewer_model):
    viewer_model.add_image(np.random.default_rng(0).random((4, 6, 32, 40)), name="vol")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.new_mask().data.shape == (6, 32, 40)


def test_single_2d_image_gets_a_mask(qtbot, viewer_model):
    viewer_model.add_image(np.zeros((48, 40), np.float32), name="flat")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.new_mask().data.shape == (48, 40)


def test_2d_pyramid_is_refused_in_plain_words(qtbot, viewer_model, notes):
    """Only the 2D-stack rule is relaxed for single images, not the multiscale one."""
    rng = np.random.default_rng(0)
    viewer_model.add_image([rng.random((64, 64)), rng.random((32, 32))], name="pyr",
                           multiscale=True)
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.new_mask() is None
    assert w.suggest_mask() is None
    assert [layer.name for layer in viewer_model.layers] == ["pyr"]
    msgs = notes()
    assert len(msgs) == 2 and all("multiscale" in m for m in msgs)


def test_no_image_is_a_plain_error(widget, viewer_model, notes):
    assert widget.new_mask() is None
    assert len(viewer_model.layers) == 0
    (msg,) = notes()
    assert "no image layer" in msg and "Traceback" not in msg


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".tiff", ".png"])
def test_save_then_load_round_trip(qtbot, tmp_path, widget, loaded_model, small_stack, suffix):
    path = tmp_path / f"block{suffix}"
    assert widget.save_mask(path) == path
    fresh = type(loaded_model)()
    fresh.add_image(small_stack.stack, name="other")
    w2 = MaskWidget(fresh)
    qtbot.addWidget(w2)
    layer = w2.load_mask(path)
    assert layer.name == "other mask"
    np.testing.assert_array_equal(layer.data != 0, small_stack.beam_block)


def test_load_colour_png(tmp_path, widget, loaded_model):
    from PIL import Image as PILImage

    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[40:60, 30:50, 0] = 200  # a red block
    PILImage.fromarray(rgb).save(tmp_path / "red.png")
    layer = widget.load_mask(tmp_path / "red.png")
    assert layer == loaded_model.layers["stack mask"]
    expected = np.zeros((128, 128), bool)
    expected[40:60, 30:50] = True
    np.testing.assert_array_equal(layer.data != 0, expected)


def test_load_never_unpickles(tmp_path, widget, loaded_model, notes):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    before = loaded_model.layers["stack mask"].data.copy()
    assert widget.load_mask(path) is None
    (msg,) = notes()
    assert "pickle" in msg.lower() or "object" in msg.lower()
    np.testing.assert_array_equal(loaded_model.layers["stack mask"].data, before)


def test_load_wrong_shape_is_a_plain_error(tmp_path, widget, loaded_model, notes):
    np.save(tmp_path / "small.npy", np.ones((64, 64), np.uint8))
    before = loaded_model.layers["stack mask"].data.copy()
    assert widget.load_mask(tmp_path / "small.npy") is None
    (msg,) = notes()
    assert "(64, 64)" in msg and "(128, 128)" in msg
    np.testing.assert_array_equal(loaded_model.layers["stack mask"].data, before)


def test_load_unknown_type_and_missing_file(tmp_path, widget, loaded_model, notes):
    (tmp_path / "mask.bmp").write_bytes(b"BM")
    assert widget.load_mask(tmp_path / "mask.bmp") is None
    assert widget.load_mask(tmp_path / "nope.npy") is None
    first, second = notes()
    assert ".npy" in first
    assert "nope.npy" in second


def test_save_png_refuses_3d(tmp_path, qtbot, viewer_model, notes):
    viewer_model.add_image(np.zeros((3, 4, 16, 16)), name="vol")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    w.new_mask()
    assert w.save_mask(tmp_path / "m.png") is None
    assert "2D" in notes()[-1]
    assert w.save_mask(tmp_path / "m.npy").exists()


def test_invert_grow_shrink_clear(widget, loaded_model, small_stack):
    layer = loaded_model.layers["stack mask"]
    block = small_stack.beam_block
    widget.pixels.value = 2
    widget.grow_mask()
    np.testing.assert_array_equal(layer.data, grow_ignore(block, 2))
    widget.shrink_mask()
    np.testing.assert_array_equal(layer.data, shrink_ignore(grow_ignore(block, 2), 2))
    layer.data = block.astype(np.uint8)
    widget.invert_mask()
    np.testing.assert_array_equal(layer.data != 0, ~block)
    widget.clear_mask()
    assert not layer.data.any()
    assert layer.data.shape == block.shape


def test_edits_without_a_mask_are_plain_errors(qtbot, viewer_model, small_stack, notes):
    viewer_model.add_image(small_stack.stack, name="s")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.grow_mask() is None
    assert w.save_mask("unused.npy") is None
    assert all("no mask layer" in m for m in notes())


def test_suggest_finds_the_beam_block(qtbot, viewer_model, small_stack, notes):
    viewer_model.add_image(small_stack.stack, name="s")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    w.pixels.value = 2
    layer = w.suggest_mask()
    assert layer.name == "s mask"
    found = layer.data != 0
    block = small_stack.beam_block
    assert (found & block).sum() >= 0.95 * block.sum()  # covers the block
    assert (found & ~block).sum() <= 1.5 * block.sum()  # plus a margin, not the whole frame
    assert viewer_model.layers.selection.active == layer and layer.mode == "paint"
    assert "check it" in notes()[-1]


def test_suggest_with_nothing_dark_says_so(qtbot, viewer_model, notes):
    rng = np.random.default_rng(1)
    viewer_model.add_image(100 + rng.random((8, 64, 64)).astype(np.float32), name="bright")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    layer = w.suggest_mask()
    assert not layer.data.any()
    assert "No beam block found" in notes()[-1]


def test_suggest_paints_hot_pixels_with_their_own_label(qtbot, viewer_model, small_stack, notes):
    stack = small_stack.stack.copy()
    spots = [(20, 20), (20, 100), (100, 20)]  # away from the block (and its margin)
    assert all(small_stack.valid[p] for p in spots)
    for p in spots:
        stack[(slice(None), *p)] = 50 * stack.max()
    viewer_model.add_image(stack, name="s")
    w = MaskWidget(viewer_model)
    qtbot.addWidget(w)
    layer = w.suggest_mask()
    assert sorted(map(tuple, np.argwhere(layer.data == 2))) == spots
    assert (layer.data[small_stack.beam_block] == 1).mean() > 0.95
    assert "3 hot or dead pixels (label 2" in notes()[-1] and "check it" in notes()[-1]
    # they are ignored like the block: a run with this mask does not see them
    from napari_maskalign.engine import valid_from_ignore

    assert not valid_from_ignore(layer.data)[tuple(np.transpose(spots))].any()
