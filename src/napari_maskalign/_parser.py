"""The ``maskalign`` command's parser: arguments, their types and help texts.

The handlers live in :mod:`napari_maskalign.cli`; this module only turns the
command line into an ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import math
import os

from .engine.models import DEFAULT_MODEL, MODELS

MASK_HELP = (
    "mask file (.npy, .tif/.tiff or .png) of one frame's shape: NONZERO MARKS PIXELS TO "
    "IGNORE (the beam block, as painted in napari); zero marks pixels to use. Use "
    "--invert-mask for files where nonzero marks the valid pixels instead"
)
INPUT_HELP = (
    "the stack: a multi-page TIFF, a folder of single-frame TIFFs, a quoted glob such as "
    "'run/frame_*.tif' (frames in natural order: frame_2 before frame_10), a .npy file "
    "(memory-mapped), a zarr array, an HDF5 dataset as FILE.h5:/path/in/file, .mrc/.mrcs, "
    ".dm3/.dm4 or .mib (extras hdf5, mrc, rsciio)"
)
OUTPUT_HELP = (
    "aligned stack to write: NAME.zarr (OME-Zarr with named axes, one frame per chunk) or "
    "NAME.tif (multi-page TIFF); the mask's pixels are NaN where they land; written under a "
    "temporary name and renamed when complete"
)


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
    """A finite number in [lo, hi] (or [lo, hi)); the message says the range."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and hi is not None and not open_hi and not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected a number from {lo:g} to {hi:g}, got {text}")
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


def many_inputs(inputs: list[str]) -> str:
    folder = os.path.dirname(inputs[0]) or "."
    return (
        f"got {len(inputs)} inputs ({inputs[0]}, {inputs[1]}, ...): give one stack. For frame "
        f"files, give their folder ({folder}) or a quoted glob such as '{folder}/*.tif' so that "
        "maskalign expands it (the shell's order puts frame_10 before frame_2)"
    )


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
        help="value of pixels shifted in from outside the frame (default nan)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (only once the new ones are complete)",
    )
    _add_issue12_outputs(g)


def _add_issue12_outputs(g) -> None:
    """The mean, the output type and the log (issue 12)."""
    g.add_argument(
        "--mean",
        metavar="MEAN.tif",
        help="also write the masked mean of the aligned frames (.tif/.tiff or .npy): each pixel "
        "averaged over the frames that saw it (the block and pixels shifted in from outside "
        "are left out; NaN where no frame saw it), its frame count beside it in "
        "MEAN_count.tif; needs no --output, reads every frame once",
    )
    g.add_argument(
        "--dtype",
        choices=("float32", "input"),
        default="float32",
        help="type of the aligned output: float32 (default; NaN where there is no data) or "
        "input (an integer input's type, rounded and clipped; where there is no data is then "
        "written beside it as OUT_mask, nonzero = no data)",
    )
    g.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal; otherwise a plain line at least every 10 s, "
        "for logs)",
    )


