"""Dock widget: paint, load, save, edit or suggest the beam-block mask.

The mask is a napari Labels layer covering one frame. Convention: painted
pixels (any nonzero label) are the beam block and are ignored by registration;
unpainted pixels (0) are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, SpinBox
from napari.layers import Image, Labels
from qtpy.QtWidgets import QGridLayout, QVBoxLayout

from napari_maskalign.engine import (
    find_static_outliers,
    grow_ignore,
    shrink_ignore,
    suggest_beam_block,
    valid_from_ignore,
)
from napari_maskalign.io import read_mask, write_mask

from .._display import HOT_LABEL, mask_colormap
from ._common import (
    DockWidget,
    LayerCombo,
    PicksMask,
    fixed_height,
    layer_list_events,
    notify_info,
    scrolled,
    wrap_label,
)
from ._layers import frame_shape, layer_named, mask_name, stack_problem

if TYPE_CHECKING:  # pragma: no cover
    import napari

_FILE_FILTER = "Masks (*.npy *.tif *.tiff *.png)"

HELP = (
    "<b>Paint the beam block</b> (and anything else that stays put while the pattern "
    "drifts). Painted pixels (any nonzero label) are <b>ignored</b> by registration; "
    "unpainted pixels are used. One mask covers every frame."
)


class MaskWidget(PicksMask, DockWidget):
    """Make the beam-block mask for a stack.

    Painted pixels (nonzero) are ignored by registration. The mask is a
    Labels layer ``<image> mask`` with the shape of one frame, aligned with
    the image.
    """

    WHAT = "Beam-block mask"
    SHARE = 0.6  # of the dock column's height, beside the other docks

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer)

        self.image_combo = LayerCombo(
            napari_viewer,
            Image,
            label="image",
            tooltip="The stack the mask is for. The mask covers one frame of it and applies to "
            "every frame.",
        )
        self.mask_combo = LayerCombo(
            napari_viewer,
            Labels,
            none_label="(no mask yet)",
            label="mask",
            tooltip="The mask layer that Save, Invert, Grow, Shrink and Clear act on (New, "
            "Suggest and Load fill '<image> mask' and choose it here). Nonzero (painted) pixels "
            "are ignored by registration.",
        )
        self.pixels = SpinBox(
            value=3,
            min=1,
            max=500,
            label="pixels",
            tooltip="How many pixels Grow and Shrink add or remove around the beam block (a "
            "safety margin), and the margin added around a suggested block.",
        )
        self.darkness = FloatSpinBox(
            value=0.3,
            min=0.01,
            max=1.0,
            step=0.05,
            label="darkness",
            tooltip="For Suggest: a pixel is taken as beam block when, in every frame looked at, "
            "it stays darker than this fraction of the typical (median) brightness. Raise it "
            "if the suggestion misses parts of the block, lower it if it grabs dark background.",
        )
        self.form = Container(
            widgets=[self.image_combo, self.mask_combo, self.pixels, self.darkness], labels=True
        )

        help_label = wrap_label(HELP)
        help_label.setObjectName("maskalign_help")

        b = self.button
        self.new_button = b(
            "New mask + paint",
            "Create an empty mask the size of one frame (or pick the existing '<image> mask'), "
            "select it and switch to the paint brush.",
            self.new_mask,
        )
        self.suggest_button = b(
            "Suggest from stack",
            "Guess the beam block from the stack: pixels that stay dark in every frame while the "
            "pattern moves. A starting point: correct it with the brush and eraser.",
            self.suggest_mask,
        )
        self.load_button = b(
            "Load…",
            "Load a mask from .npy, .tif/.tiff or .png: nonzero pixels are ignored. It must "
            "have the shape of one frame.",
            self.load_mask,
        )
        self.save_button = b(
            "Save…", "Save the mask as .npy or .tif (0/1) or .png (0/255).", self.save_mask
        )
        self.invert_button = b("Invert", "Swap ignored and used pixels.", self.invert_mask)
        self.grow_button = b(
            "Grow", "Grow the ignored region by 'pixels' (safety margin).", self.grow_mask
        )
        self.shrink_button = b(
            "Shrink", "Shrink the ignored region by 'pixels'.", self.shrink_mask
        )
        self.clear_button = b(
            "Clear", "Unpaint everything: every pixel is used again.", self.clear_mask
        )

        grid = QGridLayout()
        buttons = [
            self.new_button, self.suggest_button, self.load_button, self.save_button,
            self.grow_button, self.shrink_button, self.invert_button, self.clear_button,
        ]
        for k, button in enumerate(buttons):
            grid.addWidget(button, k // 2, k % 2)

        layout = QVBoxLayout(self)
        # the buttons first: the help text below them scrolls when the dock is short
        layout.addWidget(scrolled(fixed_height(self.form.native), grid, help_label, hint=150))

        self._conns.connect_many(layer_list_events(napari_viewer), self._refresh_choices)
        self.image_combo.changed.connect(self._on_image_changed)
        self._on_image_changed()

    # -- state ------------------------------------------------------------

    def _on_image_changed(self, _value=None) -> None:
        self._pick_mask()

    def _image(self) -> Image:
        image = self.image_combo.value
        problem = stack_problem(image, single_frame_ok=True)
        if problem:
            raise ValueError(problem)
        return image

    def _mask(self) -> Labels:
        mask = self.mask_combo.value
        if mask is None:
            raise ValueError("there is no mask layer yet: click 'New mask + paint' or 'Load…'")
        return mask

    def _mask_layer_for(self, image: Image, data: np.ndarray | None = None) -> Labels:
        """The ``<image> mask`` Labels layer (made if missing), holding ``data`` if given."""
        shape = frame_shape(image)
        name = mask_name(image.name)
        layer = layer_named(self.viewer, name)
        if layer is not None and not isinstance(layer, Labels):
            raise ValueError(f"a layer named '{name}' exists and is not a Labels layer")
        if layer is not None and tuple(layer.data.shape) != shape:
            if data is None:
                raise ValueError(
                    f"the layer '{name}' has shape {tuple(layer.data.shape)} but one frame of "
                    f"'{image.name}' has shape {shape}; rename or delete it"
                )
            layer.data = np.asarray(data, dtype=np.uint8)
        elif layer is not None:
            if data is not None:
                layer.data = np.asarray(data).astype(layer.data.dtype)
        else:
            k = image.ndim - len(shape)
            layer = self.viewer.add_labels(
                np.zeros(shape, np.uint8) if data is None else np.asarray(data, np.uint8),
                name=name,
                scale=tuple(image.scale)[k:],
                translate=tuple(image.translate)[k:],
                opacity=0.5,
                colormap=mask_colormap(),
            )
        self.mask_combo.reset_choices()
        self.mask_combo.select(layer)
        return layer

    def _start_painting(self, layer: Labels, frame: tuple[int, ...]) -> None:
        self.viewer.layers.selection.active = layer
        layer.visible = True
        layer.selected_label = 1
        layer.brush_size = int(np.clip(round(min(frame[-2:]) / 40), 3, 60))
        layer.mode = "paint"

    # -- actions (named so tests and scripts call them directly) ------------

    def new_mask(self) -> Labels | None:
        """Create (or pick) ``<image> mask``, select it and switch to the paint brush."""
        try:
            image = self._image()
            layer = self._mask_layer_for(image)
        except ValueError as exc:
            self.report(exc)
            return None
        self._start_painting(layer, frame_shape(image))
        return layer

    def suggest_mask(self) -> Labels | None:
        """Fill ``<image> mask`` with a beam block guessed from the stack (a starting point)."""
        try:
            image = self._image()
            data = image.data if image.ndim > 2 else image.data[None]
            block = suggest_beam_block(
                data, darkness=float(self.darkness.value), margin=int(self.pixels.value)
            )
            # hot, dead and saturated pixels stand still too: their own label, to tell apart
            hot = find_static_outliers(data, valid=block == 0)
            ignore = np.where(hot, HOT_LABEL, block).astype(np.uint8)
            layer = self._mask_layer_for(image, ignore)
        except (ValueError, MemoryError) as exc:
            self.report(exc)
            return None
        n, n_hot = int(np.count_nonzero(block)), int(np.count_nonzero(hot))
        found = (
            "No beam block found: no pixel stays dark in every frame. Raise 'darkness' or "
            "paint the block by hand."
            if n == 0
            else f"Suggested a beam block of {n} pixels ({100 * n / block.size:.1f}% of a frame)"
        )
        if n_hot:
            found += (
                f"{'' if n == 0 else ' and'} {n_hot} hot or dead pixels (label {HOT_LABEL}, "
                "magenta)"
            )
        notify_info(found + (": check it and correct it with the brush." if n or n_hot else ""))
        self._start_painting(layer, frame_shape(image))
        return layer

    def load_mask(self, path: str | Path | None = None) -> Labels | None:
        """Load a mask file (nonzero = ignore) into ``<image> mask``."""
        path = self.ask_path(path, "Load beam-block mask", _FILE_FILTER)
        if path is None:
            return None
        try:
            image = self._image()
            ignore = (~valid_from_ignore(read_mask(path))).astype(np.uint8)
            shape = frame_shape(image)
            if ignore.shape != shape:
                raise ValueError(
                    f"the mask in '{Path(path).name}' has shape {ignore.shape} but one frame of "
                    f"'{image.name}' has shape {shape}"
                )
            layer = self._mask_layer_for(image, ignore)
        except (ValueError, OSError) as exc:
            self.report(exc)
            return None
        notify_info(f"Loaded the mask from {Path(path).name} into '{layer.name}'.")
        return layer

    def save_mask(self, path: str | Path | None = None) -> Path | None:
        """Save the chosen mask layer (nonzero = ignore)."""
        layer = self.attempt(self._mask)
        if layer is None:
            return None
        path = self.ask_path(path, "Save beam-block mask", _FILE_FILTER, f"{layer.name}.tif")
        if path is None:
            return None
        out = self.write_file(path, lambda p: write_mask(p, np.asarray(layer.data)))
        if out is not None:
            notify_info(f"Saved '{layer.name}' to {out}.")
        return out

    def _edit(self, how) -> Labels | None:
        try:
            layer = self._mask()
            data = np.asarray(layer.data)
            layer.data = how(data).astype(data.dtype)
        except ValueError as exc:
            self.report(exc)
            return None
        return layer

    def invert_mask(self) -> Labels | None:
        """Swap ignored and used pixels."""
        return self._edit(lambda d: valid_from_ignore(d).astype(np.uint8))

    def grow_mask(self) -> Labels | None:
        """Grow the ignored region by ``pixels``."""
        return self._edit(lambda d: grow_ignore(d, int(self.pixels.value)))

    def shrink_mask(self) -> Labels | None:
        """Shrink the ignored region by ``pixels``."""
        return self._edit(lambda d: shrink_ignore(d, int(self.pixels.value)))

    def clear_mask(self) -> Labels | None:
        """Unpaint everything."""
        return self._edit(np.zeros_like)
