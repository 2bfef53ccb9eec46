"""napari-maskalign: align drifting image stacks while part of every image stands still.

The public API is imported lazily so that ``import napari_maskalign`` pulls in
neither napari, Qt, magicgui nor vispy (nor even scipy): the napari plugin
machinery, the command line and plain Python scripts all start fast.

Public names
------------
phase_cross_correlation
    Drop-in replacement for ``skimage.registration.phase_cross_correlation``
    (same signature and return value) that is faster and refines masked
    registration to subpixel precision.
register_stack
    Register every frame of a stack against a reference (frame, image, mean,
    previous frame or iterative template).
apply_shifts, apply_transforms, apply_fields
    Apply per-frame shifts, whole transforms (rotation and scale too) or
    non-rigid fields (``register_stack(..., model="nonrigid")``) to a stack
    (eager or dask-lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "phase_cross_correlation": "napari_maskalign.engine",
    "register_stack": "napari_maskalign.engine",
    "iter_register_stack": "napari_maskalign.engine",
    "find_static_outliers": "napari_maskalign.engine",
    "apply_shifts": "napari_maskalign.engine",
    "apply_transforms": "napari_maskalign.engine",
    "apply_fields": "napari_maskalign.engine",
    "NonrigidResult": "napari_maskalign.engine",
    "RegistrationOptions": "napari_maskalign.engine",
    "RegistrationResult": "napari_maskalign.engine",
    "valid_from_ignore": "napari_maskalign.engine",
    "make_beam_block_stack": "napari_maskalign._sample_data",
}

__all__ = [
    "NonrigidResult",
    "RegistrationOptions",
    "RegistrationResult",
    "__version__",
    "apply_fields",
    "apply_shifts",
    "apply_transforms",
    "find_static_outliers",
    "iter_register_stack",
    "make_beam_block_stack",
    "phase_cross_correlation",
    "register_stack",
    "valid_from_ignore",
]
assert set(__all__) == {"__version__", *_LAZY}

if TYPE_CHECKING:  # pragma: no cover
    from ._sample_data import make_beam_block_stack
    from .engine import (
        NonrigidResult,
        RegistrationOptions,
        RegistrationResult,
        apply_fields,
        apply_shifts,
        apply_transforms,
        find_static_outliers,
        iter_register_stack,
        phase_cross_correlation,
        register_stack,
        valid_from_ignore,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
