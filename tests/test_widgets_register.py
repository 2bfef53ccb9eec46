"""Register widget: worker runs, outputs (aligned, mean, preview), re-runs, cancel, the
mask check, how the main thread's work is cut up, and plain errors."""

from __future__ import annotations

import sys

import dask.array as da
import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("magicgui", reason="the widget tests need magicgui: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

from napari.layers import Image, Labels, Points

from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import Progress
from napari_maskalign.widgets import RegisterWidget, _common, _layers, _register
from napari_maskalign.workflow import AlignProgress, AlignSettings, iter_align, iter_mean

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


def visible_rect(viewer) -> np.ndarray:
    """The world (y, x) rectangle the camera shows: [[top, left], [bottom, right]]."""
    half = np.asarray(viewer.canvas.size, float) / 2 / viewer.scene.camera.zoom
    centre = np.asarray(viewer.scene.camera.center[-2:], float)
    return np.array([centre - half, centre + half])


# -- a normal run -------------------------------------------------------------------


def test_run_publishes_aligned_mean_and_preview(qtbot, widget, loaded_model, small_stack, notes,
                                                drain):
    source = loaded_model.layers["stack"]
    source.scale = (1.0, 0.5, 0.5)
    source.translate = (0.0, 3.0, -2.0)
    before = source.data.copy()
    assert widget.image_combo.value == source
    assert widget.mask_combo.value == loaded_model.layers["stack mask"]
    assert widget.reference.value == "index" and widget.ref_frame.value == 0  # the CLI's default
    loaded_model.dims.set_current_step(0, 9)  # the slider elsewhere changes nothing
    camera_before = visible_rect(loaded_model)

    worker = widget.run()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    assert widget.run() is None  # a second click while running does nothing
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        pass
    assert worker is not None and widget.worker is None
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert blocker.args == ["done"]
    # 20 registrations, then 20 frames shifted and averaged in the same pass
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 40

    names = [layer.name for layer in loaded_model.layers]
    # the aligned stack and the preview as soon as the frames are registered, the mean last
    assert names == ["stack", "stack mask", "stack aligned", "stack xcorr", "stack xcorr peak",
                     "stack mean", "stack mean count"]
    np.testing.assert_array_equal(source.data, before)  # the source is never modified

    aligned = loaded_model.layers["stack aligned"]
    assert isinstance(aligned, Image) and aligned.data.shape == source.data.shape
    np.testing.assert_allclose(aligned.scale, source.scale)
    np.testing.assert_allclose(aligned.translate, source.translate)
    assert aligned.colormap.name == source.colormap.name
    meta = aligned.metadata["maskalign"]
    assert meta["source"] == "stack" and meta["mask"] == "stack mask"
    assert meta["reference"] == "frame 0" and meta["reference_frame"] == 0
    assert set(meta) >= {"shifts", "quality", "outliers", "raw_shifts", "params", "axes", "valid"}
    err = np.abs(meta["shifts"] - relative_truth(small_stack, 0))
    assert err.max() < 0.1, err.max()
    assert meta["quality"].shape == (20,) and meta["outliers"].dtype == bool
    # NaN where the beam block lands in each aligned frame, numbers elsewhere
    valid = small_stack.valid
    _, (expected, data) = drain(iter_align(before, meta["shifts"], valid=valid, return_data=True))
    np.testing.assert_allclose(aligned.data, expected, equal_nan=True)
    assert np.isnan(aligned.data[~data]).all() and np.isfinite(aligned.data[data]).all()
    # ... and the NaN inside the field is the block moved by the frame's shift
    from scipy import ndimage as ndi

    border = np.zeros((128, 128), bool)
    border[6:-6, 6:-6] = True  # away from the strips uncovered by the shift
    for frame, shift in zip(aligned.data, meta["shifts"]):
        landed = ndi.shift(small_stack.beam_block.astype(float), shift, order=1) > 0.5
        hole = np.isnan(frame) & border
        near = ndi.binary_dilation(landed, iterations=2)
        assert (hole & landed).sum() >= 0.99 * (landed & border).sum()  # all of it is NaN
        assert (hole & near).sum() == hole.sum()  # and nothing far from it

    # the masked mean of the aligned frames, each pixel over the frames that saw it
    mean, count = loaded_model.layers["stack mean"], loaded_model.layers["stack mean count"]
    _, truth = drain(iter_mean(before, meta["shifts"], valid=valid, exclude=meta["outliers"]))
    np.testing.assert_allclose(mean.data, truth.mean, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(count.data, truth.count)
    assert not mean.visible and not count.visible  # hidden at first: they would cover the frames
    np.testing.assert_allclose(mean.scale, source.scale[1:])
    np.testing.assert_allclose(mean.translate, source.translate[1:])
    assert mean.metadata["maskalign"]["frames"] == 20
    assert "'stack mean' averages 20 frames" in widget.status.text()

    xcorr = loaded_model.layers["stack xcorr"]
    assert xcorr.data.shape == (20, 33, 33)
    marks = loaded_model.layers["stack xcorr peak"]
    assert isinstance(marks, Points) and marks.data.shape == (60, 3)  # zero, peak, caption
    kind = np.asarray(marks.features["kind"])
    peaks, zero = marks.data[kind == "peak"], marks.data[kind == "zero shift"]
    np.testing.assert_allclose(peaks[:, 0], np.arange(20))
    np.testing.assert_allclose(peaks[:, 1:], 16 + meta["raw_shifts"])
    np.testing.assert_allclose(zero[:, 1:], 16.0)  # zero shift: the window's centre
    captions = np.asarray(marks.features["label"])[kind == "caption"]
    assert captions[3] == "peak y {:+.2f}, x {:+.2f} px".format(*meta["raw_shifts"][3])
    np.testing.assert_allclose(marks.scale, xcorr.scale)
    for i in range(20):  # the marked peak is where the surface peaks
        argmax = np.unravel_index(np.argmax(xcorr.data[i]), xcorr.data[i].shape)
        assert np.all(np.abs(np.array(argmax) - peaks[i, 1:]) <= 1.0)
    # hovering the preview reads shifts in px, not image coordinates
    world = xcorr.data_to_world([3, 16 + 2.0, 16 - 1.5])
    status = xcorr.get_status(world, world=True)
    assert status["coords"] == "shift y +2.00, x -1.50 px", status
    # the preview sits beside the image, and the view was fitted to show both
    assert xcorr.extent.world[0, -1] > source.extent.world[1, -1]
    shown = visible_rect(loaded_model)
    assert not np.allclose(shown, camera_before)
    for layer in (source, xcorr):
        ext = np.asarray(layer.extent.world)[:, -2:]
        assert np.all(ext[0] >= shown[0] - 1e-6) and np.all(ext[1] <= shown[1] + 1e-6)
    assert loaded_model.layers.selection.active == aligned
    assert any("stack aligned" in m for m in notes())


def test_rerun_updates_layers_in_place_and_keeps_the_camera(qtbot, widget, loaded_model,
                                                            small_stack, drain):
    run_and_wait(qtbot, widget)
    layers = {layer.name: layer for layer in loaded_model.layers}
    loaded_model.scene.camera.zoom *= 3  # the user zooms in
    camera = visible_rect(loaded_model)
    widget.ref_frame.value = 5
    run_and_wait(qtbot, widget)
    assert [layer.name for layer in loaded_model.layers] == list(layers)
    for name, layer in layers.items():
        assert loaded_model.layers[name] == layer  # same objects, updated
    meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
    assert meta["reference"] == "frame 5"
    assert np.abs(meta["shifts"] - relative_truth(small_stack, 5)).max() < 0.1
    np.testing.assert_allclose(visible_rect(loaded_model), camera)
    _, truth = drain(iter_mean(small_stack.stack, meta["shifts"], valid=small_stack.valid,
                               exclude=meta["outliers"]))
    np.testing.assert_allclose(loaded_model.layers["stack mean"].data, truth.mean, rtol=1e-5,
                               equal_nan=True)


def test_current_frame_is_a_choice(qtbot, widget, loaded_model, small_stack):
    widget.reference.value = "current"
    loaded_model.dims.set_current_step(0, 7)
    run_and_wait(qtbot, widget)
    meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
    assert meta["reference"] == "frame 7 (current)" and meta["reference_frame"] == 7
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


def test_without_mask_preview_or_mean(qtbot, widget, loaded_model):
    run_and_wait(qtbot, widget)
    assert "stack xcorr" in loaded_model.layers
    widget.mask_combo.value = None
    widget.preview.value = False
    widget.mean.value = False
    run_and_wait(qtbot, widget)
    names = [layer.name for layer in loaded_model.layers]
    assert names == ["stack", "stack mask", "stack aligned"]  # no stale preview or mean
    meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
    assert meta["mask"] is None
    # without a mask only static outliers are ignored: here a few pixels on the edge of the
    # unpainted block, which stands still too
    if meta["valid"] is not None:
        from scipy import ndimage as ndi

        block = loaded_model.layers["stack mask"].data != 0
        ignored = ~meta["valid"]
        assert ignored.sum() == meta["params"]["n_hot_pixels"]
        assert (ndi.distance_transform_edt(~block)[ignored] <= 1.5).all()


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
    assert viewer_model.layers["vol xcorr peak"].data.shape == (15, 4)  # zero, peak, caption
    assert viewer_model.layers["vol mean"].data.shape == (20, 32, 32)


def test_dask_input_gives_a_lazy_aligned_stack_and_a_computed_mean(qtbot, viewer_model,
                                                                    small_stack, drain):
    lazy = da.from_array(small_stack.stack, chunks=(1, 128, 128))
    viewer_model.add_image(lazy, name="big")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="big mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    seen = []
    run = w.run()
    run.yielded.connect(seen.append)
    with qtbot.waitSignal(w.run_finished, timeout=RUN_TIMEOUT_MS):
        pass
    aligned = viewer_model.layers["big aligned"]
    assert isinstance(aligned.data, da.Array)
    shifts = aligned.metadata["maskalign"]["shifts"]
    _, frame3 = drain(iter_align(small_stack.stack[3:4], shifts[3:4], valid=small_stack.valid))
    np.testing.assert_allclose(np.asarray(aligned.data[3]), frame3[0], equal_nan=True)
    # no eager shifting pass: the mean reads the stack a block at a time (8 frames of 64 kB)
    averaging = [p for p in seen if isinstance(p, AlignProgress)]
    assert [p.done for p in averaging] == [8, 16, 20]
    assert w.progress_bar.maximum() == 20 + 3
    mean = viewer_model.layers["big mean"]
    assert isinstance(mean.data, np.ndarray)
    _, truth = drain(iter_mean(small_stack.stack, shifts, valid=small_stack.valid,
                               exclude=aligned.metadata["maskalign"]["outliers"]))
    np.testing.assert_allclose(mean.data, truth.mean, rtol=1e-5, equal_nan=True)


def test_a_folder_opened_by_the_reader_is_read_without_dask_by_the_worker(
        qtbot, viewer_model, small_stack, drain, tmp_path):
    import tifffile

    from napari_maskalign._reader import read_frames
    from napari_maskalign.io import FrameSequence

    for i, frame in enumerate(small_stack.stack):
        tifffile.imwrite(tmp_path / f"frame_{i:03d}.tif", frame)
    data, kwargs, _ = read_frames(str(tmp_path))[0]
    viewer_model.add_image(data, name="run")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="run mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    # the frames are read from the files as the command line reads them, not per dask compute
    assert isinstance(w.prepare().stack, FrameSequence)
    w.run()
    with qtbot.waitSignal(w.run_finished, timeout=RUN_TIMEOUT_MS):
        pass
    aligned = viewer_model.layers["run aligned"]
    assert isinstance(aligned.data, da.Array)  # still lazy
    assert viewer_model.layers["run"].data is data  # the source layer untouched
    meta = aligned.metadata["maskalign"]
    np.testing.assert_allclose(meta["shifts"], small_stack.expected_shifts(0), atol=0.2)
    _, frame3 = drain(iter_align(small_stack.stack[3:4], meta["shifts"][3:4],
                                 valid=small_stack.valid))
    np.testing.assert_allclose(np.asarray(aligned.data[3]), frame3[0], equal_nan=True)
    _, truth = drain(iter_mean(small_stack.stack, meta["shifts"], valid=small_stack.valid,
                               exclude=meta["outliers"]))
    np.testing.assert_allclose(viewer_model.layers["run mean"].data, truth.mean, rtol=1e-5,
                               equal_nan=True)


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


def test_publishing_makes_one_layer_change_per_event_loop_turn(qtbot, widget, loaded_model,
                                                               monkeypatch, drain):
    """The main thread's work after a run is cut into one layer change per slot: each
    slot's cost is bounded by one layer, whatever the machine's load, and input is handled
    between them. The turns are collected here instead of being left to a timer. The
    aligned stack and the preview are published when the registration is done (the
    worker still averaging), the mean when the worker returns."""
    turns = []
    monkeypatch.setattr(_common, "next_turn", turns.append)
    job = widget.prepare()
    yielded, value = drain(_register.register_job(job))  # the worker's part, run here
    early = [p for p in yielded if isinstance(p, _register.Registered)]
    assert len(early) == 1 and yielded.index(early[0]) == job.n_frames  # after registering
    widget.job, widget.worker, widget._worker_done = job, object(), False

    changes = []
    for event in ("inserted", "removed"):
        getattr(loaded_model.layers.events, event).connect(lambda e, k=event: changes.append(k))

    def per_turn(first):
        counts = []
        before = len(changes)
        first()
        counts.append(len(changes) - before)
        while turns:
            before = len(changes)
            turns.pop(0)()
            counts.append(len(changes) - before)
        return counts

    # aligned (lazy), xcorr, marks: one insertion per turn
    assert per_turn(lambda: widget._on_yielded(early[0])) == [1, 1, 1]
    assert isinstance(loaded_model.layers["stack aligned"].data, da.Array)
    # the new preview is in view at once (with the marks), not only when the mean is made
    shown = visible_rect(loaded_model)
    for name in ("stack", "stack xcorr"):
        ext = np.asarray(loaded_model.layers[name].extent.world)[:, -2:]
        assert np.all(ext[0] >= shown[0] - 1e-6) and np.all(ext[1] <= shown[1] + 1e-6)
    assert "stack mean" not in loaded_model.layers
    widget._worker_done = True
    # the computed aligned frames in place, the mean, its count with the view and the news
    # (they change no layer: no turn, no repaint of their own)
    assert per_turn(lambda: widget._on_returned(value)) == [0, 1, 1]
    assert changes == ["inserted"] * 5
    assert widget.status.text().startswith("Done:")
    assert loaded_model.layers.selection.active is loaded_model.layers["stack aligned"]
    assert isinstance(loaded_model.layers["stack aligned"].data, np.ndarray)
    np.testing.assert_array_equal(loaded_model.layers["stack aligned"].data, value[2].aligned)


def test_progress_reaches_the_main_thread_frame_by_frame(qtbot, widget, loaded_model,
                                                         monkeypatch):
    """Progress arrives once per frame and in order, in the registration and in the
    aligning pass, and (no pace set) each arrival moves the bar: the bar never waits for a
    batch. No layer changes before every frame is registered."""
    monkeypatch.setattr(_common, "PROGRESS_EVERY_S", 0.0)
    seen, bar = [], []
    layers = []
    loaded_model.layers.events.inserted.connect(lambda e: layers.append(len(seen)))
    worker = widget.run()
    worker.yielded.connect(lambda p: (seen.append(p), bar.append(widget.progress_bar.value())))
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS):
        pass
    registered = [p.frame for p in seen if isinstance(p, Progress)]
    aligned = [p.done for p in seen if isinstance(p, AlignProgress)]
    assert registered == list(range(20)) and aligned == list(range(1, 21))
    assert isinstance(seen[20], _register.Registered)  # between the two passes
    assert bar[:20] + bar[21:] == list(range(1, 41)) and bar[20] == 20  # not a step
    assert layers and min(layers) == 20  # the first layer once the last frame is registered


def test_progress_is_repainted_at_the_windows_pace(qtbot, widget, loaded_model, monkeypatch):
    """Every progress is counted, but the bar and the status are repainted at most once per
    PROGRESS_EVERY_S (each repaint recomposes the window with its canvas, holding the GIL):
    with a pace longer than the run, the first progress shows, then the last one at the end."""
    monkeypatch.setattr(_common, "PROGRESS_EVERY_S", 3600.0)
    shown = []
    real = widget._show_progress
    monkeypatch.setattr(widget, "_show_progress",
                        lambda p: (real(p), shown.append(widget.progress_bar.value())))
    widget._progress_shown = _common.Throttled(widget._show_progress)
    worker = widget.run()
    seen = []
    worker.yielded.connect(seen.append)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        pass
    steps = [p for p in seen if not isinstance(p, _register.Registered)]
    assert blocker.args == ["done"] and len(steps) == 40
    assert shown == [1, 40]  # the first at once, the last when the worker returned
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 40


# -- closing the dock ---------------------------------------------------------------------


def test_stop_work_stops_the_run_and_publishes_nothing(qtbot, viewer_model, small_stack, notes):
    long = np.concatenate([small_stack.stack] * 10)  # 200 frames
    viewer_model.add_image(long, name="long")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = w.run()
        worker.yielded.connect(lambda _p: w.stop_work() if w._yields == 2 else None)
    assert blocker.args == ["cancelled"]
    assert [layer.name for layer in viewer_model.layers] == ["long"]
    assert "its dock was closed" in notes()[-1]


def test_a_result_that_arrives_after_the_dock_closed_is_dropped(qtbot, widget, loaded_model, drain):
    job = widget.prepare()
    _, value = drain(_register.register_job(job))
    widget.job, widget.worker, widget._worker_done = job, object(), True
    widget._closed = True  # closed while the worker was finishing
    with qtbot.waitSignal(widget.run_finished, timeout=5000) as blocker:
        widget._on_returned(value)
        widget._maybe_finish()
    assert blocker.args == ["cancelled"]
    assert [layer.name for layer in loaded_model.layers] == ["stack", "stack mask"]


# -- the mask, looked at before a run -------------------------------------------------------


@pytest.mark.parametrize("answer", ["cancel", "run", "invert"])
def test_an_inverted_mask_is_questioned(qtbot, widget, loaded_model, small_stack, answer):
    mask = loaded_model.layers["stack mask"]
    mask.data = (mask.data == 0).astype(np.uint8)  # the pattern painted instead of the block
    asked = []

    def ask(text):
        asked.append(text)
        return answer

    widget.ask_about_mask = ask
    if answer == "cancel":
        assert widget.run() is None
        assert "stack aligned" not in loaded_model.layers
        assert "Not started" in widget.status.text()
    else:
        assert run_and_wait(qtbot, widget) == "done"
    assert len(asked) == 1
    assert "ignores 9" in asked[0] and "brighter" in asked[0] and "inverted" in asked[0]
    if answer == "invert":  # the mask layer was inverted, and the run used it
        np.testing.assert_array_equal(mask.data, small_stack.beam_block.astype(np.uint8))
        meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
        assert np.abs(meta["shifts"] - relative_truth(small_stack, 0)).max() < 0.1
        np.testing.assert_array_equal(meta["valid"], small_stack.valid)
    if answer == "run":  # the person insisted: the mask is used as it is
        meta = loaded_model.layers["stack aligned"].metadata["maskalign"]
        np.testing.assert_array_equal(meta["valid"], small_stack.beam_block)


def test_a_good_mask_is_not_questioned(qtbot, widget, loaded_model):
    widget.ask_about_mask = lambda text: pytest.fail(f"asked about a good mask: {text}")
    assert run_and_wait(qtbot, widget) == "done"


# -- integer output ----------------------------------------------------------------------------


def test_integer_stacks_can_stay_integer_with_a_per_frame_mask(qtbot, viewer_model, small_stack,
                                                                drain):
    counts = np.clip(np.rint(small_stack.stack), 0, 65535).astype(np.uint16)
    viewer_model.add_image(counts, name="counts")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="counts mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert w.integer.enabled
    w.integer.value = True
    assert run_and_wait(qtbot, w) == "done"
    aligned = viewer_model.layers["counts aligned"]
    nodata = viewer_model.layers["counts aligned mask"]
    assert aligned.data.dtype == np.uint16 and isinstance(nodata, Labels)
    shifts = aligned.metadata["maskalign"]["shifts"]
    as_input = AlignSettings(integer=True)
    _, (expected, data) = drain(iter_align(counts, shifts, valid=small_stack.valid, settings=as_input,
                                           return_data=True))
    np.testing.assert_array_equal(aligned.data, expected)
    np.testing.assert_array_equal(nodata.data, ~data)  # painted (nonzero) = no data
    assert nodata.data.shape == counts.shape
    # the mean is float, NaN where no frame saw a pixel
    assert viewer_model.layers["counts mean"].data.dtype == np.float32
    # a float stack cannot keep integer values: the box is off there
    viewer_model.add_image(small_stack.stack, name="floats")
    w.image_combo.value = viewer_model.layers["floats"]
    assert not w.integer.enabled


# -- outliers and the mean ------------------------------------------------------------------


def test_flagged_outliers_stay_out_of_the_mean_unless_asked(qtbot, viewer_model, small_stack,
                                                             drain):
    stack = small_stack.stack.copy()
    stack[11] = np.random.default_rng(1).poisson(0.3, stack.shape[1:])  # the beam was off
    viewer_model.add_image(stack, name="s")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="s mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert run_and_wait(qtbot, w) == "done"
    meta = viewer_model.layers["s aligned"].metadata["maskalign"]
    assert meta["outliers"][11]
    mean = viewer_model.layers["s mean"]
    assert 11 in mean.metadata["maskalign"]["excluded"]
    assert mean.metadata["maskalign"]["frames"] == 20 - meta["outliers"].sum()
    _, without = drain(iter_mean(stack, meta["shifts"], valid=small_stack.valid,
                                 exclude=meta["outliers"]))
    np.testing.assert_allclose(mean.data, without.mean, rtol=1e-5, equal_nan=True)
    w.mean_outliers.value = True
    assert run_and_wait(qtbot, w) == "done"
    _, everything = drain(iter_mean(stack, meta["shifts"], valid=small_stack.valid))
    np.testing.assert_allclose(mean.data, everything.mean, rtol=1e-5, equal_nan=True)
    assert mean.metadata["maskalign"]["excluded"] == []


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
    with qtbot.waitSignal(w.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert w.run() is not None
        starting = w.status.text()  # before the first frame: the search comes first
    assert blocker.args[0] == "done"
    assert starting.startswith("Looking for hot and dead pixels, then registering")
    assert "Ignored 40 hot or dead pixels" in w.status.text()
    aligned = viewer_model.layers["hot aligned"]
    meta = aligned.metadata["maskalign"]
    assert np.abs(meta["shifts"] - relative_truth(small_stack, 0)).max() < 0.1
    assert np.isnan(aligned.data[0][hot]).all()  # ignored pixels are missing data
    w.hot_pixels.value = False
    with qtbot.waitSignal(w.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert w.run() is not None
        assert w.status.text().startswith("Registering")
    assert blocker.args[0] == "done"
    locked = viewer_model.layers["hot aligned"].metadata["maskalign"]["shifts"]
    assert np.abs(locked).max() < 0.5 < np.abs(relative_truth(small_stack, 0)).max()


def test_hot_pixels_leave_the_aligned_and_mean_contrast_to_the_pattern(qtbot, viewer_model,
                                                                       small_stack):
    """napari's own limits (min, max) would reach the hot pixels and show the pattern black."""
    stack = small_stack.stack.copy()
    rng = np.random.default_rng(4)
    hot = np.zeros(small_stack.valid.shape, bool)
    hot.flat[rng.choice(np.flatnonzero(small_stack.valid), 40, replace=False)] = True
    stack[:, hot] = 30 * stack.max()
    source = viewer_model.add_image(stack, name="hot")
    limits_before = tuple(source.contrast_limits)
    assert limits_before[1] == stack.max()  # napari's choice: the hot pixels'
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="hot mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    assert run_and_wait(qtbot, w) == "done"
    p999 = float(np.percentile(stack[:, small_stack.valid & ~hot], 99.9))
    for name in ("hot aligned", "hot mean"):
        lo, hi = viewer_model.layers[name].contrast_limits
        assert p999 / 2 <= hi <= 2 * p999, (name, hi, p999)
        assert lo < hi
    assert tuple(source.contrast_limits) == limits_before  # the source's look is its own


def test_threads_row_and_device_choice(widget, loaded_model):
    """The threads row is the run's workers (default: all cores, as on the command line); the
    device choice is offered only where CuPy sees a GPU, and the CPU is used otherwise."""
    import os

    from napari_maskalign.engine.backends._device import gpu_available

    image = loaded_model.layers["stack"]
    assert widget.threads.value == max(1, os.cpu_count() or 1)
    widget.threads.value = 1
    options, _ = widget.options(image)
    assert options.workers == 1
    assert widget.device.native.isHidden() == (not gpu_available())
    assert options.device == "cpu"


# -- the mask check as a plain function; the status line ------------------------------------


def test_mask_warning_in_plain_words(small_stack):
    from napari_maskalign.workflow.checks import mask_warning

    frame = small_stack.stack[0]
    block = small_stack.beam_block
    assert mask_warning(~block, frame, "m") is None  # the right mask
    text = mask_warning(block, frame, "m")  # the pattern painted, the block used
    assert "'m' ignores 9" in text and "brighter" in text and "Invert" in text
    # a small bright mask (hot pixels, a saturated spot painted out on purpose) is fine
    hot = frame > np.percentile(frame, 99)
    assert mask_warning(~hot, frame, "m") is None
    # a larger bright area is questioned, without claiming it covers most of the frame
    bright = frame > np.percentile(frame, 80)
    text = mask_warning(~bright, frame, "m")
    assert "brighter" in text and "of the frame" not in text


def test_the_status_line_claims_the_height_of_its_text(qtbot, widget):
    """A dock squeezed by its neighbours gives a label no more than its minimum height:
    a longer text must raise it at once (not on the next resize), or its end is cut off."""
    widget.resize(340, 800)
    widget.show()
    qtbot.waitExposed(widget)
    label = widget.status
    label.setText("Registering 20 frames of 'stack'…")
    one_line = label.minimumHeight()
    label.setText("Done: 20 frames against frame 0; largest shift 3.42 px, median quality "
                  "0.98; no outliers. 'stack mean' averages 20 frames (hidden: click its eye "
                  "icon to see it).")
    assert label.minimumHeight() >= label.heightForWidth(label.width()) > 2 * one_line


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="per-thread priorities exist on Linux only; elsewhere nothing changes")
def test_the_work_runs_below_the_main_threads_priority(qtbot, monkeypatch, widget):
    """On a 2-core machine the main thread must not share the CPU evenly with the
    registration: the worker and the threads it starts run nicer."""
    import os
    import threading

    seen = []
    real = _register.register_job

    def probing(job):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return (yield from real(job))

    monkeypatch.setattr(_register, "register_job", probing)
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert run_and_wait(qtbot, widget) == "done"
    assert seen and seen[0] >= max(main, _common.BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # untouched


def test_the_gil_is_handed_over_often_while_a_worker_runs(qtbot, monkeypatch, widget):
    """While the worker registers and averages, the main thread's Python (publishing
    layers) hands the GIL back at least every 0.5 ms, so the worker's GIL-free calls are
    not held up 5 ms each; Python's own setting is back once the run is over, also when
    it is cancelled."""
    seen = []
    real = _register.register_job

    def probing(job):
        seen.append(sys.getswitchinterval())
        result = yield from real(job)
        seen.append(sys.getswitchinterval())
        return result

    monkeypatch.setattr(_register, "register_job", probing)
    before = sys.getswitchinterval()
    assert before > _common.WORKER_SWITCH_INTERVAL_S  # Python's default, 5 ms
    assert run_and_wait(qtbot, widget) == "done"
    assert seen and all(s <= _common.WORKER_SWITCH_INTERVAL_S for s in seen)
    assert sys.getswitchinterval() == before
    # a cancelled run gives it back too
    worker = widget.run()
    assert sys.getswitchinterval() <= _common.WORKER_SWITCH_INTERVAL_S
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS):
        widget.cancel()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: sys.getswitchinterval() == before, timeout=RUN_TIMEOUT_MS)


def test_a_locked_run_is_a_warning_in_the_dock(qtbot, viewer_model, notes):
    from test_engine_lock import plant_clusters

    synth = make_beam_block_stack(8, (128, 128), max_drift=5.0, counts=200, seed=3)
    stack, _ = plant_clusters(synth, n=200, seed=1)
    viewer_model.add_image(stack, name="lock")
    viewer_model.add_labels(synth.beam_block.astype(np.uint8), name="lock mask")
    w = RegisterWidget(viewer_model)
    qtbot.addWidget(w)
    w.reference.value = "index"
    w.hot_pixels.value = False  # only the block painted, the clusters left in: a lock
    assert run_and_wait(qtbot, w) == "done"
    assert "Warning: The shifts sit near 0" in w.status.text()
    assert any("locked" in m for m in notes())
    meta = viewer_model.layers["lock aligned"].metadata["maskalign"]
    assert np.asarray(meta["uncertainties"]).shape == (8, 2)


def test_cancel_while_averaging_keeps_the_new_shifts_and_drops_the_old_mean(
        qtbot, widget, loaded_model, notes):
    """Once every frame is registered the aligned stack (lazy) and the preview are
    published; a cancel while the mean is made keeps them (they hold the new shifts) and
    removes the previous run's mean, which no longer matches them."""
    assert run_and_wait(qtbot, widget) == "done"
    assert "stack mean" in loaded_model.layers
    widget.ref_frame.value = 5  # a second run against another frame

    def cancel_when_averaging(p):
        if isinstance(p, AlignProgress) and widget.cancel_button.isEnabled():
            widget.cancel()

    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = widget.run()
        worker.yielded.connect(cancel_when_averaging)
    assert blocker.args == ["cancelled"]
    names = [layer.name for layer in loaded_model.layers]
    assert "stack mean" not in names and "stack mean count" not in names
    aligned = loaded_model.layers["stack aligned"]
    assert isinstance(aligned.data, da.Array)  # each frame aligned as it is shown
    assert aligned.metadata["maskalign"]["reference_frame"] == 5
    assert "Averaging cancelled" in notes()[-1] and "no mean was made" in notes()[-1]
