"""What the ``maskalign`` command shows: progress, summaries, stack descriptions.

Progress goes to stderr: a bar on a terminal; plain lines when stderr is a
file or a pipe (``2> log``, ``nohup``, a batch scheduler), one when each
stage starts and one with its first frame, one at least every
:data:`INTERVAL` seconds while it runs (from a small heartbeat thread, so a
slow frame or a slow start is visible too) and one at its end; nothing with
``--quiet``. A log line reads::

    2026-03-05 14:02:11 registering: 120 of 1000 frames (12.0%), 8.31 frames/s, 1m46s left

The clocks are module attributes (:data:`CLOCK` for durations, :data:`WALL`
for the time stamps) so that tests replace them instead of waiting.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from .engine.models import model_named

__all__ = ["LogLines", "follow", "format_duration", "info_rows", "summary_lines"]

#: seconds between two progress lines in a log, at most (while the run goes on)
INTERVAL = 10.0
#: the clock durations and rates are measured with
CLOCK = time.monotonic
#: the clock of the time stamps
WALL = time.time


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``3d04h``: short enough for a log line."""
    if not np.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class LogLines:
    """Plain progress lines for a log file: start, at least every ``interval`` s, end.

    ``update(done)`` is called as frames finish (``done`` counts frames done
    earlier, ``initial``, too); ``tick()`` from a heartbeat prints the state
    again when a line is due although no frame finished (a slow frame, or
    the work before the first one). Without ``total`` the stage is
    "starting" until the first ``update`` brings it. The rate and the time
    left count this run's frames since the first one reported.
    """

    def __init__(self, desc: str, total: int | None = None, initial: int = 0, *, stream=None,
                 clock=None, wall=None, interval: float | None = None):
        self.desc, self.initial = desc, int(initial)
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock or CLOCK
        self.wall = wall or WALL
        self.interval = INTERVAL if interval is None else float(interval)
        self.total, self.done = None, self.initial
        self._lock = threading.Lock()
        self.started = self._last = self.clock()
        self.t0, self.first = None, self.initial  # when counting began, and from what
        if total is None:
            self._emit(f"{self.desc}: starting")
        else:
            self._begin(int(total), self.started)

    def _begin(self, total: int, now: float) -> None:
        self.total, self.t0, self.first = total, now, self.done
        earlier = f" ({self.initial} done earlier)" if self.initial else ""
        self._emit(f"{self.desc}: {self.done} of {self.total} frames{earlier}")
        self._last = now

    def _emit(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.wall()))
        print(f"{stamp} {text}", file=self.stream, flush=True)

    def _state(self, now: float) -> str:
        if self.total is None:
            return f"{self.desc}: starting, {format_duration(now - self.started)} since the start"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.desc}: {self.done} of {self.total} frames ({pct:.1f}%)"
        new, spent = self.done - self.first, now - self.t0
        if new > 0 and spent > 0:
            rate = new / spent
            text += f", {rate:.3g} frames/s, {format_duration((self.total - self.done) / rate)} left"
        else:
            text += (f", {format_duration(now - self.started)} since the start, "
                     "no frame finished since")
        return text

    def update(self, done: int, stage: str | None = None, total: int | None = None) -> None:
        with self._lock:
            self.done = int(done)
            if stage and stage != self.desc:
                self.desc = stage
            if self.total is None and total is not None:
                self._begin(int(total), self.clock())
            else:
                self._maybe_emit()

    def tick(self) -> None:
        with self._lock:
            self._maybe_emit()

    def _maybe_emit(self) -> None:
        now = self.clock()
        if now - self._last >= self.interval:
            self._emit(self._state(now))
            self._last = now

    def close(self) -> None:
        with self._lock:
            spent = self.clock() - self.started
            new = self.done - self.initial
            rate = f" ({new / spent:.3g} frames/s)" if new > 0 and spent > 0 else ""
            self._emit(f"{self.desc}: {self.done} of {self.total} frames, "
                       f"{new} in {format_duration(spent)}{rate}")


