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
import weakref
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

#: the docks share their column's height this long after a dock or the window changed
#: (the window lays the docks out first, which would undo an earlier share)
SHARE_DELAY_MS = 100


#: windows whose docks are due to share their column's height (by id): the docks of one
#: window all see its resize, and one share covers them all
_SHARE_DUE: set = set()


def _share_soon(window, share: Callable[[], Any]) -> None:
    """``share()`` in ``SHARE_DELAY_MS``, unless a share of ``window``'s docks is already
    due: each of the plugin's docks watches the window, and one ``resizeDocks`` sizes them
    all (three docks made three)."""
    key = id(window)
    if key in _SHARE_DUE:
        return
    _SHARE_DUE.add(key)

    def run():
        _SHARE_DUE.discard(key)
        share()

    QTimer.singleShot(SHARE_DELAY_MS, run)


#: docks taken out of a viewer's window (its close button), by (viewer id, class): the
#: Plugins menu reopens the same one, as it was, instead of a new, reset one
_KEPT: dict = {}


def _viewer_id(viewer) -> int:
    """The viewer's identity, also through the proxy napari hands to plugins (a new one
    each time)."""
    return id(getattr(viewer, "__wrapped__", viewer))


def _drop_kept(viewer_id: int, *_) -> None:
    """The viewer's window is gone: forget its closed docks."""
    for key in [k for k in _KEPT if k[0] == viewer_id]:
        del _KEPT[key]


class _Reopens(type(QWidget)):
    """Making a dock for a viewer whose closed dock of that class is kept gives that one
    back (neither built again nor reset): napari's close button takes a dock widget out
    of the window and its Plugins menu would otherwise make a second, fresh one."""

    def __call__(cls, napari_viewer=None, *args, **kwargs):
        kept = _KEPT.pop((_viewer_id(napari_viewer), cls), None)
        if kept is not None and kept.parentWidget() is None:
            return kept
        return super().__call__(napari_viewer, *args, **kwargs)


