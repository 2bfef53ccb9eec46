"""Correlation kernels: FFTs and the matrix-multiply DFT, phase and masked
(Padfield) correlators, the fine grid around a peak, and the masked
correlators the scikit-image drop-in reuses across calls.

Imports only :mod:`~napari_maskalign.engine.backends`.
"""