def _add_compute_options(p: argparse.ArgumentParser, threads: str | None = None) -> None:
    g = p.add_argument_group("computing")
    g.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help=threads or "frames shifted at once on this machine (default: all cores)",
    )
    g.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        help="cpu (numpy) or gpu (CuPy: needs the 'gpu' extra and an NVIDIA GPU); "
        "default: cpu",
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
(scikit-image's convention: apply it to the frame to align it). --model rigid or
similarity adds rotation_deg (counterclockwise as seen in napari) and scale before
quality; the shift is then that of the frame's centre. It is rewritten atomically as frames finish, next to a
SHIFTS.csv.json file holding the run's settings, so a run that is killed can be continued
with --resume and ends with the same shifts as an uninterrupted run.

examples:
  maskalign register run/ --mask beam_block.png --shifts shifts.csv --output aligned.zarr
  maskalign register 'run/frame_*.tif' --mask block.npy --max-shift 20 --shifts s.csv --resume
  maskalign register stack.tif --mask valid.tif --invert-mask --workers 4 --shifts s.csv
  maskalign register run.h5:/entry/data --mask block.png --shifts s.csv --mean mean.tif 2> log
  maskalign register run/ --mask block.png --model similarity --shifts s.csv --output al.zarr
"""


def _add_issue12_register(reg) -> None:
    """Normalization, outliers, the drift plot (issue 12)."""
    reg.add_argument(
        "--normalization",
        choices=("none", "phase"),
        default="none",
        help="without a mask: plain cross-correlation (none, default: best for smooth images "
        "such as diffraction patterns) or phase correlation (phase, scikit-image's default)",
    )
    reg.add_argument(
        "--interpolate-outliers",
        action="store_true",
        help="align flagged frames with shifts interpolated from their good neighbours (the "
        "shifts file keeps the measured shifts)",
    )
    reg.add_argument(
        "--smoothing",
        choices=("off", "auto"),
        default="off",
        help="smooth the drift over time: 'auto' finds jumps against the per-frame "
        "uncertainties, never smooths across one, and chooses the strength from the data "
        "(the shifts file then has the smoothed shifts and the measured ones as raw_shift_* "
        "columns); default off",
    )
    reg.add_argument(
        "--mean-with-outliers",
        action="store_true",
        help="average flagged frames into --mean too (default: left out)",
    )
    reg.add_argument(
        "--plot",
        metavar="PLOT.png",
        help="save the drift plot: shifts and quality against frame, outliers marked "
        "(.png, .pdf or .svg)",
    )


def _command(sub, name: str, help: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that reads one stack (INPUT)."""
    p = sub.add_parser(name, help=help, description=description, **kwargs)
    p.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    return p


def _add_commands(sub) -> None:
    _command(
        sub, "info",
        help="describe a stack: kind, frame count, frame shape, dtype, size, chunking",
        description="Describe a stack without loading it: what it is, how many frames of "
        "which shape and dtype, its size and how it is chunked on disk.",
    )

    reg = _command(
        sub, "register",
        help="register every frame onto a reference; write the shifts (and an aligned stack)",
        description="Register every frame of a stack onto a reference frame, ignoring the masked\n"
        "pixels (the beam block), with subpixel precision. Memory stays bounded by a few\n"
        "frames whatever the stack's length.",
        epilog=EPILOG_REGISTER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reg.add_argument("--mask", metavar="MASK", help=MASK_HELP + " (default: no mask)")
    _add_hot_pixels_option(reg)
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
        type=_number(1, 1000),
        default=20.0,
        metavar="U",
        help="subpixel precision 1/U pixel, 1 to 1000 (default 20)",
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
        "--model",
        choices=tuple(MODELS),
        default=DEFAULT_MODEL,
        help="what moves between frames: "
        + ", ".join(f"{m.name} ({m.summary})" for m in MODELS.values()).replace("%", "%%")
        + ". Rigid and similarity add rotation_deg and scale columns to the shifts file "
        "(its shifts are then the frame centre's)",
    )
    reg.add_argument(
        "--grid-spacing",
        type=_number(4),
        default=32.0,
        metavar="PX",
        help="--model nonrigid: the spline grid's spacing in pixels (default 32; smaller "
        "follows sharper deformations and needs more texture)",
    )
    reg.add_argument(
        "--patch-size",
        type=int,
        default=64,
        metavar="PX",
        help="--model nonrigid: the side of the patches whose shifts start the fit (default 64)",
    )
    reg.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refine every frame continuously after the correlation peak (Gauss-Newton on the "
        "unmasked pixels: errors at the Cramer-Rao bound instead of the 1/U grid); default: on "
        "when --upsample is above 1 and for rigid and similarity",
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
    _add_issue12_register(reg)
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
    _add_compute_options(reg, "frames registered (and shifted, with --output) at once on this "
                         "machine (default: all cores)")
    _add_cluster_options(reg)

    app = _command(
        sub, "apply",
        help="apply saved shifts to a stack and write the aligned stack",
        description="Apply the shifts of a shifts file (from 'maskalign register' or the "
        "napari widgets) to a stack, e.g. another detector channel of the same run.",
    )
    app.add_argument(
        "--shifts",
        required=True,
        metavar="SHIFTS.csv",
        help="one row per frame: frame, shift_y, shift_x[, quality] (shift_z too for 3D frames); "
        "rotation_deg and scale columns (from --model rigid or similarity) rotate and scale the "
        "frames about their centre too",
    )
    app.add_argument("--output", metavar="OUT", help=OUTPUT_HELP + " (or only --mean)")
    app.add_argument("--mask", metavar="MASK", help=MASK_HELP + "; its pixels are NaN in the "
                     "aligned output and left out of the mean (default: no mask)")
    app.add_argument("--invert-mask", action="store_true",
                     help="the mask file marks VALID pixels with nonzero")
    _add_hot_pixels_option(app, " (as register does: they are NaN in the output and left "
                           "out of the mean)")
    _add_output_options(app)
    _add_compute_options(app)
    _add_cluster_options(app)


def _add_hot_pixels_option(p, more: str = "") -> None:
    p.add_argument(
        "--hot-pixels",
        default="auto",
        metavar="auto|off|FILE",
        help="static outlier pixels (hot, dead, stuck, saturated) to ignore on top of --mask: "
        "'auto' (default) finds them in the stack, 'off' uses the mask alone, or a mask FILE "
        "whose nonzero pixels are the hot pixels" + more,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskalign",
        description=(
            "Align drifting image stacks while part of every image stands still "
            "(a beam block, a scale bar, a dead detector region)."
        ),
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"maskalign {__version__}")
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
    _add_commands(sub)
    return parser


