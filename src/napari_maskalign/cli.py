"""The ``maskalign`` command.

``maskalign register`` registers a stack of any length from disk (a folder or
glob of TIFF frames, a multi-page TIFF, .npy or zarr) with memory bounded by a
few frames, writes the shifts as it goes (``--resume`` continues a killed
run) and optionally an aligned stack; ``maskalign apply`` applies saved shifts
to other data; ``maskalign info`` describes a stack; ``maskalign demo`` opens
napari with the sample. ``--scheduler`` / ``--workers`` run the registration
on a dask.distributed cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-maskalign"
WIDGETS = ("Beam-block mask", "Register stack", "Shifts")


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import napari
    except ImportError:
        print(
            "maskalign demo needs napari with a Qt binding: pip install 'napari-maskalign[all]'",
            file=sys.stderr,
        )
        return 2
    from .widgets._common import mask_colormap

    viewer = napari.Viewer(title="napari-maskalign demo")
    # wide enough for the image beside three docked widgets
    viewer.window.resize(1600, 1000)
    layers = viewer.open_sample(PLUGIN, "beam_block")
    for layer in layers:
        if layer.name.endswith(" mask"):
            layer.colormap = mask_colormap()  # the same bright colour the mask widget paints
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    # the image stays selected so the widgets start on it
    viewer.layers.selection.active = layers[0]
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    viewer.reset_view()  # fit the image to the canvas left beside the docks
    if args.screenshot:
        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(args.screenshot, canvas_only=False)
        print(f"screenshot saved to {args.screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0


# ----------------------------------------------------------------------------
# shared helpers

MASK_HELP = (
    "mask file (.npy, .tif/.tiff or .png) of one frame's shape: NONZERO MARKS PIXELS TO "
    "IGNORE (the beam block, as painted in napari); zero marks pixels to use. Use "
    "--invert-mask for files where nonzero marks the valid pixels instead"
)
INPUT_HELP = (
    "the stack: a multi-page TIFF, a folder of single-frame TIFFs, a quoted glob such as "
    "'run/frame_*.tif' (frames in natural order: frame_2 before frame_10), a .npy file "
    "(memory-mapped) or a zarr array"
)
OUTPUT_HELP = (
    "aligned stack to write: NAME.zarr (chunked one frame per chunk) or NAME.tif (multi-page "
    "TIFF); written under a temporary name and renamed when complete"
)


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


def _reference(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    if text in ("mean", "previous", "template"):
        return text
    raise argparse.ArgumentTypeError(
        f"expected a frame number or one of mean, previous, template; got {text!r}"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _number(lo: float | None = None, hi: float | None = None, *, open_hi: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"expected a number >= {lo}, got {value:g}")
        if hi is not None and (value >= hi if open_hi else value > hi):
            raise argparse.ArgumentTypeError(
                f"expected a number {'<' if open_hi else '<='} {hi}, got {value:g}"
            )
        return value

    return parse


def _range(text: str) -> tuple[int, int]:
    try:
        a, b = (int(t) for t in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FIRST:STOP (frame numbers, STOP excluded), got {text!r}"
        ) from None
    return a, b


def _fill(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or nan, got {text!r}") from None


def _many_inputs(inputs: list[str]) -> str:
    folder = os.path.dirname(inputs[0]) or "."
    return (
        f"got {len(inputs)} inputs ({inputs[0]}, {inputs[1]}, ...): give one stack. For frame "
        f"files, give their folder ({folder}) or a quoted glob such as '{folder}/*.tif' so that "
        "maskalign expands it (the shell's order puts frame_10 before frame_2)"
    )


def _open_input(source: str):
    from .io import open_stack

    try:
        return open_stack(source)
    except (ValueError, OSError) as exc:  # FileNotFoundError included
        raise CLIError(f"cannot read the input: {exc}") from None


def _check_output(
    path: str | None, overwrite: bool, source: str, what: str = "output", mask: str | None = None
):
    """Fail early (before hours of work) on an output that cannot be written, or that
    would overwrite an input (the stack, the mask) or land inside an input folder."""
    if path is None:
        return None
    from .io import output_format

    p = Path(path).expanduser()
    if what == "output":
        try:
            output_format(p)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if not p.parent.is_dir():
        raise CLIError(f"the folder of the {what} {p} does not exist")
    inputs = [("input", source)] + ([("mask", mask)] if mask else [])
    for name, q in inputs:
        if p.resolve() == Path(q).expanduser().resolve():
            raise CLIError(f"the {what} {p} is the {name} itself; input files are never modified")
    src = Path(source).expanduser()
    if src.is_dir() and src.resolve() in p.resolve().parents:
        raise CLIError(
            f"the {what} {p} is inside the input folder {src}: it would be read as a frame "
            "next time; write it elsewhere"
        )
    if p.exists() and not overwrite:
        raise CLIError(f"the {what} {p} exists; use --overwrite to replace it")
    return p


def _progress(total: int, initial: int, desc: str):
    """A terminal progress bar (frames done, rate, time left); silent when stderr is not a tty."""
    from tqdm import tqdm

    try:  # a pseudo-terminal without a size would get a bar zero columns wide
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        sized = False
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="frame",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=sized,
        ncols=None if sized else 100,
        smoothing=0.1,
    )


@contextlib.contextmanager
def _dask_client(args):
    """A dask.distributed client for --scheduler / --workers, or None."""
    if not (args.scheduler or args.workers):
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CLIError(
            "--scheduler and --workers need dask.distributed: pip install 'napari-maskalign[distributed]'"
        ) from None
    if args.scheduler:
        try:
            client = Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise CLIError(
                f"cannot connect to the dask scheduler at {args.scheduler}: {exc}"
            ) from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _write_aligned(stack, shifts, out: Path, args, *, dask_stack=None, attrs=None) -> None:
    """Apply the shifts chunk by chunk into a temporary output; rename it when complete."""
    from .engine import apply_shifts
    from .io import StackWriter, iter_blocks

    n = int(stack.shape[0])
    out_dtype = np.dtype(stack.dtype) if np.dtype(stack.dtype).kind == "f" else np.dtype(np.float32)
    kw = dict(method=args.method, order=args.order, fill_value=args.fill)
    lazy = apply_shifts(dask_stack, shifts, **kw) if dask_stack is not None else None
    # locally one frame at a time: as fast as blocks, and memory stays flat (blocks
    # of 16 frames added 60-80 MiB of allocator churn when compressing to zarr)
    block = args.chunk_frames if lazy is not None else 1
    try:
        with (
            StackWriter(out, stack.shape, out_dtype, overwrite=args.overwrite, attrs=attrs) as writer,
            _progress(n, 0, "writing") as bar,
        ):
            for lo, hi in iter_blocks(n, block):
                if lazy is not None:
                    aligned = lazy[lo:hi].compute()
                else:
                    aligned = apply_shifts(np.asarray(stack[lo:hi]), shifts[lo:hi], **kw)
                writer.write(aligned)
                bar.update(hi - lo)
    except (ValueError, OSError) as exc:
        # a frame that cannot be read (a truncated file) or an output that cannot
        # be written (disk full): the writer has removed its temporary file
        raise CLIError(f"cannot write {out}: {exc}") from None


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


# ----------------------------------------------------------------------------
# info


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import describe_stack

    stack = _open_input(args.input)
    d = describe_stack(stack, args.input)
    rows = [
        ("input", args.input),
        ("kind", d["kind"]),
        ("frames", str(d["frames"])),
        ("frame shape", _fmt_shape(d["frame_shape"])),
        ("dtype", d["dtype"]),
        ("size", _fmt_bytes(d["size_bytes"])),
        ("chunking", d["chunking"]),
    ]
    if "compression" in d:
        rows.append(("compression", d["compression"]))
    if "first_file" in d:
        rows += [("first file", d["first_file"]), ("last file", d["last_file"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ----------------------------------------------------------------------------
# register


class _ShiftSaver:
    """Keeps the shifts of a run and rewrites the CSV atomically as frames arrive.

    Only the leading run of finished frames is written (frames 0..k-1), so a
    file left by a killed run is always a valid prefix to resume from. The
    file is rewritten at most every ``interval`` seconds, and never more
    often than 10x the time the last rewrite took, so saving costs a bounded
    fraction of the run however long the table grows.
    """

    def __init__(self, path: Path, n: int, ndim: int, interval: float, sidecar: Path, info: dict):
        self.path = path
        self.sidecar = sidecar
        self.info = info
        self._started = False
        self.shifts = np.zeros((n, ndim))
        self.quality = np.zeros(n)
        self.done = np.zeros(n, bool)
        self.interval = interval
        self.saved = 0
        self.writes = 0
        self.write_time = 0.0
        self._last = time.monotonic()
        self._last_cost = 0.0

    def preload(self, shifts, quality):
        k = len(shifts)
        self.shifts[:k] = shifts
        self.quality[:k] = quality
        self.done[:k] = True
        self.saved = k

    def set(self, frames, shifts, quality):
        self.shifts[frames] = shifts
        self.quality[frames] = quality
        self.done[frames] = True

    def prefix(self) -> int:
        not_done = np.flatnonzero(~self.done)
        return int(not_done[0]) if not_done.size else len(self.done)

    def maybe_save(self, force: bool = False) -> None:
        # called after every frame: the clock first, the O(n) scan only when due
        if not force and time.monotonic() - self._last < max(self.interval, 10 * self._last_cost):
            return
        k = self.prefix()
        if k == self.saved and not force:
            return
        from .io import write_json_atomic, write_shifts_csv

        if not self._started:
            # first save of this run: the settings file goes first, and a table
            # left by an earlier run (--overwrite) goes, so that a table never sits
            # next to the settings of another run
            if self.saved == 0 and self.path.exists():
                self.path.unlink()
            write_json_atomic(self.sidecar, self.info)
            self._started = True
        t0 = time.perf_counter()
        write_shifts_csv(self.path, self.shifts[:k], self.quality[:k])
        self._last_cost = time.perf_counter() - t0
        self.write_time += self._last_cost
        self.writes += 1
        self._last = time.monotonic()
        self.saved = k


def _run_params(args, stack, valid) -> dict:
    """What decides the shifts: a resumed run must match these exactly."""
    mask_digest = None
    if valid is not None:
        mask_digest = hashlib.sha256(np.packbits(valid).tobytes()).hexdigest()
    from .io import is_glob

    source = args.input if is_glob(args.input) else str(Path(args.input).expanduser().resolve())
    return {
        "input": source,
        "frames": int(stack.shape[0]),
        "frame_shape": [int(s) for s in stack.shape[1:]],
        "dtype": str(np.dtype(stack.dtype)),
        "mask_sha256": mask_digest,
        "reference": args.reference,
        "reference_range": list(args.reference_range) if args.reference_range else None,
        "upsample": args.upsample,
        "max_shift": args.max_shift,
        "overlap_ratio": args.overlap_ratio,
    }


def _sidecar(shifts_path: Path) -> Path:
    return shifts_path.with_name(shifts_path.name + ".json")


def _resume_state(args, shifts_path: Path, params: dict, n: int, ndim: int):
    """Rows already registered by an earlier run with the same parameters."""
    from .io import read_shifts_csv

    side = _sidecar(shifts_path)
    if not shifts_path.exists():
        return np.zeros((0, ndim)), np.zeros(0)
    if not side.exists():
        raise CLIError(
            f"cannot resume: {side.name} (the run's parameters) is missing next to "
            f"{shifts_path.name}; was it written by 'maskalign register'? Use --overwrite to start over"
        )
    try:
        saved = json.loads(side.read_text())["registration"]
    except (ValueError, KeyError, OSError) as exc:
        raise CLIError(f"cannot resume: {side} is not readable ({exc})") from None
    diffs = [
        f"{k}: earlier {saved.get(k)!r}, now {v!r}" for k, v in params.items() if saved.get(k) != v
    ]
    if diffs:
        raise CLIError(
            f"cannot resume: {shifts_path.name} was made with different settings ("
            + "; ".join(diffs)
            + "). Run with the same settings, or use --overwrite to start over"
        )
    try:
        shifts, quality = read_shifts_csv(shifts_path, ndim=ndim)
    except ValueError as exc:
        raise CLIError(f"cannot resume from {shifts_path}: {exc}") from None
    if len(shifts) > n:
        raise CLIError(
            f"cannot resume: {shifts_path.name} has {len(shifts)} rows but the input has {n} frames"
        )
    return shifts, quality


def _register(stack, valid, args, saver, start, previous_shift, *, reference=None, workers=None):
    """Run the engine's generator; the CSV follows as frames finish.

    A dask ``stack`` makes the engine run one task per frame chunk on the
    active scheduler (the cluster's client); frames then finish out of order
    and the saver keeps the leading run of finished frames on disk.
    """
    from .engine import iter_register_stack

    n = int(stack.shape[0])
    template = args.reference == "template"
    gen = iter_register_stack(
        stack,
        reference=args.reference if reference is None else reference,
        workers=workers,
        mask=valid,
        upsample_factor=args.upsample,
        max_shift=args.max_shift,
        overlap_ratio=args.overlap_ratio,
        reference_range=args.reference_range,
        start=start,
        previous_shift=previous_shift,
    )
    bar = None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if bar is None:
                total = p.total if template else n
                bar = _progress(total, 0 if template else start, "registering")
            if p.stage != "registering" and bar.desc != p.stage:
                bar.set_description(p.stage)
            bar.update(1)
            if not template:  # template passes are not final until the last one
                saver.set([p.frame], p.shift[None], [p.quality])
                saver.maybe_save()
    finally:
        if bar is not None:
            bar.close()
        gen.close()
    frames = np.arange(start, n)
    saver.set(frames, result.raw_shifts, result.quality)


def _register_cluster(lazy, valid, args, saver, start):
    """One task per chunk of frames on the dask cluster (the client is the default scheduler)."""
    n = int(lazy.shape[0])
    if args.reference in ("previous", "template"):
        raise CLIError(
            f"--reference {args.reference} registers frames one after another, so it cannot be "
            "split across a cluster; use a frame number or 'mean', or run without "
            "--scheduler/--workers"
        )
    reference = None
    if args.reference == "mean":  # one parallel pass over the frames instead of n reads
        a, b = args.reference_range or (0, n)
        if not 0 <= a < b <= n:
            raise CLIError(f"--reference-range must be FIRST:STOP with 0 <= FIRST < STOP <= {n}")
        reference = lazy[a:b].astype(np.float64).mean(axis=0).compute()
    # each worker process runs one task at a time with one FFT thread
    _register(lazy, valid, args, saver, start, None, reference=reference, workers=1)


def _summary(shifts, quality, outliers, *, n, start, seconds, args, shape, dtype):
    mag = np.linalg.norm(shifts, axis=1)
    done = n - start
    rate = done / seconds if seconds > 0 else float("inf")
    lines = [
        f"registered {done} of {n} frames ({_fmt_shape(shape)}, {dtype}) in {seconds:.1f} s "
        f"({rate:.1f} frames/s)" + (f"; resumed at frame {start}" if start else ""),
        f"shift: median {np.median(mag):.3f} px, max {mag.max():.3f} px (frame {int(mag.argmax())}); "
        f"quality: median {np.median(quality):.3f}, min {quality.min():.3f}",
    ]
    flagged = np.flatnonzero(outliers)
    if flagged.size:
        shown = ", ".join(map(str, flagged[:20])) + (", ..." if flagged.size > 20 else "")
        lines.append(f"outliers: {flagged.size} frame(s) flagged (low quality or a jump): {shown}")
    else:
        lines.append("outliers: none flagged")
    lines.append(f"shifts: {args.shifts}")
    print("\n".join(lines))


def _cmd_register(args: argparse.Namespace) -> int:
    from .engine import flag_outliers
    from .io import as_dask, read_valid_mask, stale_partials

    if args.resume and args.overwrite:
        raise CLIError("--resume continues an earlier run and --overwrite discards it: choose one")
    if args.resume and args.reference == "template":
        raise CLIError(
            "--reference template re-registers every frame in each refinement pass, so its shifts "
            "are final only at the very end and cannot be resumed; run without --resume (the "
            "shifts file is then written once, when the run completes)"
        )
    if args.reference_range and args.reference != "mean":
        raise CLIError("--reference-range only applies to --reference mean")
    shifts_path = Path(args.shifts).expanduser()
    stack = _open_input(args.input)
    n, frame_shape = int(stack.shape[0]), tuple(int(s) for s in stack.shape[1:])
    ndim = len(frame_shape)
    valid = None
    if args.mask:
        try:
            valid = read_valid_mask(args.mask, frame_shape, invert=args.invert_mask)
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
        except ValueError as exc:
            hint = ""
            if "masks every pixel" in str(exc) and not args.invert_mask:
                hint = (
                    "; in mask files nonzero marks pixels to ignore -- if yours marks the valid "
                    "pixels with nonzero, add --invert-mask"
                )
            raise CLIError(f"{exc}{hint}") from None
    params = _run_params(args, stack, valid)

    if args.resume:
        _check_output(args.shifts, True, args.input, "shifts file", mask=args.mask)
        for tmp in shifts_path.parent.glob(f".{glob.escape(shifts_path.name)}.*.tmp"):
            tmp.unlink()  # a rewrite cut short by the kill; the table itself is whole
        done_shifts, done_quality = _resume_state(args, shifts_path, params, n, ndim)
        out = Path(args.output).expanduser() if args.output else None
        if out is not None:
            _check_output(args.output, True, args.input, mask=args.mask)
            if out.exists():
                if len(done_shifts) == n:
                    print(f"nothing to do: {args.shifts} has all {n} frames and {out} exists")
                    return 0
                raise CLIError(f"the output {out} exists; use --overwrite to replace it")
            _remove_stale(out)
    else:
        _check_output(args.shifts, args.overwrite, args.input, "shifts file", mask=args.mask)
        out = _check_output(args.output, args.overwrite, args.input, mask=args.mask)
        stale = [] if out is None else stale_partials(out)
        if stale and args.overwrite:
            _remove_stale(out)
        elif stale:
            print(
                f"note: {stale[0]} is the unfinished output of an earlier run that "
                "was stopped; --resume or --overwrite removes it",
                file=sys.stderr,
            )
        done_shifts, done_quality = np.zeros((0, ndim)), np.zeros(0)
    start = len(done_shifts)

    side = _sidecar(shifts_path)
    info = {
        "registration": params,
        "output": None if out is None else str(out),
        "note": "parameters of the maskalign register run that wrote "
        f"{shifts_path.name}; --resume continues only a run with the same registration settings",
    }
    saver = _ShiftSaver(shifts_path, n, ndim, args.save_interval, side, info)
    saver.preload(done_shifts, done_quality)

    try:
        with _dask_client(args) as client:
            t0 = time.perf_counter()  # a cluster's start-up is not registration time
            lazy = None if client is None else as_dask(stack, args.chunk_frames)
            if start < n:
                try:
                    if lazy is None:
                        _register(stack, valid, args, saver, start, _previous(done_shifts, args))
                    else:
                        _register_cluster(lazy, valid, args, saver, start)
                except ValueError as exc:
                    raise CLIError(str(exc)) from None
            saver.maybe_save(force=True)
            seconds = time.perf_counter() - t0
            shifts, quality = saver.shifts, saver.quality
            outliers = flag_outliers(
                shifts, quality, max_jump=args.max_jump, min_quality=args.min_quality
            )
            _summary(
                shifts,
                quality,
                outliers,
                n=n,
                start=start,
                seconds=seconds,
                args=args,
                shape=frame_shape,
                dtype=np.dtype(stack.dtype),
            )
            if out is not None:
                t1 = time.perf_counter()
                _write_aligned(
                    stack,
                    shifts,
                    out,
                    args,
                    dask_stack=lazy,
                    attrs={"maskalign": {"shifts": str(shifts_path), "input": params["input"]}},
                )
                print(f"aligned: {out} ({time.perf_counter() - t1:.1f} s)")
    except KeyboardInterrupt:
        saver.maybe_save(force=True)
        print(
            f"\ninterrupted: {saver.saved} of {n} frames are saved in {shifts_path}; "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    return 0


def _remove_stale(out: Path) -> None:
    from .io import _remove, stale_partials

    for stale in stale_partials(out):
        _remove(stale)
        print(f"removed the unfinished output of an earlier run: {stale}", file=sys.stderr)


def _previous(done_shifts, args):
    if args.reference == "previous" and len(done_shifts):
        return done_shifts[-1]
    return None


# ----------------------------------------------------------------------------
# apply


def _cmd_apply(args: argparse.Namespace) -> int:
    from .io import read_shifts_csv

    stack = _open_input(args.input)
    n, ndim = int(stack.shape[0]), len(stack.shape) - 1
    try:
        shifts, _ = read_shifts_csv(args.shifts, n_frames=n, ndim=ndim)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:
        raise CLIError(f"the shifts do not fit the input: {exc}") from None
    out = _check_output(args.output, args.overwrite, args.input)
    t0 = time.perf_counter()
    try:
        with _dask_client(args) as client:
            lazy = None
            if client is not None:
                from .io import as_dask

                lazy = as_dask(stack, args.chunk_frames)
            _write_aligned(
                stack,
                shifts,
                out,
                args,
                dask_stack=lazy,
                attrs={"maskalign": {"shifts": str(args.shifts), "input": str(args.input)}},
            )
    except KeyboardInterrupt:
        print("\ninterrupted: no output was written", file=sys.stderr)
        return 130
    print(f"aligned {n} frames in {time.perf_counter() - t0:.1f} s: {out}")
    return 0


# ----------------------------------------------------------------------------
# parser


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("aligned output")
    g.add_argument(
        "--method",
        choices=("spline", "fourier"),
        default="spline",
        help="how frames are shifted: spline interpolation (default) or Fourier shift",
    )
    g.add_argument(
        "--order",
        type=int,
        default=3,
        choices=range(6),
        metavar="0-5",
        help="spline order (default 3)",
    )
    g.add_argument(
        "--fill",
        type=_fill,
        default=float("nan"),
        metavar="VALUE",
        help="value of pixels shifted in from outside the frame (default nan); integer "
        "input gives float32 output",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (only once the new ones are complete)",
    )


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dask cluster (optional)")
    x = g.add_mutually_exclusive_group()
    x.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the frame chunks on an existing dask.distributed cluster, e.g. "
        "tcp://10.0.0.5:8786 (its workers must see the same files)",
    )
    x.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="start a local dask cluster of N worker processes for this run",
    )
    g.add_argument(
        "--chunk-frames",
        type=_positive_int,
        default=16,
        metavar="K",
        help="frames per task on a cluster (default 16)",
    )


EPILOG_REGISTER = """\
Shifts file: one row per frame, columns frame, shift_y, shift_x, quality (3D frames add
shift_z before shift_y): the shift that registers each frame onto the reference
(scikit-image's convention: apply it to the frame to align it). It is rewritten atomically as frames finish, next to a
SHIFTS.csv.json file holding the run's settings, so a run that is killed can be continued
with --resume and ends with the same shifts as an uninterrupted run.

examples:
  maskalign register run/ --mask beam_block.png --shifts shifts.csv --output aligned.zarr
  maskalign register 'run/frame_*.tif' --mask block.npy --max-shift 20 --shifts s.csv --resume
  maskalign register stack.tif --mask valid.tif --invert-mask --workers 4 --shifts s.csv
"""


def _add_commands(sub) -> None:
    info = sub.add_parser(
        "info",
        help="describe a stack: kind, frame count, frame shape, dtype, size, chunking",
        description="Describe a stack without loading it: what it is, how many frames of "
        "which shape and dtype, its size and how it is chunked on disk.",
    )
    info.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    info.set_defaults(func=_cmd_info)

    reg = sub.add_parser(
        "register",
        help="register every frame onto a reference; write the shifts (and an aligned stack)",
        description="Register every frame of a stack onto a reference frame, ignoring the masked\n"
        "pixels (the beam block), with subpixel precision. Memory stays bounded by a few\n"
        "frames whatever the stack's length.",
        epilog=EPILOG_REGISTER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reg.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    reg.add_argument("--mask", metavar="MASK", help=MASK_HELP + " (default: no mask)")
    reg.add_argument(
        "--invert-mask",
        action="store_true",
        help="the mask file marks VALID pixels with nonzero (default: nonzero = ignore)",
    )
    reg.add_argument(
        "--reference",
        type=_reference,
        default=0,
        metavar="REF",
        help="a frame number (default 0; negative counts from the end), 'mean' (mean of the "
        "frames in --reference-range), 'previous' (each frame onto the one before, "
        "accumulated) or 'template' (iterative refinement; cannot be resumed)",
    )
    reg.add_argument(
        "--reference-range",
        type=_range,
        metavar="FIRST:STOP",
        help="frames averaged for --reference mean (default: all)",
    )
    reg.add_argument(
        "--upsample",
        type=_number(1),
        default=20.0,
        metavar="U",
        help="subpixel precision 1/U pixel (default 20)",
    )
    reg.add_argument(
        "--max-shift",
        type=_number(0),
        metavar="N",
        help="largest shift to look for, in pixels per axis (faster when given)",
    )
    reg.add_argument(
        "--overlap-ratio",
        type=_number(0, 1, open_hi=True),
        default=0.3,
        metavar="R",
        help="masked registration: reject shifts whose overlap of "
        "valid pixels is below R of the largest (default 0.3)",
    )
    reg.add_argument(
        "--max-jump",
        type=_number(0),
        metavar="PX",
        help="flag frames whose shift jumps more than PX from their neighbours "
        "(default: from the run's statistics)",
    )
    reg.add_argument(
        "--min-quality",
        type=_number(0, 1),
        metavar="Q",
        help="flag frames whose match quality is below Q (default: from the run's statistics)",
    )
    reg.add_argument(
        "--shifts", required=True, metavar="SHIFTS.csv", help="shifts file to write (see below)"
    )
    reg.add_argument("--output", metavar="OUT", help=OUTPUT_HELP + " (default: shifts only)")
    reg.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the frames already in SHIFTS.csv "
        "(same input and settings)",
    )
    reg.add_argument(
        "--save-interval",
        type=_number(0),
        default=1.0,
        metavar="SECONDS",
        help="rewrite the shifts file at most this often while registering (default 1)",
    )
    _add_output_options(reg)
    _add_cluster_options(reg)
    reg.set_defaults(func=_cmd_register)

    app = sub.add_parser(
        "apply",
        help="apply saved shifts to a stack and write the aligned stack",
        description="Apply the shifts of a shifts file (from 'maskalign register' or the "
        "napari widgets) to a stack, e.g. another detector channel of the same run.",
    )
    app.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    app.add_argument(
        "--shifts",
        required=True,
        metavar="SHIFTS.csv",
        help="one row per frame: frame, shift_y, shift_x[, quality] (shift_z too for 3D frames)",
    )
    app.add_argument("--output", required=True, metavar="OUT", help=OUTPUT_HELP)
    _add_output_options(app)
    _add_cluster_options(app)
    app.set_defaults(func=_cmd_apply)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskalign",
        description=(
            "Align drifting image stacks while part of every image stands still "
            "(a beam block, a scale bar, a dead detector region)."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="open napari with a synthetic drifting beam-block stack, its mask and the widgets",
        description="Open napari with the built-in sample stack, its beam-block mask and the "
        "plugin's dock widgets, ready to register.",
    )
    demo.add_argument(
        "--screenshot",
        metavar="PNG",
        help="save a screenshot of the window to PNG and exit instead of staying open",
    )
    demo.set_defaults(func=_cmd_demo)
    _add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "input", None) and all(os.path.exists(e) for e in extra):
            # the shell expanded an unquoted glob into many INPUTs
            print(
                f"maskalign {args.command}: error: {_many_inputs([args.input, *extra])}",
                file=sys.stderr,
            )
            return 2
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"maskalign {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
