"""Shifts widget: the plot, slider sync, CSV export/import, per-frame edits, apply to a layer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("magicgui", reason="the widget tests need magicgui: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

from matplotlib.backend_bases import MouseEvent
from napari.utils.theme import get_theme

from napari_maskalign.engine import apply_shifts, valid_from_ignore
from napari_maskalign.widgets import RegisterWidget, ShiftsWidget
from napari_maskalign.workflow import AlignSettings, iter_align, iter_mean

TIMEOUT_MS = 60_000


@pytest.fixture
def registered(qtbot, loaded_model):
    """The loaded ViewerModel after a registration against frame 0."""
    reg = RegisterWidget(loaded_model)
    qtbot.addWidget(reg)
    reg.reference.value = "index"
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS) as blocker:
        reg.run()
    assert blocker.args == ["done"]
    return loaded_model


@pytest.fixture
def widget(qtbot, registered):
    w = ShiftsWidget(registered)
    qtbot.addWidget(w)
    return w


def meta_of(viewer, name="stack aligned"):
    return viewer.layers[name].metadata["maskalign"]


def like_the_dock(stack, meta, i):
    """Frame i aligned with the stored shift, NaN where the mask it used lands."""
    aligned, data = apply_shifts(stack[i : i + 1], np.asarray(meta["shifts"])[i : i + 1],
                                 valid_mask=meta["valid"], return_valid=True)
    if meta["valid"] is not None:
        aligned[~data] = np.nan
    return aligned[0]


def wait_job(qtbot, w, call) -> str:
    """Start a job of the widget and wait for its end: "done" or "failed"."""
    outcome = []
    worker = call()
    assert worker is not None
    worker.returned.connect(lambda _value: outcome.append("done"))
    worker.errored.connect(lambda _exc: outcome.append("failed"))
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)  # published, mean included
    return outcome[0] if outcome else "cancelled"


def expected_outputs(drain, viewer, source, shifts, exclude=None):
    """The aligned stack and masked mean the workflow makes for ``shifts`` with the
    source's mask (an independent call of the shared workflow functions)."""
    data = viewer.layers[source].data
    valid = valid_from_ignore(viewer.layers[f"{source} mask"].data)
    _, aligned = drain(iter_align(data, shifts, valid=valid))
    _, mean = drain(iter_mean(data, shifts, valid=valid, exclude=exclude))
    return aligned, mean



def test_empty_state_says_what_to_do(qtbot, viewer_model):
    w = ShiftsWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.result() is None
    texts = [t.get_text() for t in w.plot.figure.texts]
    assert any("No shifts" in t for t in texts)
    assert not w.export_button.isEnabled()


def test_plot_shows_shifts_quality_and_outliers(qtbot, widget, registered):
    assert widget.stack_combo.value == registered.layers["stack"]
    meta = meta_of(registered)
    ax_shift, ax_quality = widget.plot.axes_list
    lines = [line for line in ax_shift.get_lines() if line.get_label().startswith("shift")]
    assert [line.get_label() for line in lines] == ["shift y", "shift x"]
    for line, column in zip(lines, meta["shifts"].T):
        np.testing.assert_allclose(line.get_ydata(), column)
    np.testing.assert_allclose(ax_quality.get_lines()[0].get_ydata(), meta["quality"])
    assert ax_quality.get_xlabel() == "frame" and "shift" in ax_shift.get_ylabel()

    # flag frame 4 as an outlier: the plot marks it and says so in the legend
    layer = registered.layers["stack aligned"]
    outliers = meta["outliers"].copy()
    outliers[4] = True
    layer.metadata = {**layer.metadata, "maskalign": {**meta, "outliers": outliers}}
    widget.refresh()
    labels = [t.get_text() for t in widget.plot.axes_list[0].get_legend().get_texts()]
    assert "outlier (1)" in labels


def test_plot_follows_a_rerun(qtbot, widget, registered):
    reg = RegisterWidget(registered)
    qtbot.addWidget(reg)
    reg.reference.value = "index"
    reg.ref_frame.value = 10
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS):
        reg.run()
    qtbot.waitUntil(lambda: not widget._refresh_pending, timeout=5000)
    line = widget.plot.axes_list[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), meta_of(registered)["shifts"][:, 0])
    assert line.get_ydata()[10] == 0.0


