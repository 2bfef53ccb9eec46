"""Registration engine: numpy and scipy only (no napari, no Qt).

* :func:`phase_cross_correlation` -- drop-in for scikit-image's, faster, with
  subpixel masked registration;
* :func:`register_stack` / :func:`iter_register_stack` -- a whole stack
  against a reference, in a bounded-memory stream; the settings as one
  :class:`RegistrationOptions`;
* :func:`apply_shifts`, :func:`apply_transforms` -- aligned copies (numpy or
  lazy dask), by shifts or by whole transforms (rotation and scale too);
* :func:`shift_bound` -- the Cramer-Rao bound of a shift, the measuring
  stick of every accuracy claim;
* mask helpers, with the one conversion between painted masks (nonzero =
  ignore) and engine masks (True = valid): :func:`valid_from_ignore`.

The algorithms are Padfield's masked normalized cross-correlation (2012) and
the matrix-multiply DFT of Guizar-Sicairos et al. (2008); the References of
:func:`register_stack` give their DOIs.
"""

from .kernels._correlators import PhaseCorrelator
from .kernels._masked import MaskedCorrelator
from .models._bound import fisher_information, gradient_of, shift_bound
from .models._shift import aligned_dtype, apply_shifts
from .models._transforms import (
    apply_transforms,
    similarity_transforms,
    transform_parameters,
    warp_frame,
)
from .run._hotpixels import find_static_outliers, mask_with_outliers
from .run._masks import (
    check_valid_mask,
    grow_ignore,
    shrink_ignore,
    suggest_beam_block,
    valid_from_ignore,
)
from .run._options import MODELS, RegistrationOptions
from .run._outliers import flag_outliers, interpolate_flagged, interpolate_turns
from .run._pcc import phase_cross_correlation
from .run._registrar import FrameRegistrar
from .run._result import FrameRecord, Progress, RegistrationResult, build_result
from .run._stack import RegistrationRun, iter_register_stack, register_stack

__all__ = [
    "MODELS",
    "FrameRecord",
    "FrameRegistrar",
    "MaskedCorrelator",
    "PhaseCorrelator",
    "Progress",
    "RegistrationOptions",
    "RegistrationResult",
    "RegistrationRun",
    "aligned_dtype",
    "apply_shifts",
    "apply_transforms",
    "build_result",
    "check_valid_mask",
    "find_static_outliers",
    "fisher_information",
    "flag_outliers",
    "gradient_of",
    "grow_ignore",
    "interpolate_flagged",
    "interpolate_turns",
    "iter_register_stack",
    "mask_with_outliers",
    "phase_cross_correlation",
    "register_stack",
    "shift_bound",
    "shrink_ignore",
    "similarity_transforms",
    "suggest_beam_block",
    "transform_parameters",
    "valid_from_ignore",
    "warp_frame",
]
