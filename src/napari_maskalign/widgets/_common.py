"""Glue shared by the dock widgets: layer choices, frame slider, output layers, workers.

No registration math lives here: the widgets call :mod:`napari_maskalign.engine`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Layer, Points
from napari.utils.notifications import show_error, show_info

from napari_maskalign.engine import apply_shifts
from napari_maskalign.io import as_dask

#: key of the per-layer result dictionary in ``layer.metadata``
META = "maskalign"

#: above this many output bytes the aligned stack is a lazy dask array
LAZY_BYTES = 1 << 30

AXIS_NAMES = ("z", "y", "x")


def aligned_name(source: str) -> str:
    return f"{source} aligned"


def xcorr_name(source: str) -> str:
    return f"{source} xcorr"


def peak_name(source: str) -> str:
    return f"{source} xcorr peak"


def mask_name(source: str) -> str:
    return f"{source} mask"


def axis_names(ndim: int) -> tuple[str, ...]:
    return AXIS_NAMES[-ndim:]


# ----------------------------------------------------------------------------
# plain-word messages


def notify_error(what: str, message: str) -> None:
    """A napari notification in plain words (never a traceback)."""
    message = str(message).strip()
    show_error(f"{what}: {message[:1].upper()}{message[1:]}")


def notify_info(message: str) -> None:
    show_info(message)


def explain(exc: BaseException) -> str:
    """Plain words for an exception raised by the engine or by I/O."""
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory for this stack; open it lazily (as a dask array) and try again"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    return f"an unexpected error happened ({type(exc).__name__}: {exc})"


# ----------------------------------------------------------------------------
# layers


def frame_shape(layer: Layer) -> tuple[int, ...]:
    """Shape of one frame of a stack layer (frames along the first axis)."""
    shape = tuple(layer.data.shape)
    return shape[1:] if len(shape) >= 3 else shape


def stack_problem(
    layer: Layer | None, what: str = "image layer", *, single_frame_ok: bool = False
) -> str | None:
    """Why ``layer`` cannot be registered as a stack, in plain words; None if it can.

    With ``single_frame_ok`` a plain 2D image passes too (it can still have a mask).
    """
    if layer is None:
        return f"there is no {what} to work on: open or choose a stack of frames first"
    if not isinstance(layer, Image):
        return f"'{layer.name}' is not an image layer"
    if layer.multiscale:
        return (
            f"'{layer.name}' is a multiscale (pyramid) image whose levels have different "
            "shapes; open its full-resolution level as a plain stack"
        )
    if layer.rgb:
        return f"'{layer.name}' is an RGB image; split it into channels and register one of them"
    shape = tuple(layer.data.shape)
    if len(shape) == 2 and not single_frame_ok:
        return (
            f"'{layer.name}' is a single 2D image, not a stack: registration needs frames "
            "along the first axis"
        )
    if len(shape) not in (2, 3, 4):
        return (
            f"'{layer.name}' has {len(shape)} dimensions {shape}; expected a stack of 2D or 3D "
            "frames (3 or 4 dimensions, frames first)"
        )
    if np.dtype(layer.data.dtype).kind not in "biuf":
        return f"'{layer.name}' holds {layer.data.dtype} values; registration needs real numbers"
    return None


def result_meta(layer: Layer | None) -> dict | None:
    """The registration result stored on an output layer, or None."""
    if layer is None:
        return None
    meta = layer.metadata.get(META)
    if isinstance(meta, dict) and "shifts" in meta:
        return meta
    return None


def layer_named(viewer, name: str) -> Layer | None:
    try:
        return viewer.layers[name]
    except KeyError:
        return None


def source_of(layer: Layer | None) -> str | None:
    """Name of the source stack of an output layer (aligned, xcorr, peaks); else its own name."""
    if layer is None:
        return None
    meta = layer.metadata.get(META)
    if isinstance(meta, dict) and meta.get("source"):
        return str(meta["source"])
    return layer.name


def find_result_layer(viewer, source: str | None) -> Layer | None:
    """The ``<source> aligned`` layer carrying a result, if any."""
    if source is None:
        return None
    layer = layer_named(viewer, aligned_name(source))
    return layer if result_meta(layer) is not None else None


def same_layer(a: Layer | None, b: Layer | None) -> bool:
    """Identity of layers, also through the proxies napari hands to plugins (``is`` fails there)."""
    if a is None or b is None:
        return a is b
    return bool(a == b)


def is_output_layer(layer: Layer) -> bool:
    meta = layer.metadata.get(META)
    return isinstance(meta, dict) and "role" in meta


def check_output_name(viewer, name: str, cls: type) -> Layer | None:
    """The layer ``name`` an output of type ``cls`` would update, or None.

    Raises ``ValueError`` in plain words if a layer of another type holds the name.
    """
    existing = layer_named(viewer, name)
    if existing is not None and not isinstance(existing, cls):
        raise ValueError(
            f"a {type(existing).__name__} layer named '{name}' is in the way of the output: "
            "rename or delete it"
        )
    return existing


def drop_preview(viewer, source: str) -> None:
    """Remove the ``<source> xcorr`` preview layers we made (a stale preview would
    contradict new shifts); layers of the same name that we did not make stay."""
    for name in (xcorr_name(source), peak_name(source)):
        layer = layer_named(viewer, name)
        if layer is not None and META in layer.metadata:
            viewer.layers.remove(layer)


def upsert_layer(viewer, name: str, data, kind: str = "image", **props) -> Layer:
    """Update layer ``name`` in place (a re-run) or add it.

    ``metadata`` is set before the data so listeners of data events read the
    new result. If the number of dimensions changed, the layer is replaced at
    the same position.
    """
    existing = check_output_name(viewer, name, {"image": Image, "points": Points}[kind])
    ndim = np.ndim(data) if kind != "points" else np.shape(data)[1]
    if existing is not None and existing.ndim == ndim:
        meta = props.pop("metadata", None)
        if meta is not None:
            existing.metadata = {**existing.metadata, **meta}
        existing.data = data
        for key, value in props.items():
            setattr(existing, key, value)
        return existing
    add = {"image": viewer.add_image, "points": viewer.add_points}[kind]
    layer = add(data, name=name, **props)
    if existing is not None:
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def display_props(layer: Image) -> dict[str, Any]:
    """What an aligned copy shares with its source: geometry and look."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "colormap": layer.colormap,
        "contrast_limits": tuple(layer.contrast_limits),
        "gamma": layer.gamma,
    }


