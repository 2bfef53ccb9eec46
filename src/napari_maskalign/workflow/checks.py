"""A look at the mask before a run: plain words when it is probably wrong (no Qt).

Shared by both faces: the Register dock asks the person, ``maskalign register``
and ``apply`` stop with the fix (``--invert-mask``) or warn.

A beam-block mask ignores a small, dark part of the frame. Two signs that
the mask was painted the other way round (the pattern painted, the block
left out) or is otherwise off:

* it ignores most of the frame: registration then sees only what is left;
* the ignored pixels are brighter than the used ones: a beam block's shadow
  is dark. Small masks (hot pixels, a saturated direct beam painted out on
  purpose) are bright by nature, so this is only asked of masks that cover
  at least :data:`BRIGHT_MIN_AREA` of the frame.

:func:`mask_problems` finds the signs; :func:`mask_warning` words them for
the Register dock, which asks the person (Invert / Run anyway / Cancel) only
when it returns text; :func:`looks_inverted` is the command line's test for
an error (both signs at once: a mask that is almost surely the wrong way
round).

:func:`saturation_warning` says when a large share of a frame's pixels sit at
its largest value: saturated detector pixels are static, like the beam block,
and pull every shift to zero with a high quality unless they are masked.
"""

from __future__ import annotations

import numpy as np

#: a mask that ignores more than this fraction of the frame gets a warning
MOST = 0.5
#: the brightness test applies to masks that ignore at least this fraction
BRIGHT_MIN_AREA = 0.02


def mask_problems(valid, frame, mask: str = "the mask") -> list[str]:
    """The signs that the mask is probably wrong, one sentence each (empty: it looks
    fine).

    Parameters
    ----------
    valid : ndarray of bool
        The engine mask (True = used), one frame's shape.
    frame : array
        One frame of the stack (the reference frame, say).
    mask : str
        The mask's name, for the message.
    """
    valid = np.asarray(valid, bool)
    ignored = ~valid
    share = float(ignored.mean())
    problems = []
    if share > MOST:
        problems.append(
            f"The mask '{mask}' ignores {share:.0%} of the frame, so only {1 - share:.0%} of "
            "it is used to find the shifts; a beam block usually covers a small part."
        )
    frame = np.asarray(frame, dtype=np.float64)
    if share >= BRIGHT_MIN_AREA and valid.any():
        inside = frame[ignored & np.isfinite(frame)]
        outside = frame[valid & np.isfinite(frame)]
        if inside.size and outside.size:
            dark_in, dark_out = float(np.median(inside)), float(np.median(outside))
            if dark_in > dark_out:
                problems.append(
                    f"The pixels it ignores are brighter than the ones it uses (median "
                    f"{dark_in:.4g} against {dark_out:.4g}), while a beam block's shadow is dark."
                )
    return problems


def looks_inverted(problems) -> bool:
    """Both signs at once: most of the frame ignored, and the ignored part brighter."""
    return len(problems) >= 2


def mask_warning(valid, frame, mask: str = "the mask") -> str | None:
    """Why the mask is probably wrong, in plain words for the Register dock; None when
    it looks fine (see :func:`mask_problems`)."""
    problems = mask_problems(valid, frame, mask)
    if not problems:
        return None
    return " ".join(problems) + (
        " The mask is probably inverted (the pattern painted instead of the block). "
        "Invert it (painted pixels become used and the rest is ignored), run anyway, or cancel."
    )


def inverted(ignore) -> np.ndarray:
    """A painted mask with painted and unpainted pixels swapped (same type)."""
    arr = np.asarray(ignore)
    return (arr == 0).astype(arr.dtype)


#: a frame with at least this share of its valid pixels at its largest value is
#: saturated (a diffraction pattern's brightest value is a few pixels)
SATURATED_SHARE = 0.05


def saturation_warning(frame, valid=None, *, which: str = "frame 0") -> str | None:
    """A warning in plain words when ``frame`` looks saturated, else None.

    ``valid`` is the engine mask (True = valid); masked pixels are not counted.
    """
    frame = np.asarray(frame)
    if frame.dtype.kind == "b":
        return None  # two values only: nothing saturates
    use = np.isfinite(frame) if frame.dtype.kind == "f" else np.ones(frame.shape, bool)
    if valid is not None:
        use &= np.asarray(valid, bool)
    values = frame[use]
    if values.size == 0:
        return None
    top = values.max()
    if top == values.min():
        return None  # a flat frame: the engine says so itself
    share = float(np.count_nonzero(values == top)) / values.size
    if share < SATURATED_SHARE:
        return None
    top_text = f"{top:g}" if frame.dtype.kind == "f" else str(int(top))
    return (f"{share:.0%} of the pixels of {which} that are used sit at its largest value, "
            f"{top_text} (saturated?): static pixels pull the shifts towards 0 with a high "
            "quality; mask them (nonzero in the mask file) or check the exposure")
