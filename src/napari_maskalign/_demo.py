"""``maskalign demo``: napari with the built-in sample, its mask and the three docks."""

from __future__ import annotations

import sys

PLUGIN = "napari-maskalign"
WIDGETS = ("Beam-block mask", "Register stack", "Shifts")


def run_demo(screenshot: str | None = None) -> int:
    """Open the demo viewer; with ``screenshot``, save the window as PNG and close."""
    try:
        import napari
    except ImportError:
        print(
            "maskalign demo needs napari with a Qt binding: pip install 'napari-maskalign[all]'",
            file=sys.stderr,
        )
        return 2
    viewer = napari.Viewer(title="napari-maskalign demo")
    # wide enough for the image beside three docked widgets
    viewer.window.resize(1600, 1000)
    layers = viewer.open_sample(PLUGIN, "beam_block")  # the mask in the mask dock's colours
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    # the image stays selected so the widgets start on it
    viewer.layers.selection.active = layers[0]
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    viewer.reset_view()  # fit the image to the canvas left beside the docks
    if screenshot:
        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(screenshot, canvas_only=False)
        print(f"screenshot saved to {screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0
