"""Keep freed memory in the process while frames are registered (glibc only).

Every frame allocates a few arrays of the padded transform size (the outputs
of ``scipy.fft``, which cannot write into a given array) and frees them again.
glibc's malloc returns such blocks to the operating system at once (``mmap``
for large blocks, heap trimming for the rest), so the next frame gets fresh
pages and pays a page fault for every 4 KiB it touches: measured on 512x512
frames (900x900 transforms), 5,500 faults per frame and about a third of the
frame's time on one core. With several threads the faults also queue on the
process's memory-map lock, which is what kept frames from scaling with cores.

:func:`hot_memory` raises glibc's mmap and trim thresholds for the duration of
a run, so freed blocks stay in the process and are reused without faults; when
the last run leaves, ``malloc_trim`` hands the memory back and the thresholds
drop to the highest values glibc's own adjustment reaches (blocks over 32 MiB
mapped, heap trimmed past 64 MiB free). The peak memory of a run does not
change. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading

__all__ = ["hot_memory", "warm_heap"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size are served from the heap while a run holds it
_HOT_BYTES = 1 << 30
#: after a run: the ceiling of glibc's dynamic mmap threshold (64-bit)
_AFTER_BYTES = 32 * 2**20

_lock = threading.Lock()
_users = 0
_libc = None
_warm = False


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim"):
                    _libc = lib
            except OSError:
                pass
    return _libc


@contextlib.contextmanager
def hot_memory():
    """Freed memory stays in the process (no page faults on reuse) inside the block."""
    global _users
    libc = _glibc()
    if not libc:
        yield
        return
    with _lock:
        if _users == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _HOT_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _HOT_BYTES)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_BYTES)
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * _AFTER_BYTES)
                libc.malloc_trim(0)


def warm_heap() -> None:
    """Once per process: glibc keeps blocks up to 32 MiB in its heap and trims it
    only past 64 MiB free (the ceiling its own adjustment reaches), instead of
    its defaults, with which the drop-in's every call faulted 3,500 fresh pages
    (14 MiB) in a loop of 512x512 pairs. Costs at most 64 MiB of freed memory
    kept per thread arena; a no-op inside a run and elsewhere than glibc."""
    global _warm
    libc = _glibc()
    if not libc or _warm:
        return
    with _lock:
        if _users == 0 and not _warm:
            libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _AFTER_BYTES)
        _warm = True
