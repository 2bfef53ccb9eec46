"""Qt glue shared by the dock widgets: messages, layer choices, connections, workers.

No registration math lives here (the widgets call the engine and
:mod:`napari_maskalign.workflow`), and nothing that works on layers alone
(:mod:`._layers`, Qt-free).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox
from napari.layers import Layer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QDockWidget, QPushButton, QWidget

from ._layers import layer_named, mask_name, same_layer

# ----------------------------------------------------------------------------
# plain-word messages


def notify_error(what: str, message: str) -> None:
    """A napari notification in plain words (never a traceback)."""
    message = str(message).strip()
    show_error(f"{what}: {message[:1].upper()}{message[1:]}")


def notify_info(message: str) -> None:
    show_info(message)


def notify_warning(message: str) -> None:
    """A napari warning notification: the result is there but doubtful."""
    show_warning(message)


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
# the docks' base


class DockWidget(QWidget):
    """Base of the dock widgets: the viewer, connections dropped with the widget,
    plain-word notifications titled ``WHAT``, buttons and file dialogs.

    When the dock around the widget is closed -- its title bar's close or hide
    button, ``dock.close()``, ``viewer.window.remove_dock_widget`` -- or the
    widget is destroyed, :meth:`stop_work` is called: a closed dock leaves no
    work running behind it. (A dock hidden behind another tab is not closed.)
    """

    #: the dock's title, at the start of its notifications
    WHAT = "Mask Align"

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.setMinimumWidth(340)
        self._conns = Connections(self)
        self._dock = None  # the QDockWidget around us, watched for its closing

    def stop_work(self) -> None:
        """Stop what the dock has running because it was closed (docks with workers)."""

    # -- noticing that the dock was closed ------------------------------------
    def event(self, e) -> bool:
        if e.type() == QEvent.Type.ParentChange:
            self._watch_dock()
        return super().event(e)

    def showEvent(self, e) -> None:
        super().showEvent(e)
        self._watch_dock()

    def _watch_dock(self) -> None:
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        old = self._dock
        if dock is old:
            return
        if old is not None:
            try:
                old.removeEventFilter(self)
                old.destroyed.disconnect(self._dock_destroyed)
            except (RuntimeError, TypeError):  # already gone
                pass
        self._dock = dock
        if dock is not None:
            dock.installEventFilter(self)
            dock.destroyed.connect(self._dock_destroyed)
        elif old is not None:  # taken out of its dock (remove_dock_widget)
            self.stop_work()

    def _dock_destroyed(self, *_) -> None:
        self._dock = None
        self.stop_work()

    def eventFilter(self, obj, e) -> bool:
        if e.type() == QEvent.Type.Close and obj is self._dock:
            self.stop_work()
        return False

    def report(self, problem) -> None:
        """A plain-word error notification (an exception or a text)."""
        notify_error(self.WHAT, explain(problem) if isinstance(problem, BaseException) else problem)

    def attempt(self, fn: Callable[[], Any]):
        """``fn()``, or None after a plain-word notification of its ``ValueError``."""
        try:
            return fn()
        except ValueError as exc:
            self.report(exc)
            return None

    @staticmethod
    def button(text: str, tooltip: str, slot: Callable[[], Any]) -> QPushButton:
        """A push button that calls ``slot()`` (without Qt's ``checked`` argument)."""
        b = QPushButton(text)
        b.setToolTip(tooltip)
        b.clicked.connect(lambda _checked=False: slot())
        return b

    def ask_path(self, path, title: str, file_filter: str, default: str | None = None):
        """``path`` if given, else the file the user picks (save dialog with ``default``,
        open dialog without); None if the dialog was cancelled."""
        if path is not None:
            return path
        from qtpy.QtWidgets import QFileDialog

        if default is None:
            path, _ = QFileDialog.getOpenFileName(self, title, "", file_filter)
        else:
            path, _ = QFileDialog.getSaveFileName(self, title, default, file_filter)
        return path or None

    def write_file(self, path, write: Callable[[Any], Any]) -> Path | None:
        """``write(path)``; the path written, or None after a plain-word notification."""
        try:
            out = write(path)
        except (ValueError, OSError) as exc:
            self.report(exc)
            return None
        return Path(out if out is not None else path)


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
    """A word-wrapped QLabel that claims the height its wrapped text needs, also
    when its text changes.

    Plain word-wrapped labels report a one-line minimum height, and a dock
    area then squashes the form below them (or cuts the text's last line).
    """
    from qtpy.QtWidgets import QLabel

    class _WrapLabel(QLabel):
        def _fit(self):
            height = self.heightForWidth(self.width())
            if height > 0 and height != self.minimumHeight():
                self.setMinimumHeight(height)

        def resizeEvent(self, event):
            super().resizeEvent(event)
            self._fit()

        def setText(self, text):  # a longer text needs more lines at the same width
            super().setText(text)
            self._fit()

    label = _WrapLabel(text)
    label.setWordWrap(True)
    return label


#: the label "Suggest from stack" paints hot, dead and saturated pixels with
HOT_LABEL = 2
def ask(parent, title: str, text: str, choices: list[tuple[str, str]], default: str) -> str:
    """A modal question with buttons ``choices`` (``(label, answer)``, the first one
    accepting); the answer of the button clicked, ``default`` if the box is closed."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    roles = [QMessageBox.ButtonRole.AcceptRole, QMessageBox.ButtonRole.DestructiveRole,
             QMessageBox.ButtonRole.RejectRole]
    buttons = {}
    for (label, answer), role in zip(choices, roles):
        buttons[answer] = box.addButton(label, role)
    box.setDefaultButton(buttons[choices[0][1]])
    box.exec()
    clicked = box.clickedButton()
    return next((a for a, b in buttons.items() if b is clicked), default)


def mask_colormap():
    """Painted labels in one bright colour that stands out on dark and on magma-like
    images, hot pixels (label 2) in magenta; unpainted pixels transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(
        color_dict={None: "#00e5ff", 0: "transparent", HOT_LABEL: "#ff3df5"}
    )


def layer_list_events(viewer) -> list:
    ev = viewer.layers.events
    return [ev.inserted, ev.removed, ev.moved, ev.reordered, ev.renamed]


# ----------------------------------------------------------------------------
# publishing one layer per event-loop turn


def next_turn(fn: Callable[[], Any]) -> None:
    """Call ``fn`` on a coming event-loop turn: a real (1 ms) timer, not a zero-timer,
    since zero-timers run back to back before other timers and input, which would glue
    the calls into one long stall."""
    QTimer.singleShot(1, fn)


def publish_in_turns(steps: list, done: Callable[[], Any],
                     failed: Callable[[BaseException], Any], owner=None) -> None:
    """Run the callables ``steps`` (each one layer update) one per event-loop turn, so the
    viewer reacts to input between them however many there are; then ``done()``. A
    step's ``ValueError`` or ``MemoryError`` ends it with ``failed(exc)``. Once the
    QWidget ``owner`` is destroyed, nothing more runs."""
    alive = [True]
    if owner is not None:
        # a partial of plain objects (no bound method) still runs while the owner dies
        owner.destroyed.connect(functools.partial(alive.__setitem__, 0, False))
    _publish_turn(steps, done, failed, alive)


def _publish_turn(steps: list, done, failed, alive: list) -> None:
    if not alive[0]:
        return
    try:
        steps.pop(0)()
    except (ValueError, MemoryError) as exc:
        failed(exc)
        return
    if steps:
        next_turn(functools.partial(_publish_turn, steps, done, failed, alive))
    else:
        done()


# ----------------------------------------------------------------------------
# workers


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

    The job runs at background priority (:func:`background_priority`). The
    slots run in the main thread (Qt queues the signals), so they are the
    only place that touches layers or widgets. When the QWidget ``owner`` is
    destroyed, the worker is told to stop and the slots are no longer called
    (signals already queued would otherwise reach a deleted widget).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(
        _in_background(job), *args, _progress={"total": int(total), "desc": desc},
        _ignore_errors=True,
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


#: how much nicer than napari's main thread our workers run (Linux)
BACKGROUND_NICE = 10


def background_priority() -> None:
    """Lower the calling thread's CPU priority below the main thread's.

    On a machine with few cores the main thread would otherwise share the
    CPU evenly with the registration threads, and the viewer would stutter
    while it works. On Linux each thread has its own nice value and threads
    it starts (the engine's pool) inherit it; elsewhere nothing is changed (a
    thread id is not a process id there).
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        if now < BACKGROUND_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except OSError:  # not allowed here: run as it is
        pass


def _in_background(job):
    """``job`` (a generator function) that first lowers its thread's priority."""

    @functools.wraps(job)
    def run(*args, **kwargs):
        background_priority()
        return (yield from job(*args, **kwargs))

    return run


def _owner_gone(alive: list, worker, *_) -> None:
    alive[0] = False
    worker.quit()


def _forget_owner(owner, gone) -> None:
    try:
        owner.destroyed.disconnect(gone)
    except (RuntimeError, TypeError):  # the owner is already gone
        pass