# ----------------------------------------------------------------------------
# the frame slider


def frame_axis(viewer, layer: Layer) -> int:
    """The viewer's dims axis that walks through ``layer``'s frames."""
    return viewer.dims.ndim - layer.ndim


def current_frame(viewer, layer: Layer) -> int:
    """The frame of ``layer`` the viewer's slider shows."""
    point = np.asarray(viewer.dims.point, dtype=float)[-layer.ndim :]
    index = float(layer.world_to_data(point)[0])
    return int(np.clip(round(index), 0, layer.data.shape[0] - 1))


def go_to_frame(viewer, layer: Layer, frame: int) -> None:
    """Move the viewer's slider to frame ``frame`` of ``layer``."""
    frame = int(np.clip(frame, 0, layer.data.shape[0] - 1))
    coords = np.zeros(layer.ndim)
    coords[0] = frame
    world = layer.data_to_world(coords)
    viewer.dims.set_point(frame_axis(viewer, layer), float(world[0]))


# ----------------------------------------------------------------------------
# magicgui layer choice


class LayerCombo(ComboBox):
    """A drop-down of the viewer's layers of one type, kept in sync with the layer list."""

    def __init__(
        self,
        viewer,
        layer_type: type | tuple[type, ...],
        *,
        none_label: str | None = None,
        keep: Callable[[Layer], bool] | None = None,
        **kwargs,
    ):
        self._viewer = viewer
        self._layer_type = layer_type
        self._none_label = none_label
        self._keep = keep
        super().__init__(choices=self._layer_choices, **kwargs)

    def _layer_choices(self, _widget=None) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if self._none_label is not None:
            out.append((self._none_label, None))
        for layer in reversed(self._viewer.layers):  # top of the layer list first
            if isinstance(layer, self._layer_type) and (self._keep is None or self._keep(layer)):
                out.append((layer.name, layer))
        return out

    def select(self, layer: Layer | None) -> bool:
        """Choose ``layer`` if it is among the choices."""
        for _, value in self._layer_choices():
            if same_layer(value, layer):
                self.value = layer
                return True
        return False


def _disconnect_all(pairs: list) -> None:
    for emitter, callback in pairs:
        try:
            emitter.disconnect(callback)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - already gone
            pass
    pairs.clear()


class PicksMask:
    """For widgets with an ``image_combo`` and a ``mask_combo``: offer the
    current layers and pick ``<image> mask`` whenever it exists."""

    def _refresh_choices(self, _event=None) -> None:
        self.image_combo.reset_choices()
        self.mask_combo.reset_choices()
        if self.mask_combo.value is None:
            self._pick_mask()

    def _pick_mask(self) -> None:
        """Choose ``<image> mask`` when it exists."""
        image = self.image_combo.value
        if image is not None:
            self.mask_combo.select(layer_named(self.viewer, mask_name(image.name)))


class Connections:
    """Viewer event connections of a widget, dropped when the widget is destroyed."""

    def __init__(self, widget):
        self._pairs: list = []
        # a partial (not a bound method) keeps working while the widget dies
        widget.destroyed.connect(functools.partial(_disconnect_all, self._pairs))

    def connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._pairs.append((emitter, callback))

    def connect_many(self, emitters: Iterable, callback) -> None:
        for emitter in emitters:
            self.connect(emitter, callback)

    def disconnect(self, emitter, callback) -> None:
        if (emitter, callback) in self._pairs:
            self._pairs.remove((emitter, callback))
            emitter.disconnect(callback)


