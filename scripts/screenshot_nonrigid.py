"""The tutorial's non-rigid view: the Register dock after a nonrigid run, the patch
shifts as arrows over the aligned frames.

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshot_nonrigid.py [--out docs/images]

Writes ``nonrigid_vectors.png``: a synthetic diffraction-like stack (6 frames of
512 x 512, Poisson 100 counts, a static beam block) whose frames bend by a smooth
2 px field on top of a drift, registered through the Register dock with the model
set to nonrigid (its grid spacing and patch size shown); the view is frame 3 of
``<stack> aligned`` under ``<stack> patch shifts``, one arrow per matched patch:
the patch's shift beyond the frame's global shift, coloured by its correlation
quality, drawn 10x their length and 3 px wide (the layer controls; the dock
starts them at 5x), on the aligned frame in grey. The script prints how
well the arrows match the generator's true field at the patch centres.

Everything goes through the dock's public controls, as a user's clicks would.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from screenshots import WINDOW, run_and_wait, settle, zoom_to

FRAME = 3
EXAGGERATION = 10  # the layer's length control (the dock starts it at 5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/images"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    import napari

    from napari_maskalign._display import mask_colormap
    from napari_maskalign._nonrigid_sample import make_nonrigid_stack

    synth = make_nonrigid_stack(6, (512, 512), content="diffraction", amplitude=2.0, seed=3)
    viewer = napari.Viewer(title="napari-maskalign")
    viewer.window.resize(*WINDOW)
    hi = float(np.percentile(synth.stack[0][synth.valid], 99.5))
    image = viewer.add_image(synth.stack, name="bent run", colormap="magma",
                             contrast_limits=(0, hi))
    mask = viewer.add_labels(synth.beam_block.astype(np.uint8), name="bent run mask")
    mask.colormap = mask_colormap()
    _, reg_w = viewer.window.add_plugin_dock_widget("napari-maskalign", "Register stack")
    reg_w.image_combo.value = image
    reg_w.mask_combo.value = mask
    reg_w.model_choice.value = "nonrigid"
    reg_w.preview.value = False  # the arrows are the view here, not the correlation
    reg_w.hot_pixels.value = False  # the synthetic detector has none
    mask.visible = image.visible = False
    run_and_wait(reg_w)
    aligned = viewer.layers["bent run aligned"]
    vectors = viewer.layers["bent run patch shifts"]
    aligned.colormap, aligned.contrast_limits = "gray", (0, hi)  # the arrows' colours show
    vectors.length, vectors.edge_width = EXAGGERATION, 3  # the layer controls, as a user would
    viewer.dims.set_current_step(0, FRAME)
    viewer.layers.selection.active = vectors
    zoom_to(viewer, aligned, fill=0.95)
    settle(800)
    path = out / "nonrigid_vectors.png"
    viewer.screenshot(str(path), canvas_only=False)
    # how the arrows compare with the truth at the patch centres (beyond the global shift)
    frame = vectors.data[vectors.data[:, 0, 0] == FRAME]
    rows, cols = np.round(frame[:, 0, 1:]).astype(int).T
    truth = synth.fields[FRAME][:, rows, cols].T - synth.fields[FRAME][:, synth.valid].mean(axis=1)
    arrows = frame[:, 1, 1:] - frame[:, 1, 1:].mean(axis=0)
    err = np.sqrt(((arrows - truth) ** 2).sum(axis=1))
    size = np.sqrt((truth**2).sum(axis=1))
    print(f"wrote {path}: frame {FRAME}, {len(frame)} arrows; true local shift at the patch "
          f"centres {np.median(size):.2f} px median, arrows off by {np.median(err):.2f} px median "
          "(both about their frame's mean)")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
