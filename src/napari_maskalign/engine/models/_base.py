"""The model protocol: what every motion model tells the rest of the engine.

A model is one object (see :data:`~napari_maskalign.engine.models.MODELS`):
its name, what a table and a plot show of it, which frames it takes, how its
coarse search starts, the Jacobian of its warp for the Gauss-Newton
refinement, and how its parameters become a transform. Nothing outside a
model's module compares model names.

The warp ``W(q) = c + A (q - c) + u`` takes a reference pixel ``q`` to where
the moving frame holds its content (``c`` the frame's centre); its parameters
start with ``u`` (one value per axis), then whatever builds ``A``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AXIS_NAMES", "Model"]

#: the data axes a shift's components belong to, last ``ndim`` of them (the shift
#: table's ``shift_z``, ``shift_y``, ``shift_x``; the plot's and the dock's names)
AXIS_NAMES = ("z", "y", "x")


class Model:
    """One motion model. Subclasses set the attributes and the warp's methods.

    Attributes
    ----------
    name : str
        The option's value (``RegistrationOptions.model``, ``--model``, the
        journal's settings, layer metadata).
    label : str
        How the Register dock lists it.
    summary : str
        What moves, in a few words (the command line's help).
    frame_ndims : tuple of int
        The frame dimensions it registers.
    columns : tuple of str
        The columns a shift table (CSV) adds after the shift for this model;
        the drift plot draws them too.
    shift_only : bool
        Its transforms are pure shifts (aligning needs only ``shifts``).
    scales : bool
        It estimates a magnification.
    refine_optional : bool
        ``refine=False`` is allowed (the peak alone is an answer).
    gpu : bool
        The GPU path registers it.
    fields : bool
        Its frames are aligned by a field per frame (the result's ``field(i)``),
        not by the table's transforms; its stack run is its own.
    """

    name: str = ""
    label: str = ""
    summary: str = ""
    frame_ndims: tuple[int, ...] = (2,)
    columns: tuple[str, ...] = ()
    shift_only: bool = False
    scales: bool = False
    refine_optional: bool = False
    gpu: bool = False
    fields: bool = False

    def check_options(self, options) -> None:
        """The model's own checks of a :class:`RegistrationOptions` (``ValueError`` in
        plain words); the options' general checks have passed."""

    def fingerprint_items(self, options) -> dict:
        """The model's own settings that decide its results (a resumed run must match)."""
        return {}

    def __repr__(self) -> str:
        return f"<{self.name} model>"

    @property
    def frames_text(self) -> str:
        """``"2D"`` or ``"2D or 3D"``: the frames it takes, in words."""
        return " or ".join(f"{n}D" for n in self.frame_ndims)

    # -- the table ------------------------------------------------------------
    def fits_table(self, rotations, scales) -> bool:
        """Whether a shift table with these columns (None: absent) is this model's
        (the registry asks the models in order; the first that fits wins)."""
        raise NotImplementedError

    # -- the warp (refinement) ------------------------------------------------
    def n_params(self, ndim: int) -> int:
        """Number of warp parameters for frames of ``ndim`` dimensions."""
        raise NotImplementedError

    def warp_matrix(self, params) -> np.ndarray:
        """The warp's matrix ``A`` (2D models)."""
        raise NotImplementedError

    def jacobian(self, params, grad, d, cols) -> None:
        """Fill ``cols[:, 2:]``, the Jacobian's columns of the parameters after ``u``:
        ``grad`` the moving frame's gradient at ``W(q)`` ``(2, K)``, ``d`` the points
        ``q - c`` ``(2, K)``."""
        raise NotImplementedError

    def step_size(self, step, rmax: float) -> float:
        """How far a Gauss-Newton step moves the frame, in pixels (``rmax``: the
        farthest point from the centre), for the convergence test."""
        return float(np.linalg.norm(step[:2]) + np.sum(np.abs(step[2:])) * rmax)

    def transform(self, params, centre) -> np.ndarray:
        """The registering transform (moving pixel -> reference coordinate) of a warp."""
        params = np.asarray(params, dtype=float)
        c = np.asarray(centre, dtype=float)
        out = np.eye(len(c) + 1)
        inv = np.linalg.inv(self.warp_matrix(params))
        out[:2, :2] = inv
        out[:2, 2] = c - inv @ (c + params[:2])
        return out

    # -- the coarse search ----------------------------------------------------
    def from_coarse(self, u, theta: float, lin) -> np.ndarray:
        """Warp parameters from the coarse search: shift ``u``, turn ``theta``
        (radians) and the warp's matrix ``lin`` (turn and scale)."""
        raise NotImplementedError

    def searcher(self, reference, ref_valid, mov_valid, *, overlap_ratio: float):
        """The per-reference object that registers frames from scratch (coarse
        search, then refinement): ``register(frame) -> (transform, quality)``,
        ``set_reference``, ``xcorr_window``. Models with a rotation or a scale
        search with the mask-aware log-polar registrar."""
        from ._logpolar import ModelRegistrar

        return ModelRegistrar(reference, ref_valid, mov_valid, self,
                              overlap_ratio=overlap_ratio)
