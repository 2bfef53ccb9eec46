"""The non-rigid model in the registry: a smooth field per frame.

The fitting itself (patches, the B-spline, masked Gauss-Newton) is in
:mod:`._nonrigid_fit`, loaded only when a non-rigid run starts (the registry
is imported for the command line's choices without scipy).
"""

from __future__ import annotations

from ._base import Model

__all__ = ["NONRIGID", "Nonrigid"]


class Nonrigid(Model):
    """A smooth field per frame (2D): the global masked translation, then a cubic
    B-spline (:class:`NonrigidRegistrar`). Its stack run is
    :func:`~napari_maskalign.engine.run._nonrigid.nonrigid_steps`; its table's
    transforms are the global shifts (``shift_only``), its fields align the frames."""

    name = "nonrigid"
    label = "nonrigid (smooth field)"
    summary = ("a smooth field per frame (2D; any reference): the shifts file holds the global "
               "translation, SHIFTS.fields.npz the fields")
    frame_ndims = (2,)
    shift_only = True
    refine_optional = False  # its Gauss-Newton on the spline always runs
    gpu = False
    fields = True  # aligning needs the result's fields, not its transforms

    def check_options(self, options) -> None:
        from ._nonrigid_fit import NonrigidSettings  # scipy: only when a run is made

        NonrigidSettings(grid_spacing=float(options.grid_spacing),
                         patch_size=int(options.patch_size),
                         patch_stride=int(options.patch_stride))  # checks them
        if options.device == "gpu":
            raise ValueError(f"the {self.name} model runs on the CPU; use device='cpu' or None")

    def fingerprint_items(self, options) -> dict:
        return {"grid_spacing": float(options.grid_spacing),
                "patch_size": int(options.patch_size),
                "patch_stride": int(options.patch_stride)}

    def fits_table(self, rotations, scales) -> bool:
        return False  # a table of its global shifts reads as translation

    def n_params(self, ndim: int) -> int:
        return ndim

    def searcher(self, reference, ref_valid, mov_valid, *, overlap_ratio: float):
        return None


NONRIGID = Nonrigid()
