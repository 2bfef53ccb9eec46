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


def test_end_to_end_registration_in_a_real_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "beam_block")
    widgets = {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
        for name in manifest_widget_names()
    }
    register, shifts_widget = widgets["Register stack"], widgets["Shifts"]
    source = viewer.layers["UED sample"]
    truth = source.metadata["expected_shifts"]
    viewer.dims.set_current_step(0, 0)  # the default reference: the frame on screen

    with qtbot.waitSignal(register.run_finished, timeout=120_000) as blocker:
        worker = register.run()
        assert worker is not None and worker.pbar is not None  # napari's activity progress
    assert blocker.args == ["done"]
    names = [layer.name for layer in viewer.layers]
    for name in ("UED sample aligned", "UED sample xcorr", "UED sample xcorr peak"):
        assert name in names
    meta = viewer.layers["UED sample aligned"].metadata["maskalign"]
    assert meta["reference"] == "frame 0 (current)"
    err = np.abs(meta["shifts"] - truth)
    assert err.max() < 0.1, f"largest error {err.max():.3f} px"
    # the Shifts widget found the result through the selected output layer
    qtbot.waitUntil(lambda: shifts_widget.result() is not None, timeout=5000)
    assert shifts_widget.stack_combo.value.name == "UED sample"
    qtbot.waitUntil(lambda: len(shifts_widget.plot.axes_list) == 2, timeout=5000)


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
