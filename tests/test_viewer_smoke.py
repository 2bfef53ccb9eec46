"""A real napari.Viewer: the sample and every widget through the manifest, an end-to-end run,
and the `maskalign demo --screenshot` command. Needs a display (run under Xvfb)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("napari", reason="the widget tests need napari: pip install -e '.[test]'")
pytest.importorskip("magicgui", reason="the widget tests need magicgui: pip install -e '.[test]'")
pytest.importorskip("pytestqt", reason="the widget tests need pytest-qt: pip install -e '.[test]'")

pytestmark = pytest.mark.viewer

PLUGIN = "napari-maskalign"


def manifest_widget_names() -> list[str]:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    return [w.display_name for w in manifest.contributions.widgets]


def test_sample_and_every_widget_dock_through_the_manifest(make_napari_viewer):
    from napari_maskalign.widgets import MaskWidget, RegisterWidget, ShiftsWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "beam_block")
    assert [layer.name for layer in viewer.layers] == ["UED sample", "UED sample mask"]
    names = manifest_widget_names()
    assert names == ["Beam-block mask", "Register stack", "Shifts"]
    docked = {}
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert dock is not None
        docked[name] = widget
    assert isinstance(docked["Beam-block mask"], MaskWidget)
    assert isinstance(docked["Register stack"], RegisterWidget)
    assert isinstance(docked["Shifts"], ShiftsWidget)
    # the widgets start on the sample and its mask
    assert docked["Register stack"].image_combo.value.name == "UED sample"
    assert docked["Register stack"].mask_combo.value.name == "UED sample mask"
    assert docked["Beam-block mask"].mask_combo.value.name == "UED sample mask"


def visible_rect(viewer) -> np.ndarray:
    """The world (y, x) rectangle the camera shows: [[top, left], [bottom, right]]."""
    half = np.asarray(viewer.canvas.size, float) / 2 / viewer.scene.camera.zoom
    centre = np.asarray(viewer.scene.camera.center[-2:], float)
    return np.array([centre - half, centre + half])


def test_end_to_end_registration_in_a_real_viewer(make_napari_viewer, qtbot, drain):
    from napari_maskalign._sample_data import make_beam_block_stack
    from napari_maskalign.workflow import iter_mean

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "beam_block")
    widgets = {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
        for name in manifest_widget_names()
    }
    register, shifts_widget = widgets["Register stack"], widgets["Shifts"]
    source = viewer.layers["UED sample"]
    truth = source.metadata["expected_shifts"]
    viewer.dims.set_current_step(0, 9)  # napari starts mid-stack; the reference is frame 0
    qtbot.wait(100)
    viewer.reset_view()

    with qtbot.waitSignal(register.run_finished, timeout=120_000) as blocker:
        worker = register.run()
        # no bar in napari's activity dock: its busy animation repaints the window all along
        assert worker is not None and getattr(worker, "pbar", None) is None
    assert blocker.args == ["done"]
    names = [layer.name for layer in viewer.layers]
    for name in ("UED sample aligned", "UED sample mean", "UED sample mean count",
                 "UED sample xcorr", "UED sample xcorr peak"):
        assert name in names
    aligned = viewer.layers["UED sample aligned"]
    meta = aligned.metadata["maskalign"]
    assert meta["reference"] == "frame 0"
    err = np.abs(meta["shifts"] - truth)
    assert err.max() < 0.1, f"largest error {err.max():.3f} px"

    # the block is missing data where it lands in every aligned frame
    block = viewer.layers["UED sample mask"].data > 0
    inner = np.zeros_like(block)
    inner[8:-8, 8:-8] = True
    for frame in aligned.data:
        hole = np.isnan(frame) & inner
        assert (hole & block).sum() > 0.5 * (block & inner).sum()

    # the mean shows no darkening beside the block: where the block hid a pixel in some
    # frames only, the mean is the pattern's (a block-free twin of the sample says what
    # that is); averaging the block in as pixels darkens it
    mean = viewer.layers["UED sample mean"].data
    count = viewer.layers["UED sample mean count"].data
    twin = make_beam_block_stack(n_frames=20, shape=(256, 256), seed=1, beam_block=False,
                                 noise=None, counts=400.0)
    pattern = twin.stack[0]
    edge = (count > 0) & (count <= 10)  # seen by some frames, hidden in half of them or more
    assert edge.sum() > 100
    ratio = np.median(mean[edge] / pattern[edge])
    _, naive = drain(iter_mean(source.data, meta["shifts"]))
    naive_ratio = np.median(naive.mean[edge] / pattern[edge])
    assert abs(ratio - 1) < 0.05, ratio  # measured: 1.02
    assert naive_ratio < 0.8, naive_ratio  # measured: 0.68

    # the preview is in view without touching the camera
    shown = visible_rect(viewer)
    for name in ("UED sample", "UED sample xcorr"):
        ext = np.asarray(viewer.layers[name].extent.world)[:, -2:]
        assert np.all(ext[0] >= shown[0] - 1e-6) and np.all(ext[1] <= shown[1] + 1e-6), name

    # the Shifts widget found the result through the selected output layer, and its
    # quality panel is scaled to the frames' spread, not to the reference frame's 1.0
    qtbot.waitUntil(lambda: shifts_widget.result() is not None, timeout=5000)
    assert shifts_widget.stack_combo.value.name == "UED sample"
    qtbot.waitUntil(lambda: len(shifts_widget.plot.axes_list) == 2, timeout=5000)
    ax_shift, ax_quality = shifts_widget.plot.axes_list
    others = np.delete(meta["quality"], 0)
    lo, hi = ax_quality.get_ylim()
    assert hi < 1.0 and lo <= others.min() and hi >= others.max()
    assert hi - lo < 3 * (others.max() - others.min()) + 0.01
    dashed = [line for line in ax_shift.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) >= 2  # the sample's true drift, y and x



@pytest.mark.parametrize("how", ["title bar", "remove_dock_widget", "dock.close()"])
def test_closing_the_dock_stops_the_run(make_napari_viewer, qtbot, how):
    from qtpy.QtWidgets import QPushButton

    from napari_maskalign._sample_data import make_beam_block_stack

    synth = make_beam_block_stack(n_frames=20, shape=(128, 128), seed=5)
    viewer = make_napari_viewer()
    viewer.add_image(np.concatenate([synth.stack] * 20), name="long")  # 400 frames
    viewer.add_labels(synth.beam_block.astype(np.uint8), name="long mask")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Register stack")

    def close():
        if how == "title bar":
            dock.findChild(QPushButton, "QTitleBarCloseButton").click()
        elif how == "remove_dock_widget":
            viewer.window.remove_dock_widget(dock)
        else:
            dock.close()

    seen = []

    def close_early(_p):  # at the third frame (the bar itself moves at the window's pace)
        seen.append(_p)
        if len(seen) == 3:
            close()

    with qtbot.waitSignal(widget.run_finished, timeout=120_000) as blocker:
        worker = widget.run()
        worker.yielded.connect(close_early)
    assert blocker.args == ["cancelled"]
    assert worker.abort_requested
    assert [layer.name for layer in viewer.layers] == ["long", "long mask"]
    assert "its dock was closed" in widget.status.text()


def test_demo_screenshot_writes_a_png(tmp_path):
    from PIL import Image

    out = tmp_path / "demo.png"
    cmd = [sys.executable, "-m", "napari_maskalign.cli", "demo", "--screenshot", str(out)]
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            pytest.fail("no display and no xvfb-run: install Xvfb (see scripts/test.sh)")
        cmd = [xvfb, "-a", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.width >= 600 and img.height >= 400
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10  # a window with content, not a blank frame


def test_the_sample_opens_as_the_demo_shows_it(qtbot):
    """File > Open Sample: the mask in the mask dock's bright colour (napari's default for
    label 1 is a dark brown), the slider labelled "frame" (not "-3"), the pattern's contrast."""
    import npe2
    from napari.components import ViewerModel

    from napari_maskalign._display import mask_colormap

    npe2.PluginManager.instance().discover()
    viewer = ViewerModel()
    image, mask = viewer.open_sample(PLUGIN, "beam_block")
    ours = mask_colormap()
    for label in (1, 2):
        np.testing.assert_allclose(mask.colormap.map(np.array([label]))[0],
                                   ours.map(np.array([label]))[0])
    assert viewer.dims.axis_labels[0] == "frame"
    hi = image.contrast_limits[1]
    valid = np.asarray(mask.data) == 0
    assert hi <= 2 * np.percentile(np.asarray(image.data)[:, valid], 99.9)


