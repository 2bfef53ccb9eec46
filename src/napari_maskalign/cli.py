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
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._parser import build_parser, many_inputs
from ._report import follow, info_rows, summary_lines

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


@contextlib.contextmanager
def _plain_errors(prefix: str = "", suffix: str = ""):
    """``ValueError`` / ``OSError`` from the workflow become one-line CLI errors."""
    try:
        yield
    except (ValueError, OSError) as exc:  # FileNotFoundError included
        raise CLIError(f"{prefix}{exc}{suffix}") from None


def _open_input(source: str, mask=None):
    from .io import open_stack

    with _plain_errors("cannot read the input: "):
        return open_stack(source, exclude=[mask] if mask else ())


def _output_paths(args, stack, *, shifts=None, may_exist=()):
    """Every output of the command, checked together before any work (see workflow.paths)."""
    from .io import source_file
    from .workflow import OutputPaths

    planned = OutputPaths.plan(shifts=shifts, output=args.output, mean=args.mean,
                               plot=getattr(args, "plot", None), stack_dtype=stack.dtype,
                               integer=args.dtype == "input")
    inputs = {"input": source_file(args.input), "mask": getattr(args, "mask", None)}
    try:
        return planned.check(inputs=inputs, overwrite=args.overwrite, may_exist=may_exist)
    except FileExistsError as exc:
        raise CLIError(f"{exc}; use --overwrite to replace it") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None


#: the outputs a run locks while it writes them (the others go with these)
LOCKED = ("shifts", "output", "mean")


def _lock_outputs(args, paths) -> None:
    """Hold the outputs' locks until the command ends: a second run at the same outputs is
    refused while this one lives, so it never takes this run's partial output as stale."""
    from .io import OutputBusy, output_locks

    try:
        args.held.enter_context(output_locks(getattr(paths, k, None) for k in LOCKED))
    except OutputBusy as exc:
        raise CLIError(str(exc)) from None


def _align_settings(args):
    """How the aligned frames are made: --method, --order, --fill, --dtype, --device, --threads."""
    from .workflow import AlignSettings

    return AlignSettings(method=args.method, order=args.order, fill_value=args.fill,
                         integer=args.dtype == "input", device=args.device,
                         workers=args.threads or os.cpu_count())


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import describe_stack

    rows = info_rows(describe_stack(_open_input(args.input), args.input), args.input)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ----------------------------------------------------------------------------
# register


def _check_device(args) -> None:
    """--device gpu without CuPy or a GPU: said before any work (and any log line)."""
    from .engine.backends._device import GPU_MISSING, gpu_available

    if args.device == "gpu" and not gpu_available():
        raise CLIError(GPU_MISSING)


def _options(args):
    from .engine import RegistrationOptions

    _check_device(args)
    with _plain_errors():
        return RegistrationOptions(
            reference=args.reference,
            reference_range=args.reference_range,
            upsample_factor=args.upsample,
            max_shift=args.max_shift,
            overlap_ratio=args.overlap_ratio,
            normalization=None if args.normalization == "none" else args.normalization,
            max_jump=args.max_jump,
            smoothing=getattr(args, "smoothing", "off"),
            min_quality=args.min_quality,
            interpolate_outliers=args.interpolate_outliers,
            hot_pixels=_hot_pixels(args.hot_pixels),
            workers=args.threads,
            device=args.device,
            model=args.model,
            refine=args.refine,
            grid_spacing=args.grid_spacing,
            patch_size=args.patch_size,
        )


def _hot_pixels(value: str):
    """'auto', 'off', or the hot pixels of a mask file (nonzero = hot, to ignore)."""
    if value in ("auto", "off"):
        return value
    from .io import read_mask

    try:
        return read_mask(value) != 0
    except FileNotFoundError:
        raise CLIError(f"--hot-pixels takes auto, off or a mask file; there is no file {value}") from None
    except ValueError as exc:
        raise CLIError(f"--hot-pixels {value}: {exc}") from None


