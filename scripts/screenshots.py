"""Render the documentation screenshots of the dock widgets in use.

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots.py [--out docs/images]

Writes, from a synthetic drifting beam-block stack (40 frames, one of them a
nearly empty "beam dump" frame so the outlier flagging shows):

* ``mask_widget.png``      -- the Beam-block mask widget after "Suggest from stack";
* ``register_widget.png``  -- the Register stack widget after a run, aligned stack and preview;
* ``xcorr_preview.png``    -- the cross-correlation preview of one frame with its peak marked;
* ``shifts_widget.png``    -- the Shifts widget: shifts, quality, the flagged outlier;
* ``overview.png``         -- all three widgets docked, after the run.

Everything goes through the widgets' public methods, as a user's clicks would.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

WINDOW = (1500, 940)
OUTLIER_FRAME = 27


def settle(ms: int = 300) -> None:
    """Let Qt process events (layout, paint) for ``ms`` milliseconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def make_data():
    from napari_maskalign._sample_data import make_beam_block_stack

    synth = make_beam_block_stack(n_frames=40, shape=(256, 256), max_drift=4.0, seed=11)
    stack = synth.stack.copy()
    # a frame taken while the beam was off: a few stray counts, nothing to register
    rng = np.random.default_rng(3)
    stack[OUTLIER_FRAME] = rng.poisson(0.3, size=stack.shape[1:]).astype(stack.dtype)
    return synth, stack


def zoom_to(viewer, layer, fill: float = 0.8) -> None:
    """Centre the camera on ``layer`` (2D view) and zoom so it fills ``fill`` of the canvas."""
    ext = np.asarray(layer.extent.world, float)[:, -2:]
    centre = ext.mean(axis=0)
    size = np.maximum(ext[1] - ext[0], 1e-6)
    canvas = np.asarray(viewer.canvas.size, float)  # (height, width)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(centre)
    camera.zoom = float(fill * np.min(canvas / size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/images"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # no info toasts over the canvas (an environment override: not saved to settings)
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    import napari

    synth, stack = make_data()
    viewer = napari.Viewer(title="napari-maskalign")
    viewer.window.resize(*WINDOW)
    hi = float(np.percentile(stack[0], 99.5))
    image = viewer.add_image(stack, name="UED run", colormap="magma", contrast_limits=(0, hi))
    docks, widgets = {}, {}
    for name in ("Beam-block mask", "Register stack", "Shifts"):
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget("napari-maskalign", name)
    mask_w, reg_w, shifts_w = (widgets[n] for n in ("Beam-block mask", "Register stack", "Shifts"))

    def only(*names):
        for name, dock in docks.items():
            dock.setVisible(name in names)
        settle(200)
        viewer.window.resize(*WINDOW)  # back to the shot size (three docks need more)
        settle(400)

    def shoot(name):
        settle(400)
        path = out / name
        viewer.screenshot(str(path), canvas_only=False)
        print(f"wrote {path}")

    # 1. the mask: suggested from the stack, ready to be corrected with the brush
    only("Beam-block mask")
    mask_w.image_combo.value = image
    mask_w.pixels.value = 2
    mask = mask_w.suggest_mask()
    viewer.dims.set_current_step(0, 0)
    viewer.reset_view()
    mask_w.new_button.setFocus()  # no text cursor left in a spin box
    shoot("mask_widget.png")

    # 2. register against the frame on screen (frame 0), with a bounded search
    only("Register stack")
    reg_w.image_combo.value = image
    reg_w.mask_combo.value = mask
    reg_w.max_shift.value = 12
    from qtpy.QtCore import QEventLoop

    loop, outcome = QEventLoop(), []
    reg_w.run_finished.connect(outcome.append)
    reg_w.run_finished.connect(loop.quit)
    if reg_w.run() is None:
        raise SystemExit("the registration did not start")
    loop.exec()
    if outcome != ["done"]:
        raise SystemExit(f"the registration ended: {outcome}")
    mask.visible = False
    image.visible = False
    viewer.dims.set_current_step(0, 12)
    viewer.reset_view()

    # everything at once (before the single-widget shots change the docks' sizes)
    only(*docks)
    shoot("overview.png")

    only("Register stack")
    reg_w.more.expand(animate=False)  # show every option once
    viewer.dims.set_current_step(0, 12)
    viewer.reset_view()
    shoot("register_widget.png")

    # 3. the cross-correlation preview of one frame, zoomed in
    aligned = viewer.layers["UED run aligned"]
    xcorr = viewer.layers["UED run xcorr"]
    aligned.visible = False
    reg_w.more.collapse(animate=False)
    viewer.layers.selection.active = xcorr
    zoom_to(viewer, xcorr, fill=0.85)
    shoot("xcorr_preview.png")

    # 4. the shifts, the quality and the flagged outlier; the slider on a good frame
    aligned.visible = True
    viewer.layers.selection.active = aligned
    only("Shifts")
    viewer.dims.set_current_step(0, 20)
    viewer.reset_view()
    shoot("shifts_widget.png")

    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
