"""napari reader: a folder (or glob, or list) of single-frame TIFFs as one lazy stack.

UED runs write one TIFF per frame, hundreds of gigabytes of them. This reader
opens them as a single dask array with one chunk per file: napari reads a file
only when its frame is shown, so a run far larger than memory can be browsed,
masked and registered. Files are ordered naturally (``frame_2`` before
``frame_10``); every file's header is read once (about 0.1 ms per file) so
that frames of mixed shapes are reported when opening, not while browsing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import FrameSequence, as_dask, is_glob, is_tiff_name, is_zarr_dir, list_frame_files

__all__ = ["get_reader", "read_frames"]


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


def get_reader(path):
    """Return :func:`read_frames` for a folder, glob or list of TIFF frames, else None.

    A single file is left to other readers.
    """
    return read_frames if _frame_source(path) is not None else None


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
    first = np.asarray(seq[0], dtype=np.float64)
    finite = first[np.isfinite(first)]
    kwargs = {
        "name": _layer_name(path),
        "metadata": {
            "maskalign_source": os.fspath(path) if not isinstance(path, (list, tuple)) else None,
            "n_files": len(files),
            "first_file": files[0],
            "last_file": files[-1],
        },
    }
    if finite.size and finite.max() > finite.min():
        kwargs["contrast_limits"] = [float(finite.min()), float(finite.max())]
    return [(data, kwargs, "image")]
