"""Rotation and scale in the docks: the model choice, its plot panels, CSV and re-apply."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("magicgui", reason="the widget tests need magicgui: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import apply_transforms
from napari_maskalign.widgets import RegisterWidget, ShiftsWidget
from napari_maskalign.widgets._model import AlignedResult

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def turning():
    return make_beam_block_stack(10, (96, 96), seed=21, max_rotation=2.0, max_scale=0.02,
                                 max_drift=2.0)


@pytest.fixture
def registered(qtbot, viewer_model, turning):
    """A similarity registration against frame 0, made through the Register dock."""
    viewer_model.add_image(turning.stack, name="turning")
    viewer_model.add_labels(turning.beam_block.astype(np.uint8), name="turning mask")
    reg = RegisterWidget(viewer_model)
    qtbot.addWidget(reg)
    reg.reference.value = "index"
    reg.model_choice.value = "similarity"
    reg.radius.value = 4
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert reg.run() is not None
    assert blocker.args == ["done"]
    return viewer_model


@pytest.fixture
def shifts_dock(qtbot, registered):
    w = ShiftsWidget(registered)
    qtbot.addWidget(w)
    return w


def meta_of(viewer, name="turning aligned"):
    return viewer.layers[name].metadata["maskalign"]


def aligned_by_hand(stack, transforms, viewer):
    """What the docks should show: the frames turned and scaled by ``transforms``, NaN where
    the registration's mask (the painted block and any hot pixels) lands."""
    valid = AlignedResult.from_layer(viewer.layers["turning aligned"]).valid
    out, data = apply_transforms(stack, transforms, valid_mask=valid, return_valid=True)
    out[~data] = np.nan
    return out


def wait_job(qtbot, w, call) -> None:
    """Start a job of the dock and wait until it is over (the dock clears its worker)."""
    assert call() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT_MS)


def test_model_choice_gives_transforms_in_the_layer_metadata(registered, turning):
    meta = meta_of(registered)
    assert meta["model"] == "similarity"
    t = np.asarray(meta["transforms"])
    assert t.shape == (10, 3, 3)
    p = np.argwhere(turning.valid).astype(float)
    ph = np.column_stack([p, np.ones(len(p))])
    for found, truth in zip(t, turning.expected_transforms(0)):
        err = np.sqrt(np.mean(np.sum((ph @ (found - truth).T)[:, :2] ** 2, axis=1)))
        assert err < 0.1, err
    np.testing.assert_allclose(meta["rotations"], -turning.rotation, atol=0.1)
    np.testing.assert_allclose(meta["scales"], 1 / turning.scale, atol=2e-3)
    aligned = registered.layers["turning aligned"].data
    np.testing.assert_allclose(aligned, aligned_by_hand(turning.stack, t, registered),
                               equal_nan=True)
    assert registered.layers["turning xcorr"].data.shape == (10, 9, 9)


def test_the_plot_shows_rotation_and_scale_panels(shifts_dock, registered):
    """Four panels that read: the plot as tall as four panels need, rotation in degrees,
    the scale as its change in % (or ppm), the values as they are (no "+9.999e-1" offset),
    the y labels in one column (not on top of each other)."""
    from napari_maskalign.widgets._plot import PANEL_PX, PLOT_HEADER_PX, scale_panel

    plot = shifts_dock.plot
    labels = [ax.get_ylabel() for ax in plot.axes_list]
    assert labels == ["centre shift (px)", "rotation\n(°)", "Δscale\n(%)", "quality"]
    assert plot.minimumHeight() == PLOT_HEADER_PX + 4 * PANEL_PX
    plot.resize(320, plot.minimumHeight())  # as small as the dock ever shows it
    plot.draw()
    scales = np.asarray(meta_of(registered)["scales"])
    ax_scale = plot.axes_list[2]
    line = ax_scale.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), (scales - 1) * 100)
    for ax in plot.axes_list:
        assert ax.yaxis.get_offset_text().get_text() == ""
    right = [ax.yaxis.label.get_window_extent().x1 for ax in plot.axes_list]
    assert max(right) - min(right) < 1.5  # in one column, next to the axes
    boxes = [ax.yaxis.label.get_window_extent() for ax in plot.axes_list]
    for upper, lower in zip(boxes, boxes[1:]):
        assert lower.y1 <= upper.y0 + 1  # no label overlaps the next one
    # tiny changes read in ppm
    label, values = scale_panel(np.array([1.0, 1.0 + 2e-5, 1.0 - 1e-5]))
    assert label == "Δscale\n(ppm)"
    np.testing.assert_allclose(values, [0, 20, -10])


def test_export_and_import_carry_rotation_and_scale(qtbot, tmp_path, shifts_dock, registered):
    before = meta_of(registered)
    path = shifts_dock.export_csv(tmp_path / "t.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "shift_y", "shift_x", "rotation_deg", "scale", "quality",
                       "sigma_y", "sigma_x", "sigma_rotation_deg", "sigma_scale"]
    np.testing.assert_allclose(np.array(rows[1:], float)[:, 3], before["rotations"])
    assert np.isfinite(np.array(rows[2:], float)[:, 6:]).all()  # every error bar, measured
    for name in ("turning xcorr peak", "turning xcorr", "turning aligned"):
        registered.layers.remove(name)
    wait_job(qtbot, shifts_dock, lambda: shifts_dock.import_csv(path))
    after = meta_of(registered)
    np.testing.assert_allclose(after["rotations"], before["rotations"])
    np.testing.assert_allclose(after["scales"], before["scales"])
    np.testing.assert_allclose(after["transforms"], before["transforms"], atol=1e-12)
    stack = registered.layers["turning"].data
    expected = aligned_by_hand(stack, np.asarray(after["transforms"]), registered)
    got = registered.layers["turning aligned"].data
    np.testing.assert_allclose(got, expected, equal_nan=True)


