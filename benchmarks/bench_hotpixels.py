"""Hot and dead pixels: registration error with the block painted and the hot pixels not.

    python benchmarks/bench_hotpixels.py [--size 256] [--frames 20] [--hot 1000]

A drifting beam-block stack (the sample generator, Poisson counts) gets static
outlier pixels at random places outside the block: hot (80 %, 0.5-20x the
pattern's bright level added), dead (15 %, 0, where the pattern is bright)
and saturated (5 %, 65535). Only the beam block is given as the mask, as a
person paints it. Rows compare ``hot_pixels="off"`` (the old behaviour),
``"auto"`` (the default) and the hot pixels masked by hand, against the
known drift; plus the detector's recall, false pixels and time, and the same
run on the stack without outliers (auto must change nothing there).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from napari_maskalign import find_static_outliers, make_beam_block_stack, register_stack


def plant(synth, n_pixels, rng):
    stack = synth.stack.copy()
    level = synth.stack.mean(axis=0)
    allowed = ~synth.beam_block
    bright = np.percentile(level[allowed], 99.5)
    truth = np.zeros(level.shape, bool)
    for kind in rng.choice(3, n_pixels, p=[0.8, 0.15, 0.05]):
        where = allowed & ~truth & ((level > 0.3 * bright) if kind == 1 else True)
        pos = np.unravel_index(rng.choice(np.flatnonzero(where)), level.shape)
        truth[pos] = True
        idx = (slice(None), *pos)
        stack[idx] = (stack[idx] + rng.uniform(0.5, 20) * bright, 0, 65535.0)[kind]
    return stack, truth


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--hot", type=int, default=1000)
    p.add_argument("--upsample", type=float, default=20)
    args = p.parse_args(argv)
    shape = (args.size, args.size)
    rows = []
    for counts in (40, 400, 4000):
        synth = make_beam_block_stack(args.frames, shape, max_drift=5.0, counts=counts, seed=3)
        stack, truth = plant(synth, args.hot, np.random.default_rng(1))
        expected = synth.expected_shifts()

        def err(result, expected=expected):
            e = np.abs(result.shifts - expected)[1:]
            return float(np.median(e)), float(e.max())

        kw = dict(upsample_factor=args.upsample)
        off = err(register_stack(stack, mask=synth.valid, hot_pixels="off", **kw))
        hand = err(register_stack(stack, mask=synth.valid & ~truth, hot_pixels="off", **kw))
        auto_result = register_stack(stack, mask=synth.valid, **kw)
        auto = err(auto_result)
        t0 = time.perf_counter()
        found = find_static_outliers(stack, valid=synth.valid)
        t_find = time.perf_counter() - t0
        clean_auto = register_stack(synth.stack, mask=synth.valid, **kw)
        clean_off = register_stack(synth.stack, mask=synth.valid, hot_pixels="off", **kw)
        same = np.array_equal(clean_auto.shifts, clean_off.shifts)
        rows.append((
            f"{counts}", f"{off[0]:.3f} / {off[1]:.2f}", f"{auto[0]:.3f} / {auto[1]:.2f}",
            f"{hand[0]:.3f} / {hand[1]:.2f}", f"{auto[0] - hand[0]:+.3f}",
            f"{int((found & truth).sum())}/{int(truth.sum())}", f"{int((found & ~truth).sum())}",
            f"{t_find * 1e3:.0f}", f"{clean_auto.n_hot_pixels}, same: {same}",
        ))
    print(f"# hot pixels: {args.frames} frames of {shape[0]}x{shape[1]}, {args.hot} static outliers "
          f"outside the beam block, mask = block only, upsample {args.upsample:g}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("# error: median / max per-axis |shift - truth| in px over frames 1..n")
    header = ("counts", "off err", "auto err (default)", "by hand err", "auto - hand",
              "found", "false", "find ms", "clean stack: found, shifts same as off")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
