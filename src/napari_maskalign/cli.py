"""The ``maskalign`` command: thin handlers over the shared workflow.

``maskalign register`` registers a stack of any length from disk (a folder or
glob of TIFF frames, a multi-page TIFF, .npy or zarr) with memory bounded by a
few frames, writes the shifts as it goes (``--resume`` continues a killed
run) and optionally an aligned stack; ``maskalign apply`` applies saved shifts
to other data; ``maskalign info`` describes a stack; ``maskalign demo`` opens
napari with the sample. ``--scheduler`` / ``--workers`` run the registration
on a dask.distributed cluster.

Each handler unpacks its arguments into calls of
:mod:`napari_maskalign.workflow` and the engine; the parser is in
:mod:`napari_maskalign._parser`. Problems with the user's input are one line
on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._parser import build_parser, many_inputs
from ._report import follow

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


@contextlib.contextmanager
def _plain_errors(prefix: str = ""):
    """``ValueError`` / ``OSError`` from the workflow become one-line CLI errors."""
    try:
        yield
    except (ValueError, OSError) as exc:  # FileNotFoundError included
        raise CLIError(f"{prefix}{exc}") from None


def _open_input(source: str):
    from .io import open_stack

    with _plain_errors("cannot read the input: "):
        return open_stack(source)


def _check_output(path, overwrite: bool, args, what: str = "output"):
    """Fail early (before hours of work) on an output that cannot be written, or that
    would overwrite an input (the stack, the mask) or land inside an input folder."""
    if path is None:
        return None
    from .io import output_format
    from .workflow import check_output_path

    inputs = {"input": args.input, "mask": getattr(args, "mask", None)}
    try:
        if what == "output":
            output_format(path)
        return check_output_path(path, overwrite=overwrite, inputs=inputs, what=what)
    except FileExistsError as exc:
        raise CLIError(f"{exc}; use --overwrite to replace it") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


# ----------------------------------------------------------------------------
# info


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import describe_stack

    d = describe_stack(_open_input(args.input), args.input)
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


def _options(args):
    from .engine import RegistrationOptions

    with _plain_errors():
        return RegistrationOptions(
            reference=args.reference,
            reference_range=args.reference_range,
            upsample_factor=args.upsample,
            max_shift=args.max_shift,
            overlap_ratio=args.overlap_ratio,
            max_jump=args.max_jump,
            min_quality=args.min_quality,
            model=args.model,
            refine=args.refine,
        )


def _read_mask(args, frame_shape):
    if not args.mask:
        return None
    from .io import read_valid_mask

    try:
        return read_valid_mask(args.mask, frame_shape, invert=args.invert_mask)
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


def _summary(result, *, start: int, seconds: float, shape, dtype, shifts_path) -> None:
    n = result.n_frames
    mag = np.linalg.norm(result.raw_shifts, axis=1)
    done = n - start
    rate = done / seconds if seconds > 0 else float("inf")
    quality = result.quality
    lines = [
        f"registered {done} of {n} frames ({_fmt_shape(shape)}, {dtype}) in {seconds:.1f} s "
        f"({rate:.1f} frames/s)" + (f"; resumed at frame {start}" if start else ""),
        f"shift: median {np.median(mag):.3f} px, max {mag.max():.3f} px (frame {int(mag.argmax())}); "
        f"quality: median {np.median(quality):.3f}, min {quality.min():.3f}",
    ]
    if result.model != "translation":
        rot, scl = np.abs(result.rotations), np.abs(result.scales - 1)
        lines.append(f"rotation: median {np.median(rot):.3f}, max {rot.max():.3f} degrees; "
                     f"scale: max change {100 * scl.max():.2f} %")
    flagged = np.flatnonzero(result.outliers)
    if flagged.size:
        shown = ", ".join(map(str, flagged[:20])) + (", ..." if flagged.size > 20 else "")
        lines.append(f"outliers: {flagged.size} frame(s) flagged (low quality or a jump): {shown}")
    else:
        lines.append("outliers: none flagged")
    lines.append(f"shifts: {shifts_path}")
    print("\n".join(lines))


def _remove_stale(out: Path) -> None:
    from .io import remove_path, stale_partials

    for stale in stale_partials(out):
        remove_path(stale)
        print(f"removed the unfinished output of an earlier run: {stale}", file=sys.stderr)


def _cmd_register(args: argparse.Namespace) -> int:
    from .io import stale_partials
    from .workflow import (
        ShiftJournal,
        dask_client,
        register_to_journal,
        resume_rows,
        run_settings,
        to_apply,
        write_aligned,
    )

    if args.resume and args.overwrite:
        raise CLIError("--resume continues an earlier run and --overwrite discards it: choose one")
    options = _options(args)
    if args.resume and options.mode == "template":
        raise CLIError(
            "--reference template re-registers every frame in each refinement pass, so its shifts "
            "are final only at the very end and cannot be resumed; run without --resume (the "
            "shifts file is then written once, when the run completes)"
        )
    stack = _open_input(args.input)
    n, frame_shape = int(stack.shape[0]), tuple(int(s) for s in stack.shape[1:])
    with _plain_errors():
        options.check_for(n, frame_shape)
    valid = _read_mask(args, frame_shape)
    settings = run_settings(args.input, stack, valid, options)
    shifts_path = Path(args.shifts).expanduser()
    out = _check_output(args.output, args.overwrite or args.resume, args)
    _check_output(args.shifts, args.overwrite or args.resume, args, "shifts file")
    done = (np.zeros((0, len(frame_shape))), np.zeros(0))
    if args.resume:
        for tmp in shifts_path.parent.glob(f".{glob.escape(shifts_path.name)}.*.tmp"):
            tmp.unlink()  # a rewrite cut short by the kill; the table itself is whole
        try:
            done = resume_rows(shifts_path, settings, n, len(frame_shape))
        except ValueError as exc:
            raise CLIError(f"{exc}; use --overwrite to start over") from None
        if out is not None and out.exists():
            if len(done[0]) == n:
                print(f"nothing to do: {args.shifts} has all {n} frames and {out} exists")
                return 0
            raise CLIError(f"the output {out} exists; use --overwrite to replace it")
    if out is not None and stale_partials(out):
        if args.overwrite or args.resume:
            _remove_stale(out)
        else:
            print(f"note: {stale_partials(out)[0]} is the unfinished output of an earlier run that "
                  "was stopped; --resume or --overwrite removes it", file=sys.stderr)
    journal = ShiftJournal(shifts_path, n, len(frame_shape), settings, interval=args.save_interval,
                           note={"output": None if out is None else str(out)})
    journal.preload(*done)
    start = journal.saved
    steps = None
    try:
        with _plain_errors(), dask_client(args.scheduler, args.workers) as client:
            t0 = time.perf_counter()  # a cluster's start-up is not registration time
            steps = register_to_journal(stack, journal, options, mask=valid, client=client,
                                        chunk_frames=args.chunk_frames)
            result = follow(steps, "registering", initial=start if options.mode != "template" else 0)
            _summary(result, start=start, seconds=time.perf_counter() - t0, shape=frame_shape,
                     dtype=np.dtype(stack.dtype), shifts_path=args.shifts)
            if out is not None:
                t1 = time.perf_counter()
                lazy = None if client is None else _cluster_frames(stack, args)
                with _plain_errors(f"cannot write {out}: "):
                    follow(write_aligned(out, stack, to_apply(result), overwrite=args.overwrite,
                                          attrs=_attrs(args, settings["input"]), dask_stack=lazy,
                                          chunk_frames=args.chunk_frames, **_align_kwargs(args)),
                            "writing")
                print(f"aligned: {out} ({time.perf_counter() - t1:.1f} s)")
    except KeyboardInterrupt:
        if steps is not None:
            steps.close()  # saves the finished frames
        print(f"\ninterrupted: {journal.saved} of {n} frames are saved in {shifts_path}; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0


def _cluster_frames(stack, args):
    from .io import as_dask

    return as_dask(stack, args.chunk_frames)


def _attrs(args, source) -> dict:
    return {"maskalign": {"shifts": str(args.shifts), "input": str(source)}}


def _align_kwargs(args) -> dict:
    return {"method": args.method, "order": args.order, "fill_value": args.fill}


# ----------------------------------------------------------------------------
# apply


def _cmd_apply(args: argparse.Namespace) -> int:
    from .io import read_shift_table
    from .workflow import dask_client, write_aligned

    stack = _open_input(args.input)
    n, ndim = int(stack.shape[0]), len(stack.shape) - 1
    try:
        table = read_shift_table(args.shifts, n_frames=n, ndim=ndim)
        # a rigid or similarity table turns the frames about their centre as well
        shifts = table.shifts if table.rotations is None else table.transforms(stack.shape[1:])
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:
        raise CLIError(f"the shifts do not fit the input: {exc}") from None
    out = _check_output(args.output, args.overwrite, args)
    t0 = time.perf_counter()
    try:
        with _plain_errors(), dask_client(args.scheduler, args.workers) as client:
            lazy = None if client is None else _cluster_frames(stack, args)
            with _plain_errors(f"cannot write {out}: "):
                follow(write_aligned(out, stack, shifts, overwrite=args.overwrite,
                                      attrs=_attrs(args, args.input), dask_stack=lazy,
                                      chunk_frames=args.chunk_frames, **_align_kwargs(args)),
                        "writing")
    except KeyboardInterrupt:
        print("\ninterrupted: no output was written", file=sys.stderr)
        return 130
    print(f"aligned {n} frames in {time.perf_counter() - t0:.1f} s: {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.screenshot)


HANDLERS = {"demo": _cmd_demo, "info": _cmd_info, "register": _cmd_register, "apply": _cmd_apply}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "input", None) and all(os.path.exists(e) for e in extra):
            # the shell expanded an unquoted glob into many INPUTs
            print(
                f"maskalign {args.command}: error: {many_inputs([args.input, *extra])}",
                file=sys.stderr,
            )
            return 2
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command not in HANDLERS:
        parser.print_help()
        return 2
    try:
        return int(HANDLERS[args.command](args) or 0)
    except CLIError as exc:
        print(f"maskalign {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