def test_apply_to_another_layer_turns_it_too(qtbot, shifts_dock, registered):
    registered.add_image(registered.layers["turning"].data * 2.0, name="channel 2")
    shifts_dock.target_combo.reset_choices()
    shifts_dock.target_combo.value = registered.layers["channel 2"]
    wait_job(qtbot, shifts_dock, shifts_dock.apply_to_layer)
    out = registered.layers["channel 2 aligned"]
    t = np.asarray(meta_of(registered)["transforms"])
    expected = aligned_by_hand(registered.layers["channel 2"].data, t, registered)
    np.testing.assert_allclose(out.data, expected, equal_nan=True)
    np.testing.assert_allclose(out.metadata["maskalign"]["transforms"], t)


def test_editing_a_frame_keeps_its_rotation(shifts_dock, registered):
    rotations = np.asarray(meta_of(registered)["rotations"]).copy()
    assert shifts_dock.set_frame_shift(4, [0.5, -0.25])
    meta = meta_of(registered)
    np.testing.assert_allclose(meta["shifts"][4], [0.5, -0.25])
    np.testing.assert_allclose(meta["rotations"], rotations)
    t = np.asarray(meta["transforms"])[4]
    centre = np.array([47.5, 47.5, 1.0])
    np.testing.assert_allclose((t @ centre)[:2] - centre[:2], [0.5, -0.25], atol=1e-12)
    stack = registered.layers["turning"].data
    expected = aligned_by_hand(stack[4:5], t[None], registered)[0]
    got = registered.layers["turning aligned"].data[4]
    np.testing.assert_allclose(got, expected, equal_nan=True)


def test_interpolating_a_frame_interpolates_its_rotation_and_scale(shifts_dock, registered):
    layer = registered.layers["turning aligned"]
    res = AlignedResult.from_layer(layer)
    rotations, scales = res.rotations.copy(), res.scales.copy()
    rotations[4], scales[4] = 40.0, 1.3  # a frame that went wrong
    layer.metadata = {**layer.metadata,
                      **res.replace(rotations=rotations, scales=scales).to_metadata()}
    assert shifts_dock.interpolate_frame(4)
    meta = meta_of(registered)
    np.testing.assert_allclose(meta["rotations"][4], np.mean(res.rotations[[3, 5]]), atol=1e-9)
    np.testing.assert_allclose(meta["scales"][4], np.sqrt(res.scales[3] * res.scales[5]),
                               rtol=1e-12)
    np.testing.assert_array_equal(np.delete(meta["rotations"], 4), np.delete(rotations, 4))


def test_an_imported_rigid_table_is_rigid(qtbot, tmp_path, shifts_dock, registered):
    path = tmp_path / "rigid.csv"
    rows = ["frame,shift_y,shift_x,rotation_deg,scale,quality"]
    rows += [f"{i},0.5,-0.25,{0.1 * i},0.9999999999999513,0.9" for i in range(10)]
    path.write_text("\n".join(rows) + "\n")
    wait_job(qtbot, shifts_dock, lambda: shifts_dock.import_csv(path))
    assert meta_of(registered)["model"] == "rigid"


def test_a_smoothed_similarity_result_keeps_its_measured_values_and_every_error(turning, tmp_path):
    """The dock's CSV of a smoothed run: smoothed values with their own errors, the measured
    rotation, scale and errors as raw_* columns (what --resume of a CLI table reads)."""
    from napari_maskalign import io
    from napari_maskalign.engine import register_stack, transform_parameters
    from napari_maskalign.workflow import AlignSettings

    result = register_stack(turning.stack, mask=turning.valid, model="similarity",
                            smoothing="auto")
    shape = turning.stack.shape[1:]
    res = AlignedResult.from_registration(result, source="turning", frame_shape=shape,
                                          reference="frame 0", mask=None,
                                          align=AlignSettings())
    np.testing.assert_array_equal(res.shift_uncertainties(), result.smoothed_uncertainties)
    np.testing.assert_array_equal(res.turn_uncertainties(),
                                  result.smoothed_parameter_uncertainties)
    assert np.all(res.turn_uncertainties()[1:] < result.parameter_uncertainties[1:])  # smoothed
    raw = res.measured_table()
    _, rotations, scales = transform_parameters(result.raw_transforms, shape)
    np.testing.assert_array_equal(raw.rotations, rotations)
    np.testing.assert_array_equal(raw.scales, scales)
    assert not np.allclose(raw.rotations, res.rotations)  # smoothed ones differ
    edited = res.replace(edited=(3,))
    assert np.isnan(edited.shift_uncertainties()[3]).all()
    assert np.isfinite(edited.shift_uncertainties()[[2, 4]]).all()
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, res.shifts, res.quality, rotations=res.rotations,
                        scales=res.scales, uncertainties=res.shift_uncertainties(),
                        parameter_uncertainties=res.turn_uncertainties(),
                        raw=res.measured_table())
    back = io.read_shift_table(path, measured=True)
    np.testing.assert_allclose(back.rotations, rotations)
    np.testing.assert_allclose(back.uncertainties, result.uncertainties)
    np.testing.assert_allclose(back.parameter_uncertainties, result.parameter_uncertainties)
