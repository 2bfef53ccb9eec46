"""Register widget: worker runs, outputs, re-runs, cancel, responsiveness and plain errors."""

from __future__ import annotations

import gc
import time

import dask.array as da
import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("magicgui", reason="the widget tests need magicgui: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

from napari.layers import Image, Points

from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import apply_shifts
from napari_maskalign.widgets import RegisterWidget, _layers, _register

RUN_TIMEOUT_MS = 60_000


@pytest.fixture
def widget(qtbot, loaded_model):
    w = RegisterWidget(loaded_model)
    qtbot.addWidget(w)
    return w


def run_and_wait(qtbot, w, timeout=RUN_TIMEOUT_MS) -> str:
    """Run and wait for the end; the outcome ("done", "cancelled", "failed")."""
    with qtbot.waitSignal(w.run_finished, timeout=timeout) as blocker:
        worker = w.run()
        assert worker is not None, "run() refused to start"
    return blocker.args[0]


def relative_truth(synth, ref):
    return synth.expected_shifts(reference=ref)


# -- a normal run -------------------------------------------------------------------


def test_run_publishes_aligned_and_xcorr(qtbot, widget, loaded_model, small_stack, notes):
    source = loaded_model.layers["stack"]
    source.scale = (1.0, 0.5, 0.5)
    source.translate = (0.0, 3.0, -2.0)
    before = source.data.copy()
    assert widget.image_combo.value == source
    assert widget.mask_combo.value == loaded_model.layers["stack mask"]
    widget.reference.value = "index"
    widget.ref_frame.value = 0

    worker = widget.run()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    assert widget.run() is None  # a second click while running does nothing
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        pass
    assert worker is not None and widget.worker is None
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert blocker.args == ["done"]
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 40  # 20 + 20 frames

    names = [layer.name for layer in loaded_model.layers]
    assert names == ["stack", "stack mask", "stack aligned", "stack xcorr", "stack xcorr peak"]
    np.testing.assert_array_equal(source.data, before)  # the source is never modified

    aligned = loaded_model.layers["stack aligned"]
    assert isinstance(aligned, Image) and aligned.data.shape == source.data.shape
    np.testing.assert_allclose(aligned.scale, source.scale)
    np.testing.assert_allclose(aligned.translate, source.translate)
    assert aligned.colormap.name == source.colormap.name
    meta = aligned.metadata["maskalign"]
    assert meta["source"] == "stack" and meta["mask"] == "stack mask"
    assert set(meta) >= {"shifts", "quality", "outliers", "raw_shifts", "params", "axes"}
    err = np.abs(meta["shifts"] - relative_truth(small_stack, 0))
    assert err.max() < 0.1, err.max()
    assert meta["quality"].shape == (20,) and meta["outliers"].dtype == bool
    # the block (the mask) is missing data where it lands in every aligned frame
    expected, data = apply_shifts(source.data, meta["shifts"], valid_mask=small_stack.valid,
                                  return_valid=True)
    expected[~data] = np.nan
    np.testing.assert_allclose(aligned.data, expected, equal_nan=True)

    xcorr = loaded_model.layers["stack xcorr"]
    assert xcorr.data.shape == (20, 33, 33)
    peaks = loaded_model.layers["stack xcorr peak"]
    assert isinstance(peaks, Points) and peaks.data.shape == (20, 3)
    np.testing.assert_allclose(peaks.data[:, 0], np.arange(20))
    np.testing.assert_allclose(peaks.data[:, 1:], 16 + meta["raw_shifts"])
    np.testing.assert_allclose(peaks.scale, xcorr.scale)
    for i in range(20):  # the marked peak is where the surface peaks
        argmax = np.unravel_index(np.argmax(xcorr.data[i]), xcorr.data[i].shape)
        assert np.all(np.abs(np.array(argmax) - peaks.data[i, 1:]) <= 1.0)
    # the preview sits beside the image, not on top of it
    assert xcorr.extent.world[0, -1] > source.extent.world[1, -1]
    assert loaded_model.layers.selection.active == aligned
    assert any("stack aligned" in m for m in notes())


def test_rerun_updates_layers_in_place(qtbot, widget, loaded_model, small_stack):
    widget.reference.value = "index"
    run_and_wait(qtbot, widget)
    layers = {layer.name: layer for layer in loaded_model.layers}
    widget.ref_frame.value = 5
    run_and_wait(qtbot, widget)
    assert [layer.name for layer in loaded_model.layers] == list(layers)
    for name, layer in layers.items():
        assert loaded_model.layers[name] == layer  # same objects, updated
    meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
    assert meta["reference"] == "frame 5"
    assert np.abs(meta["shifts"] - relative_truth(small_stack, 5)).max() < 0.1


def test_current_frame_is_the_default_reference(qtbot, widget, loaded_model, small_stack):
    assert widget.reference.value == "current"
    loaded_model.dims.set_current_step(0, 7)
    run_and_wait(qtbot, widget)
    meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
    assert meta["reference"] == "frame 7 (current)"
    assert np.abs(meta["shifts"] - relative_truth(small_stack, 7)).max() < 0.1


@pytest.mark.parametrize("mode", ["mean", "previous", "template"])
def test_other_references(qtbot, widget, loaded_model, small_stack, mode):
    widget.reference.value = mode
    widget.range_first.value, widget.range_last.value = 2, 11
    widget.iterations.value = 1
    assert run_and_wait(qtbot, widget) == "done"
    shifts = loaded_model.layers["stack aligned"].metadata["maskalign"]["shifts"]
    truth = relative_truth(small_stack, 0)
    # every reference gives the same drift up to a constant offset
    offset = np.median(shifts - truth, axis=0)
    assert np.abs(shifts - truth - offset).max() < 0.15


def test_without_mask_and_without_preview(qtbot, widget, loaded_model):
    widget.reference.value = "index"
    run_and_wait(qtbot, widget)
    assert "stack xcorr" in loaded_model.layers
    widget.mask_combo.value = None
    widget.preview.value = False
    run_and_wait(qtbot, widget)
    names = [layer.name for layer in loaded_model.layers]
    assert "stack xcorr" not in names and "stack xcorr peak" not in names  # no stale preview
    assert loaded_model.layers["stack aligned"].metadata["maskalign"]["mask"] is None


def test_3d_frames(qtbot, viewer_model):
    synth = make_beam_block_stack(n_frames=5, shape=(20, 32, 32), seed=2, max_drift=2.0)
    viewer_model.add_image(synth.stack, name="vol")
    viewer_model.add_labels(synth.beam_block.astype(np.uint8), name="vol mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    w.radius.value = 4
    assert run_and_wait(qtbot, w) == "done"
    meta = viewer_model.layers["vol aligned"].metadata["maskalign"]
    assert meta["shifts"].shape == (5, 3) and meta["axes"] == ("z", "y", "x")
    assert np.abs(meta["shifts"] - synth.expected_shifts(0)).max() < 0.2
    assert viewer_model.layers["vol xcorr"].data.shape == (5, 9, 9, 9)
    assert viewer_model.layers["vol xcorr peak"].data.shape == (5, 4)


def test_dask_input_gives_a_lazy_aligned_stack(qtbot, viewer_model, small_stack):
    lazy = da.from_array(small_stack.stack, chunks=(1, 128, 128))
    viewer_model.add_image(lazy, name="big")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="big mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    run_and_wait(qtbot, w)
    aligned = viewer_model.layers["big aligned"]
    assert isinstance(aligned.data, da.Array)
    assert w.progress_bar.maximum() == 20  # no eager shifting pass
    shifts = aligned.metadata["maskalign"]["shifts"]
    expected, data = apply_shifts(small_stack.stack[3:4], shifts[3:4],
                                  valid_mask=small_stack.valid, return_valid=True)
    expected[~data] = np.nan  # the block, where it lands
    np.testing.assert_allclose(np.asarray(aligned.data[3]), expected[0], equal_nan=True)


def test_stacks_over_the_memory_threshold_stay_lazy(qtbot, widget, loaded_model, monkeypatch):
    monkeypatch.setattr(_layers, "LAZY_BYTES", 1000)
    widget.reference.value = "index"
    run_and_wait(qtbot, widget)
    assert isinstance(loaded_model.layers["stack aligned"].data, da.Array)


# -- cancel and responsiveness ----------------------------------------------------------


def test_cancel_stops_within_one_frame(qtbot, viewer_model, small_stack, monkeypatch, notes):
    long = np.concatenate([small_stack.stack] * 20)  # 400 frames
    viewer_model.add_image(long, name="long")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="long mask")
    produced = []  # frames the worker computed, counted in the worker thread

    real_job = _register.register_job

    def counting_job(*args, **kwargs):
        gen = real_job(*args, **kwargs)
        try:
            while True:
                item = next(gen)
                produced.append(item)
                yield item
        except StopIteration as stop:
            return stop.value

    monkeypatch.setattr(_register, "register_job", counting_job)
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    at_cancel = []

    def cancel_after_three(_p):
        if len(at_cancel) == 0 and w._yields >= 3:
            at_cancel.append(len(produced))
            w.cancel()

    with qtbot.waitSignal(w.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        w.run()
        w.worker.yielded.connect(cancel_after_three)
    assert at_cancel, "the run ended before it could be cancelled"
    assert len(produced) - at_cancel[0] <= 1  # at most the frame under way
    assert len(produced) < 400
    assert blocker.args == ["cancelled"]
    assert [layer.name for layer in viewer_model.layers] == ["long", "long mask"]
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()
    assert w.progress_bar.value() == 0
    assert "cancelled" in notes()[-1]


def test_event_loop_keeps_ticking_during_a_run(qtbot, make_napari_viewer):
    """200 frames of 512x512, masked, subpixel: no main-thread stall over 100 ms."""
    from qtpy.QtCore import Qt, QTimer

    synth = make_beam_block_stack(n_frames=20, shape=(512, 512), seed=4)
    stack = np.concatenate([synth.stack] * 10)  # 200 frames
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="big")
    viewer.add_labels(synth.beam_block.astype(np.uint8), name="big mask")
    w = RegisterWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.reference.value = "index"
    w.max_shift.value = 8

    # A fresh viewer still owes the interpreter a full garbage collection of its own
    # start-up objects (60-120 ms on this kind of machine), which would fire at whatever
    # allocates next. Settle it first, as in a session that has been open a while; the run
    # itself leaves almost nothing behind for the collector.
    gc.collect()
    ticks: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(50)
    start = time.perf_counter()
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as blocker:
        w.run()
    qtbot.wait(50)
    timer.stop()
    assert blocker.args == ["done"]
    assert "big aligned" in viewer.layers and "big xcorr peak" in viewer.layers
    assert len(ticks) > 50
    gaps = np.diff(ticks)
    worst = int(np.argmax(gaps))
    assert gaps[worst] < 0.1, (
        f"event loop stalled {gaps[worst] * 1000:.0f} ms, {ticks[worst] - start:.2f} s into "
        f"a {ticks[-1] - start:.1f} s run"
    )


# -- plain-word errors; nothing half-done --------------------------------------------


def assert_refused(w, viewer, notes, *words, layers=None):
    before = [layer.name for layer in viewer.layers] if layers is None else layers
    assert w.run() is None
    assert w.worker is None and w.run_button.isEnabled()
    msg = notes()[-1]
    assert "Traceback" not in msg
    for word in words:
        assert word in msg, msg
    assert [layer.name for layer in viewer.layers] == before


def test_error_no_image(qtbot, viewer_model, notes):
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert_refused(w, viewer_model, notes, "no image layer")


def test_error_mask_of_the_wrong_shape(widget, loaded_model, notes):
    loaded_model.add_labels(np.zeros((20, 128, 128), np.uint8), name="stack-shaped")
    widget.mask_combo.value = loaded_model.layers["stack-shaped"]
    assert_refused(widget, loaded_model, notes, "(20, 128, 128)", "(128, 128)", "one frame")


def test_error_all_pixels_masked(widget, loaded_model, notes):
    loaded_model.layers["stack mask"].data = np.ones((128, 128), np.uint8)
    assert_refused(widget, loaded_model, notes, "masks every pixel")


def test_error_single_2d_image(qtbot, viewer_model, notes):
    viewer_model.add_image(np.random.default_rng(0).random((64, 64)), name="flat")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert_refused(w, viewer_model, notes, "single 2D image", "not a stack")


def test_error_frames_of_different_shapes(qtbot, viewer_model, notes):
    """A multiscale layer's levels differ in shape: refused in plain words."""
    rng = np.random.default_rng(0)
    viewer_model.add_image([rng.random((4, 64, 64)), rng.random((4, 32, 32))], name="pyr",
                           multiscale=True)
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert_refused(w, viewer_model, notes, "different shapes")


def test_error_rgb(qtbot, viewer_model, notes):
    viewer_model.add_image(np.zeros((4, 32, 32, 3), np.uint8), name="colour", rgb=True)
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert_refused(w, viewer_model, notes, "RGB")


def test_error_bad_mean_range(widget, loaded_model, notes):
    widget.reference.value = "mean"
    widget.range_first.value, widget.range_last.value = 12, 4
    assert_refused(widget, loaded_model, notes, "frame range")


def test_error_raised_by_the_engine_in_the_worker(qtbot, viewer_model, notes):
    """The engine refuses a reference without contrast: a notification, no outputs."""
    stack = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    stack[0] = 1.0  # a blank reference frame
    viewer_model.add_image(stack, name="blank")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    assert run_and_wait(qtbot, w) == "failed"
    msg = notes()[-1]
    assert "no contrast" in msg and "Traceback" not in msg
    assert [layer.name for layer in viewer_model.layers] == ["blank"]
    assert w.run_button.isEnabled()


def test_hot_pixels_are_ignored_by_default_and_counted(qtbot, viewer_model, small_stack):
    stack = small_stack.stack.copy()
    rng = np.random.default_rng(2)
    hot = np.zeros(small_stack.valid.shape, bool)
    hot.flat[rng.choice(np.flatnonzero(small_stack.valid), 40, replace=False)] = True
    stack[:, hot] += 20 * stack.max()
    viewer_model.add_image(stack, name="hot")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="hot mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    assert w.hot_pixels.value is True  # on by default
    assert run_and_wait(qtbot, w) == "done"
    assert "Ignored 40 hot or dead pixels" in w.status.text()
    aligned = viewer_model.layers["hot aligned"]
    meta = aligned.metadata["maskalign"]
    assert np.abs(meta["shifts"] - relative_truth(small_stack, 0)).max() < 0.1
    assert np.isnan(aligned.data[0][hot]).all()  # ignored pixels are missing data
    w.hot_pixels.value = False
    assert run_and_wait(qtbot, w) == "done"
    locked = viewer_model.layers["hot aligned"].metadata["maskalign"]["shifts"]
    assert np.abs(locked).max() < 0.5 < np.abs(relative_truth(small_stack, 0)).max()
def test_threads_row_and_device_choice(widget, loaded_model):
    """The threads row is the run's workers (default: all cores but one); the device choice is
    offered only where CuPy sees a GPU, and the CPU is used otherwise."""
    import os

    from napari_maskalign.engine._device import gpu_available

    image = loaded_model.layers["stack"]
    assert widget.threads.value == max(1, (os.cpu_count() or 2) - 1)
    widget.threads.value = 1
    options, _ = widget.options(image)
    assert options.workers == 1
    assert widget.device.native.isHidden() == (not gpu_available())
    assert options.device == "cpu"
