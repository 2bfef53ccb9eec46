"""The backends by name, and the one way from a namespace or an array to its backend.

Adding a backend: a module with a :class:`~._base.Backend` subclass (its
``serves``, ``owns``, ``host``, and what its library does differently), and
one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from ._base import Backend, registered, to_host
from ._cupy import CupyBackend
from ._numpy import NumpyBackend

__all__ = ["BACKENDS", "NUMPY", "backend_for", "backend_of", "namespace_of", "to_host"]

#: the array libraries the engine knows by name (any other namespace of the array
#: API standard gets the generic :class:`~._base.Backend`)
BACKENDS: dict[str, type[Backend]] = registered
BACKENDS.update({b.name: b for b in (
    NumpyBackend,
    CupyBackend,
)})

#: the CPU backend
NUMPY = NumpyBackend()


def backend_for(xp) -> Backend:
    """The backend of array namespace ``xp``."""
    if xp is np:
        return NUMPY
    for cls in BACKENDS.values():
        if cls.serves(xp):
            return cls(xp)
    return Backend(xp)


def namespace_of(x):
    """numpy itself for numpy arrays, else the array's array API namespace."""
    if isinstance(x, np.ndarray) or not is_array_api_obj(x):
        return np
    return array_namespace(x)


def backend_of(x) -> Backend:
    """The backend of array ``x`` (numpy for anything that is not an array API array)."""
    return backend_for(namespace_of(x))
