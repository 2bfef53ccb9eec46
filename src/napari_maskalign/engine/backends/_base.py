"""The backend protocol: what the engine asks of an array library.

The kernels are written against the array API standard and take the
namespace ``xp``; everything that differs between libraries (in-place forms,
where ndimage and the FFT live, how arrays come back to the host, whether
frames are registered in batches) is a method or an attribute of the
:class:`Backend` that :func:`~napari_maskalign.engine.backends.backend_for`
returns for that namespace. This class is also the generic backend: any
namespace of the standard (array-api-strict in the tests).
"""

from __future__ import annotations

import numpy as np
from array_api_compat import is_array_api_obj, is_dask_array, is_numpy_array

__all__ = ["Backend", "is_foreign_array", "registered", "to_host"]

#: the backend classes by name, filled by :mod:`._registry` (here, so that every
#: backend module can reach them without importing the registry)
registered: dict[str, type[Backend]] = {}


def is_foreign_array(x) -> bool:
    """An array API array that is neither numpy nor dask (CuPy, array-api-strict, ...)."""
    return is_array_api_obj(x) and not is_numpy_array(x) and not is_dask_array(x)


class Backend:
    """One array library the engine computes with (a namespace of the array API
    standard, used as it is: new arrays, no ``out=``).

    Attributes
    ----------
    name : str
        The registry's key.
    xp : namespace
        The array API namespace.
    on_host : bool
        Arrays live in host memory as numpy arrays.
    batches : bool
        Frames are registered in batches here (a device: masked translation
        only, frames registered together); else one frame per thread.
    """

    name = "array-api"
    on_host = False
    batches = True

    def __init__(self, xp):
        self.xp = xp

    def __repr__(self) -> str:
        return f"<{self.name} backend>"

    # -- recognising and moving arrays -------------------------------------------
    @classmethod
    def serves(cls, xp) -> bool:
        """Whether namespace ``xp`` is this library's (the generic backend: no claim)."""
        return False

    @classmethod
    def owns(cls, x) -> bool:
        """Whether ``x`` is this library's array (the generic backend: no claim)."""
        return False

    @staticmethod
    def host(x) -> np.ndarray:
        """``x`` as a numpy array."""
        return np.asarray(x)

    def own(self, x, dtype=None):
        """``x`` (numpy or this library's) as this library's array."""
        if not is_foreign_array(x):
            x = np.ascontiguousarray(to_host(x))
        out = self.xp.asarray(x)
        return out if dtype is None else self.xp.astype(out, dtype)

    def astype(self, x, dtype):
        """``x`` in ``dtype``, without a copy when it already is."""
        return self.xp.astype(x, dtype, copy=False)

    # -- what the standard lacks ----------------------------------------------
    @property
    def ndimage(self):
        """scipy.ndimage's counterpart (shifting and warping frames)."""
        raise ValueError(
            f"shifting frames needs numpy or CuPy arrays, got arrays of {self.xp.__name__}"
        )

    @property
    def fft(self):
        """scipy.fft's counterpart (Fourier shifts)."""
        return self.ndimage  # the standard's namespaces have neither: the same error

    def concat(self, arrays, axis: int):
        return self.xp.concat(arrays, axis=axis)

    def take(self, x, indices, axis: int):
        return self.xp.take(x, self.xp.asarray(indices), axis=axis)

    # -- in place where the library can (``out=``), new arrays elsewhere ----------
    def conj(self, x):
        return self.xp.conj(x)

    def rsub(self, a, b):
        """``a - b``, in ``b``'s memory where possible."""
        return a - b

    def clamp_low(self, x, lo):
        return self.xp.maximum(x, lo)

    def sqrt(self, x):
        return self.xp.sqrt(x)

    def clip(self, x, lo, hi):
        return self.xp.clip(x, lo, hi)

    def divide_where(self, num, den, ok):
        """``num / den`` where ``ok``, 0 elsewhere."""
        xp = self.xp
        return xp.where(ok, num / xp.where(ok, den, xp.ones_like(den)), xp.zeros_like(den))

    def multiply_into(self, out, index, a, b):
        """``out[index] = a * b``."""
        out[index] = a * b


def to_host(x) -> np.ndarray:
    """Any array as a numpy array (copied from a GPU; numpy arrays as they are)."""
    for cls in registered.values():
        if cls.owns(x):
            return cls.host(x)
    return np.asarray(x)
