"""Where the numbers are computed: numpy on the CPU, CuPy on a GPU, or any
namespace of the array API standard (array-api-strict in the tests).

The per-frame kernels are written against the array API standard (through
``array-api-compat``); numpy arrays use numpy itself, with a few in-place
forms (``out=``) that the standard does not have, in :class:`Ops`.

``device`` (a :class:`~napari_maskalign.engine.RegistrationOptions` field):

* ``None`` -- follow the input: CuPy (or other non-numpy array API) stacks
  are registered where they are, everything else on the CPU;
* ``"cpu"`` -- numpy and scipy, whatever the input;
* ``"gpu"`` -- CuPy; a clear error if CuPy or a GPU is missing.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_dask_array, is_numpy_array

__all__ = [
    "DEVICES",
    "GPU_MISSING",
    "Ops",
    "check_device",
    "gpu_available",
    "namespace_for",
    "namespace_of",
    "to_host",
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


def _cupy():
    """The cupy module if it is installed and sees a GPU, else None."""
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # no driver, no device
        return None
    return cupy


def gpu_available() -> bool:
    """Whether CuPy is installed and sees at least one GPU."""
    return _cupy() is not None


def is_foreign_array(x) -> bool:
    """An array API array that is neither numpy nor dask (CuPy, array-api-strict, ...)."""
    return is_array_api_obj(x) and not is_numpy_array(x) and not is_dask_array(x)


def namespace_of(x):
    """numpy itself for numpy arrays, else the array's array API namespace."""
    if isinstance(x, np.ndarray) or not is_array_api_obj(x):
        return np
    return array_namespace(x)


def namespace_for(device, *inputs):
    """The namespace a run computes in, from the ``device`` option and its inputs."""
    check_device(device)
    if device == "cpu":
        return np
    if device == "gpu":
        cupy = _cupy()
        if cupy is None:
            raise ValueError(GPU_MISSING)
        return array_namespace(cupy.empty(0))
    for x in inputs:
        if x is not None and is_foreign_array(x):
            return array_namespace(x)
    return np


def to_host(x) -> np.ndarray:
    """Any array as a numpy array (copied from a GPU; numpy arrays as they are)."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def to_namespace(xp, x, dtype=None):
    """``x`` (numpy or ``xp``) as an array of namespace ``xp``."""
    if xp is np:
        return np.asarray(to_host(x), dtype=dtype)
    if not is_foreign_array(x):
        x = np.ascontiguousarray(x)
    out = xp.asarray(x)
    return out if dtype is None else xp.astype(out, dtype)


class Ops:
    """The few in-place operations of the kernels: ``out=`` for numpy, new
    arrays elsewhere (the standard has in-place operators but no ``out=``)."""

    def __init__(self, xp):
        self.xp = xp
        self.numpy = xp is np

    def conj(self, x):
        return np.conjugate(x, out=x) if self.numpy else self.xp.conj(x)

    def rsub(self, a, b):
        """``a - b``, in ``b``'s memory where possible."""
        return np.subtract(a, b, out=b) if self.numpy else a - b

    def clamp_low(self, x, lo):
        return np.maximum(x, lo, out=x) if self.numpy else self.xp.maximum(x, lo)

    def sqrt(self, x):
        return np.sqrt(x, out=x) if self.numpy else self.xp.sqrt(x)

    def clip(self, x, lo, hi):
        return np.clip(x, lo, hi, out=x) if self.numpy else self.xp.clip(x, lo, hi)

    def divide_where(self, num, den, ok):
        """``num / den`` where ``ok``, 0 elsewhere."""
        if self.numpy:
            out = np.zeros_like(den)
            return np.divide(num, den, out=out, where=ok)
        xp = self.xp
        return xp.where(ok, num / xp.where(ok, den, xp.ones_like(den)), xp.zeros_like(den))

    def multiply_into(self, out, index, a, b):
        """``out[index] = a * b``."""
        if self.numpy:
            np.multiply(a, b, out=out[index])
        else:
            out[index] = a * b
