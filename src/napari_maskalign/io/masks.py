"""Mask files: **nonzero marks pixels to ignore** (the beam block, as painted in napari).

:func:`read_mask` reads a mask file (``.npy``, ``.tif``/``.tiff``, ``.png``)
as it is stored; :func:`read_valid_mask` converts it to the engine's
convention (True = valid) through
:func:`napari_maskalign.engine.valid_from_ignore` -- the one place where the
two conventions meet -- and checks it against the frame shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..engine import check_valid_mask, valid_from_ignore
from .stacks import TIFF_SUFFIXES
from .writers import replacing

__all__ = ["MASK_SUFFIXES", "read_mask", "read_valid_mask", "write_mask"]

MASK_SUFFIXES = (".npy", ".tif", ".tiff", ".png")


def read_mask(path) -> np.ndarray:
    """Read a mask file as stored: **nonzero marks pixels to ignore** (the beam block).

    ``.npy`` (read with ``allow_pickle=False``), ``.tif``/``.tiff`` or
    ``.png``. Leading length-1 axes are dropped; the colour channels of an
    RGB(A) PNG are combined (a pixel is nonzero if any colour is; alpha is
    not used). Files that mark *valid* pixels with nonzero are read the same
    way and converted with ``invert=True`` (see :func:`read_valid_mask`).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such mask file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            mask = np.load(path, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            mask = tifffile.imread(str(path))
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as img:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mask = np.asarray(img)
                if img.mode in ("RGB", "RGBA", "LA"):
                    colours = mask[..., :3] if img.mode != "LA" else mask[..., :1]
                    mask = colours.max(axis=-1)
        else:
            raise ValueError(
                f"cannot read the mask {path.name}: expected a .npy, .tif/.tiff or .png file"
            )
    except ValueError as exc:
        if str(path) in str(exc) or path.name in str(exc):
            raise
        if "allow_pickle" in str(exc):  # np.load refuses object arrays, which need pickle
            raise ValueError(f"cannot read the mask {path}: it holds Python objects (a pickle), "
                             "not an array of numbers; save the mask with numpy as numbers, "
                             "e.g. np.save(path, mask.astype(np.uint8))") from None
        raise ValueError(f"cannot read the mask {path}: {exc}") from exc
    except Exception as exc:
        raise ValueError(f"cannot read the mask {path}: {exc}") from exc
    mask = np.asarray(mask)
    if mask.size == 0:
        raise ValueError(f"cannot read the mask {path}: no image found in it (a damaged or "
                         "truncated file?)")
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"the mask {path.name} holds {mask.dtype} values, expected numbers")
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    return mask


def write_mask(path, mask) -> Path:
    """Write a mask (nonzero = ignore, as painted) as .npy, .tif/.tiff (0/1) or .png (0/255).

    Written to a temporary file in the destination folder and renamed when
    complete, so a mask file is never half-written. PNG holds 2D masks only.
    """
    path = Path(os.fspath(path)).expanduser()
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise ValueError(f"cannot save masks as '{path.name}': use .npy, .tif/.tiff or .png")
    ignore = (~valid_from_ignore(mask)).astype(np.uint8)
    if suffix == ".png" and ignore.ndim != 2:
        raise ValueError("a PNG holds 2D images only: save a 3D mask as .npy or .tif")
    with replacing(path, suffix=f".tmp{suffix}") as tmp:
        if suffix == ".npy":
            with open(tmp, "xb") as f:
                np.save(f, ignore, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, ignore)
        else:
            from PIL import Image

            Image.fromarray(ignore * np.uint8(255)).save(tmp, format="PNG")
    return path


def read_valid_mask(path, frame_shape=None, *, invert: bool = False) -> np.ndarray:
    """Read a mask file and return the engine's valid mask (True = use the pixel).

    The file marks pixels to **ignore** with nonzero (the beam block, as
    painted in napari); with ``invert=True`` it marks **valid** pixels with
    nonzero instead. The conversion goes through
    :func:`~napari_maskalign.engine.valid_from_ignore`. With ``frame_shape``
    the mask is checked: right shape, not everything masked (``ValueError``
    in plain words otherwise).
    """
    valid = valid_from_ignore(read_mask(path), invert=invert)
    if frame_shape is not None:
        check_valid_mask(valid, tuple(frame_shape), f"mask {Path(os.fspath(path)).name}")
    return valid
