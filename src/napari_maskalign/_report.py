"""What the ``maskalign`` command tells the user: progress on a terminal, the run's summary."""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["follow", "summary"]


def follow(steps, desc: str, initial: int = 0):
    """Drive a workflow generator, showing its progress on a terminal; return its value.

    Each step has ``done`` and ``total`` (of this generator, after ``initial``
    frames already done) and maybe a ``stage``. The bar is silent when stderr
    is not a terminal.
    """
    from tqdm import tqdm

    try:  # a pseudo-terminal without a size would get a bar zero columns wide
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        sized = False
    bar = None
    try:
        while True:
            try:
                p = next(steps)
            except StopIteration as stop:
                return stop.value
            if bar is None:
                bar = tqdm(total=initial + p.total, initial=initial, desc=desc, unit="frame",
                           file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=sized,
                           ncols=None if sized else 100, smoothing=0.1)
            stage = getattr(p, "stage", desc)
            if stage not in (desc, "registering") and bar.desc != stage:
                bar.set_description(stage)
            bar.update(initial + p.done - bar.n)
    finally:
        if bar is not None:
            bar.close()


def summary(result, *, start: int, seconds: float, shape, dtype, shifts_path) -> None:
    n = result.n_frames
    mag = np.linalg.norm(result.raw_shifts, axis=1)
    done = n - start
    rate = done / seconds if seconds > 0 else float("inf")
    quality = result.quality
    lines = [
        f"registered {done} of {n} frames ({'x'.join(str(int(s)) for s in shape)}, {dtype}) in {seconds:.1f} s "
        f"({rate:.1f} frames/s)" + (f"; resumed at frame {start}" if start else ""),
        f"shift: median {np.median(mag):.3f} px, max {mag.max():.3f} px (frame {int(mag.argmax())}); "
        f"quality: median {np.median(quality):.3f}, min {quality.min():.3f}",
    ]
    if result.hot_pixels is not None:
        found = "found in the stack" if result.params.get("hot_pixels") == "auto" else "given"
        lines.append(f"hot pixels: ignored {result.n_hot_pixels} hot or dead pixels ({found})")
    flagged = np.flatnonzero(result.outliers)
    if flagged.size:
        shown = ", ".join(map(str, flagged[:20])) + (", ..." if flagged.size > 20 else "")
        lines.append(f"outliers: {flagged.size} frame(s) flagged (low quality or a jump): {shown}")
    else:
        lines.append("outliers: none flagged")
    lines.append(f"shifts: {shifts_path}")
    print("\n".join(lines))
