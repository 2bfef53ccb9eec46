"""A result's pixels, without Qt: the aligned stack, its no-data mask and its masked mean.

:func:`make_outputs` is the worker's part (a generator: progress per frame or
block, the :class:`Outputs` at the end), the same for the Register dock and
the Shifts dock (import, apply to another layer); :func:`output_steps` turns
its value into layer updates for the main thread, one layer per step. The
pixel work is :mod:`napari_maskalign.workflow.align`'s: the aligned frames
with NaN where the mask lands, and one masked mean (each pixel averaged over
the frames that saw it).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_maskalign import workflow
from napari_maskalign._display import pattern_limits
from napari_maskalign.engine import aligned_dtype
from napari_maskalign.workflow import MaskedMean

from ._layers import (
    aligned_name,
    check_output_name,
    count_name,
    drop_outputs,
    frame_props,
    layer_named,
    mean_name,
    nodata_name,
    upsert_layer,
)
from ._model import META, AlignedResult

#: a lazy stack is averaged about a MB at a time (one read per block, one progress step;
#: a block takes a fraction of a second to shift, so the progress bar keeps moving)
MEAN_BLOCK_BYTES = 2**20
MEAN_BLOCK_FRAMES = 8


@dataclass(frozen=True)
class Outputs:
    """What :func:`make_outputs` returns.

    Attributes
    ----------
    aligned : array
        The aligned stack (numpy, or a lazy dask array).
    nodata : array or None
        For integer output: per frame, 1 where there is no data (a mask:
        nonzero = ignore), else None (float output carries NaN there).
    mean : MaskedMean or None
        The masked mean of the aligned frames, if asked for.
    aligned_limits, mean_limits : (float, float) or None
        Contrast limits that show the pattern (:func:`pattern_limits`: percentiles
        of the valid pixels, the mask and the static outliers left out).
    """

    aligned: Any
    nodata: Any = None
    mean: MaskedMean | None = None
    aligned_limits: tuple[float, float] | None = None
    mean_limits: tuple[float, float] | None = None


def is_integer_output(stack, res: AlignedResult) -> bool:
    return bool(res.align.integer) and np.dtype(stack.dtype).kind in "biu"


def align_settings(stack, res: AlignedResult) -> workflow.AlignSettings:
    """How ``res``'s aligned frames of ``stack`` are made: integer output only for integer
    frames."""
    return dataclasses.replace(res.align, integer=is_integer_output(stack, res))


def mean_block(stack) -> int:
    """Frames averaged per progress step: one for in-memory stacks; for lazy ones about a MB
    (each block is one read, so a stack of many small chunks is not read frame by frame)."""
    if isinstance(stack, np.ndarray) and not isinstance(stack, np.memmap):
        return 1
    frame_bytes = max(1, int(np.prod(stack.shape[1:])) * np.dtype(stack.dtype).itemsize)
    return int(max(1, min(MEAN_BLOCK_FRAMES, MEAN_BLOCK_BYTES // frame_bytes)))


def output_total(stack, *, lazy: bool, mean: bool) -> int:
    """How many progress steps :func:`make_outputs` yields (at most: excluded frames are
    not averaged)."""
    n = int(stack.shape[0])
    if not lazy:
        return n
    return -(-n // mean_block(stack)) if mean else 0


def lazy_outputs(stack, res: AlignedResult) -> Outputs:
    """A lazy stack's aligned stack as a dask graph (nothing computed), its no-data mask
    for integer output and its contrast: what can be shown before the mean is made."""
    settings = align_settings(stack, res)
    got = workflow.align_lazy(stack, res.to_apply, settings=settings, valid=res.valid,
                              return_data=settings.integer)
    aligned, data = got if settings.integer else (got, None)
    nodata = None if data is None else (~data).astype(np.uint8)
    # the source's valid pixels hold the values the aligned frames hold (read a few frames
    # of the source: no frame is shifted again for this)
    return Outputs(aligned, nodata, None, pattern_limits(stack, res.valid))


def make_outputs(stack, res: AlignedResult, *, lazy: bool, mean: bool = True,
                 ready: Outputs | None = None):
    """The aligned stack and its mean for ``res``'s shifts (a generator, no Qt).

    In memory, one pass: every frame is shifted once and added to the mean
    (flagged outliers left out unless ``res.mean_outliers``), with an
    ``AlignProgress`` per frame. Lazy: the aligned stack is a dask graph
    (nothing computed) and the mean reads the stack a block at a time, an
    ``AlignProgress`` per block. ``ready``: the :func:`lazy_outputs` already
    made for ``res`` (its graph and contrast are taken as they are). Returns
    :class:`Outputs`.
    """
    if lazy:
        got = ready if ready is not None else lazy_outputs(stack, res)
        averaged = (yield from mean_job(stack, res)) if mean else None
        return dataclasses.replace(got, mean=averaged, mean_limits=None if averaged is None
                                   else mean_limit(averaged))
    settings = align_settings(stack, res)
    integer = settings.integer
    acc = workflow.MeanAccumulator(stack.shape[1:], aligned_dtype(stack.dtype)) if mean else None
    got = yield from workflow.iter_align(stack, res.to_apply, settings=settings, lazy=False,
                                         valid=res.valid, return_data=integer, mean=acc,
                                         exclude=res.mean_exclude())
    aligned, data = got if integer else (got, None)
    nodata = None if data is None else (~data).astype(np.uint8)
    averaged = None if acc is None else acc.result()
    limits = ready.aligned_limits if ready is not None else pattern_limits(stack, res.valid)
    return Outputs(aligned, nodata, averaged, limits,
                   None if averaged is None else mean_limit(averaged))


def mean_limit(mean: MaskedMean) -> tuple[float, float] | None:
    """Contrast limits of a masked mean (NaN where no frame saw a pixel)."""
    return pattern_limits(mean.mean, stack_axis=False)


def mean_job(stack, res: AlignedResult):
    """Only the mean of ``res``'s aligned frames (after an edit): a generator."""
    return (yield from workflow.iter_mean(stack, res.to_apply, settings=align_settings(stack, res),
                                          valid=res.valid, exclude=res.mean_exclude(),
                                          block=mean_block(stack)))


