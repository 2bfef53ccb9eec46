"""The outputs of a run after its shifts: the aligned stack and the masked mean, in one pass.

:func:`write_outputs` reads every frame once, whatever was asked: the aligned
stack (NaN where the block lands; for integer output a per-frame mask of
where there is no data beside it), the masked mean of the aligned frames
(outliers left out) with its per-pixel frame count beside it, or both.
Memory holds a block of frames and two frame-sized sums, however long the
stack. Every file appears under its final name only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..engine import aligned_dtype
from ..io import replacing
from .align import MaskedMean, MeanAccumulator, iter_mean, write_aligned
from .paths import sibling

__all__ = [
    "MEAN_SUFFIXES",
    "aligned_mask_path",
    "check_mean_name",
    "check_output_names",
    "planned_outputs",
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


def planned_outputs(*, shifts=None, output=None, mean=None, plot=None, stack_dtype=None,
                    integer: bool = False) -> dict:
    """What a run writes, by what it is (None: not asked for): the shifts table and its
    settings file, the aligned stack (and, for integer output of integer frames, its
    no-data mask), the mean and its frame count, the drift plot."""
    from .journal import sidecar_path

    paths = {"shifts file": shifts, "shifts settings file": shifts and sidecar_path(shifts),
             "output": output, "mean": mean, "mean's frame count": mean and count_path(mean),
             "plot": plot}
    if output is not None and integer and np.dtype(stack_dtype).kind in "biu":
        paths["output mask"] = aligned_mask_path(output)
    return paths


def check_output_names(outputs: dict) -> None:
    """The formats the names ask for, known (``ValueError`` in plain words otherwise)."""
    from ..io import output_format

    if outputs.get("output") is not None:
        output_format(outputs["output"])
    if outputs.get("mean") is not None:
        check_mean_name(outputs["mean"])
    plot = outputs.get("plot")
    if plot is not None and Path(plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"cannot tell the plot's format from {Path(plot).name!r}: end the "
                         "name with .png, .pdf or .svg")


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


def write_outputs(stack, shifts, *, output=None, mean=None, valid=None, exclude=None,
                  integer: bool = False, overwrite: bool = False, attrs: dict | None = None,
                  dask_stack=None, chunk_frames: int = 16, **kwargs):
    """The aligned stack and/or the masked mean in one pass over the frames.

    A generator of :class:`~napari_maskalign.workflow.align.AlignProgress`.
    ``output``: the aligned stack's path (.zarr or .tif), NaN where ``valid``
    (the engine mask, True = valid) lands in float output; with ``integer``
    the input's integer type, and the no-data mask beside it
    (:func:`aligned_mask_path`). ``mean``: the masked mean's path
    (:func:`write_mean`); frames flagged in ``exclude`` are left out of it.
    ``kwargs`` go to :func:`~napari_maskalign.engine.apply_shifts` (method,
    order, fill_value). Returns ``{"output": path, "mean": path, ...}``
    for what was written.
    """
    written: dict = {}
    dtype = aligned_dtype(stack.dtype)
    if output is not None:
        acc = None if mean is None else MeanAccumulator(stack.shape[1:], dtype)
        integer_out = integer and np.dtype(stack.dtype).kind in "biu"
        mask_path = aligned_mask_path(output) if integer_out else None
        written["output"] = yield from write_aligned(
            output, stack, shifts, overwrite=overwrite, attrs=attrs, dask_stack=dask_stack,
            chunk_frames=chunk_frames, valid=valid, integer=integer, mean=acc, exclude=exclude,
            mask_path=mask_path, **kwargs)
        if mask_path is not None:
            written["output mask"] = mask_path
        result = None if acc is None else acc.result()
    elif mean is not None:
        block = chunk_frames if dask_stack is not None else 1
        result = yield from iter_mean(stack, shifts, valid=valid, exclude=exclude, block=block,
                                      **kwargs)
    if mean is not None:
        written["mean"], written["mean count"] = write_mean(mean, result)
    return written
