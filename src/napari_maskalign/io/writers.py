"""Writing without half-written files.

:func:`replacing` gives a temporary name in the destination folder and
renames it when the write succeeds; :class:`StackWriter` writes zarr (one
frame per chunk) or TIFF under a temporary name and renames it when
complete, so an output never exists half-written under its final name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .stacks import TIFF_SUFFIXES

__all__ = [
    "OutputLock",
    "OutputBusy",
    "StackWriter",
    "WriteFailed",
    "atomic_write_text",
    "iter_blocks",
    "ngff_attrs",
    "open_ngff_array",
    "output_format",
    "output_locks",
    "partial_name",
    "remove_path",
    "replacing",
    "stale_partials",
    "write_json_atomic",
]


@contextlib.contextmanager
def replacing(path, suffix: str = ".tmp"):
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` on success.

    Readers see either the old file or the new one, never a half-written one,
    even if the process is killed mid-write; on an error the temporary file
    is removed. (A random name, not mkstemp: its files are private, 0600, and
    the result should get the usual permissions.)
    """
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to a temporary file in the destination folder, then rename it."""
    with replacing(path) as tmp, open(tmp, "x", newline="") as f:
        f.write(text)
        f.flush()
        if durable:
            os.fsync(f.fileno())


def output_format(path) -> str:
    """``"zarr"`` or ``"tiff"`` from the output name; ``ValueError`` otherwise."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    raise ValueError(
        f"cannot tell the output format from {Path(os.fspath(path)).name!r}: end the name "
        "with .zarr (chunked, one frame per chunk) or .tif/.tiff"
    )


def partial_name(path, token: str | None = None) -> Path:
    """The temporary name an output is written under before it is renamed."""
    path = Path(os.fspath(path))
    return path.with_name(f".{path.name}.partial-{token or uuid.uuid4().hex[:8]}")


def stale_partials(path) -> list[Path]:
    """Unfinished outputs left by earlier runs that were killed (``.NAME.partial-*``)."""
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    return sorted(folder.glob(f".{glob.escape(path.name)}.partial-*"))


def remove_path(path: Path) -> None:
    """Remove a file, a link or a whole folder (our own temporary outputs only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class WriteFailed(OSError):
    """Writing an output failed (a full disk, a lost mount): the text names the file and
    says what was saved; ``errno`` is the system's."""

    def __init__(self, errno: int | None, message: str, filename=None):
        super().__init__(errno, message, *(() if filename is None else (str(filename),)))
        self.message = message

    def __str__(self) -> str:
        return self.message


class OutputBusy(ValueError):
    """Another live run is writing the output (it holds the output's lock)."""


