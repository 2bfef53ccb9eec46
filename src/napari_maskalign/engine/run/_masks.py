"""Mask conventions and mask helpers.

Two conventions meet here, and they are converted in exactly one place:

* **ignore masks** (what a person paints, napari Labels layers, mask files):
  nonzero marks pixels to *ignore* (the beam block);
* **valid masks** (the engine, like scikit-image): ``True`` marks pixels
  registration may *use*.

:func:`valid_from_ignore` is that one place.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..backends._frames import spread_indices

__all__ = [
    "check_mask",
    "check_valid_mask",
    "finite_where_valid",
    "grow_ignore",
    "shrink_ignore",
    "suggest_beam_block",
    "valid_from_ignore",
]


def valid_from_ignore(ignore, *, invert: bool = False) -> np.ndarray:
    """Convert a painted/loaded mask to the engine's valid-pixel mask.

    Parameters
    ----------
    ignore : array_like
        A mask as a person paints it: nonzero marks pixels to ignore (the beam
        block); zero marks pixels to use.
    invert : bool
        If True, the input already marks *valid* pixels with nonzero (for mask
        files written that way).

    Returns
    -------
    valid : ndarray of bool
        True on pixels registration may use.
    """
    if ignore is None:
        raise ValueError("a mask is needed here, got None (pass no mask instead of a None mask)")
    arr = np.asarray(ignore)
    if arr.dtype.kind == "c":
        raise ValueError("a mask must be real-valued, got a complex array")
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"a mask must hold numbers or booleans (nonzero = ignore), got {arr.dtype} values"
        )
    if arr.ndim == 0:
        raise ValueError("a mask must be an image (one frame's shape), got a single value")
    nonzero = arr != 0
    return nonzero if invert else ~nonzero


def check_valid_mask(valid: np.ndarray, frame_shape: tuple[int, ...], what: str = "mask"):
    """Raise a plain-words ``ValueError`` if a valid mask cannot be used."""
    if valid.shape != tuple(frame_shape):
        raise ValueError(
            f"the {what} has shape {valid.shape} but one frame has shape {tuple(frame_shape)}; "
            "a mask covers one frame"
        )
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        raise ValueError(f"the {what} masks every pixel: nothing is left to register")
    if n_valid < 4:
        raise ValueError(f"the {what} leaves only {n_valid} valid pixels: too few to register")


def check_mask(mask, frame_shape: tuple[int, ...], what: str = "mask") -> np.ndarray | None:
    """An engine mask argument checked: None, or a boolean valid mask of one frame;
    ``what`` names it in the messages (a file, a layer)."""
    if mask is None:
        return None
    valid = np.asarray(mask)
    if valid.dtype != bool:
        raise ValueError(
            "mask must be a boolean array with True on valid pixels (engine convention); "
            "convert a painted mask (nonzero = ignore) with valid_from_ignore()"
        )
    check_valid_mask(valid, frame_shape, what)
    return valid


def finite_where_valid(image: np.ndarray, valid: np.ndarray, message: str) -> np.ndarray:
    """``image`` with NaN or inf under the mask (``valid`` False) set to 0.

    Raises ``ValueError(message)`` when a valid pixel is NaN or inf. Returns
    ``image`` itself (no copy) when every pixel is finite.
    """
    if np.isfinite(image).all():
        return image
    if not np.isfinite(image[valid]).all():
        raise ValueError(message)
    return np.where(valid, image, 0)


def _ball(radius: int, ndim: int) -> np.ndarray:
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    return sum(g * g for g in grid) <= radius * radius


def grow_ignore(ignore: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the ignored region (nonzero) by ``pixels`` (a safety margin); returns uint8."""
    ignore = np.asarray(ignore) != 0
    if pixels <= 0:
        return ignore.astype(np.uint8)
    return ndi.binary_dilation(ignore, structure=_ball(int(pixels), ignore.ndim)).astype(np.uint8)


def shrink_ignore(ignore: np.ndarray, pixels: int) -> np.ndarray:
    """Shrink the ignored region (nonzero) by ``pixels``; returns uint8."""
    ignore = np.asarray(ignore) != 0
    if pixels <= 0:
        return ignore.astype(np.uint8)
    return ndi.binary_erosion(
        ignore, structure=_ball(int(pixels), ignore.ndim), border_value=1
    ).astype(np.uint8)


def suggest_beam_block(
    stack,
    *,
    n_frames: int = 16,
    darkness: float = 0.3,
    margin: int = 2,
    min_size: int = 20,
) -> np.ndarray:
    """Guess the static beam block from the stack itself.

    A beam block is dark in *every* frame and does not move, while the
    pattern behind it drifts. For a sample of frames we take each pixel's
    brightest value; pixels whose brightest value stays below ``darkness``
    times the median of the mean frame are candidates. They are cleaned up
    morphologically (opening, hole filling, pieces smaller than ``min_size``
    pixels removed) and grown by ``margin`` pixels.

    Returns an ignore mask (uint8, 1 = beam block) for one frame: a starting
    point for the user to correct by hand.
    """
    n = stack.shape[0]
    if n == 0:
        raise ValueError("the stack has no frames")
    idx = spread_indices(n, n_frames)
    frames = np.stack([np.asarray(stack[int(i)], dtype=np.float32) for i in idx])
    frames = np.where(np.isfinite(frames), frames, 0.0)
    brightest = frames.max(axis=0)
    mean = frames.mean(axis=0)
    ndim = mean.ndim
    dark = brightest <= darkness * float(np.median(mean))
    # fill first: light leaking through the block's centre (the direct beam)
    # leaves a bright hole whose thin rim the opening would otherwise cut open
    dark = ndi.binary_fill_holes(dark)
    dark = ndi.binary_opening(dark, structure=_ball(1, ndim))
    dark = ndi.binary_fill_holes(dark)
    labels, n_lab = ndi.label(dark)
    if n_lab:
        sizes = ndi.sum(dark, labels, index=np.arange(1, n_lab + 1))
        keep = np.zeros(n_lab + 1, bool)
        keep[1:] = sizes >= min_size
        dark = keep[labels]
    return grow_ignore(dark, margin)
