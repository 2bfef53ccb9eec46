"""Result and progress types of the stack engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Progress", "RegistrationResult"]


@dataclass(frozen=True)
class Progress:
    """Yielded by :func:`iter_register_stack` after every frame.

    ``done`` counts frame registrations finished out of ``total`` (template
    refinement registers every frame more than once, so ``total`` may exceed
    the number of frames). ``frame`` is the index just registered, ``shift``
    and ``quality`` its result in the pass under way, ``stage`` a short text
    for a progress bar ("registering", "refining template 1/2", ...).
    """

    done: int
    total: int
    frame: int
    shift: np.ndarray
    quality: float
    stage: str = "registering"


@dataclass
class RegistrationResult:
    """Per-frame registration of a stack.

    Attributes
    ----------
    shifts : ndarray, shape (n_frames, ndim)
        Shift that registers each frame onto the reference (scikit-image's
        sign convention: apply it to the frame, e.g. with
        :func:`apply_shifts`, to align it). After outlier interpolation when
        that was asked for.
    quality : ndarray, shape (n_frames,)
        Match quality in [0, 1]: the normalized correlation at the peak
        (masked normalized cross-correlation with a mask; zero-mean
        normalized correlation without). 0 for frames that cannot be
        registered (constant frames).
    outliers : ndarray of bool, shape (n_frames,)
        Frames whose quality or shift jump is implausible.
    raw_shifts : ndarray, shape (n_frames, ndim)
        Shifts as measured, before any outlier interpolation.
    xcorr : ndarray, shape (n_frames, *window), or None
        The correlation surface around each frame's peak, zero shift at the
        window's centre (only when requested).
    params : dict
        The parameters the registration ran with.
    model : str
        The transform model. Only ``"translation"`` exists today; the field is
        here so that rotation/scale (log-polar) can be added later without
        changing the result's shape for translation users.
    """

    shifts: np.ndarray
    quality: np.ndarray
    outliers: np.ndarray
    raw_shifts: np.ndarray
    xcorr: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model: str = "translation"

    @property
    def n_frames(self) -> int:
        return int(self.shifts.shape[0])

    @property
    def ndim(self) -> int:
        return int(self.shifts.shape[1])

    def __repr__(self) -> str:  # keep it short: arrays can be long
        mag = np.linalg.norm(self.shifts, axis=1) if self.n_frames else np.zeros(0)
        return (
            f"RegistrationResult(n_frames={self.n_frames}, ndim={self.ndim}, "
            f"median |shift|={np.median(mag) if mag.size else 0:.3f} px, "
            f"max |shift|={mag.max() if mag.size else 0:.3f} px, "
            f"outliers={int(self.outliers.sum())}, model={self.model!r})"
        )
