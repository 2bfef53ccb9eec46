"""What the refinement of masked translation costs per frame, against the correlation.

    python benchmarks/bench_refine.py [--frames 25] [--size 512] [--repeats 5]

``register_stack`` on the bench's beam-block stack (Poisson 400 counts, drift up to
4 px), masked, ``upsample_factor=20``, ``hot_pixels="off"``, three calls timed in turn,
round after round (they see the same load; medians): the correlation alone at whole
pixels (``upsample_factor=1``), the kernel row (``refine=False``: the 1/20 px grid's
peak) and the default (``refine=True``). Printed: refine on less off (the default
computes the 1/20 px grid only for a frame whose refinement fails, so this is the
refinement less the grid it saves), and the default less the whole-pixel correlation
(the refinement with its start and its quality point: what it costs on its own, an
upper bound since the whole-pixel row's untapered masks may pick a smaller transform);
the targets of issue 18: the refinement at most the correlation's own cost, the default
within 1.5x the kernel. The machine may be busy: compare within a run.
"""

from __future__ import annotations

import argparse
import statistics
import time

from napari_maskalign import make_beam_block_stack, register_stack


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    s = make_beam_block_stack(args.frames, (args.size, args.size), counts=400, max_drift=4.0,
                              seed=2)
    base = dict(mask=s.valid, hot_pixels="off")
    calls = {
        "whole pixel": dict(base, upsample_factor=1, refine=False),
        "kernel (1/20 peak)": dict(base, upsample_factor=20, refine=False),
        "default (refined)": dict(base, upsample_factor=20, refine=True),
    }
    times = {name: [] for name in calls}
    cpus = {name: [] for name in calls}
    register_stack(s.stack[:3], **calls["default (refined)"])  # imports, first-call costs
    for _ in range(args.repeats):
        for name, kw in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            register_stack(s.stack, **kw)
            times[name].append((time.perf_counter() - t0) / args.frames * 1e3)
            cpus[name].append((time.process_time() - c0) / args.frames * 1e3)
    print(f"# {args.frames} frames of {args.size}x{args.size}, medians of {args.repeats}; wall "
          "clock, and the process's CPU time (all threads: other jobs disturb it less)")
    for clock, table in (("wall", times), ("CPU", cpus)):
        ms = {name: statistics.median(v) for name, v in table.items()}
        whole, kernel, default = (ms[k] for k in calls)
        print(f"{clock}: whole pixel {whole:.2f}, kernel (1/20 peak) {kernel:.2f}, default "
              f"(refined) {default:.2f} ms/frame")
        print(f"{clock}: refine on - off {default - kernel:.2f} ms/frame = "
              f"{(default - kernel) / kernel:.2f}x the kernel; default = {default / kernel:.2f}x the "
              f"kernel row; default - whole pixel (the refinement with its start and quality, in "
              f"place of the 1/20 grid) = {(default - whole) / kernel:.2f}x the kernel")


if __name__ == "__main__":
    main()
