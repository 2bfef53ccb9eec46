"""The numpy backend: numpy and scipy on the CPU, in place where numpy allows."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ._base import Backend, to_host

__all__ = ["NumpyBackend"]


class NumpyBackend(Backend):
    """numpy arrays, scipy's ndimage and FFT; frames one per thread."""

    name = "numpy"
    on_host = True
    batches = False

    def __init__(self, xp=np):
        super().__init__(np)

    @classmethod
    def serves(cls, xp) -> bool:
        return xp is np

    @classmethod
    def owns(cls, x) -> bool:
        return isinstance(x, np.ndarray)

    @staticmethod
    def host(x) -> np.ndarray:
        return x

    def own(self, x, dtype=None):
        return np.asarray(to_host(x), dtype=dtype)

    def astype(self, x, dtype):
        return np.asarray(x).astype(dtype, copy=False)

    @property
    def ndimage(self):
        return ndi

    @property
    def fft(self):
        return sfft

    def concat(self, arrays, axis: int):
        return np.concatenate(arrays, axis=axis)

    def take(self, x, indices, axis: int):
        return np.take(x, indices, axis=axis)

    def conj(self, x):
        return np.conjugate(x, out=x)

    def rsub(self, a, b):
        return np.subtract(a, b, out=b)

    def clamp_low(self, x, lo):
        return np.maximum(x, lo, out=x)

    def sqrt(self, x):
        return np.sqrt(x, out=x)

    def clip(self, x, lo, hi):
        return np.clip(x, lo, hi, out=x)

    def divide_where(self, num, den, ok):
        out = np.zeros_like(den)
        return np.divide(num, den, out=out, where=ok)

    def multiply_into(self, out, index, a, b):
        np.multiply(a, b, out=out[index])
