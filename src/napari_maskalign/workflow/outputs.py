"""The outputs of a run after its shifts: the aligned stack and the masked mean, in one pass.

:func:`write_outputs` reads every frame once, whatever was asked: the aligned
stack (NaN where the block lands; for integer output a per-frame mask of
where there is no data beside it), the masked mean of the aligned frames
(outliers left out) with its per-pixel frame count beside it, or both.
Memory holds a block of frames and two frame-sized sums, however long the
stack. Every file appears under its final name only when complete.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import aligned_dtype
from ..io import replacing
from .align import (
    DEFAULT_ALIGN,
    AlignSettings,
    MaskedMean,
    MeanAccumulator,
    iter_mean,
    to_apply,
    write_aligned,
)
from .journal import sidecar_path
from .paths import check_outputs, sibling

__all__ = [
    "MEAN_SUFFIXES",
    "OutputPaths",
    "aligned_mask_path",
    "check_mean_name",
    "count_path",
    "write_mean",
    "write_outputs",
]

MEAN_SUFFIXES = (".tif", ".tiff", ".npy")


def count_path(mean_path) -> Path:
    """Where the mean's per-pixel frame count goes: ``mean.tif`` -> ``mean_count.tif``."""
    return sibling(mean_path, "count")


def aligned_mask_path(output) -> Path:
    """Where integer output's no-data mask goes: ``aligned.tif`` -> ``aligned_mask.tif``."""
    return sibling(output, "mask")


def check_mean_name(path) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if p.suffix.lower() not in MEAN_SUFFIXES:
        raise ValueError(
            f"cannot tell the mean's format from {p.name!r}: end the name with .tif/.tiff "
            "(a float32 TIFF, NaN where no frame saw a pixel) or .npy"
        )
    return p


#: what each output is, in words (messages name outputs by these)
_WHAT = {
    "shifts": "shifts file",
    "shifts_settings": "shifts settings file",
    "output": "output",
    "output_mask": "output mask",
    "mean": "mean",
    "mean_count": "mean's frame count",
    "plot": "plot",
}