def test_vertical_line_follows_the_slider(widget, registered):
    registered.dims.set_current_step(0, 7)
    for line in widget.plot._vlines:
        assert list(line.get_xdata()) == [7, 7]
    assert widget.frame_spin.value() == 7
    shift7 = meta_of(registered)["shifts"][7]
    assert widget.shift_spins["y"].value() == pytest.approx(shift7[0], abs=1e-3)
    assert widget.shift_spins["x"].value() == pytest.approx(shift7[1], abs=1e-3)
    assert not widget.shift_spins["z"].isVisibleTo(widget)


def test_click_on_the_plot_jumps_to_that_frame(widget, registered):
    widget.plot.draw()
    ax = widget.plot.axes_list[1]
    x, y = ax.transData.transform((12.2, np.mean(ax.get_ylim())))
    event = MouseEvent("button_press_event", widget.plot, x, y, button=1)
    widget.plot.callbacks.process("button_press_event", event)
    assert registered.dims.current_step[0] == 12


def test_theme_follows_the_viewer(widget, registered):
    from matplotlib.colors import to_hex

    registered.theme = "light"
    assert to_hex(widget.plot.figure.get_facecolor()) == get_theme("light").background.as_hex()
    registered.theme = "dark"
    assert to_hex(widget.plot.figure.get_facecolor()) == get_theme("dark").background.as_hex()


def test_selecting_an_output_layer_chooses_its_stack(qtbot, registered, small_stack):
    w = ShiftsWidget(registered)
    qtbot.addWidget(w)
    registered.add_image(small_stack.stack[:5], name="unrelated")
    w.stack_combo.value = registered.layers["unrelated"]
    registered.layers.selection.active = registered.layers["stack xcorr"]
    assert w.stack_combo.value == registered.layers["stack"]
    # selecting a layer without shifts keeps the plot on the registered stack
    registered.layers.selection.active = registered.layers["unrelated"]
    assert w.stack_combo.value == registered.layers["stack"]


def test_export_csv_then_import_it(qtbot, tmp_path, widget, registered, notes, drain):
    path = widget.export_csv(tmp_path / "shifts.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "shift_y", "shift_x", "quality", "sigma_y", "sigma_x"]
    assert len(rows) == 21
    meta = meta_of(registered)
    np.testing.assert_allclose(np.array(rows[1:], float)[:, 1:3], meta["shifts"])
    # the error bars travel with the shifts they belong to (NaN where not measured)
    sigma = np.array(rows[1:], float)[:, 4:6]
    measured = ~np.asarray(meta["outliers"], bool)
    np.testing.assert_array_equal(sigma[measured], np.asarray(meta["uncertainties"])[measured])

    registered.layers.remove("stack xcorr peak")
    registered.layers.remove("stack xcorr")
    registered.layers.remove("stack aligned")
    mean_layer = registered.layers["stack mean"]
    assert widget.result() is None
    assert wait_job(qtbot, widget, lambda: widget.import_csv(path)) == "done"
    imported = meta_of(registered)
    np.testing.assert_allclose(imported["shifts"], meta["shifts"])
    np.testing.assert_allclose(imported["quality"], meta["quality"])
    np.testing.assert_array_equal(imported["uncertainties"], sigma)
    assert imported["mask"] == "stack mask"  # the stack's mask: NaN where the block lands
    aligned, mean = expected_outputs(drain, registered, "stack", imported["shifts"],
                                     imported["outliers"])
    np.testing.assert_allclose(registered.layers["stack aligned"].data, aligned, equal_nan=True)
    assert registered.layers["stack mean"] == mean_layer  # updated in place
    np.testing.assert_allclose(mean_layer.data, mean.mean, rtol=1e-5, equal_nan=True)
    assert widget.result() is not None
    assert any("from the 20 shifts in shifts.csv" in m for m in notes())


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("frame,shift_y,shift_x,quality\n0,0,0,1\n1,0.5,0.5,1\n", ["2 rows", "20 frames"]),
        ("frame,shift_z,shift_y,shift_x,quality\n" + "".join(f"{i},0,0,0,1\n" for i in range(20)),
         ["z, y, x", "2D"]),
        ("frame,dy,dx\n" + "".join(f"{i},0,0\n" for i in range(20)), ["shift_y"]),
        ("frame,shift_y,shift_x,quality\n" + "".join(f"{i},0,{'abc' if i == 3 else 0},1\n"
                                                     for i in range(20)), ["'abc'", "not a number"]),
    ],
    ids=["frame-count", "3d-columns", "no-shift-columns", "not-a-number"],
)
def test_import_checks_the_table_against_the_stack(tmp_path, widget, registered, notes, content,
                                                   words):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    before = meta_of(registered)["shifts"].copy()
    assert widget.import_csv(path) is None
    msg = notes()[-1]
    assert "Traceback" not in msg
    for word in words:
        assert word in msg, msg
    np.testing.assert_array_equal(meta_of(registered)["shifts"], before)


