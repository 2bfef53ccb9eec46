"""The CuPy backend: a CUDA GPU through CuPy (the ``gpu`` extra). The one place
that recognises CuPy."""

from __future__ import annotations

import numpy as np

from ._base import Backend

__all__ = ["CupyBackend", "load_cupy"]


def load_cupy():
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


class CupyBackend(Backend):
    """CuPy arrays on a GPU, cupyx's ndimage, CuPy's FFT; frames in batches."""

    name = "cupy"

    @classmethod
    def available(cls) -> bool:
        return load_cupy() is not None

    @classmethod
    def default_namespace(cls):
        """The array API namespace of CuPy arrays (None without CuPy or a GPU)."""
        cupy = load_cupy()
        if cupy is None:
            return None
        from array_api_compat import array_namespace

        return array_namespace(cupy.empty(0))

    @classmethod
    def serves(cls, xp) -> bool:
        """Whether ``xp`` is CuPy's namespace (CuPy itself or array-api-compat's)."""
        return getattr(xp, "__name__", "").endswith("cupy")

    @classmethod
    def owns(cls, x) -> bool:
        return type(x).__module__.startswith("cupy")

    @staticmethod
    def host(x) -> np.ndarray:
        return x.get()

    @property
    def ndimage(self):
        from cupyx.scipy import ndimage as cundi

        return cundi

    @property
    def fft(self):
        import cupy

        return cupy.fft