@dataclass(frozen=True)
class OutputPaths:
    """Every file a run writes (None: not asked for), typed.

    Attributes
    ----------
    shifts, shifts_settings : Path or None
        The shifts table and, beside it, its settings file
        (:func:`~napari_maskalign.workflow.journal.sidecar_path`).
    output, output_mask : Path or None
        The aligned stack and, for integer output of integer frames, its
        no-data mask (:func:`aligned_mask_path`).
    mean, mean_count : Path or None
        The masked mean and its per-pixel frame count (:func:`count_path`).
    plot : Path or None
        The drift plot.
    """

    shifts: Path | None = None
    shifts_settings: Path | None = None
    output: Path | None = None
    output_mask: Path | None = None
    mean: Path | None = None
    mean_count: Path | None = None
    plot: Path | None = None

    @classmethod
    def plan(cls, *, shifts=None, output=None, mean=None, plot=None, stack_dtype=None,
             integer: bool = False) -> OutputPaths:
        """What a run writes, the files beside the ones asked for included."""
        integer_out = output is not None and integer and np.dtype(stack_dtype).kind in "biu"
        return cls(
            shifts=_path(shifts),
            shifts_settings=None if shifts is None else sidecar_path(shifts),
            output=_path(output),
            output_mask=aligned_mask_path(output) if integer_out else None,
            mean=_path(mean),
            mean_count=None if mean is None else count_path(mean),
            plot=_path(plot),
        )

    @classmethod
    def kinds(cls) -> tuple[str, ...]:
        """The field names: every kind of output a run may write."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def described(self, *, without: tuple[str, ...] = ()) -> dict[str, Path]:
        """``{what it is, in words: path}`` for the outputs asked for (messages), leaving
        out the fields named in ``without``."""
        return {_WHAT[f.name]: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in without and getattr(self, f.name) is not None}

    def check_names(self) -> None:
        """The formats the names ask for, known (``ValueError`` in plain words otherwise)."""
        from ..io import output_format

        if self.output is not None:
            output_format(self.output)
        if self.mean is not None:
            check_mean_name(self.mean)
        if self.plot is not None and self.plot.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ValueError(f"cannot tell the plot's format from {self.plot.name!r}: end the "
                             "name with .png, .pdf or .svg")

    def check(self, *, inputs: dict, overwrite: bool = False,
              may_exist: tuple[str, ...] = ()) -> OutputPaths:
        """Every output checked together, before any work (:func:`check_outputs`): their
        formats, their folders, no output twice or over an input. ``may_exist``: fields
        that may exist without ``overwrite`` (a resumed run's table). Returns the
        checked paths (``~`` expanded)."""
        self.check_names()
        checked = check_outputs(self.described(), inputs=inputs, overwrite=overwrite,
                                may_exist=tuple(_WHAT[f] for f in may_exist))
        return OutputPaths(**{f: checked.get(what) for f, what in _WHAT.items()})


def _path(value) -> Path | None:
    return None if value is None else Path(os.fspath(value))


def _save_image(path: Path, image: np.ndarray) -> None:
    with replacing(path, suffix=f".tmp{path.suffix}") as tmp:
        if path.suffix.lower() == ".npy":
            with open(tmp, "xb") as f:
                np.save(f, image, allow_pickle=False)
        else:
            import tifffile

            tifffile.imwrite(tmp, image, metadata={"maskalign": path.name})


def write_mean(path, mean: MaskedMean) -> tuple[Path, Path]:
    """Write the mean (NaN where no frame saw a pixel) and, beside it, the count.

    ``mean.tif`` and ``mean_count.tif`` (int32: how many frames saw each
    pixel); ``.npy`` likewise. Each file is written under a temporary name
    and renamed when complete. Returns both paths.
    """
    p = check_mean_name(path)
    counts = count_path(p)
    _save_image(counts, mean.count.astype(np.int32))
    _save_image(p, mean.mean)
    return p, counts


def write_outputs(stack, result, paths: OutputPaths, settings: AlignSettings = DEFAULT_ALIGN, *,
                  mean_outliers: bool = False, overwrite: bool = False,
                  attrs: dict | None = None, dask_stack=None, chunk_frames: int = 16):
    """A registration result applied: the aligned stack and/or the masked mean in one pass.

    A generator of :class:`~napari_maskalign.workflow.align.AlignProgress`.
    ``result`` is a :class:`~napari_maskalign.engine.RegistrationResult`
    (from :func:`~napari_maskalign.workflow.register`, or
    :func:`~napari_maskalign.workflow.table_result` for a saved table): its
    shifts (transforms for rigid and similarity), the mask it used
    (``valid_mask``: NaN where it lands in float output) and its outliers,
    which the mean leaves out unless ``mean_outliers``. ``paths.output``:
    the aligned stack (.zarr or .tif; with ``settings.integer`` the input's
    integer type and the no-data mask at ``paths.output_mask``);
    ``paths.mean``: the masked mean (:func:`write_mean`). Returns the
    :class:`OutputPaths` written.
    """
    moves, valid = to_apply(result), result.valid_mask
    exclude = None if mean_outliers else result.outliers
    written: dict = {}
    dtype = aligned_dtype(stack.dtype)
    if paths.output is not None:
        acc = None if paths.mean is None else MeanAccumulator(stack.shape[1:], dtype)
        written["output"] = yield from write_aligned(
            paths.output, stack, moves, settings=settings, overwrite=overwrite, attrs=attrs,
            dask_stack=dask_stack, chunk_frames=chunk_frames, valid=valid, mean=acc,
            exclude=exclude, mask_path=paths.output_mask)
        written["output_mask"] = paths.output_mask
        mean = None if acc is None else acc.result()
    elif paths.mean is not None:
        block = chunk_frames if dask_stack is not None else 1
        mean = yield from iter_mean(stack, moves, settings=settings, valid=valid, exclude=exclude,
                                    block=block)
    if paths.mean is not None:
        written["mean"], written["mean_count"] = write_mean(paths.mean, mean)
    return OutputPaths(**written)