class OutputLock:
    """The lock of one output while a run writes it: ``.NAME.lock`` beside it.

    The lock file holds the owner's pid; the lock itself is an ``fcntl.flock``
    on it, which the system drops when the owner ends, however it ends (kill
    -9 included). So a lock file without a lock is a dead run's, and the
    output's unfinished ``.partial-*`` files are stale only while the lock can
    be taken. :meth:`acquire` raises :class:`OutputBusy` (a ``ValueError``)
    naming the output and the owner's pid when a live run holds it. Released
    (and its file removed) on :meth:`release` or leaving the ``with`` block.
    """

    def __init__(self, output):
        self.output = Path(os.fspath(output)).expanduser()
        self.path = self.path_for(self.output)
        self._fd = None

    @staticmethod
    def path_for(output) -> Path:
        output = Path(os.fspath(output)).expanduser()
        return output.with_name(f".{output.name}.lock")

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # Windows has no flock: outputs are not locked there
            return self

        for _ in range(10):  # the owner may remove the file between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    owner = os.read(fd, 64).decode(errors="replace").split()
                finally:
                    os.close(fd)
                pid = f"pid {owner[0]}" if owner else "pid unknown"
                raise OutputBusy(
                    f"{self.output} is being written by another run ({pid}, lock {self.path.name});"
                    " wait for it to finish or stop it (its unfinished output is not removed)"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                self._fd = fd
                return self
            os.close(fd)
        raise OutputBusy(f"cannot take the lock {self.path} of {self.output}")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: no one holds a lock on a removed file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def output_locks(paths):
    """Hold the :class:`OutputLock` of every path (None skipped) for a ``with`` block."""
    with contextlib.ExitStack() as stack:
        for p in paths:
            if p is not None:
                stack.enter_context(OutputLock(p))
        yield


class StackWriter:
    """Write a stack frame by frame under a temporary name; rename it when complete.

    ``.zarr`` outputs are OME-Zarr images (NGFF 0.4: a group whose metadata
    names the axes t, y, x, with the stack as array "0", one frame per chunk); ``.tif``/``.tiff``
    outputs are one uncompressed multi-page TIFF (BigTIFF above 2 GB) that
    :func:`open_stack` memory-maps. Frames must be written in order. Use as a
    context manager: leaving the block normally renames the finished file to
    its final name (replacing an existing one only with ``overwrite=True``);
    an exception removes the temporary file.

    Parameters
    ----------
    path : str or path
        Final name.
    shape, dtype
        Of the whole stack.
    overwrite : bool
        Replace an existing output (only once the new one is complete).
    attrs : dict, optional
        JSON-serializable metadata (zarr attributes; TIFF image description).
    """

    def __init__(self, path, shape, dtype, *, overwrite: bool = False, attrs: dict | None = None):
        self.path = Path(os.fspath(path)).expanduser()
        self.format = output_format(self.path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.overwrite = overwrite
        self.attrs = dict(attrs or {})
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"the output {self.path} exists and overwrite was not asked for")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"the output folder {self.path.parent} does not exist")
        self.tmp = partial_name(self.path)
        self.written = 0
        self._tw = None
        self._z = None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            try:
                self.abort()
            except OSError:  # never in place of what stopped the write (Ctrl-C, a full disk)
                pass  # the partial output is stale now: the next run removes it
        return False

    def open(self):
        if self.format == "zarr":
            self._z = open_ngff_array(self.tmp, self.shape, self.dtype, attrs=self.attrs)
        else:
            import tifffile

            big = math.prod(self.shape) * self.dtype.itemsize > 2**31
            self._tw = tifffile.TiffWriter(str(self.tmp), bigtiff=big)
        return self

    def write(self, block) -> None:
        """Append frames (one frame, or a block of frames along the first axis)."""
        block = np.asarray(block, dtype=self.dtype)
        if block.shape == self.shape[1:]:
            block = block[None]
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"frames of shape {block.shape[1:]} do not fit {self.shape[1:]}")
        lo, hi = self.written, self.written + block.shape[0]
        if hi > self.shape[0]:
            raise ValueError(f"too many frames: the output holds {self.shape[0]}")
        try:
            if self._z is not None:
                self._z[lo:hi] = block
            else:
                for j, frame in enumerate(block):
                    if lo + j == 0:
                        # tifffile keeps the series' shape in a JSON description
                        self._tw.write(frame, contiguous=True, metadata=dict(self.attrs))
                    else:
                        self._tw.write(frame, contiguous=True)
                    self.written = lo + j + 1
        except OSError as exc:  # a full disk: say which file, and how far it got
            raise WriteFailed(
                exc.errno,
                f"{exc.strerror or exc} ({self.written} of {self.shape[0]} frames were written; "
                "the unfinished output is removed)",
                self.path,
            ) from exc
        self.written = hi

    def commit(self) -> Path:
        if self.written != self.shape[0]:
            self.abort()
            raise RuntimeError(
                f"only {self.written} of {self.shape[0]} frames were written to {self.path}"
            )
        if self._tw is not None:
            self._tw.close()
            self._tw = None
        self._z = None
        old = None
        if self.path.exists():
            if not self.overwrite:
                self.abort()
                raise FileExistsError(
                    f"the output {self.path} appeared while writing; not replaced"
                )
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            remove_path(old)
        return self.path

    def abort(self) -> None:
        if self._tw is not None:
            try:
                self._tw.close()
            except Exception:
                pass
            self._tw = None
        self._z = None
        for attempt in range(3):  # zarr may still be finishing a chunk in another thread
            if not self.tmp.exists():
                return
            try:
                remove_path(self.tmp)
                return
            except OSError:
                if attempt == 2:
                    raise
                time.sleep(0.2)


def ngff_attrs(shape, name: str = "") -> dict:
    """OME-NGFF 0.4 ``multiscales`` metadata for one frame stack of ``shape``: axes
    t (the frames), z, y, x (space, in pixels) and an identity scale."""
    axes = [{"name": "t", "type": "time"}]
    axes += [{"name": a, "type": "space"} for a in "zyx"[-(len(shape) - 1):]]
    return {"multiscales": [{
        "version": "0.4",
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * len(shape)}]}],
    }]}


def open_ngff_array(path, shape, dtype, *, attrs: dict | None = None):
    """A new OME-Zarr image (NGFF 0.4, zarr format 2) at ``path``: a group with the
    ``multiscales`` metadata (named axes) and one array "0", chunked one frame per
    chunk, which is returned. ``attrs`` go into the group's attributes too."""
    import zarr

    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    try:  # zarr 3 writes format 3 unless told; NGFF 0.4 readers expect format 2
        group = zarr.open_group(str(path), mode="w-", zarr_format=2)
    except TypeError:  # zarr 2
        group = zarr.open_group(str(path), mode="w-")
    group.attrs.update({**ngff_attrs(shape, Path(os.fspath(path)).name), **(attrs or {})})
    kwargs = dict(shape=shape, chunks=(1, *shape[1:]), dtype=dtype,
                  fill_value=np.nan if dtype.kind == "f" else 0)
    try:
        return group.create_array("0", **kwargs)
    except AttributeError:  # zarr 2
        return group.create_dataset("0", **kwargs)


def write_json_atomic(path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def iter_blocks(n: int, size: int, start: int = 0) -> Iterable[tuple[int, int]]:
    """``(lo, hi)`` ranges covering ``start..n`` in steps of ``size``."""
    size = max(1, int(size))
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)
