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

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# names load on first use, so that importing a subpackage (the model registry for
# the command line's choices) does not import scipy and every kernel
_LAZY = {
    "DEFAULT_MODEL": "napari_maskalign.engine.models",
    "FrameRecord": "napari_maskalign.engine.run._result",
    "FrameRegistrar": "napari_maskalign.engine.run._registrar",
    "MODELS": "napari_maskalign.engine.models",
    "MaskedCorrelator": "napari_maskalign.engine.kernels._masked",
    "Model": "napari_maskalign.engine.models",
    "PhaseCorrelator": "napari_maskalign.engine.kernels._correlators",
    "Progress": "napari_maskalign.engine.run._result",
    "RegistrationOptions": "napari_maskalign.engine.run._options",
    "RegistrationResult": "napari_maskalign.engine.run._result",
    "RegistrationRun": "napari_maskalign.engine.run._stack",
    "aligned_dtype": "napari_maskalign.engine.models._shift",
    "apply_shifts": "napari_maskalign.engine.models._shift",
    "apply_transforms": "napari_maskalign.engine.models._transforms",
    "build_result": "napari_maskalign.engine.run._result",
    "check_valid_mask": "napari_maskalign.engine.run._masks",
    "find_static_outliers": "napari_maskalign.engine.run._hotpixels",
    "fisher_information": "napari_maskalign.engine.models._bound",
    "flag_outliers": "napari_maskalign.engine.run._outliers",
    "gradient_of": "napari_maskalign.engine.models._bound",
    "grow_ignore": "napari_maskalign.engine.run._masks",
    "interpolate_flagged": "napari_maskalign.engine.run._outliers",
    "interpolate_turns": "napari_maskalign.engine.run._outliers",
    "iter_register_stack": "napari_maskalign.engine.run._stack",
    "mask_with_outliers": "napari_maskalign.engine.run._hotpixels",
    "model_named": "napari_maskalign.engine.models",
    "phase_cross_correlation": "napari_maskalign.engine.run._pcc",
    "register_stack": "napari_maskalign.engine.run._stack",
    "shift_bound": "napari_maskalign.engine.models._bound",
    "shrink_ignore": "napari_maskalign.engine.run._masks",
    "similarity_transforms": "napari_maskalign.engine.models._transforms",
    "suggest_beam_block": "napari_maskalign.engine.run._masks",
    "transform_parameters": "napari_maskalign.engine.models._transforms",
    "valid_from_ignore": "napari_maskalign.engine.run._masks",
    "warp_frame": "napari_maskalign.engine.models._transforms",
}

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "FrameRecord",
    "FrameRegistrar",
    "MaskedCorrelator",
    "Model",
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
    "model_named",
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
assert set(__all__) == set(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .kernels._correlators import PhaseCorrelator
    from .kernels._masked import MaskedCorrelator
    from .models import DEFAULT_MODEL, MODELS, Model, model_named
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
    from .run._options import RegistrationOptions
    from .run._outliers import flag_outliers, interpolate_flagged, interpolate_turns
    from .run._pcc import phase_cross_correlation
    from .run._registrar import FrameRegistrar
    from .run._result import FrameRecord, Progress, RegistrationResult, build_result
    from .run._stack import RegistrationRun, iter_register_stack, register_stack


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