def test_a_closed_dock_reopens_as_it_was(make_napari_viewer, qtbot):
    """The dock's close button takes it out of the window; the Plugins menu (napari's
    add_plugin_dock_widget) brings back the same widget with its settings, not a new one."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "beam_block")
    docks = {}
    for name in ("Register stack", "Shifts"):
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    dock, register = docks["Register stack"]
    register.max_shift.value = 7.0
    register.status.setText("kept text")
    dock.destroyOnClose()  # what the title bar's close button does
    qtbot.wait(50)
    assert register.parentWidget() is None
    again_dock, again = viewer.window.add_plugin_dock_widget(PLUGIN, "Register stack")
    assert again is register and again_dock is not dock
    assert again.max_shift.value == 7.0 and again.status.text() == "kept text"
    assert again.parentWidget() is not None
    # a widget of another class, or for another viewer, is never handed over
    _, shifts = viewer.window.add_plugin_dock_widget(PLUGIN, "Shifts")
    assert shifts is docks["Shifts"][1]  # still docked: napari hands back the docked one
    other = make_napari_viewer()
    _, fresh = other.window.add_plugin_dock_widget(PLUGIN, "Register stack")
    assert fresh is not register and fresh.max_shift.value == 0.0


def test_a_window_resize_shares_the_dock_column_once(make_napari_viewer, qtbot, monkeypatch):
    """Each of the three docks watches the window's resizes (they did not: napari puts a
    dock in the window after the dock first sees its parent); one resizeDocks sizes them
    all (each dock's own share made it three)."""
    from napari_maskalign.widgets import _common

    viewer = make_napari_viewer(show=True)
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[0]
             for name in manifest_widget_names()]
    window = docks[0].parentWidget()
    qtbot.wait(3 * _common.SHARE_DELAY_MS)
    calls = []
    real = type(window).resizeDocks
    monkeypatch.setattr(type(window), "resizeDocks",
                        lambda self, *a: (calls.append(len(a[0])), real(self, *a)))
    window.resize(window.width(), window.height() + 100)
    qtbot.wait(3 * _common.SHARE_DELAY_MS)
    assert calls == [3]  # once, for the three docks
    heights = [d.height() for d in docks]
    shares = [d.findChildren(_common.DockWidget)[0].SHARE for d in docks]
    # the column shared by SHARE (within what each dock's minimum height allows)
    assert heights.index(max(heights)) == shares.index(max(shares))
