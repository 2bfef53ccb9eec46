"""napari reader: every stack the command line reads, opened lazily through ``io.open_stack``.

* a folder (or glob, or list) of single-frame TIFFs -- UED runs write one TIFF
  per frame, hundreds of gigabytes of them: files in natural order
  (``frame_2`` before ``frame_10``), every header read once (about 0.1 ms per
  file) so that frames of mixed shapes are reported when opening, not while
  browsing;
* HDF5 (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``, ``.he5``): the dataset named as
  ``run.h5:/entry/data``, else the file's first dataset of 3 or more
  dimensions (the others are listed in the layer's metadata);
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
from .io.detectors import H5_SUFFIXES

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


def _first_h5_stack(file: str) -> tuple[str, list[str]]:
    """The first dataset of 3 or more dimensions of an HDF5 file, and all of them."""
    import h5py

    stacks: list[str] = []
    with h5py.File(file, "r") as f:
        f.visititems(lambda name, obj: stacks.append("/" + name)
                     if isinstance(obj, h5py.Dataset) and obj.ndim >= 3 else None)
    if not stacks:
        raise ValueError(f"{file} holds no dataset of 3 or more dimensions (a stack of frames)")
    return stacks[0], stacks


def read_stack(path):
    """Open a detector file (HDF5, MRC, DM3/DM4, MIB) or a zarr store as one lazy image
    layer (a dask array, one chunk per frame), through ``io.open_stack``."""
    text = _stack_file(path)
    if text is None:
        raise ValueError(f"{path} is not an HDF5, MRC, DM3/DM4, MIB file or a zarr store")
    file = source_file(text)
    meta: dict = {"maskalign_source": text}
    if Path(file).suffix.lower() in H5_SUFFIXES and file == text:
        first, found = _first_h5_stack(file)  # the dataset choice: say it as file:/path
        text = f"{file}:{first}"
        meta.update(maskalign_source=text, datasets=found)
    stack = open_stack(text)
    data = as_dask(stack, frames_per_chunk=1)
    name = Path(file).name + (text[len(file):] if text != file else "")
    kwargs = {"name": name, "metadata": meta, **_look(stack, len(stack.shape))}
    return [(data, kwargs, "image")]


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
