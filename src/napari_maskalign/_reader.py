"""napari reader: every stack the command line reads, opened lazily through ``io.open_stack``.

* a folder (or glob, or list) of single-frame TIFFs -- UED runs write one TIFF
  per frame, hundreds of gigabytes of them: files in natural order
  (``frame_2`` before ``frame_10``), every header read once (about 0.1 ms per
  file) so that frames of mixed shapes are reported when opening, not while
  browsing;
* HDF5 (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``, ``.he5``): the dataset named as
  ``run.h5:/entry/data``, else one layer per dataset of 3 or more dimensions
  (``viewer.open("run.h5")`` offers every stack in the file: keep the layer you
  want; each layer's metadata lists them all);
* MRC/MRCS, Gatan DM3/DM4, Merlin MIB (through their libraries, extras);
* zarr arrays (a ``.zarr`` folder or a group holding one array).

Each opens as a single dask array with one chunk per frame: napari reads a
frame only when it is shown, so a run far larger than memory can be browsed,
masked and registered. The layer's contrast comes from the pattern (the
percentiles of :func:`~napari_maskalign._display.pattern_limits`), not from a
hot pixel, and its frame slider is labelled "frame".
"""

from __future__ import annotations

import os
from pathlib import Path

from ._display import pattern_limits, stack_axis_labels
from .io import (
    DETECTOR_SUFFIXES,
    FrameSequence,
    as_dask,
    is_glob,
    is_tiff_name,
    is_zarr_dir,
    list_frame_files,
    open_stack,
    source_file,
)
from .io.detectors import H5_SUFFIXES, h5_stacks

__all__ = ["get_reader", "read_frames", "read_stack"]


def _frame_source(path):
    """The list of TIFF frame files ``path`` stands for, or None if it is not ours."""
    if isinstance(path, (list, tuple)):
        paths = [os.fspath(p) for p in path]
        if len(paths) == 1:
            return _frame_source(paths[0])
        if all(is_tiff_name(p) and os.path.isfile(p) for p in paths):
            return list_frame_files(paths)  # natural order, whatever order they came in
        return None
    text = os.fspath(path)
    if is_glob(text):
        try:
            return list_frame_files(text)
        except (OSError, ValueError):
            return None
    p = Path(text)
    if not p.is_dir() or is_zarr_dir(p):
        return None
    with os.scandir(p) as entries:
        if not any(e.is_file() and is_tiff_name(e.name) for e in entries):
            return None
    return p


def _single(path) -> str | None:
    """The file or folder ``path`` names when it is one (a list of one stands for it)."""
    if isinstance(path, (list, tuple)):
        return os.fspath(path[0]) if len(path) == 1 else None
    return os.fspath(path)


def _stack_file(path) -> str | None:
    """``path`` when it is a detector file (``run.h5:/entry/data`` too) or a zarr store."""
    text = _single(path)
    if text is None or is_glob(text):
        return None
    file = source_file(text)
    if Path(file).suffix.lower() in DETECTOR_SUFFIXES and os.path.isfile(file):
        return text
    return text if is_zarr_dir(Path(text)) else None


def get_reader(path):
    """Return :func:`read_frames` for a folder, glob or list of TIFF frames, :func:`read_stack`
    for a detector file or zarr store, else None.

    A single TIFF (or any other file) is left to other readers.
    """
    if _frame_source(path) is not None:
        return read_frames
    return read_stack if _stack_file(path) is not None else None


def _look(stack, ndim: int) -> dict:
    """The contrast from the pattern, the frame slider labelled."""
    out = {"axis_labels": stack_axis_labels(ndim)}
    limits = pattern_limits(stack, find_outliers=True)
    if limits is not None:
        out["contrast_limits"] = list(limits)
    return out


#: a bare HDF5 file opens one layer per stack, at most this many (in the file's order)
MAX_H5_LAYERS = 8


def _h5_choices(file: str) -> list[str]:
    """The stacks (datasets of 3 or more dimensions) of an HDF5 file to open as layers;
    a plain error when there is none."""
    stacks = h5_stacks(file)
    if not stacks:
        raise ValueError(f"{file} holds no dataset of 3 or more dimensions (a stack of frames)")
    if len(stacks) > MAX_H5_LAYERS:
        from napari.utils.notifications import show_info

        show_info(f"{Path(file).name} holds {len(stacks)} stacks; opened the first "
                  f"{MAX_H5_LAYERS} as layers (every one is listed in each layer's metadata "
                  "under 'datasets'; open another as FILE:/path with read_stack)")
    return stacks


def _stack_layer(text: str, meta: dict) -> tuple:
    """One lazy image layer (a dask array, one chunk per frame) of the source ``text``."""
    file = source_file(text)
    stack = open_stack(text)
    data = as_dask(stack, frames_per_chunk=1)
    name = Path(file).name + (text[len(file):] if text != file else "")
    kwargs = {"name": name, "metadata": {"maskalign_source": text, **meta},
              **_look(stack, len(stack.shape))}
    return (data, kwargs, "image")


def read_stack(path):
    """Open a detector file (HDF5, MRC, DM3/DM4, MIB) or a zarr store as lazy image
    layers (dask arrays, one chunk per frame), through ``io.open_stack``.

    An HDF5 file named without a dataset opens one layer per stack it holds (every
    dataset of 3 or more dimensions, named ``run.h5:/entry/data``; at most
    ``MAX_H5_LAYERS``): the choice of dataset is the choice of layer, and each layer's
    metadata lists them all under ``datasets``. ``run.h5:/entry/data`` opens that one.
    """
    text = _stack_file(path)
    if text is None:
        raise ValueError(f"{path} is not an HDF5, MRC, DM3/DM4, MIB file or a zarr store")
    file = source_file(text)
    if Path(file).suffix.lower() in H5_SUFFIXES and file == text:
        found = _h5_choices(file)
        return [_stack_layer(f"{file}:{name}", {"datasets": found})
                for name in found[:MAX_H5_LAYERS]]
    return [_stack_layer(text, {})]


def _layer_name(path) -> str:
    if isinstance(path, (list, tuple)):
        first = Path(os.fspath(path[0]))
        return f"{first.parent.name or first.stem} ({len(path)} frames)"
    p = Path(os.fspath(path))
    return p.name if not is_glob(os.fspath(path)) else f"{p.parent.name}/{p.name}"


def read_frames(path):
    """Open the frames as one lazy image layer (a dask array, one chunk per file)."""
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]  # a folder or glob in a list stands for itself, as in _frame_source
    source = _frame_source(path)
    if source is None:
        raise ValueError(f"{path} is not a folder, glob or list of TIFF frames")
    files = source if isinstance(source, list) else list_frame_files(source)
    seq = FrameSequence(files)
    data = as_dask(seq, frames_per_chunk=1)
    kwargs = {
        "name": _layer_name(path),
        "metadata": {
            "maskalign_source": os.fspath(path) if not isinstance(path, (list, tuple)) else None,
            "n_files": len(files),
            "first_file": files[0],
            "last_file": files[-1],
        },
        **_look(seq, len(seq.shape)),
    }
    return [(data, kwargs, "image")]
