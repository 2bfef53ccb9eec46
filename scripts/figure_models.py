"""The figure of docs/models.md: the transform convention and a similarity registration.

    python scripts/figure_models.py [docs/images/models.png]

Left: what the numbers mean, drawn in napari's orientation (rows point down,
columns right). Middle and right: a frame of the sample stack whose pattern
turned by 3 degrees, grew by 2 % and drifted, minus the reference, before and
after ``register_stack(model="similarity")`` and ``apply_transforms`` (grey:
no data, where the static block lands once the frame is turned back).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, Polygon

from napari_maskalign import apply_transforms, make_beam_block_stack, register_stack
from napari_maskalign.engine import similarity_transforms


def convention(ax) -> None:
    """A frame, its centre, and where a transform with rotation +20 degrees, scale 1.2
    and a centre shift takes it, in (row, col) with rows down."""
    shape = (100, 140)
    c = (np.array(shape) - 1) / 2
    corners = np.array([[0, 0], [0, 139], [99, 139], [99, 0]], float)
    t = similarity_transforms(np.array([[-12.0, 18.0]]), [20.0], [1.2], shape)[0]
    moved = (t[:2, :2] @ corners.T).T + t[:2, 2]
    ax.add_patch(Polygon(corners[:, ::-1], closed=True, fill=False, ec="0.4", lw=1.5))
    ax.add_patch(Polygon(moved[:, ::-1], closed=True, fill=False, ec="C1", lw=2))
    marker = np.array([c[0], c[1] + 45.0])  # a point right of the centre
    moved_marker = t[:2, :2] @ marker + t[:2, 2]
    moved_c = t[:2, :2] @ c + t[:2, 2]
    ax.plot(*c[::-1], "o", color="0.4")
    ax.plot(*moved_c[::-1], "o", color="C1")
    ax.plot(*marker[::-1], "s", color="0.4")
    ax.plot(*moved_marker[::-1], "s", color="C1")
    ax.add_patch(FancyArrowPatch(c[::-1], moved_c[::-1], arrowstyle="->", mutation_scale=14,
                                 color="C0", lw=1.5))
    ax.add_patch(FancyArrowPatch((marker + [0, 8])[::-1], (moved_marker + [0, 8])[::-1],
                                 connectionstyle="arc3,rad=0.3", arrowstyle="->",
                                 mutation_scale=14, color="C2", lw=1.5))
    ax.text(-38, 200, "green: a positive rotation turns counterclockwise\nas seen in napari",
            color="C2", fontsize=8, va="top")
    ax.text(-38, 140, "● the frame's centre c    ■ a point right of it\n"
            "blue: the centre shift (shift_y, shift_x)\n"
            "grey: a frame; orange: where T puts it\n"
            "T(p) = c + scale · R(rotation) (p - c) + shift", fontsize=8, va="top")
    ax.set_xlim(-40, 215)
    ax.set_ylim(225, -60)  # rows point down, as in napari
    ax.set_xlabel("column (x)")
    ax.set_ylabel("row (y)")
    ax.set_aspect("equal")
    ax.set_title("the convention: napari's affine, rows down", fontsize=9)


def main(out="docs/images/models.png") -> Path:
    synth = make_beam_block_stack(4, (256, 256), seed=3, counts=400, max_drift=0,
                                  drift=np.array([[0, 0], [0, 0], [0, 0], [3.0, -4.0]]),
                                  rotation=[0, 0, 0, 3.0], scale=[1, 1, 1, 1.02])
    result = register_stack(synth.stack, mask=synth.valid, model="similarity")
    aligned, data = apply_transforms(synth.stack, result.transforms, valid_mask=synth.valid,
                                     return_valid=True)
    ref = np.where(synth.valid, synth.stack[0], np.nan)
    before = np.where(synth.valid, synth.stack[3], np.nan) - ref
    after = np.where(data[3], aligned[3], np.nan) - ref
    lim = np.nanpercentile(np.abs(before), 99)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
    convention(axes[0])
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("0.75")
    for ax, img, title in (
        (axes[1], before, "frame 3 - reference (turned 3°, +2 %, drifted)"),
        (axes[2], after, f"after similarity: rotation {result.rotations[3]:+.3f}°, "
                         f"scale {result.scales[3]:.4f}"),
    ):
        im = ax.imshow(img, cmap=cmap, vmin=-lim, vmax=lim)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:], shrink=0.8, label="counts")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
