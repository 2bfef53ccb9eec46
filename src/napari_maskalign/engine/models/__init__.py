"""Motion models: transforms and their parameters, the Gauss-Newton
refinement and its Cramer-Rao bound, the rigid and similarity registrar, the
non-rigid model (``nonrigid``: patches, a B-spline, masked Gauss-Newton) and
aligned copies made with shifts, transforms or fields (``_fields``).

Imports only :mod:`~napari_maskalign.engine.kernels` and
:mod:`~napari_maskalign.engine.backends`.
"""
