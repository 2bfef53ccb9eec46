"""Render the documentation screenshots of the dock widgets in use.

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots.py [--out docs/images]

Writes, from a synthetic drifting beam-block stack (40 frames, one of them a
nearly empty "beam dump" frame so the outlier flagging shows, and 40 static hot
and dead detector pixels; its true drift in the layer's metadata, as the napari
sample has it):

* ``mask_widget.png``      -- the Beam-block mask widget after "Suggest from stack";
* ``hot_pixels.png``       -- a close-up of that suggestion: the detector's hot and dead
  pixels (the stack has 40 of them, static) painted with their own label, in magenta;
* ``register_widget.png``  -- the Register stack widget after a run: an aligned frame with the
  beam block as missing data where it lands, and the preview beside it, as the run left
  the view (the camera is not touched);
* ``xcorr_preview.png``    -- the cross-correlation preview of one frame: zero shift and the
  peak marked and labelled;
* ``mean_layer.png``       -- ``UED run mean``, the masked mean of the aligned frames;
* ``shifts_widget.png``    -- the Shifts widget: shifts beside the true drift (dashed), the
  quality of the frames, the flagged outlier;
* ``overview.png``         -- all three widgets docked, after the run;
* ``failure_no_mask.png``  -- the same stack registered without a mask and with phase
  normalization (scikit-image's default): the preview's peak sits on zero shift (the
  beam block matched itself; the contrast lowered to show the true drift's weak spot)
  and the shifts miss the true drift;
* ``screen_1920x1080.png``, ``screen_1366x768.png`` -- the whole window on a screen of
  that size (an Xvfb screen of it, the window filling it) with the three docks docked
  after a run: the canvas, the Run button and the Shifts plot must all be in sight.
  Each is made in a process of its own under ``xvfb-run`` (``--screen WxH`` makes one
  in the current display; ``--only-screens`` skips the other shots).

Everything goes through the widgets' public methods, as a user's clicks would.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

WINDOW = (1500, 940)
OUTLIER_FRAME = 27
HOT_PIXELS = 40


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
    # a detector's static outliers: hot (bright in every frame) and dead pixels
    bright = float(np.percentile(synth.stack[0][synth.valid], 99.5))
    places = rng.choice(np.flatnonzero(synth.valid), HOT_PIXELS, replace=False)
    hot = np.unravel_index(places, synth.valid.shape)
    stack[:, hot[0], hot[1]] = np.where(np.arange(HOT_PIXELS) % 5 == 0, 0.0, 8 * bright)
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


def hover(viewer, layer, data_point) -> None:
    """Put the (virtual) mouse over ``data_point`` of ``layer``, as a person hovering it."""
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(layer.data_to_world(data_point))


def run_and_wait(widget) -> None:
    """Click Run and wait (in the event loop) until the run has ended and been published."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop, outcome = QEventLoop(), []
    widget.run_finished.connect(outcome.append)
    widget.run_finished.connect(loop.quit)
    QTimer.singleShot(600_000, loop.quit)
    if widget.run() is None:
        raise SystemExit(f"the registration did not start: {widget.status.text()}")
    loop.exec()
    widget.run_finished.disconnect()
    if outcome != ["done"]:
        raise SystemExit(f"the registration ended: {outcome or 'not within 10 minutes'}")


SCREENS = ((1920, 1080), (1366, 768))


