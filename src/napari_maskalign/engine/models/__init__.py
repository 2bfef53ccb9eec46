"""Motion models: transforms and their parameters, the Gauss-Newton
refinement and its Cramer-Rao bound, the rigid and similarity registrar, and
aligned copies made with shifts or transforms.

Imports only :mod:`~napari_maskalign.engine.kernels` and
:mod:`~napari_maskalign.engine.backends`.
"""