def heartbeat(lines: LogLines, stop, interval: float) -> None:
    """Call ``lines.tick()`` every ``interval`` s until ``stop.wait`` returns True."""
    while not stop.wait(interval):
        lines.tick()


class _Lines:
    """LogLines for one stage, with a heartbeat thread while it lives (from the start:
    the work before the first frame, e.g. a mean reference, shows too)."""

    def __init__(self, desc: str, initial: int):
        self.initial = initial
        # due a little early and checked twenty times per interval: no gap exceeds it
        self.lines = LogLines(desc, None, initial, interval=0.9 * INTERVAL)
        self.stop = threading.Event()
        threading.Thread(target=heartbeat, args=(self.lines, self.stop, INTERVAL / 20),
                         daemon=True, name="maskalign-progress").start()

    def update(self, p) -> None:
        stage = getattr(p, "stage", None)
        self.lines.update(self.initial + p.done, None if stage == "registering" else stage,
                          total=self.initial + p.total)

    def close(self, finished: bool) -> None:
        self.stop.set()
        if finished and self.lines.total is not None:
            self.lines.close()


class _Bar:
    def __init__(self, desc: str, initial: int):
        self.desc, self.initial, self.bar = desc, initial, None

    def update(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None:
            try:  # a pseudo-terminal without a size would get a bar zero columns wide
                sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except (OSError, ValueError, AttributeError):
                sized = False
            self.bar = tqdm(total=self.initial + p.total, initial=self.initial, desc=self.desc,
                            unit="frame", file=sys.stderr, dynamic_ncols=sized,
                            ncols=None if sized else 100, smoothing=0.1)
        stage = getattr(p, "stage", self.desc)
        if stage not in (self.desc, "registering") and self.bar.desc != stage:
            self.bar.set_description(stage)
        self.bar.update(self.initial + p.done - self.bar.n)

    def close(self, finished: bool) -> None:
        if self.bar is not None:
            self.bar.close()


def follow(steps, desc: str, initial: int = 0, *, quiet: bool = False):
    """Drive a workflow generator, showing its progress on stderr; return its value.

    Each step has ``done`` and ``total`` (of this generator, after ``initial``
    frames already done) and maybe a ``stage``. A bar on a terminal, plain
    lines (see :class:`LogLines`) otherwise, nothing when ``quiet``.
    """
    shown = None if quiet else (_Bar if sys.stderr.isatty() else _Lines)(desc, initial)
    finished = False
    try:
        while True:
            try:
                p = next(steps)
            except StopIteration as stop:
                finished = True
                return stop.value
            if shown is not None:
                shown.update(p)
    finally:
        if shown is not None:
            shown.close(finished)


# ----------------------------------------------------------------------------
# summaries


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def info_rows(d: dict, source) -> list[tuple[str, str]]:
    """The rows ``maskalign info`` prints for :func:`~napari_maskalign.io.describe_stack`."""
    rows = [
        ("input", str(source)),
        ("kind", d["kind"]),
        ("frames", str(d["frames"])),
        ("frame shape", fmt_shape(d["frame_shape"])),
        ("dtype", d["dtype"]),
        ("size", fmt_bytes(d["size_bytes"])),
        ("chunking", d["chunking"]),
    ]
    for key in ("compression", "dataset", "pixel size", "first_file", "last_file"):
        if key in d:
            rows.append((key.replace("_", " "), str(d[key])))
    return rows


def smoothing_line(result) -> str:
    """How many jumps smoothing kept and by how much it lowered the uncertainty."""
    jumps = result.jumps
    shown = ", ".join(map(str, jumps[:10])) + (", ..." if len(jumps) > 10 else "")
    text = f"smoothing: kept {len(jumps)} jump(s)" + (f" (at frame {shown})" if len(jumps) else "")
    raw, smooth = result.uncertainties, result.smoothed_uncertainties
    if raw is not None and smooth is not None and np.isfinite(raw).any() and np.isfinite(smooth).any():
        before, after = float(np.nanmedian(raw)), float(np.nanmedian(smooth))
        if after > 0:
            text += (f"; uncertainty lowered {before / after:.1f}x (median {before:.4f} -> "
                     f"{after:.4f} px)")
    return text


def summary_lines(result, *, start: int, seconds: float, shape, dtype, shifts_path,
                  interpolated: bool = False) -> list[str]:
    """What ``maskalign register`` prints when the shifts are done."""
    n = result.n_frames
    mag = np.linalg.norm(result.raw_shifts, axis=1)
    done = n - start
    rate = done / seconds if seconds > 0 else float("inf")
    quality = result.quality
    lines = [
        f"registered {done} of {n} frames ({fmt_shape(shape)}, {dtype}) in {seconds:.1f} s "
        f"({rate:.1f} frames/s)" + (f"; resumed at frame {start}" if start else ""),
        f"shift: median {np.median(mag):.3f} px, max {mag.max():.3f} px (frame {int(mag.argmax())}); "
        f"quality: median {np.median(quality):.3f}, min {quality.min():.3f}",
    ]
    model = result.transform_model
    if not model.shift_only:
        rot, scl = np.abs(result.rotations), np.abs(result.scales - 1)
        text = f"rotation: median {np.median(rot):.3f}, max {rot.max():.3f} degrees (absolute)"
        if model.scales:
            text += f"; scale: max change {100 * scl.max():.2f} %"
        lines.append(text)
    lines += uncertainty_lines(result)
    if result.hot_pixels is not None:
        found = "found in the stack" if result.params.get("hot_pixels") == "auto" else "given"
        how = ""
        if result.n_hot_pixels and "correlator" in result.params:  # what ran around them
            how = (", filled from their neighbours: the correlation stays unmasked"
                   if result.params.get("hot_pixels_filled") else ", added to the mask")
        lines.append(f"hot pixels: ignored {result.n_hot_pixels} hot or dead pixels ({found}{how})")
    flagged = np.flatnonzero(result.outliers)
    if flagged.size:
        shown = ", ".join(map(str, flagged[:20])) + (", ..." if flagged.size > 20 else "")
        lines.append(f"outliers: {flagged.size} frame(s) flagged (low quality or a jump): {shown}")
        if interpolated:
            lines.append("outliers: their shifts are interpolated from good neighbours for the "
                         "aligned output (the shifts file keeps the measured ones)")
    else:
        lines.append("outliers: none flagged")
    lines += [f"warning: {w}" for w in getattr(result, "warnings", ())]
    if getattr(result, "jumps", None) is not None:
        lines.append(smoothing_line(result))
    lines.append(f"shifts: {shifts_path}")
    return lines


def uncertainty_lines(result) -> list[str]:
    """The median one-sigma error per axis (one line; none when unknown)."""
    sigma = getattr(result, "uncertainties", None)
    if sigma is None:
        return []
    sigma = np.asarray(sigma, float)
    axes = "zyx"[-sigma.shape[1]:] if sigma.ndim == 2 and 1 <= sigma.shape[1] <= 3 else ""
    known = np.isfinite(sigma).all(axis=1) & (np.abs(sigma).sum(axis=1) > 0) if axes else None
    if known is None or not known.any():
        return []
    med = np.median(sigma[known], axis=0)
    text = ", ".join(f"{a} {v:.3g}" for a, v in zip(axes, med))
    line = f"error (one sigma): median {text} px"
    extra = getattr(result, "parameter_uncertainties", None)
    if extra is not None:
        extra = np.asarray(extra, float)[known]
        if np.isfinite(extra).all():
            rot, scl = np.median(extra, axis=0)
            line += f"; rotation {rot:.2g} degrees"
            if model_named(result.model).scales:
                line += f", scale {100 * scl:.2g} %"
    return [line]