def screen_shot(width: int, height: int, out: Path) -> Path:
    """The window filling a ``width`` x ``height`` screen, the three docks docked, after a run.

    Raises SystemExit when the window cannot fit the screen (the docks' minimum
    heights would push it taller) or when the Run button or the Shifts plot is
    out of sight.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    synth, stack = make_data()
    viewer = napari.Viewer(title="napari-maskalign")
    window = viewer.window._qt_window
    screen = QApplication.primaryScreen().geometry()
    if (screen.width(), screen.height()) != (width, height):
        raise SystemExit(f"the screen is {screen.width()}x{screen.height()}, not {width}x{height}:"
                         f" run under xvfb-run -s '-screen 0 {width}x{height}x24'")
    window.setGeometry(0, 0, width, height)
    image = viewer.add_image(stack, name="UED run", colormap="magma",
                             contrast_limits=(0, float(np.percentile(stack[0], 99.5))),
                             metadata={"expected_shifts": synth.expected_shifts(0)})
    mask = viewer.add_labels(synth.beam_block.astype(np.uint8), name="UED run mask")
    from napari_maskalign._display import mask_colormap

    mask.colormap = mask_colormap()
    widgets = {}
    for name in ("Beam-block mask", "Register stack", "Shifts"):
        _, widgets[name] = viewer.window.add_plugin_dock_widget("napari-maskalign", name)
    settle(500)
    window.setGeometry(0, 0, width, height)
    settle(500)
    reg_w = widgets["Register stack"]
    reg_w.image_combo.value = image
    reg_w.mask_combo.value = mask
    reg_w.max_shift.value = 12
    mask.visible = image.visible = False
    run_and_wait(reg_w)
    viewer.dims.set_current_step(0, 20)
    viewer.reset_view()
    settle(800)
    size = window.frameGeometry()
    if size.width() > width or size.height() > height:
        docks = ", ".join(f"{name} {w.minimumSizeHint().height()}"
                          for name, w in widgets.items())
        raise SystemExit(f"the window is {size.width()}x{size.height()}: it does not fit the "
                         f"{width}x{height} screen (the docks' minimum heights: {docks} px)")
    for what, widget in (("the Run button", reg_w.run_button),
                         ("the Shifts plot", widgets["Shifts"].plot),
                         ("the canvas", viewer.window._qt_viewer.canvas.native)):
        seen = widget.visibleRegion().boundingRect()
        if not widget.isVisible() or seen.height() < min(widget.height(), 120) or seen.width() < 100:
            raise SystemExit(f"{what} is not in sight at {width}x{height} "
                             f"({seen.width()}x{seen.height()} of it shows)")
    path = out / f"screen_{width}x{height}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path} (window {size.width()}x{size.height()}; Shifts plot "
          f"{widgets['Shifts'].plot.width()}x{widgets['Shifts'].plot.height()} px)")
    viewer.close()
    return path


def shoot_screens(out: Path) -> None:
    """Each screen size in a process of its own, on an Xvfb screen of that size."""
    import subprocess
    import sys

    for width, height in SCREENS:
        cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {width}x{height}x24", sys.executable,
               __file__, "--screen", f"{width}x{height}", "--out", str(out)]
        subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/images"))
    parser.add_argument("--screen", metavar="WxH",
                        help="only the whole-window shot on this display, which is WxH")
    parser.add_argument("--only-screens", action="store_true",
                        help="only the whole-window shots (each under its own xvfb-run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    if args.screen:
        width, height = (int(v) for v in args.screen.lower().split("x"))
        screen_shot(width, height, out)
        return 0
    if args.only_screens:
        shoot_screens(out)
        return 0

    # no info toasts over the canvas (an environment override: not saved to settings)
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    import napari

    synth, stack = make_data()
    viewer = napari.Viewer(title="napari-maskalign")
    viewer.window.resize(*WINDOW)
    hi = float(np.percentile(stack[0], 99.5))
    image = viewer.add_image(stack, name="UED run", colormap="magma", contrast_limits=(0, hi),
                             metadata={"expected_shifts": synth.expected_shifts(0)})
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
    # the hot pixels of the suggestion, close up (single pixels vanish at full view)
    found = np.argwhere(np.asarray(mask.data) == 2)
    if len(found):
        # centre a 96-pixel view where the most of them lie
        near = (np.abs(found[:, None, :] - found[None, :, :]).max(axis=2) <= 40).sum(axis=1)
        centre = found[np.argmax(near)]
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
        camera.center = tuple(float(c) for c in centre)
        camera.zoom = float(np.min(np.asarray(viewer.canvas.size))) / 96
    shoot("hot_pixels.png")
    viewer.reset_view()

    # 2. register against frame 0 (the default), with a bounded search
    only("Register stack")
    reg_w.more.expand(animate=False)  # show every option once
    reg_w.image_combo.value = image
    reg_w.mask_combo.value = mask
    reg_w.max_shift.value = 12
    viewer.dims.set_current_step(0, 12)
    mask.visible = False
    image.visible = False  # under the aligned frames it would show through their NaN
    run_and_wait(reg_w)
    shoot("register_widget.png")  # the view as the run left it: the preview fitted in

    # everything at once (before the single-widget shots change the docks' sizes)
    reg_w.more.collapse(animate=False)
    only(*docks)
    viewer.reset_view()
    shoot("overview.png")

    # 3. the cross-correlation preview of one frame, zoomed in
    only("Register stack")
    aligned = viewer.layers["UED run aligned"]
    xcorr = viewer.layers["UED run xcorr"]
    aligned.visible = False
    viewer.layers.selection.active = xcorr
    zoom_to(viewer, xcorr, fill=0.85)
    marks = viewer.layers["UED run xcorr peak"]
    peak = marks.data[(np.asarray(marks.features["kind"]) == "peak") & (marks.data[:, 0] == 12)]
    hover(viewer, xcorr, peak[0])  # the status bar reads the shift under the cursor
    shoot("xcorr_preview.png")

    # 4. the mean: every pixel averaged over the frames that saw it
    mean = viewer.layers["UED run mean"]
    mean.visible = True
    for name in ("UED run xcorr", "UED run xcorr peak"):
        viewer.layers[name].visible = False
    viewer.layers.selection.active = mean
    zoom_to(viewer, mean, fill=0.9)
    hover(viewer, mean, (100, 150))
    shoot("mean_layer.png")
    mean.visible = False
    for name in ("UED run xcorr", "UED run xcorr peak"):
        viewer.layers[name].visible = True

    # 5. the shifts beside the true drift, the quality, the flagged outlier
    aligned.visible = True
    viewer.layers.selection.active = aligned
    only("Shifts")
    viewer.dims.set_current_step(0, 20)
    viewer.reset_view()
    shoot("shifts_widget.png")

    # 6. what goes wrong without a mask (and with the whitened phase correlation most tools
    # use): the block matches itself at zero shift, and the shifts miss the true drift
    only("Shifts")
    reg_w.mask_combo.value = None
    reg_w.normalization.value = "phase"
    run_and_wait(reg_w)
    aligned.visible = False
    viewer.dims.set_current_step(0, 35)
    viewer.layers.selection.active = xcorr
    # the contrast lowered by hand (layer controls) so the weak spot of the true drift shows
    xcorr.contrast_limits = (0.0, float(np.nanmax(xcorr.data[35])))
    zoom_to(viewer, xcorr, fill=0.85)
    hover(viewer, xcorr, (35, *[(xcorr.data.shape[1] - 1) / 2] * 2))
    shoot("failure_no_mask.png")

    viewer.close()
    shoot_screens(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