def _read_mask(args):
    """``--mask FILE`` as the engine mask (True = valid) and its name for messages; it is
    checked against the frames by the workflow call that takes it."""
    if not args.mask:
        return None, "mask"
    from .io import read_valid_mask

    try:
        return (read_valid_mask(args.mask, invert=args.invert_mask),
                f"mask {Path(args.mask).name}")
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None


@contextlib.contextmanager
def _mask_hint(args):
    """A mask that ignores every pixel was probably written the other way round."""
    try:
        yield
    except ValueError as exc:
        if "masks every pixel" in str(exc) and args.mask and not args.invert_mask:
            raise ValueError(
                f"{exc}; in mask files nonzero marks pixels to ignore -- if yours marks the "
                "valid pixels with nonzero, add --invert-mask") from None
        raise


def _check_mask(args, valid, frame) -> None:
    """The mask's sanity check (that of the Register dock) against ``frame``: a mask that
    is almost surely inverted stops the run with the fix; a doubtful one is a warning."""
    if valid is None:
        return
    from .workflow.checks import looks_inverted, mask_problems

    if frame.shape != np.shape(valid) or not np.any(valid):  # the workflow names these
        return
    problems = mask_problems(valid, frame, Path(args.mask).name)
    if not problems:
        return
    text = " ".join(problems)
    if looks_inverted(problems):
        fix = ("drop --invert-mask" if args.invert_mask else
               "if your mask file marks the valid pixels with nonzero (as scikit-ued's do), "
               "add --invert-mask")
        raise CLIError(f"{text} The mask looks inverted: {fix}.")
    print(f"warning: {text}", file=sys.stderr)


def _remove_stale(out: Path) -> None:
    from .io import remove_path, stale_partials

    for stale in stale_partials(out):
        remove_path(stale)
        print(f"removed the unfinished output of an earlier run: {stale}", file=sys.stderr)