def fixed_height(widget):
    """Keep a form at its natural height (dock areas would squash it otherwise)."""
    from qtpy.QtWidgets import QSizePolicy

    widget.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
    return widget


def wrap_label(text: str = ""):
    """A word-wrapped QLabel that claims the height its wrapped text needs.

    Plain word-wrapped labels report a one-line minimum height, and a dock
    area then squashes the form below them.
    """
    from qtpy.QtWidgets import QLabel

    class _WrapLabel(QLabel):
        def resizeEvent(self, event):
            super().resizeEvent(event)
            height = self.heightForWidth(self.width())
            if height > 0 and height != self.minimumHeight():
                self.setMinimumHeight(height)

    label = _WrapLabel(text)
    label.setWordWrap(True)
    return label


def mask_colormap():
    """Every painted label in one bright colour that stands out on dark and on magma-like
    images; unpainted pixels transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "#00e5ff", 0: "transparent"})


def layer_list_events(viewer) -> list:
    ev = viewer.layers.events
    return [ev.inserted, ev.removed, ev.moved, ev.reordered, ev.renamed]


# ----------------------------------------------------------------------------
# applying shifts in a worker (Qt-free generators)


@dataclass(frozen=True)
class AlignProgress:
    """Yielded after each frame is shifted (the stage after registration)."""

    done: int
    total: int
    stage: str = "applying shifts"


def wants_lazy(data) -> bool:
    """Whether the aligned copy of ``data`` should be a lazy dask array.

    Lazy for anything that is not an in-memory numpy array (dask, zarr,
    memory-mapped files) and for stacks whose float copy exceeds ``LAZY_BYTES``.
    """
    if not isinstance(data, np.ndarray) or isinstance(data, np.memmap):
        return True
    return int(np.prod(data.shape)) * max(4, np.dtype(data.dtype).itemsize) > LAZY_BYTES


def align_frame(stack, shifts, i: int, **kwargs) -> np.ndarray:
    """Frame ``i`` of the aligned stack, computed now (also for one edited frame)."""
    return apply_shifts(np.asarray(stack[i : i + 1]), shifts[i : i + 1], **kwargs)[0]


def align_lazy(stack, shifts, **kwargs):
    """The whole aligned stack as a lazy dask array (nothing is computed yet)."""
    return apply_shifts(as_dask(stack), shifts, **kwargs)


def iter_align(stack, shifts, *, lazy: bool, **kwargs):
    """Apply ``shifts`` with the engine, yielding :class:`AlignProgress` per frame.

    Returns the aligned stack (``StopIteration.value``): a numpy array, or a
    lazy dask array at once when ``lazy`` (nothing is computed then).
    """
    if lazy:
        return align_lazy(stack, shifts, **kwargs)
    n = stack.shape[0]
    out = None
    for i in range(n):
        frame = align_frame(stack, shifts, i, **kwargs)
        if out is None:
            out = np.empty((n, *frame.shape), frame.dtype)
        out[i] = frame
        yield AlignProgress(i + 1, n)
    return out


def start_worker(
    job,
    *args,
    total: int,
    desc: str,
    yielded: Callable | None = None,
    returned: Callable | None = None,
    errored: Callable | None = None,
    aborted: Callable | None = None,
    finished: Callable | None = None,
    owner=None,
):
    """Run generator ``job`` in a napari worker with a progress bar in the activity dock.

    The slots run in the main thread (Qt queues the signals), so they are the
    only place that touches layers or widgets. When the QWidget ``owner`` is
    destroyed, the worker is told to stop and the slots are no longer called
    (signals already queued would otherwise reach a deleted widget).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(
        job, *args, _progress={"total": int(total), "desc": desc}, _ignore_errors=True
    )
    alive = [True]

    def guarded(slot):
        return lambda *a: slot(*a) if alive[0] else None

    for name, slot in (
        ("yielded", yielded),
        ("returned", returned),
        ("errored", errored),
        ("aborted", aborted),
        ("finished", finished),
    ):
        if slot is not None:
            getattr(worker, name).connect(guarded(slot) if owner is not None else slot)
    if owner is not None:
        # a partial of plain objects (no bound method) still runs while the owner dies
        gone = functools.partial(_owner_gone, alive, worker)
        owner.destroyed.connect(gone)
        worker.finished.connect(functools.partial(_forget_owner, owner, gone))
    worker.start()
    return worker


def _owner_gone(alive: list, worker, *_) -> None:
    alive[0] = False
    worker.quit()


def _forget_owner(owner, gone) -> None:
    try:
        owner.destroyed.disconnect(gone)
    except (RuntimeError, TypeError):  # the owner is already gone
        pass
