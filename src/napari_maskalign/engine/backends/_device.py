"""Where the numbers are computed: numpy on the CPU, CuPy on a GPU, or any
namespace of the array API standard (array-api-strict in the tests).

The per-frame kernels are written against the array API standard (through
``array-api-compat``); what differs between libraries is asked of their
:class:`~._base.Backend` (the registry in :mod:`._registry`).

``device`` (a :class:`~napari_maskalign.engine.RegistrationOptions` field):

* ``None`` -- follow the input: CuPy (or other non-numpy array API) stacks
  are registered where they are, everything else on the CPU;
* ``"cpu"`` -- numpy and scipy, whatever the input;
* ``"gpu"`` -- CuPy; a clear error if CuPy or a GPU is missing.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from ._base import is_foreign_array
from ._cupy import CupyBackend
from ._registry import backend_for, namespace_of, to_host

__all__ = [
    "DEVICES",
    "GPU_MISSING",
    "check_device",
    "gpu_available",
    "is_foreign_array",
    "namespace_for",
    "namespace_of",
    "native",
    "to_host",
    "to_namespace",
]

#: the values of the ``device`` option
DEVICES = (None, "cpu", "gpu")

GPU_MISSING = (
    "device='gpu' needs CuPy and a CUDA GPU: install the 'gpu' extra "
    "(pip install 'napari-maskalign[gpu]', which brings cupy-cuda12x) on a machine with an "
    "NVIDIA GPU, or use device='cpu'"
)


def check_device(device):
    """``device`` checked: None, "cpu" or "gpu" (``ValueError`` in plain words)."""
    if device not in DEVICES:
        raise ValueError(f"device must be 'cpu', 'gpu' or None (follow the input), got {device!r}")
    return device


def gpu_available() -> bool:
    """Whether CuPy is installed and sees at least one GPU."""
    return CupyBackend.available()


def namespace_for(device, *inputs):
    """The namespace a run computes in, from the ``device`` option and its inputs."""
    check_device(device)
    if device == "cpu":
        return np
    if device == "gpu":
        xp = CupyBackend.default_namespace()
        if xp is None:
            raise ValueError(GPU_MISSING)
        return xp
    for x in inputs:
        if x is not None and is_foreign_array(x):
            return array_namespace(x)
    return np


def to_namespace(xp, x, dtype=None):
    """``x`` (numpy or ``xp``) as an array of namespace ``xp``."""
    return backend_for(xp).own(x, dtype)


def native(x):
    """``x`` where it is: arrays of an array API library (CuPy, dask) as they are,
    anything else (memory maps, lists) as a numpy array."""
    return x if is_array_api_obj(x) and not isinstance(x, np.ndarray) else np.asarray(x)
