"""Index grids shared by the kernels and the warps."""

from __future__ import annotations

import numpy as np

__all__ = ["outer_and"]


def outer_and(flags):
    """Broadcast per-axis boolean vectors to their n-dimensional AND."""
    nd = len(flags)
    out = np.ones(tuple(len(f) for f in flags), dtype=bool)
    for ax, f in enumerate(flags):
        out &= np.asarray(f, dtype=bool).reshape([-1 if i == ax else 1 for i in range(nd)])
    return out