def _cmd_register(args: argparse.Namespace) -> int:
    from .io import stale_partials
    from .workflow import (
        ClusterLost,
        OutputPaths,
        ShiftJournal,
        continue_run,
        dask_client,
        register,
        run_settings,
    )

    options = _options(args)
    if not options.transform_model.shift_only and args.method == "fourier" and (
            args.output or args.mean):
        raise CLIError(f"--method fourier can only shift, but a {options.model} run's frames "
                       "also turn (and scale); use --method spline (the default)")
    if args.resume and options.mode == "template":
        raise CLIError(
            "--reference template re-registers every frame in each refinement pass, so its shifts "
            "are final only at the very end and cannot be resumed; run without --resume (the "
            "shifts file is then written once, when the run completes)"
        )
    stack = _open_input(args.input, args.mask)
    n, frame_shape = int(stack.shape[0]), tuple(int(s) for s in stack.shape[1:])
    with _plain_errors():
        options.check_for(n, frame_shape)
    valid, mask_name = _read_mask(args)
    from .engine.backends._frames import read_frame

    i = options.reference_index(n) if options.mode == "index" else 0
    with _plain_errors():
        frame = read_frame(stack, i)  # both looks before the run see the reference frame
    _warn_saturated(frame, valid, i)
    _check_mask(args, valid, frame)
    settings = run_settings(args.input, stack, valid, options)
    # --resume: every output may exist, continue_run decides
    paths = _output_paths(args, stack, shifts=args.shifts,
                          may_exist=OutputPaths.kinds() if args.resume else ("shifts_settings",))
    _lock_outputs(args, paths)
    done = (np.zeros((0, len(frame_shape))), np.zeros(0))
    if args.resume:
        try:
            done, nothing = continue_run(
                paths.shifts, settings, n, len(frame_shape), overwrite=args.overwrite,
                outputs=paths.described(without=("shifts", "shifts_settings")))
        except FileExistsError as exc:
            raise CLIError(f"{exc}; add --overwrite to replace it") from None
        except ValueError as exc:
            raise CLIError(f"{exc}; use --overwrite without --resume to start over") from None
        if nothing:
            print(f"nothing to do: {args.shifts} has all {n} frames and every output exists")
            return 0
    out = paths.output
    if out is not None and stale_partials(out):
        if args.overwrite or args.resume:
            _remove_stale(out)
        else:
            print(f"note: {stale_partials(out)[0]} is the unfinished output of an earlier run that "
                  "was stopped; --resume or --overwrite removes it", file=sys.stderr)
    journal = ShiftJournal(paths.shifts, n, len(frame_shape), settings,
                           interval=args.save_interval,
                           note={"output": None if out is None else str(out),
                                 "mean": None if paths.mean is None else str(paths.mean)})
    journal.preload(*done)
    start = journal.saved
    steps = None
    try:
        with _plain_errors(), dask_client(args.scheduler, args.workers) as client:
            t0 = time.perf_counter()  # a cluster's start-up is not registration time
            with _mask_hint(args):
                steps = register(stack, options, mask=valid, mask_name=mask_name, journal=journal,
                                 client=client, chunk_frames=args.chunk_frames)
            start = steps.start  # a non-rigid run goes back to the frames whose fields were saved
            result = follow(steps, "registering", initial=start if options.mode != "template" else 0,
                            quiet=args.quiet)
            print("\n".join(summary_lines(
                result, start=start, seconds=time.perf_counter() - t0, shape=frame_shape,
                dtype=np.dtype(stack.dtype), shifts_path=args.shifts,
                interpolated=options.interpolate_outliers)))
            if args.plot:
                from ._drift_plot import save_drift_plot

                with _plain_errors(f"cannot write the plot {args.plot}: "):
                    save_drift_plot(paths.plot, result, title=str(args.input))
                print(f"plot: {args.plot}")
            fields = _write_fields(paths.shifts, result) if hasattr(result, "field_stack") else None
            # the result carries what applying needs: its moves, the mask it used, its outliers
            _write_outputs(args, stack, result, paths, client, settings["input"],
                           mean_outliers=args.mean_with_outliers, fields=fields,
                           note=f"; all {n} shifts are saved in {journal.path}")
    except KeyboardInterrupt:
        if steps is not None:
            steps.close()  # saves the finished frames
        print(f"\ninterrupted: {_saved_where(journal)}; run the same command with --resume to "
              "continue", file=sys.stderr)
        return 130
    except ClusterLost as exc:
        raise CLIError(f"{exc}: {_saved_where(journal)}; run the same command with --resume to "
                       "continue") from None
    return 0


def _write_fields(shifts_path, result) -> dict:
    """A non-rigid run's fields, which the journal wrote beside its shifts file (and its
    summary columns into it): what the outputs' attributes say."""
    from .io.fields import fields_path_for, fields_summary

    path = fields_path_for(shifts_path)
    fell_back = np.asarray(result.fallback, bool).copy()
    ref = result.params.get("reference")
    if isinstance(ref, (int, np.integer)) and 0 <= ref < len(fell_back):
        fell_back[ref] = False  # the reference frame: exact as it is, nothing to fit
    which = np.flatnonzero(fell_back)
    listed = f": frame(s) {', '.join(str(i) for i in which[:10])}" if which.size else ""
    print(f"fields: {path} (grid {result.grid.spacing:g} px; median deformation "
          f"{np.median(result.deformation_rms):.2f} px RMS; {which.size} frame(s) kept the "
          f"global shift, the field fitting no better{listed})")
    return {**fields_summary(result), "file": str(path)}


def _warn_saturated(frame, valid, i: int) -> None:
    """Saturated pixels pull every shift to 0 with quality 1: said before the run
    (``frame`` is frame ``i``, the reference)."""
    from .workflow import saturation_warning

    if valid is not None and np.shape(valid) != frame.shape:
        valid = None  # the run refuses it in its own words
    text = saturation_warning(frame, valid, which=f"frame {i}")
    if text:
        print(f"warning: {text}", file=sys.stderr)


def _saved_where(journal) -> str:
    """How many frames a stopped run saved, and where (the older table is kept meanwhile)."""
    text = f"{journal.saved} of {journal.n_frames} frames are saved in {journal.writing}"
    if journal.writing != journal.path:
        text += f" ({journal.path} is kept as it was until the new table is complete)"
    return text


