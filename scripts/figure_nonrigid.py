"""The convention figure of docs/nonrigid.md.

    python scripts/figure_nonrigid.py [docs/images/nonrigid_convention.png]

A frame of scikit-image's camera image bent by a smooth field and shifted, under
a static beam block, registered with ``register_stack(model="nonrigid")``. Panels
(napari's orientation, rows down; 512 x 512, Poisson 100 counts, a 2 px field):
the reference; the moving frame; the field ``v`` the run found, as arrows on the
reference grid (each arrow
points from ``x`` toward ``x + v(x)``, where the content of the reference's ``x``
sits in the moving frame; drawn 8x their length), the same two arrows marked in the reference and the moving
frame; and ``aligned(x) = moving(x + v(x))`` from ``apply_fields`` (grey: no data,
where the static block lands).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage as ndi

from napari_maskalign import apply_fields, register_stack
from napari_maskalign._nonrigid_sample import make_nonrigid_stack


def main(out: Path) -> None:
    size, gain = 512, 8.0  # the frames; arrows drawn 8x their length
    synth = make_nonrigid_stack(2, (size, size), content="camera", amplitude=2.0, max_shift=2.0,
                                counts=100, seed=7)
    res = register_stack(synth.stack, mask=synth.valid, model="nonrigid", grid_spacing=32,
                         hot_pixels="off")
    v = res.field(1)
    aligned, data = apply_fields(synth.stack[1:2], v[None], valid_mask=synth.valid,
                                 return_valid=True)
    aligned = np.where(data[0], aligned[0], np.nan)
    ref, moving = synth.stack[0], synth.stack[1]
    lo, hi = np.percentile(ref[synth.valid], [1, 99])
    inner = ndi.binary_erosion(synth.valid, iterations=8, border_value=0)
    err = np.sqrt(((v - synth.fields[1]) ** 2).sum(axis=0))[inner]

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.9), constrained_layout=True)
    show = dict(cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    axes[0].imshow(ref, **show)
    axes[0].set_title("reference")
    axes[1].imshow(moving, **show)
    axes[1].set_title("moving (bent and shifted; the block stays)")
    axes[2].imshow(ref, **show, alpha=0.35)
    step = 32
    rows, cols = np.mgrid[step // 2:size:step, step // 2:size:step]
    keep = synth.valid[rows, cols]
    axes[2].quiver(cols[keep], rows[keep], v[1][rows, cols][keep], v[0][rows, cols][keep],
                   angles="xy", scale_units="xy", scale=1 / gain, color="C1", width=0.006)
    axes[2].set_title(f"field v on the reference grid (arrows x{gain:g})")
    masked = np.ma.masked_invalid(aligned)
    cmap = plt.get_cmap("gray").copy()
    cmap.set_bad("0.55")
    axes[3].imshow(masked, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    axes[3].set_title("aligned(x) = moving(x + v(x))")
    # two points: where the reference's content at x sits in the moving frame
    for x, colour in (((100.0, 400.0), "C0"), ((400.0, 110.0), "C2")):
        x = np.array(x)
        vx = gain * v[:, int(x[0]), int(x[1])]
        for ax in (axes[0], axes[3]):
            ax.plot(x[1], x[0], "o", ms=8, mfc="none", mec=colour, mew=2)
        axes[1].plot(x[1], x[0], "o", ms=8, mfc="none", mec=colour, mew=1, alpha=0.6)
        axes[1].annotate("", xy=(x[1] + vx[1], x[0] + vx[0]), xytext=(x[1], x[0]),
                         arrowprops=dict(arrowstyle="->", color=colour, lw=2))
        axes[1].plot(x[1] + vx[1], x[0] + vx[0], "o", ms=8, mfc="none", mec=colour, mew=2)
        axes[2].annotate("", xy=(x[1] + vx[1], x[0] + vx[0]), xytext=(x[1], x[0]),
                         arrowprops=dict(arrowstyle="->", color=colour, lw=2.5))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].set_xlabel(f"circles: the reference's x, and x + v(x) (arrows x{gain:g})")
    fig.suptitle(
        "v is (row, col) on the reference grid; for a pure shift s (scikit-image's sign) v = -s.\n"
        f"Here (512 px, Poisson 100): global shift {np.round(res.shifts[1], 2).tolist()} px, deformation "
        f"{res.deformation_rms[1]:.1f} px RMS beyond it, error against the true field "
        f"{np.sqrt(np.mean(err ** 2)):.2f} px RMS (valid pixels eroded 8 px)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images/nonrigid_convention.png"))
