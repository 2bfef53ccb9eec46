"""Registration engine: numpy and scipy only (no napari, no Qt).

* :func:`phase_cross_correlation` -- drop-in for scikit-image's, faster, with
  subpixel masked registration;
* :func:`register_stack` / :func:`iter_register_stack` -- a whole stack
  against a reference, in a bounded-memory stream;
* :func:`apply_shifts` -- aligned copies (numpy or lazy dask);
* mask helpers, with the one conversion between painted masks (nonzero =
  ignore) and engine masks (True = valid): :func:`valid_from_ignore`.
"""

from ._correlators import MaskedCorrelator, PhaseCorrelator
from ._masks import (
    check_valid_mask,
    grow_ignore,
    shrink_ignore,
    suggest_beam_block,
    valid_from_ignore,
)
from ._pcc import phase_cross_correlation
from ._result import Progress, RegistrationResult
from ._shift import apply_shifts
from ._stack import (
    FrameRegistrar,
    FrameResult,
    flag_outliers,
    interpolate_flagged,
    iter_register_stack,
    register_stack,
)

__all__ = [
    "FrameRegistrar",
    "FrameResult",
    "MaskedCorrelator",
    "PhaseCorrelator",
    "Progress",
    "RegistrationResult",
    "apply_shifts",
    "check_valid_mask",
    "flag_outliers",
    "grow_ignore",
    "interpolate_flagged",
    "iter_register_stack",
    "phase_cross_correlation",
    "register_stack",
    "shrink_ignore",
    "suggest_beam_block",
    "valid_from_ignore",
]
