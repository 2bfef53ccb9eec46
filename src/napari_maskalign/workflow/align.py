"""Shifts (or transforms) -> aligned frames and their masked mean: in memory, lazily (dask)
or into a file.

Both faces use these: the napari widgets make ``<image> aligned`` and
``<image> mean`` layers with :func:`iter_align` and :func:`iter_mean` (or
:func:`align_lazy` for stacks that do not fit in memory), the ``maskalign``
command writes files with :func:`write_aligned`, which can accumulate the
mean in the same pass. The shifting itself is
:func:`napari_maskalign.engine.apply_shifts`, or
:func:`napari_maskalign.engine.apply_transforms` where frames also rotate or
scale: every function here takes, where it says ``shifts``, either shifts
``(n, ndim)`` or transforms ``(n, ndim + 1, ndim + 1)`` (a rigid or
similarity result's ``transforms``).

Pixels that are not data after alignment -- shifted in from outside the
field of view, or ignored by the mask (the beam block, hot pixels), which
lands elsewhere in every frame once the frame is moved -- are NaN in float
output. Integer output (``AlignSettings(integer=True)``: rounded and clipped to the input's
type) cannot hold NaN; the valid area is then returned beside the frames.
The mean averages each pixel over the frames that saw it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np

from ..engine import aligned_dtype, apply_shifts, apply_transforms
from ..engine.backends._device import namespace_for, namespace_of, native, to_host, to_namespace
from ..io import StackWriter, as_dask, iter_blocks

__all__ = [
    "AlignProgress",
    "AlignSettings",
    "MaskedMean",
    "MeanAccumulator",
    "align_frame",
    "align_lazy",
    "iter_align",
    "iter_mean",
    "to_apply",
    "write_aligned",
]


@dataclass(frozen=True)
class AlignSettings:
    """How aligned frames are made from a stack and its shifts (or transforms).

    The same for both faces: the Register dock's "aligned output" settings
    and the ``maskalign`` options ``--method``, ``--order``, ``--fill``,
    ``--dtype``, ``--device``, ``--threads``.

    Attributes
    ----------
    method : {"spline", "fourier"}
        Spline interpolation of ``order``, or a Fourier shift (see
        :func:`~napari_maskalign.engine.apply_shifts`).
    order : int
        The spline's order (0-5).
    fill_value : float or None
        What pixels shifted in from outside the field get (NaN by default;
        None extends the edge).
    integer : bool
        Keep an integer input's type (rounded, clipped, 0 where there is no
        data, the data area beside it); float output otherwise.
    device : str or None
        Where frames are shifted: "cpu", "gpu" (CuPy) or None (where the
        stack is).
    workers : int or None
        Frames shifted at once (threads); None: one.
    """

    method: str = "spline"
    order: int = 3
    fill_value: float | None = np.nan
    integer: bool = False
    device: str | None = None
    workers: int | None = None

    def engine_keywords(self) -> dict:
        """The keywords of :func:`~napari_maskalign.engine.apply_shifts` and
        :func:`~napari_maskalign.engine.apply_transforms` these settings give."""
        return {"method": self.method, "order": self.order, "fill_value": self.fill_value,
                "device": self.device, "workers": self.workers}

    def to_dict(self) -> dict:
        """Plain values (layer metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> AlignSettings:
        """From :meth:`to_dict`'s values; unknown keys are ignored, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})


DEFAULT_ALIGN = AlignSettings()


@dataclass(frozen=True)
class AlignProgress:
    """Yielded after each block of frames is aligned (the stage after registration)."""

    done: int
    total: int
    stage: str = "applying shifts"


@dataclass(frozen=True)
class MaskedMean:
    """The mean of aligned frames over the frames that saw each pixel.

    Attributes
    ----------
    mean : ndarray, float32 or float64 (the aligned frames' type)
        Each pixel averaged over the frames in which it was valid data; NaN
        where no frame was.
    count : ndarray of int32
        How many frames saw each pixel.
    frames : int
        How many frames were averaged (excluded ones not counted).
    """

    mean: np.ndarray
    count: np.ndarray
    frames: int


class MeanAccumulator:
    """Sums aligned frames and their valid pixels one block at a time (float64)."""

    def __init__(self, frame_shape, dtype=np.float32):
        self.total = np.zeros(tuple(frame_shape), np.float64)
        self.count = np.zeros(tuple(frame_shape), np.int32)
        self.frames = 0
        self.dtype = np.dtype(dtype)

    def add(self, aligned, valid) -> None:
        """Add frames (a block along the first axis) and where each holds data; CuPy
        blocks are summed on their GPU (the sums move there with the first one)."""
        xp = namespace_of(aligned)
        # the sums move where the blocks are (a GPU) with the first one
        self.total, self.count = xp.asarray(self.total), xp.asarray(self.count)
        for i in range(int(aligned.shape[0])):
            ok = valid[i]
            self.total += xp.where(ok, aligned[i], 0.0)
            self.count += ok
            self.frames += 1

    def result(self) -> MaskedMean:
        total, count = to_host(self.total), to_host(self.count)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return MaskedMean(mean.astype(self.dtype), count.copy(), self.frames)


def _as_input_type(frames: np.ndarray, valid: np.ndarray, dtype) -> np.ndarray:
    """Aligned float frames as the input's integer (or bool) type: rounded, clipped,
    0 where there is no data."""
    dtype = np.dtype(dtype)
    out = np.where(valid, frames, 0)
    if dtype.kind == "b":
        return out > 0.5
    info = np.iinfo(dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(dtype)


def output_dtype(stack_dtype, integer: bool) -> np.dtype:
    """The aligned frames' type: the input's with ``integer`` (for integer input), else
    :func:`~napari_maskalign.engine.aligned_dtype` (float)."""
    dt = np.dtype(stack_dtype)
    return dt if integer and dt.kind in "biu" else aligned_dtype(dt)


def to_apply(result):
    """What aligns the frames of a registration result: its shifts for translation,
    its transforms (rotation and scale too) for rigid and similarity models."""
    return result.shifts if result.transform_model.shift_only else result.transforms


def _apply(stack, moves, settings: AlignSettings, *, valid, return_valid: bool):
    """:func:`apply_shifts` for shifts ``(n, ndim)``, :func:`apply_transforms` for
    transforms ``(n, ndim + 1, ndim + 1)``."""
    moves = np.asarray(moves, dtype=float)
    apply = apply_transforms if moves.ndim == 3 else apply_shifts
    return apply(stack, moves, valid_mask=valid, return_valid=return_valid,
                 **settings.engine_keywords())


def _checked(stack, moves) -> np.ndarray:
    """``moves`` as an array: one shift ``(n, ndim)`` or one transform
    ``(n, ndim + 1, ndim + 1)`` per frame of ``stack``, checked before any frame is moved."""
    n, ndim = int(stack.shape[0]), len(stack.shape) - 1
    moves = np.asarray(moves, dtype=float)
    if moves.shape not in ((n, ndim), (n, ndim + 1, ndim + 1)):
        raise ValueError(
            f"the stack has {n} frames of {ndim}D, so it needs shifts of shape ({n}, {ndim}) or "
            f"transforms of shape ({n}, {ndim + 1}, {ndim + 1}); got shape {moves.shape}"
        )
    return moves


def _float_blocks(stack, shifts, settings: AlignSettings, *, valid=None, need_data: bool = False,
                  block: int = 1, lazy=None):
    """``(lo, hi, aligned, data)`` for frames ``lo..hi-1``, in order.

    ``aligned``: float frames (:func:`~napari_maskalign.engine.aligned_dtype`),
    NaN where ``valid`` (the engine mask of one frame: True = valid) ignores a
    pixel once the frame is moved, and, with the default fill value, outside
    the field. ``data``: where they hold real data (inside the field and
    valid), when ``need_data`` or a mask asks for it; else None. ``lazy``: the
    same frames as a dask array, aligned by dask (e.g. on a cluster)."""
    n = int(stack.shape[0])
    shifts = _checked(stack, shifts)
    want = need_data or valid is not None
    if lazy is not None:
        graph = _apply(lazy, shifts, settings, valid=valid, return_valid=want)
        aligned_all, data_all = graph if want else (graph, None)
    for lo, hi in iter_blocks(n, block):
        if lazy is not None:
            aligned = aligned_all[lo:hi].compute()
            data = None if data_all is None else data_all[lo:hi].compute()
        else:
            frames = native(stack[lo:hi])
            out = _apply(frames, shifts[lo:hi], settings, valid=valid, return_valid=want)
            aligned, data = out if want else (out, None)
        if valid is not None:
            aligned[~data] = np.nan  # the block (and hot pixels) where they land
        yield lo, hi, aligned, data


def _converted(aligned, data, dtype):
    return aligned if np.dtype(dtype).kind == "f" else _as_input_type(aligned, data, dtype)


def align_frame(stack, shifts, i: int, *, settings: AlignSettings = DEFAULT_ALIGN, valid=None,
                return_data: bool = False):
    """Frame ``i`` of the aligned stack, computed now (also for one edited frame); with
    ``return_data`` also where it holds data (as :func:`iter_align`)."""
    n = int(stack.shape[0])
    if not (isinstance(i, (int, np.integer)) and -n <= i < n):
        raise ValueError(f"frame {i} does not exist: the stack has {n} frames")
    i, shifts = int(i) % n, _checked(stack, shifts)
    dtype = output_dtype(stack.dtype, settings.integer)
    _, _, aligned, data = next(_float_blocks(stack[i : i + 1], shifts[i : i + 1], settings,
                                             valid=valid,
                                             need_data=return_data or dtype.kind != "f"))
    frame = _converted(aligned, data, dtype)[0]
    return (frame, data[0]) if return_data else frame


def align_lazy(stack, shifts, *, settings: AlignSettings = DEFAULT_ALIGN, valid=None,
               return_data: bool = False):
    """The whole aligned stack as a lazy dask array (nothing is computed yet); with
    ``return_data`` also where it holds data, lazily."""
    import dask.array as da

    aligned, data = _apply(as_dask(stack), _checked(stack, shifts), settings, valid=valid,
                           return_valid=True)
    out_dtype = output_dtype(stack.dtype, settings.integer)
    if out_dtype.kind != "f":
        aligned = da.map_blocks(_as_input_type, aligned, data, out_dtype, dtype=out_dtype)
    elif valid is not None:
        aligned = da.where(data, aligned, np.nan)
    return (aligned, data) if return_data else aligned


def iter_align(stack, shifts, *, settings: AlignSettings = DEFAULT_ALIGN, lazy: bool = False,
               valid=None, return_data: bool = False, mean: MeanAccumulator | None = None,
               exclude=None):
    """Apply ``shifts``, yielding :class:`AlignProgress` per frame.

    Returns the aligned stack (the value of ``yield from``): a numpy array,
    or at once a lazy dask array when ``lazy`` (nothing is computed then);
    with ``return_data``, ``(aligned, data)`` where ``data`` says which
    pixels of each aligned frame are real data (what integer output needs
    beside it). ``valid`` is the engine mask (NaN where it lands); ``settings``
    say how frames are moved and whether an integer input keeps its type
    (rounded, clipped, 0 where there is no data).

    With ``mean`` (not lazy), every frame not flagged in ``exclude`` is also
    added to that accumulator in the same pass, as :func:`write_aligned`
    does: the mean of :func:`iter_mean` without shifting every frame twice.
    """
    if lazy:
        if mean is not None:
            raise ValueError("a lazy aligned stack is not computed here: average it with iter_mean")
        return align_lazy(stack, shifts, settings=settings, valid=valid, return_data=return_data)
    n = int(stack.shape[0])
    skip = _exclusion(exclude, n)
    out = np.empty(tuple(stack.shape), output_dtype(stack.dtype, settings.integer))
    data_out = np.empty(tuple(stack.shape), bool) if return_data else None
    need = return_data or out.dtype.kind != "f" or mean is not None
    for lo, hi, aligned, data in _float_blocks(stack, shifts, settings, valid=valid, need_data=need):
        if mean is not None:
            keep = ~skip[lo:hi]
            mean.add(aligned[keep], data[keep])
        out[lo:hi] = _converted(aligned, data, out.dtype)
        if data_out is not None:
            data_out[lo:hi] = data
        yield AlignProgress(hi, n)
    return (out, data_out) if return_data else out


def _exclusion(exclude, n: int) -> np.ndarray:
    """``exclude`` as one flag per frame (none flagged when None)."""
    skip = np.zeros(n, bool) if exclude is None else np.asarray(exclude, bool)
    if skip.shape != (n,):
        raise ValueError(f"exclude must have one flag per frame ({n}), got shape {skip.shape}")
    return skip


def _read_frames(stack, idx) -> np.ndarray:
    """Frames ``idx`` (increasing) as one array: a contiguous run in one read (one
    dask compute), others frame by frame."""
    if len(idx) and int(idx[-1]) - int(idx[0]) == len(idx) - 1:
        return to_host(stack[int(idx[0]) : int(idx[-1]) + 1])
    return np.stack([to_host(stack[int(i)]) for i in idx])


def iter_mean(stack, shifts, *, settings: AlignSettings = DEFAULT_ALIGN, valid=None, exclude=None,
              block: int = 1):
    """The masked mean of the aligned frames, yielding :class:`AlignProgress` per block.

    Each pixel is averaged over the frames in which it is data after
    alignment (see :func:`_float_blocks`); frames where ``exclude`` is
    True (e.g. the flagged outliers) are skipped. Memory holds a block of
    frames and two frame-sized sums, whatever the stack's length, so a lazy
    stack is averaged without loading it. With ``device="gpu"`` (or a CuPy
    stack) the frames are shifted and summed on the GPU (CuPy, the ``gpu``
    extra). Returns a :class:`MaskedMean` (numpy arrays). ``settings.integer``
    does not matter here: the mean is float.
    """
    xp = namespace_for(settings.device, stack)
    shifts = _checked(stack, shifts)
    keep = np.flatnonzero(~_exclusion(exclude, int(stack.shape[0])))
    acc = MeanAccumulator(stack.shape[1:], aligned_dtype(stack.dtype))
    done = 0
    for lo, hi in iter_blocks(len(keep), block):
        idx = keep[lo:hi]
        frames = _read_frames(stack, idx)
        frames = to_namespace(xp, frames)
        for _, _, aligned, data in _float_blocks(frames, shifts[idx], settings, valid=valid,
                                                 need_data=True, block=len(idx)):
            acc.add(aligned, data)
        done = hi
        yield AlignProgress(done, len(keep), "averaging")
    return acc.result()


def write_aligned(path, stack, shifts, *, settings: AlignSettings = DEFAULT_ALIGN,
                  overwrite: bool = False, attrs: dict | None = None, dask_stack=None,
                  chunk_frames: int = 16, valid=None, mean: MeanAccumulator | None = None,
                  exclude=None, mask_path=None):
    """Write the aligned stack to ``path`` (.zarr or .tif); a generator of progress.

    The file is written under a temporary name and renamed when complete; on
    any error it is removed. With ``dask_stack`` (the same frames as a dask
    array, e.g. on a cluster) the frames are aligned by dask in blocks of
    ``chunk_frames``; otherwise here, one frame at a time (memory stays
    flat). With ``mean``, every frame not flagged in ``exclude`` is also
    added to that accumulator in the same pass. With ``mask_path``, where
    each aligned frame holds no data (shifted in from outside the field, or
    behind the mask) is written there as a stack of the same shape, uint8,
    **nonzero = no data** (the mask-file convention: nonzero = ignore) --
    what integer output (``settings.integer``) needs, since it cannot hold
    NaN. ``settings.workers`` frames are shifted at once. Returns the path
    written.
    """
    n = int(stack.shape[0])
    shifts = _checked(stack, shifts)
    skip = _exclusion(exclude, n)
    # frames shifted at once here: as many as apply_shifts has threads for
    block = chunk_frames if dask_stack is not None else max(1, int(settings.workers or 1))
    dtype = output_dtype(stack.dtype, settings.integer)
    need = mean is not None or dtype.kind != "f" or mask_path is not None
    with contextlib.ExitStack() as files:
        writer = files.enter_context(StackWriter(path, stack.shape, dtype, overwrite=overwrite,
                                                 attrs=attrs))
        masks = None if mask_path is None else files.enter_context(
            StackWriter(mask_path, stack.shape, np.uint8, overwrite=overwrite, attrs=attrs))
        for lo, hi, aligned, data in _float_blocks(
            stack, shifts, settings, valid=valid, need_data=need, block=block, lazy=dask_stack
        ):
            if mean is not None:
                keep = ~skip[lo:hi]
                mean.add(aligned[keep], data[keep])
            writer.write(_converted(aligned, data, dtype))
            if masks is not None:
                masks.write(~data)
            yield AlignProgress(hi, n, "writing")
    return writer.path
