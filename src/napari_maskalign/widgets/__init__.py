"""napari dock widgets: beam-block mask, stack registration, shifts.

The widgets are thin: every computation is a call into
:mod:`napari_maskalign.engine`. Qt is imported only when a widget class is
first used (the names below are loaded lazily), so importing this package --
or ``napari_maskalign`` -- does not pull in Qt.

Masks painted or loaded here follow what a person paints: nonzero marks pixels
registration ignores (the beam block).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_LAZY = {
    "MaskWidget": "napari_maskalign.widgets._mask",
    "RegisterWidget": "napari_maskalign.widgets._register",
    "ShiftsWidget": "napari_maskalign.widgets._shifts",
}

__all__ = ["MaskWidget", "RegisterWidget", "ShiftsWidget"]

if TYPE_CHECKING:  # pragma: no cover
    from ._mask import MaskWidget
    from ._register import RegisterWidget
    from ._shifts import ShiftsWidget


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
