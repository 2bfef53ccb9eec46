"""What the defaults cost as the stack grows: the hot-pixel search is paid once per stack.

    python benchmarks/bench_length.py [--lengths 25 100 200] [--size 512] [--repeats 3]

``bench_engine.py`` measures 25 frames, where the search (a fixed cost per stack: it
reads a sample of five frames, whatever the length) is worth 25-30 frames of the
unmasked kernel. A real acquisition has hundreds to thousands of frames. Per stack
length and per case, three calls are timed in turn (round after round, so that they
see the same load): scikit-image's loop over the first ``--sk-frames`` frames (its
cost per frame does not depend on the stack's length: it registers pair by pair), the
call with every default on (hot-pixel search, refinement for upsample > 1) and the
same call with the kernel alone (``hot_pixels="off", refine=False``). Printed: ms per
frame (medians), default / kernel, and scikit-image / default.
"""

from __future__ import annotations

import argparse
import os
import platform
from functools import partial

import numpy as np

# (run as a script from benchmarks/: the engine bench's kernel call, scikit-image loop and
# interleaved timing, wall clock and medians)
from bench_engine import KERNEL, _interleaved, _sk_loop
from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine import find_static_outliers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[25, 100, 200])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sk-frames", type=int, default=8, help="frames of scikit-image's loop per round")
    args = p.parse_args(argv)
    size, rep = args.size, args.repeats
    cases = [  # (name, beam block, our keywords, scikit-image's keywords)
        ("unmasked, upsample 20, no beam block", False, dict(upsample_factor=20, normalization=None),
         dict(upsample_factor=20, normalization=None)),
        ("masked, whole pixel, full search", True, {}, "mask"),
        ("masked, whole pixel, max_shift=32", True, dict(max_shift=32), "mask"),
        ("masked, upsample 20 (skimage: whole pixel)", True, dict(upsample_factor=20), "mask"),
    ]
    rows = []
    for n in args.lengths:
        stacks = {}
        for block in (False, True):
            synth = make_beam_block_stack(n, (size, size), counts=400.0, max_drift=4.0, seed=2, beam_block=block)
            stacks[block] = synth.stack, (synth.valid if block else None)
        stack, _ = stacks[False]
        t_search = _interleaved([partial(find_static_outliers, stack)], rep)[0]
        rows.append((n, "(the hot-pixel search alone, unmasked)", "-", f"{t_search * 1e3:.0f} ms a stack",
                     "-", "", ""))
        for name, block, kw, sk_kw in cases:
            stack, valid = stacks[block]
            sk_kw = dict(reference_mask=valid) if sk_kw == "mask" else sk_kw
            m = min(args.sk_frames, n)
            t_sk, t_def, t_ker = _interleaved([
                partial(_sk_loop, stack[:m], **sk_kw),
                partial(register_stack, stack, mask=valid, **kw),
                partial(register_stack, stack, mask=valid, **KERNEL, **kw)], rep)
            t_sk, t_def, t_ker = t_sk / m, t_def / n, t_ker / n
            rows.append((n, name, f"{t_sk * 1e3:.1f}", f"{t_def * 1e3:.2f}", f"{t_ker * 1e3:.2f}",
                         f"{t_def / t_ker:.2f}x", f"{t_sk / t_def:.1f}x"))
            print(" | ".join(map(str, rows[-1])), flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n# napari-maskalign: the defaults' cost by stack length, {size}x{size} float32 frames, Poisson 400")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
          f"load average at the end {load:.1f}; wall clock, ms per frame, median of {rep} rounds")
    print("# default: every default on (hot-pixel search, refinement for upsample > 1); kernel: the same "
          "call with hot_pixels='off', refine=False; skimage: its loop over the first "
          f"{args.sk_frames} frames of the same stack")
    header = ("frames", "case", "skimage ms", "default ms", "kernel ms", "default / kernel", "skimage / default")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