def test_apply_to_another_layer(qtbot, widget, registered, notes):
    registered.add_image(registered.layers["stack"].data * 3.0, name="channel 2")
    widget.target_combo.reset_choices()
    target = registered.layers["channel 2"]
    widget.target_combo.value = target
    assert wait_job(qtbot, widget, widget.apply_to_layer) == "done"
    out = registered.layers["channel 2 aligned"]
    np.testing.assert_allclose(
        out.data, 3.0 * registered.layers["stack aligned"].data, rtol=1e-5, atol=1e-6,
        equal_nan=True,
    )
    meta = out.metadata["maskalign"]
    assert meta["source"] == "channel 2" and meta["shifts_from"] == "stack"
    np.testing.assert_array_equal(target.data, registered.layers["stack"].data * 3.0)
    # its mean, made with the same shifts and mask
    np.testing.assert_allclose(registered.layers["channel 2 mean"].data,
                               3.0 * registered.layers["stack mean"].data, rtol=1e-5,
                               equal_nan=True)
    # the dock stays on the stack whose shifts these are, and says what it made
    assert widget.stack_combo.value == registered.layers["stack"]
    assert widget.result().source == "stack"
    assert "Aligned 'channel 2' with the shifts of 'stack'" in notes()[-1]
    # selecting the new layer later keeps it there too
    registered.layers.selection.active = out
    assert widget.stack_combo.value == registered.layers["stack"]


def test_apply_refuses_layers_that_do_not_match(widget, registered, notes):
    registered.add_image(np.zeros((10, 128, 128), np.float32), name="ten frames")
    registered.add_image(np.zeros((20, 64, 64), np.float32), name="binned")
    assert widget.apply_to_layer(registered.layers["ten frames"]) is None
    assert "10 frames" in notes()[-1] and "20 frames" in notes()[-1]
    assert widget.apply_to_layer(registered.layers["binned"]) is None
    assert "frames of shape (64, 64)" in notes()[-1]
    assert "ten frames aligned" not in registered.layers
    assert "binned aligned" not in registered.layers


def test_set_and_interpolate_one_frame(qtbot, widget, registered, drain):
    source = registered.layers["stack"].data
    valid = valid_from_ignore(registered.layers["stack mask"].data)
    aligned = registered.layers["stack aligned"]
    assert widget.set_frame_shift(5, [1.25, -0.5])
    meta = meta_of(registered)
    np.testing.assert_allclose(meta["shifts"][5], [1.25, -0.5])
    assert meta["edited"] == [5]
    _, frame5 = drain(iter_align(source[5:6], np.array([[1.25, -0.5]]), valid=valid))
    np.testing.assert_allclose(aligned.data[5], frame5[0], equal_nan=True)
    # the spin boxes edit the frame too
    widget.frame_spin.setValue(6)
    widget.shift_spins["y"].setValue(0.5)
    widget.shift_spins["x"].setValue(0.25)
    assert widget.set_frame_shift()
    np.testing.assert_allclose(meta_of(registered)["shifts"][6], [0.5, 0.25])

    assert widget.interpolate_frame(5)
    shifts = meta_of(registered)["shifts"]
    np.testing.assert_allclose(shifts[5], (shifts[4] + shifts[6]) / 2)
    _, frame5 = drain(iter_align(source[5:6], shifts[5:6], valid=valid))
    np.testing.assert_allclose(aligned.data[5], frame5[0], equal_nan=True)
    # the mean follows the edits (averaged again in the background, the last edit wins)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    _, mean = expected_outputs(drain, registered, "stack", shifts,
                                   meta_of(registered)["outliers"])
    np.testing.assert_allclose(registered.layers["stack mean"].data, mean.mean, rtol=1e-5,
                               equal_nan=True)