class DockWidget(QWidget, metaclass=_Reopens):
    """Base of the dock widgets: the viewer, connections dropped with the widget,
    plain-word notifications titled ``WHAT``, buttons and file dialogs.

    When the dock around the widget is closed -- its title bar's close or hide
    button, ``dock.close()``, ``viewer.window.remove_dock_widget`` -- or the
    widget is destroyed, :meth:`stop_work` is called: a closed dock leaves no
    work running behind it. (A dock hidden behind another tab is not closed.)
    A dock taken out of its window is kept until the window goes: reopened
    from the Plugins menu, it comes back as it was (its settings, its plot).
    """

    #: the dock's title, at the start of its notifications
    WHAT = "Mask Align"
    #: the share of a dock column's height the dock takes beside the others of the plugin
    SHARE = 1.0

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.setMinimumWidth(340)
        self._conns = Connections(self)
        self._dock = None  # the QDockWidget around us, watched for its closing
        self._window = None  # the main window around it, watched for its resizes

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
            _KEPT.pop((_viewer_id(self.viewer), type(self)), None)
            window = dock.parentWidget()  # often None yet: napari docks it afterwards
            self._watch_window(window)
            # once the dock is shown in its area and the window has laid it out
            _share_soon(window, self._share_height)
        elif old is not None:  # taken out of its dock (remove_dock_widget)
            self.stop_work()
            if self.parentWidget() is None:  # out of the window: kept for the Plugins menu
                _KEPT[(_viewer_id(self.viewer), type(self))] = self

    def _watch_window(self, window) -> None:
        """Watch the window the dock sits in: its resizes share the column again (not a
        dragged edge), and its end drops the docks kept for the Plugins menu."""
        if window is None or (self._window is not None and self._window() is window):
            return
        self._window = weakref.ref(window)  # not a strong one: a kept dock outlives it
        window.installEventFilter(self)
        # a partial of plain objects: it still runs while the window dies
        window.destroyed.connect(functools.partial(_drop_kept, _viewer_id(self.viewer)))

    def _share_height(self) -> None:
        """Share the height of the dock column with the plugin's other docks there by
        their ``SHARE`` (the Shifts plot gets the most, the mask dock the least): Qt
        would give the first dock added most of it, and the plot only its minimum."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QMainWindow

        dock = self._dock
        try:
            window = dock.parentWidget() if dock is not None else None
        except RuntimeError:  # the dock is gone
            return
        if not isinstance(window, QMainWindow) or dock.isFloating():
            return
        self._watch_window(window)  # the dock was not in it yet when it was first seen
        area = window.dockWidgetArea(dock)
        ours = []
        for other in window.findChildren(QDockWidget):
            if (other.isVisible() and not other.isFloating()
                    and window.dockWidgetArea(other) == area):
                inner = other.findChildren(DockWidget)
                if inner:
                    inner[0]._watch_window(window)
                    ours.append((other, inner[0].SHARE))
        if len(ours) < 2:
            return
        total = sum(d.height() for d, _ in ours)
        weight = sum(share for _, share in ours)
        window.resizeDocks([d for d, _ in ours],
                           [max(1, int(total * share / weight)) for _, share in ours],
                           Qt.Orientation.Vertical)

    def _dock_destroyed(self, *_) -> None:
        self._dock = None
        self.stop_work()

    def eventFilter(self, obj, e) -> bool:
        if e.type() == QEvent.Type.Close and obj is self._dock:
            self.stop_work()
        elif (e.type() == QEvent.Type.Resize and self._dock is not None
              and obj is not self._dock and e.size().height() != e.oldSize().height()):
            # the main window got taller or shorter
            _share_soon(obj, self._share_height)
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


def scrolled(*items, stretch: bool = True, hint: int | None = None):
    """A column of widgets and layouts in a vertical scroll area without a frame.

    A dock's controls go in one so that the dock asks for little height: three
    docks stacked beside the canvas then fit a laptop's screen (1366 x 768), each
    scrolling what does not fit, instead of pushing the window taller than the
    screen. ``stretch``: a stretch below the items (they keep their natural
    heights at the top). ``hint``: the height the area asks for at most, so
    that a dock shares the screen's height (the rest scrolls).
    """
    from qtpy.QtCore import QSize, Qt
    from qtpy.QtWidgets import QFrame, QLayout, QScrollArea, QVBoxLayout

    class _Area(QScrollArea):
        def sizeHint(self) -> QSize:
            size = super().sizeHint()
            if hint is not None:
                size.setHeight(min(size.height(), hint))
            return size

    body = QWidget()
    column = QVBoxLayout(body)
    column.setContentsMargins(0, 0, 0, 0)
    for item in items:
        if isinstance(item, QLayout):
            column.addLayout(item)
        else:
            column.addWidget(item)
    if stretch:
        column.addStretch(1)
    area = _Area()
    area.setObjectName("maskalign_scroll")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(body)
    return area


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


def together(*steps: Callable[[], Any]) -> Callable[[], Any]:
    """One publishing step that runs ``steps`` in order, in one event-loop turn: a layer
    change and the cheap steps after it that change no layer (selecting a layer, fitting
    the view, the status line). A turn of their own each cost a repaint of the window
    with the canvas (about 0.1 s of CPU on the 2-core machine) for next to no work."""
    def run() -> None:
        for step in steps:
            step()

    return run


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
# progress shown at a pace the window can afford

#: a dock repaints its progress at most this often (seconds). Each repaint of a widget
#: recomposes the window with the canvas while the GIL is held: repainting on every
#: frame tripled a run's time (bench_gui.py); at 0.25 s the repaints still took about
#: 0.17 s of CPU each on a busy 2-core machine, most of the viewer's CPU during a run
PROGRESS_EVERY_S = 0.5


class Throttled:
    """``show(value)`` at most every ``PROGRESS_EVERY_S``, the latest value always shown in
    the end: a call that comes too soon is kept and shown when the interval is over
    (or by :meth:`flush`). Main thread only."""

    def __init__(self, show: Callable[[Any], Any]):
        self._show = show
        self._last = float("-inf")
        self._pending = False
        self._value: Any = None

    def __call__(self, value) -> None:
        import time

        self._value = value
        wait = self._last + PROGRESS_EVERY_S - time.monotonic()
        if wait <= 0:
            self._fire()
        elif not self._pending:
            self._pending = True
            QTimer.singleShot(max(1, int(wait * 1000)), self.flush)

    def flush(self) -> None:
        """Show the latest value now if it has not been shown."""
        if self._pending:
            self._fire()

    def cancel(self) -> None:
        """Forget a value not yet shown."""
        self._pending = False

    def _fire(self) -> None:
        import time

        self._pending = False
        self._last = time.monotonic()
        try:
            self._show(self._value)
        except RuntimeError:  # the widget was closed in the meantime
            pass


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
    """Run generator ``job`` in a napari worker; the dock shows its progress.

    The job runs at background priority (:func:`background_priority`). The
    slots run in the main thread (Qt queues the signals), so they are the
    only place that touches layers or widgets. When the QWidget ``owner`` is
    destroyed, the worker is told to stop and the slots are no longer called
    (signals already queued would otherwise reach a deleted widget).

    ``total`` and ``desc`` describe the job (``worker.total``, ``worker.desc``)
    but no bar is put in napari's activity dock: while one is there, napari
    animates a busy indicator in the status bar, and every frame of it repaints
    the window -- the canvas composed while the GIL is held -- which made a run
    ten times slower than the same job without a viewer (``bench_gui.py``).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(_in_background(job), *args, _ignore_errors=True)
    worker.total, worker.desc = int(total), desc
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
    GIL_HANDOVER.worker_started()
    worker.finished.connect(GIL_HANDOVER.worker_finished)
    worker.start()
    return worker


#: while a dock's worker runs, the interpreter hands the GIL over at least this often
#: (seconds; Python's default is 5 ms)
WORKER_SWITCH_INTERVAL_S = 0.0005


class _GilHandover:
    """Python's switch interval lowered while any worker runs, restored after the last.

    The worker's numpy and scipy calls (shifting a frame, its spline filter)
    release the GIL; after each it must take the GIL back, and while the main
    thread runs Python (napari adding a layer: a few hundred ms, pure Python)
    it waits until the main thread hands it over, up to the switch interval.
    In the mean's pass, 1.2 s of main-thread Python kept the worker blocked
    0.86 s at 5 ms, 0.32 s at 0.5 ms (``/proc`` schedstat, its CPU time the
    same): the worker's calls, GIL-free, then run beside the main thread's
    publishing instead of in turn with it. Main thread only."""

    def __init__(self):
        self.running = 0
        self.before: float | None = None

    def worker_started(self) -> None:
        if self.running == 0:
            self.before = sys.getswitchinterval()
            sys.setswitchinterval(min(self.before, WORKER_SWITCH_INTERVAL_S))
        self.running += 1

    def worker_finished(self) -> None:
        self.running = max(self.running - 1, 0)
        if self.running == 0 and self.before is not None:
            sys.setswitchinterval(self.before)
            self.before = None


GIL_HANDOVER = _GilHandover()


#: how much nicer than napari's main thread our workers run (Linux). Enough for the main
#: thread to win the CPU when both want it (a nice of 2 weighs 0.64 of a 0), little
#: enough that on a machine busy with other programs the run keeps about the share
#: the command line gets (at 10 it got a tenth of it and ran 10x slower than the CLI)
BACKGROUND_NICE = 2


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

