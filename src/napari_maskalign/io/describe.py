"""What ``maskalign info`` says about a stack: kind, frames, shape, dtype, size, chunking."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..engine.backends._frames import is_dask
from .detectors import DetectorStack
from .stacks import TIFF_SUFFIXES, FrameSequence, TiffPages

__all__ = ["describe_stack"]


def describe_stack(stack, source=None) -> dict:
    """Shape, dtype, frame count, storage and chunking of an opened stack (for ``info``)."""
    shape = tuple(int(s) for s in stack.shape)
    dtype = np.dtype(stack.dtype)
    out = {
        "source": None if source is None else os.fspath(source),
        "frames": shape[0],
        "frame_shape": shape[1:],
        "dtype": str(dtype),
        "size_bytes": math.prod(shape) * dtype.itemsize,
    }
    if isinstance(stack, DetectorStack):
        out.update(stack.info())
    elif isinstance(stack, (FrameSequence, TiffPages)):
        out["kind"], out["chunking"] = stack.kind, stack.chunking
        if isinstance(stack, FrameSequence):
            out["first_file"], out["last_file"] = stack.files[0], stack.files[-1]
    elif isinstance(stack, np.memmap):
        suffix = "" if source is None else Path(os.fspath(source)).suffix.lower()
        out["kind"] = (
            "multi-page TIFF (memory-mapped)" if suffix in TIFF_SUFFIXES else ".npy (memory-mapped)"
        )
        out["chunking"] = "contiguous, memory-mapped"
    elif is_dask(stack):
        out["kind"] = "dask array"
        out["chunking"] = "chunks of " + " x ".join(str(max(c)) for c in stack.chunks)
    elif hasattr(stack, "chunks") and not isinstance(stack, np.ndarray):
        out["kind"] = "zarr array"
        out["chunking"] = "chunks of " + " x ".join(str(c) for c in stack.chunks)
        comp = getattr(stack, "compressors", None) or getattr(stack, "compressor", None)
        if comp:
            codecs = comp if isinstance(comp, (tuple, list)) else (comp,)
            out["compression"] = ", ".join(str(c) for c in codecs)
    else:
        out["kind"] = "in-memory array"
        out["chunking"] = "none (in memory)"
    return out