def test_editing_errors_are_plain(qtbot, tmp_path, widget, registered, notes):
    from napari.components import ViewerModel

    assert not widget.set_frame_shift(99, [0, 0])
    assert "frame 99 does not exist" in notes()[-1].lower()
    empty = ShiftsWidget(ViewerModel())
    qtbot.addWidget(empty)
    assert empty.export_csv(tmp_path / "never.csv") is None
    assert not (tmp_path / "never.csv").exists()
    assert "no shifts" in notes()[-1].lower()
    assert all("Traceback" not in m for m in notes())


def test_import_over_a_registration_drops_its_stale_preview(qtbot, tmp_path, widget, registered):
    rows = "".join(f"{i},0.5,-0.25,1.0\n" for i in range(20))
    path = tmp_path / "flat.csv"
    path.write_text("frame,shift_y,shift_x,quality\n" + rows)
    aligned = registered.layers["stack aligned"]
    assert wait_job(qtbot, widget, lambda: widget.import_csv(path)) == "done"
    assert registered.layers["stack aligned"] == aligned  # updated in place
    assert widget.stack_combo.value == registered.layers["stack"]
    np.testing.assert_allclose(meta_of(registered)["shifts"], np.tile([0.5, -0.25], (20, 1)))
    names = [layer.name for layer in registered.layers]
    assert "stack xcorr" not in names and "stack xcorr peak" not in names


def test_an_imported_table_is_drawn_as_after_its_run(qtbot, tmp_path, widget, registered):
    """Export after a run, import it back: the same title (no "vs imported from ..."), the
    reference frame pinned on the quality panel as before."""
    registered.layers["stack"].metadata.pop("expected_shifts", None)
    before = meta_of(registered)
    widget.refresh()
    title = widget.plot.figure.get_suptitle()
    pinned = [t.get_text() for t in widget.plot.axes_list[-1].texts]
    assert title == "stack vs frame 0" and any(t.startswith("ref ") for t in pinned)
    path = widget.export_csv(tmp_path / "s.csv")
    assert wait_job(qtbot, widget, lambda: widget.import_csv(path)) == "done"
    after = meta_of(registered)
    assert after["reference"] == "frame 0" and after["reference_frame"] == 0
    np.testing.assert_allclose(after["shifts"], before["shifts"], atol=1e-6)
    widget.refresh()
    assert widget.plot.figure.get_suptitle() == title
    assert [t.get_text() for t in widget.plot.axes_list[-1].texts] == pinned


def test_table_reference_is_the_frame_matched_with_itself():
    from napari_maskalign.widgets._shifts import table_reference

    shifts = np.array([[0.5, 0.1], [0.0, 0.0], [0.2, -0.3]])
    assert table_reference(shifts, [0.9, 1.0, 0.95]) == 1
    assert table_reference(shifts, [0.9, 0.97, 0.95]) is None  # not matched with itself
    assert table_reference(np.zeros((3, 2)), np.ones(3)) is None  # a flat table: no one frame
    assert table_reference(shifts, [0.9, 1.0, 0.95], rotations=[0, 0.2, 0]) is None


def test_editing_a_lazy_aligned_stack_keeps_it_lazy(qtbot, viewer_model, small_stack):
    import dask.array as da

    viewer_model.add_image(da.from_array(small_stack.stack, chunks=(1, 128, 128)), name="big")
    reg = RegisterWidget(viewer_model)
    qtbot.addWidget(reg)
    reg.reference.value = "index"
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS) as blocker:
        reg.run()
    assert blocker.args == ["done"]
    w = ShiftsWidget(viewer_model)
    qtbot.addWidget(w)
    w.stack_combo.value = viewer_model.layers["big"]
    assert w.set_frame_shift(3, [1.25, -0.5])
    aligned = viewer_model.layers["big aligned"]
    assert isinstance(aligned.data, da.Array)
    shifts = meta_of(viewer_model, "big aligned")["shifts"]
    np.testing.assert_allclose(shifts[3], [1.25, -0.5])
    meta = meta_of(viewer_model, "big aligned")
    for i in (2, 3):  # the edited frame and a neighbour both follow the stored shifts
        np.testing.assert_allclose(
            np.asarray(aligned.data[i]), like_the_dock(small_stack.stack, meta, i), equal_nan=True
        )