def _write_outputs(args, stack, result, paths, client, source, *, mean_outliers: bool,
                   note: str = "", fields: dict | None = None) -> None:
    """The aligned stack and/or the mean of a result, in one pass (register and apply)."""
    from .workflow import write_outputs

    if paths.output is None and paths.mean is None:
        return
    t1 = time.perf_counter()
    lazy = None
    if client is not None:
        from .io import as_dask

        lazy = as_dask(stack, args.chunk_frames)
    with _plain_errors(f"cannot write {paths.output or paths.mean}: ", note):
        written = follow(write_outputs(
            stack, result, paths, _align_settings(args), mean_outliers=mean_outliers,
            overwrite=args.overwrite,
            attrs={"maskalign": {"shifts": str(args.shifts), "input": str(source),
                                 **({"fields": fields} if fields else {})}},
            dask_stack=lazy, chunk_frames=args.chunk_frames),
            "writing" if paths.output is not None else "averaging", quiet=args.quiet)
    for what, path in written.described().items():
        print(f"{what}: {path}")
    print(f"outputs written in {time.perf_counter() - t1:.1f} s")


# ----------------------------------------------------------------------------
# apply


def _cmd_apply(args: argparse.Namespace) -> int:
    from .engine import RegistrationOptions
    from .io import read_shift_table
    from .io.fields import fields_path_for, read_fields
    from .workflow import ClusterLost, dask_client, table_result

    _check_device(args)
    stack = _open_input(args.input, args.mask)
    n, ndim = int(stack.shape[0]), len(stack.shape) - 1
    try:
        table = read_shift_table(args.shifts, n_frames=n, ndim=ndim)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:
        raise CLIError(f"the shifts do not fit the input: {exc}") from None
    if table.rotations is not None and args.method == "fourier":
        raise CLIError(f"--method fourier can only shift, but {args.shifts} also turns (and "
                       "scales) the frames; use --method spline (the default)")
    if args.output is None and args.mean is None:
        raise CLIError("nothing to write: give --output OUT, --mean MEAN.tif or both")
    paths = _output_paths(args, stack)
    _lock_outputs(args, paths)
    valid, mask_name = _read_mask(args)
    options = RegistrationOptions(hot_pixels=_hot_pixels(args.hot_pixels))
    if valid is not None:
        from .engine.backends._frames import read_frame

        with _plain_errors():
            _check_mask(args, valid, read_frame(stack, 0))
    try:
        with _plain_errors(), dask_client(args.scheduler, args.workers) as client:
            # the pixels registration ignored are ignored here too: same table, same output
            with _mask_hint(args):
                result = table_result(stack, table, options, mask=valid, mask_name=mask_name)
            fields = None
            field_file = fields_path_for(args.shifts)
            if field_file.exists():  # a nonrigid run's fields: they align the frames
                from .engine.run._nonrigid import with_fields

                result = with_fields(result, *read_fields(field_file, n_frames=n,
                                                          frame_shape=stack.shape[1:]))
                fields = {"model": "nonrigid", "file": str(field_file)}
                print(f"fields: {field_file}")
            if result.hot_pixels is not None:
                print(f"hot pixels: ignored {result.n_hot_pixels} hot or dead pixels")
            # a rigid or similarity table turns the frames about their centre as well
            _write_outputs(args, stack, result, paths, client, args.input, mean_outliers=True,
                           fields=fields)
    except KeyboardInterrupt:
        print("\ninterrupted: no output was written", file=sys.stderr)
        return 130
    except ClusterLost as exc:
        raise CLIError(f"{exc}; no output was written") from None
    print(f"aligned {n} frames")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.screenshot)


HANDLERS = {"demo": _cmd_demo, "info": _cmd_info, "register": _cmd_register, "apply": _cmd_apply}


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("tifffile").addHandler(logging.NullHandler())  # our messages name the file
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
        with contextlib.ExitStack() as args.held:  # what the command holds until it ends (locks)
            return int(HANDLERS[args.command](args) or 0)
    except CLIError as exc:
        print(f"maskalign {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
