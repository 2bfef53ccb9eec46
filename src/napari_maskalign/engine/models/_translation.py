"""Translation: a shift per frame (2D or 3D frames)."""

from __future__ import annotations

import numpy as np

from ._base import Model

__all__ = ["TRANSLATION", "Translation"]


class Translation(Model):
    """A shift per frame. Its coarse search is the correlation peak itself (phase or
    Padfield's masked correlation, batched on a GPU), which
    :class:`~napari_maskalign.engine.FrameRegistrar` runs; the refinement then
    fits the shift alone."""

    name = "translation"
    label = "translation (shift)"
    summary = "shifts; default"
    frame_ndims = (2, 3)
    shift_only = True
    refine_optional = True
    gpu = True

    def fits_table(self, rotations, scales) -> bool:
        return rotations is None and scales is None

    def n_params(self, ndim: int) -> int:
        return ndim

    def step_size(self, step, rmax: float) -> float:
        return float(np.linalg.norm(step))

    def transform(self, params, centre) -> np.ndarray:
        params = np.asarray(params, dtype=float)
        ndim = len(np.asarray(centre))
        out = np.eye(ndim + 1)
        out[:ndim, ndim] = -params
        return out

    def searcher(self, reference, ref_valid, mov_valid, *, overlap_ratio: float):
        return None


TRANSLATION = Translation()