def test_closing_the_widget_during_a_job_stops_it_quietly(qtbot, tmp_path, viewer_model):
    """No slot may reach the deleted widget (pytest-qt fails on exceptions in Qt callbacks)."""
    viewer_model.add_image(np.random.default_rng(0).random((300, 128, 128)).astype(np.float32),
                           name="s")
    path = tmp_path / "s.csv"
    path.write_text("frame,shift_y,shift_x,quality\n"
                    + "".join(f"{i},0.5,0.5,1\n" for i in range(300)))
    w = ShiftsWidget(viewer_model)
    w.stack_combo.value = viewer_model.layers["s"]
    worker = w.import_csv(path)
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        w.deleteLater()
    assert worker.abort_requested
    assert "s aligned" not in viewer_model.layers


# -- the plot reads at a glance -------------------------------------------------------------


def test_quality_panel_is_scaled_to_the_frames_that_matter(widget, registered):
    meta = meta_of(registered)
    assert meta["reference_frame"] == 0 and meta["quality"][0] > 0.999
    widget.plot.draw()
    ax_quality = widget.plot.axes_list[1]
    lo, hi = ax_quality.get_ylim()
    others = meta["quality"][1:]
    assert lo <= others.min() and hi >= others.max()  # every other frame on the axis
    assert hi < 0.999  # the reference frame's 1.0 does not set it ...
    notes = [t.get_text() for t in ax_quality.texts]
    assert any(t.startswith("ref 1.00") for t in notes)  # ... it is pinned to the edge, labelled


def test_legend_sits_outside_the_data(widget, registered):
    widget.plot.draw()
    ax_shift = widget.plot.axes_list[0]
    renderer = widget.plot.figure.canvas.get_renderer()
    legend = ax_shift.get_legend().get_window_extent(renderer)
    assert legend.y0 >= ax_shift.get_window_extent(renderer).y1 - 1  # above the axes


def test_known_true_drift_is_drawn_dashed(widget, registered, small_stack):
    registered.layers["stack"].metadata["expected_shifts"] = small_stack.expected_shifts(0)
    widget.refresh()
    ax_shift = widget.plot.axes_list[0]
    dashed = [line for line in ax_shift.get_lines() if line.get_linestyle() == "--"
              and len(line.get_xdata())]
    assert len(dashed) == 2
    truth = small_stack.expected_shifts(0)
    for line, column in zip(dashed, truth.T):
        np.testing.assert_allclose(line.get_ydata(), column)
    assert "true drift" in [t.get_text() for t in ax_shift.get_legend().get_texts()]
    assert "median error against the true drift" in widget.plot.figure.get_suptitle()


def test_true_drift_follows_another_reference_frame(qtbot, widget, registered, small_stack):
    registered.layers["stack"].metadata["expected_shifts"] = small_stack.expected_shifts(0)
    reg = RegisterWidget(registered)
    qtbot.addWidget(reg)
    reg.ref_frame.value = 6
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS):
        reg.run()
    widget.refresh()
    dashed = [line for line in widget.plot.axes_list[0].get_lines()
              if line.get_linestyle() == "--" and len(line.get_xdata())]
    for line, column in zip(dashed, small_stack.expected_shifts(6).T):
        np.testing.assert_allclose(line.get_ydata(), column, atol=1e-9)


def test_shifts_are_drawn_in_the_layers_unit(widget, registered):
    stack = registered.layers["stack"]
    assert widget.plot.axes_list[0].get_ylabel() == "shift (px)"
    stack.scale = (1.0, 0.5, 0.5)
    stack.units = ("s", "nm", "nm")
    widget.refresh()
    ax_shift = widget.plot.axes_list[0]
    assert ax_shift.get_ylabel() == "shift (nm)"
    line = ax_shift.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), 0.5 * meta_of(registered)["shifts"][:, 0])


