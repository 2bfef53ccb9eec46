"""The Register dock's nonrigid model: aligned by the fields, patch shifts as vectors,
the deformation as a lazy image."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

from napari.layers import Vectors

from napari_maskalign import apply_fields
from napari_maskalign._nonrigid_sample import make_nonrigid_stack
from napari_maskalign.widgets import RegisterWidget


def test_nonrigid_run_shows_fields(qtbot, viewer_model):
    # 256 px: the 1 px field (wavelength 85 px) is resolved by the 32 px grid there; at 128 px
    # the fit leaves most of it to the prior (about 0.3 px of the 1 px beyond the global shift)
    synth = make_nonrigid_stack(3, (256, 256), amplitude=1.0, seed=6)
    viewer_model.add_image(synth.stack, name="warp")
    viewer_model.add_labels(synth.beam_block.astype(np.uint8), name="warp mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    w.model_choice.value = "nonrigid"
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as blocker:
        assert w.run() is not None
    assert blocker.args[0] == "done"
    aligned = viewer_model.layers["warp aligned"]
    meta = aligned.metadata["maskalign"]
    assert meta["model"] == "nonrigid" and meta["fields"] is not None
    # the aligned frames are the frames warped by the fields (not just shifted)
    expected, data = apply_fields(synth.stack, meta["fields"], valid_mask=meta["valid"],
                                  return_valid=True)
    got = np.asarray(aligned.data)
    np.testing.assert_allclose(got[data], expected[data], rtol=1e-5, atol=1e-4)
    vectors = viewer_model.layers["warp patch shifts"]
    assert isinstance(vectors, Vectors) and len(vectors.data)
    assert set(np.unique(vectors.data[:, 0, 0])) <= {0.0, 1.0, 2.0}  # time-indexed
    assert "quality" in vectors.features and vectors.length > 1
    deformation = viewer_model.layers["warp deformation"]
    assert isinstance(deformation.data, da.Array) and deformation.data.shape == (3, 256, 256)
    # frame 0 is the reference: no deformation; the others deform by about 1 px
    d = np.asarray(deformation.data[1])[synth.valid]
    assert np.asarray(deformation.data[0]).max() < 1e-4 and 0.3 < np.median(d) < 2.5
    # the Shifts plot has a deformation panel
    from napari_maskalign.widgets._model import AlignedResult
    from napari_maskalign.widgets._plot import _extra_panels

    res = AlignedResult.from_layer(aligned)
    panels = dict(_extra_panels(res))
    # the engine's RMS is that of the deformation layer over the valid pixels
    valid = meta["valid"] if meta["valid"] is not None else np.ones((256, 256), bool)
    rms = [np.sqrt(np.mean(np.asarray(deformation.data[i])[valid] ** 2)) for i in range(3)]
    np.testing.assert_allclose(panels["deformation RMS (px)"], rms, rtol=1e-3, atol=1e-4)
    assert panels["deformation RMS (px)"][0] == 0 and np.all(panels["deformation RMS (px)"][1:] > 0.3)


def test_grid_controls_show_for_nonrigid_and_reach_the_run(qtbot, viewer_model):
    """The grid spacing and patch size appear only with the nonrigid model, and go to
    the same workflow call as ``--grid-spacing`` / ``--patch-size``."""
    synth = make_nonrigid_stack(2, (96, 96), amplitude=1.0, seed=6)
    viewer_model.add_image(synth.stack, name="warp")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.show()
    assert not w.grid_spacing.visible and not w.patch_size.visible
    w.model_choice.value = "nonrigid"
    assert w.grid_spacing.visible and w.patch_size.visible
    w.grid_spacing.value, w.patch_size.value = 24, 48
    job = w.prepare()
    assert job.run.options.grid_spacing == 24 and job.run.options.patch_size == 48
    # the run uses them: its fields sit on a 24 px grid
    for _ in job.run:
        pass
    result = job.run.result
    assert result.grid.spacing == 24
    assert job.run.options.fingerprint()["grid_spacing"] == 24
    w.model_choice.value = "translation"
    assert not w.grid_spacing.visible and not w.patch_size.visible


@pytest.mark.parametrize("reference", ["previous", "template"])
def test_nonrigid_runs_from_the_dock_with_every_reference(qtbot, viewer_model, reference):
    synth = make_nonrigid_stack(3, (96, 96), amplitude=1.0, max_shift=1.5, seed=6)
    viewer_model.add_image(synth.stack, name="warp")
    viewer_model.add_labels(synth.beam_block.astype(np.uint8), name="warp mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = reference
    w.model_choice.value = "nonrigid"
    w.hot_pixels.value = False
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as blocker:
        assert w.run() is not None
    assert blocker.args[0] == "done"
    meta = viewer_model.layers["warp aligned"].metadata["maskalign"]
    assert meta["model"] == "nonrigid" and len(meta["fields"]) == 3
    assert len(viewer_model.layers["warp patch shifts"].data)
