"""Where arrays live and come from: the array libraries the engine computes
with (a registry of backends: numpy, CuPy, and any namespace of the array API
standard), the ``device`` option, reading frames from any stack (dask in
groups of chunks), and the allocator setting for the frame loop.

Everything that differs between array libraries is asked of a
:class:`Backend` (:func:`backend_for` a namespace, :func:`backend_of` an
array); nothing outside this package compares namespaces. Adding a backend:
a module with a :class:`Backend` subclass, and one line in
:data:`~._registry.BACKENDS`.

Imports nothing from the rest of the engine.
"""

from __future__ import annotations

from ._base import Backend, is_foreign_array
from ._registry import BACKENDS, NUMPY, backend_for, backend_of, to_host

__all__ = ["BACKENDS", "NUMPY", "Backend", "backend_for", "backend_of", "is_foreign_array",
           "to_host"]