def test_closing_the_dock_stops_an_import_and_publishes_nothing(qtbot, tmp_path, viewer_model):
    viewer_model.add_image(np.random.default_rng(0).random((300, 64, 64)).astype(np.float32),
                           name="s")
    path = tmp_path / "s.csv"
    path.write_text("frame,shift_y,shift_x,quality\n"
                    + "".join(f"{i},0.5,0.5,1\n" for i in range(300)))
    w = ShiftsWidget(viewer_model)
    qtbot.addWidget(w)
    w.stack_combo.value = viewer_model.layers["s"]
    worker = w.import_csv(path)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        worker.yielded.connect(lambda _p: w.stop_work())
    assert worker.abort_requested
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer_model.layers] == ["s"]


def test_editing_integer_output_updates_its_no_data_mask(qtbot, viewer_model, small_stack):
    from napari_maskalign.workflow import align_frame

    counts = np.clip(np.rint(small_stack.stack), 0, 65535).astype(np.uint16)
    viewer_model.add_image(counts, name="counts")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="counts mask")
    reg = RegisterWidget(viewer_model)
    qtbot.addWidget(reg)
    reg.integer.value = True
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS):
        reg.run()
    w = ShiftsWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.set_frame_shift(4, [2.5, -3.0])
    pixels, data = align_frame(counts, meta_of(viewer_model, "counts aligned")["shifts"], 4,
                               valid=small_stack.valid, settings=AlignSettings(integer=True),
                               return_data=True)
    np.testing.assert_array_equal(viewer_model.layers["counts aligned"].data[4], pixels)
    np.testing.assert_array_equal(viewer_model.layers["counts aligned mask"].data[4], ~data)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)  # the mean, averaged again


def test_smoothing_from_the_register_dock_plots_measured_dots_smoothed_lines_and_jumps(
        qtbot, loaded_model, tmp_path):
    reg = RegisterWidget(loaded_model)
    qtbot.addWidget(reg)
    reg.reference.value = "index"
    reg.smoothing.value = True
    with qtbot.waitSignal(reg.run_finished, timeout=TIMEOUT_MS) as blocker:
        reg.run()
    assert blocker.args == ["done"]
    meta = meta_of(loaded_model)
    assert meta["jumps"] is not None and meta["params"]["smoothing"] == "auto"
    assert not np.allclose(meta["shifts"], meta["raw_shifts"])  # smoothed, measured kept
    w = ShiftsWidget(loaded_model)
    qtbot.addWidget(w)
    ax = w.plot.axes_list[0]
    smooth = [line for line in ax.get_lines() if line.get_label().endswith("smoothed")]
    assert [line.get_label() for line in smooth] == ["shift y, smoothed", "shift x, smoothed"]
    for line, column in zip(smooth, meta["shifts"].T):
        np.testing.assert_allclose(line.get_ydata(), column)
    dots = [line for line in ax.get_lines() if line.get_marker() == "." and len(line.get_ydata())]
    for line, column in zip(dots, meta["raw_shifts"].T):
        np.testing.assert_allclose(line.get_ydata(), column)
    # the dock's CSV is the command line's: the smoothed shifts with their own errors, and
    # the measured shifts and errors as raw_* columns (they were NaN: not "measured")
    from napari_maskalign import io

    path = w.export_csv(tmp_path / "smoothed.csv")
    assert path.read_text().splitlines()[0] == (
        "frame,shift_y,shift_x,quality,sigma_y,sigma_x,raw_shift_y,raw_shift_x,"
        "raw_sigma_y,raw_sigma_x")
    table, measured = io.read_shift_table(path), io.read_shift_table(path, measured=True)
    np.testing.assert_allclose(table.shifts, meta["shifts"])
    np.testing.assert_allclose(table.uncertainties, meta["smoothed_sigma"])
    assert np.isfinite(table.uncertainties).all()
    np.testing.assert_allclose(measured.shifts, meta["raw_shifts"])
    np.testing.assert_allclose(measured.uncertainties, meta["uncertainties"])
    assert np.all(table.uncertainties[1:] < measured.uncertainties[1:])  # smoothing helped
    # a jump kept at frame 5: a dashed line between frames 4 and 5, and the legend says so
    layer = loaded_model.layers["stack aligned"]
    layer.metadata = {**layer.metadata, "maskalign": {**meta, "jumps": [5]}}
    w.refresh()
    ax = w.plot.axes_list[0]
    assert any(np.allclose(line.get_xdata(), 4.5) for line in ax.get_lines()
               if line.get_linestyle() == "--")
    assert "jump (1)" in [t.get_text() for t in ax.get_legend().get_texts()]