def realigned(stack, res: AlignedResult, frame: int | None = None) -> tuple:
    """After an edit (main thread): ``(pixels, nodata)`` of aligned frame ``frame`` made
    now, or with ``frame=None`` of the whole stack as a lazy graph (cheap to make);
    ``nodata`` as in :class:`Outputs` (None for float output)."""
    settings = align_settings(stack, res)
    integer = settings.integer
    if frame is None:
        got = workflow.align_lazy(stack, res.to_apply, settings=settings, valid=res.valid,
                                  return_data=integer)
    else:
        got = workflow.align_frame(stack, res.to_apply, frame, settings=settings,
                                   valid=res.valid, return_data=integer)
    pixels, data = got if integer else (got, None)
    return pixels, None if data is None else (~data).astype(np.uint8)


# ----------------------------------------------------------------------------
# publishing (main thread)


def check_output_names(viewer, source: str) -> None:
    """Raise ``ValueError`` before anything changes if a layer of another type holds an
    output's name."""
    for name, cls in ((aligned_name(source), Image), (nodata_name(source), Labels),
                      (mean_name(source), Image), (count_name(source), Image)):
        check_output_name(viewer, name, cls)


def mean_steps(viewer, res: AlignedResult, mean: MaskedMean | None, props: dict,
               limits: tuple[float, float] | None = None) -> list:
    """The steps that publish ``<source> mean`` and its (hidden) ``<source> mean count``,
    or remove a stale pair when there is no mean. ``limits``: its contrast limits
    (default: :func:`mean_limit`)."""
    source = res.source
    if mean is None:
        return [functools.partial(drop_outputs, viewer, mean_name(source), count_name(source))]
    excluded = [] if res.mean_outliers else np.flatnonzero(res.outliers).tolist()
    common = {"source": source, "frames": int(mean.frames), "shifts_from": res.shifts_from}
    meta = {META: {"role": "mean", **common, "excluded": excluded,
                   "count_layer": count_name(source)}}
    one = frame_props(props)
    limits = limits if limits is not None else mean_limit(mean)
    if limits is not None:
        one["contrast_limits"] = limits

    def add_mean():  # hidden at first: it would cover the aligned frames
        upsert_layer(viewer, mean_name(source), mean.mean, metadata=meta,
                     first_time={"visible": False}, **one)

    def add_count():
        top = max(int(mean.count.max()), 1)
        upsert_layer(
            viewer, count_name(source), mean.count,
            metadata={META: {"role": "mean count", **common}},
            scale=one["scale"], translate=one["translate"], contrast_limits=(0, top),
            colormap="gray", first_time={"visible": False},
        )

    return [add_mean, add_count]


def output_steps(viewer, res: AlignedResult, out: Outputs, props: dict, box: dict) -> list:
    """One callable per output layer: ``<source> aligned`` (the result in its metadata),
    its no-data mask for integer output, the mean and its count. ``box["aligned"]``
    holds the aligned layer once published. Names are checked first."""
    return (aligned_steps(viewer, res, out, props, box)
            + mean_steps(viewer, res, out.mean, props, out.mean_limits))


def aligned_steps(viewer, res: AlignedResult, out: Outputs, props: dict, box: dict) -> list:
    """The steps of :func:`output_steps` without the mean's: ``<source> aligned`` and its
    no-data mask (a lazy stack's, published while its mean is made). Every output name,
    the mean's too, is checked first."""
    source = res.source
    check_output_names(viewer, source)
    if out.aligned_limits is not None:
        props = {**props, "contrast_limits": out.aligned_limits}

    def add_aligned():
        box["aligned"] = upsert_layer(viewer, aligned_name(source), out.aligned,
                                      metadata=res.to_metadata(), **props)

    def add_nodata():
        if out.nodata is None:
            drop_outputs(viewer, nodata_name(source))
            return
        upsert_layer(
            viewer, nodata_name(source), out.nodata, kind="labels",
            metadata={META: {"role": "no data", "source": source}},
            scale=props["scale"], translate=props["translate"], opacity=0.4,
        )

    steps = [add_aligned]
    if out.nodata is not None or layer_named(viewer, nodata_name(source)) is not None:
        steps.append(add_nodata)
    return steps
