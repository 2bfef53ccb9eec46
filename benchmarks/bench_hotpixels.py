"""Static outliers as a real detector has them: recall, false pixels, cost, registration error.

    python benchmarks/bench_hotpixels.py [--sizes 256 512] [--frames 25] [--repeats 3]

The sample generator's ``outliers="detector"`` stack: per 256 x 256 pixels ~360
single hot pixels, ~70 pairs, ~25 clusters of 3, ~12 of 4, ~15 of 5-12 (100 to
30000 counts above a background of ~15, Poisson per frame) plus dead pixels,
scaled to the frame's area; the pattern drifts up to 5 px; only the beam block
is given as the mask, as a person paints it. Printed per frame size:

* recall per cluster size (pixels outside the block), false pixels (beside a
  planted cluster, within 3 px, and elsewhere: spots, rings, the block's edge);
* the search's time against one frame's registration **in the same run**
  (the median per-frame time of ``register_stack`` on the same stack,
  ``hot_pixels="off"``, masked whole pixel), medians of ``--repeats`` runs;
* the registration error (median / max |shift - truth| over frames 1..n, px,
  upsample 20, refinement on) with the search off, on (the default) and with
  every outlier masked by hand;
* clean stacks (the same drift, no outliers; the sharp-spot pattern too): what
  the search finds there and whether the shifts equal those of
  ``hot_pixels="off"``.

Timings are ratios against a reference measured in the same process; on a busy
machine they scatter.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from napari_maskalign import find_static_outliers, make_beam_block_stack, register_stack

CLASSES = {"1": (1, 1), "2": (2, 2), "3": (3, 3), "4": (4, 4), "5-12": (5, 12)}


def recall(synth, found) -> dict:
    labels = np.where(synth.valid, synth.outlier_labels, 0)
    sizes = np.bincount(synth.outlier_labels.ravel())
    out = {}
    for name, (lo, hi) in CLASSES.items():
        ids = [i for i in np.unique(labels[labels > 0]) if lo <= sizes[i] <= hi]
        truth = np.isin(labels, ids)
        out[name] = f"{int((found & truth).sum())}/{int(truth.sum())}"
    return out


def median_time(fn, repeats: int, *args, **kw) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kw)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def table(header, rows) -> None:
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    found_rows, cost_rows, error_rows, clean_rows = [], [], [], []
    for size in args.sizes:
        shape = (size, size)
        synth = make_beam_block_stack(args.frames, shape, max_drift=5.0, counts=100, seed=3,
                                      outliers="detector")
        stack, valid = synth.stack, synth.valid
        found = find_static_outliers(stack, valid=valid)
        fp = found & ~synth.static_outliers
        beside = ndi.distance_transform_edt(~synth.static_outliers) <= 3
        found_rows.append((size, *recall(synth, found).values(), int((fp & beside).sum()),
                           int((fp & ~beside).sum())))

        t_search = median_time(find_static_outliers, args.repeats, stack, valid=valid)
        t_run = median_time(register_stack, args.repeats, stack, mask=valid, hot_pixels="off")
        t_frame = t_run / args.frames
        cost_rows.append((size, f"{t_search * 1e3:.0f}", f"{t_frame * 1e3:.1f}",
                          f"{t_search / t_frame:.1f}"))

        expected = synth.expected_shifts()

        def err(result, expected=expected):
            e = np.abs(result.shifts - expected)[1:]
            return f"{np.median(e):.4f} / {e.max():.3f}"

        kw = dict(upsample_factor=20)
        error_rows.append((
            size,
            err(register_stack(stack, mask=valid, hot_pixels="off", **kw)),
            err(register_stack(stack, mask=valid, **kw)),
            err(register_stack(stack, mask=valid & ~synth.static_outliers, hot_pixels="off", **kw)),
        ))

        rng = np.random.default_rng(2)
        drift = np.vstack([[0, 0], rng.integers(-4, 5, (args.frames - 1, 2))]).astype(float)
        for name, make, mask, reg in (
            ("rings, block painted", dict(max_drift=5.0, counts=100), True, kw),
            ("rings, high dose", dict(max_drift=5.0, counts=4000), True, kw),
            ("sharp spots, no block, phase", dict(drift=drift, pattern="bragg",
                                                  beam_block=False), False,
             dict(normalization="phase")),
        ):
            clean = make_beam_block_stack(args.frames, shape, seed=3, **make)
            m = clean.valid if mask else None
            auto = register_stack(clean.stack, mask=m, **reg)
            off = register_stack(clean.stack, mask=m, hot_pixels="off", **reg)
            clean_rows.append((size, name, auto.n_hot_pixels,
                               np.array_equal(auto.shifts, off.shifts),
                               auto.params["correlator"]))

    print(f"# static outliers: {args.frames} frames, detector mix scaled to the area, drift 5 px, "
          "~15 counts background, mask = block only")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; timings: medians of {args.repeats} runs")
    print("\n## recall per cluster size (pixels found / planted outside the block), false pixels")
    table(("size", *CLASSES, "false beside a cluster", "false elsewhere"), found_rows)
    print("\n## cost: the search against one frame's registration in the same run "
          "(masked whole pixel, hot_pixels='off')")
    table(("size", "search ms", "one frame ms", "search / frame"), cost_rows)
    print("\n## registration error, median / max px (upsample 20)")
    table(("size", "search off", "search on (default)", "every outlier masked by hand"), error_rows)
    print("\n## clean stacks: pixels the search finds, shifts identical to hot_pixels='off'")
    table(("size", "stack", "found", "identical", "correlator"), clean_rows)


if __name__ == "__main__":
    main()
