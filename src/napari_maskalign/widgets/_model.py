"""A registration result as an ``<image> aligned`` layer carries it: typed, one place.

The Register dock makes it from the engine's result, the Shifts dock from an
imported CSV or an edit; both read it back with
:meth:`AlignedResult.from_layer`. In ``layer.metadata`` it is a plain
dictionary under the key ``"maskalign"`` (:data:`META`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_maskalign.engine.models import AXIS_NAMES, DEFAULT_MODEL
from napari_maskalign.workflow.align import AlignSettings

__all__ = ["AXIS_NAMES", "META", "AlignedResult", "axis_names"]

#: key of the per-layer result dictionary in ``layer.metadata``
META = "maskalign"


def axis_names(ndim: int) -> tuple[str, ...]:
    return AXIS_NAMES[-ndim:]


@dataclass(frozen=True)
class AlignedResult:
    """Shifts of a stack and how its aligned copy was made.

    Attributes
    ----------
    source : str
        The name of the stack layer the shifts are for.
    shifts, raw_shifts : ndarray, shape (n_frames, ndim)
        Shifts in use (after edits and interpolation) and as measured.
    quality : ndarray, shape (n_frames,)
        Match quality (NaN where unknown, e.g. an imported table without it).
    outliers : ndarray of bool, shape (n_frames,)
        Flagged frames.
    frame_shape : tuple of int
        The shape of the frames the shifts were measured on.
    reference : str
        What the frames were registered to, in words.
    mask : str or None
        The mask layer's name, if one was used.
    params : dict
        The settings of the run (or where an imported table came from).
    align : AlignSettings
        How the aligned copy is made (method, fill value, integer output); in
        ``layer.metadata`` as a plain dictionary.
    model : str
        The transform model.
    edited : tuple of int
        Frames whose shift was set by hand.
    shifts_from : str or None
        For a layer aligned with another stack's shifts: that stack's name.
    valid : ndarray of bool or None
        The mask registration used (True = valid; the painted mask without the
        hot pixels): where it ignores pixels, aligned frames and the mean have
        no data. None when every pixel was used.
    reference_frame : int or None
        The frame every frame was registered to, when that was one frame.
    mean_outliers : bool
        Whether flagged outliers are averaged into ``<source> mean`` (by
        default they are left out).
    rotations, scales : ndarray, shape (n_frames,), or None
        Rigid and similarity models: each frame's rotation (degrees,
        counterclockwise as seen in napari) and scale about the frame's
        centre, whose shift ``shifts`` then is. None for translation.
    fields : FieldStack or None
        The non-rigid model: each frame's field (spline coefficients; the
        aligned frame is ``frame(x + v(x))``), which aligns the frames instead
        of ``shifts`` (then the global part).
    deformation_rms : ndarray, shape (n_frames,), or None
        The non-rigid model: each frame's field beyond its global shift, RMS over
        the valid pixels (px); the Shifts plot draws it.
    uncertainties : ndarray, shape (n_frames, ndim), or None
        One-sigma error of each measured shift (px per axis; NaN where
        unknown), None when the result has none (an old table).
    parameter_uncertainties : ndarray, shape (n_frames, 2), or None
        Rigid and similarity: one-sigma error of the rotation (degrees) and the
        scale, as measured.
    jumps : tuple of int or None
        Smoothed over time (``smoothing="auto"``): the frames that start a new
        segment (``shifts`` are smoothed, ``raw_shifts`` measured); None when
        the shifts were not smoothed.
    smoothed_sigma : ndarray, shape (n_frames, ndim) or (n_frames, ndim + 2), or None
        Smoothed: the one-sigma errors of the smoothed values: the shift per
        axis, then for rigid and similarity the rotation (degrees) and scale.
    measured_turns : ndarray, shape (n_frames, 2), or None
        Smoothed rigid and similarity results: the rotation (degrees) and the
        scale as measured (``rotations`` and ``scales`` are smoothed).
    """

    source: str
    shifts: np.ndarray
    quality: np.ndarray
    outliers: np.ndarray
    raw_shifts: np.ndarray
    frame_shape: tuple[int, ...]
    reference: str = ""
    mask: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    align: AlignSettings = field(default_factory=AlignSettings)
    model: str = DEFAULT_MODEL
    edited: tuple[int, ...] = ()
    shifts_from: str | None = None
    valid: np.ndarray | None = None
    reference_frame: int | None = None
    mean_outliers: bool = False
    rotations: np.ndarray | None = None
    scales: np.ndarray | None = None
    fields: Any = None
    deformation_rms: np.ndarray | None = None
    uncertainties: np.ndarray | None = None
    parameter_uncertainties: np.ndarray | None = None
    jumps: tuple[int, ...] | None = None
    smoothed_sigma: np.ndarray | None = None
    measured_turns: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(len(self.shifts))

    def shift_uncertainties(self) -> np.ndarray | None:
        """The one-sigma errors of :attr:`shifts` as they stand (the smoothed shifts'
        own when smoothed): NaN on frames whose shift was interpolated or edited (not
        the run's); None when there are none."""
        sigma = self.uncertainties
        if self.jumps is not None:
            sigma = None if self.smoothed_sigma is None else self.smoothed_sigma[:, :self.ndim]
        return self._as_they_stand(sigma, self.shifts.shape)

    def turn_uncertainties(self) -> np.ndarray | None:
        """The one-sigma errors of :attr:`rotations` and :attr:`scales` as they stand (the
        smoothed ones' own when smoothed; NaN where not the run's)."""
        if self.rotations is None:
            return None
        sigma = self.parameter_uncertainties
        if self.jumps is not None:
            sigma = None if self.smoothed_sigma is None else self.smoothed_sigma[:, self.ndim:]
        return self._as_they_stand(sigma, (self.n_frames, 2))

    def _as_they_stand(self, sigma, shape) -> np.ndarray | None:
        if sigma is None or np.shape(sigma) != shape:
            return None
        sigma = np.array(sigma, dtype=float)
        sigma[~self._measured()] = np.nan
        return sigma

    def _measured(self) -> np.ndarray:
        """Frames whose shift is the run's: as measured, or smoothed from the measured
        ones (not interpolated, not edited)."""
        if self.jumps is not None:  # every frame smoothed, outliers too
            measured = np.ones(self.n_frames, bool)
        else:
            measured = np.all(np.isclose(self.shifts, self.raw_shifts), axis=1)
        measured[np.asarray(self.edited, int)] = False
        return measured

    def measured_table(self):
        """A smoothed result's values as measured (a
        :class:`~napari_maskalign.io.ShiftTable`, the raw columns of its CSV); None
        when the shifts were not smoothed."""
        if self.jumps is None:
            return None
        from napari_maskalign.io import ShiftTable

        turns = (None, None) if self.measured_turns is None else tuple(self.measured_turns.T)
        return ShiftTable(self.raw_shifts, self.quality, *turns, self.uncertainties,
                          self.parameter_uncertainties if self.rotations is not None else None)

    @property
    def ndim(self) -> int:
        return int(np.shape(self.shifts)[1])

    @property
    def axes(self) -> tuple[str, ...]:
        return axis_names(self.ndim)

    @property
    def moves(self) -> bool:
        """Whether frames rotate or scale too (a rigid or similarity result)."""
        return self.rotations is not None or self.scales is not None

    @property
    def transforms(self) -> np.ndarray:
        """``(n_frames, ndim + 1, ndim + 1)`` matrices, napari's ``affine`` convention."""
        from napari_maskalign.engine import similarity_transforms

        return similarity_transforms(self.shifts, self.rotations, self.scales,
                                     self.frame_shape or None)

    @property
    def to_apply(self):
        """What aligns the frames: the shifts, the transforms when frames rotate, the
        fields (a FieldStack) for a non-rigid result."""
        if self.fields is not None:
            return self.fields
        return self.transforms if self.moves else self.shifts

    def replace(self, **changes) -> AlignedResult:
        return dataclasses.replace(self, **changes)

    def mismatch(self, name: str, n_frames: int, frame_shape) -> str | None:
        """Why these shifts cannot align the stack ``name`` (``n_frames`` frames of
        ``frame_shape``), in plain words; None if they can."""
        frame_shape = tuple(frame_shape)
        if n_frames != self.n_frames:
            return (f"'{name}' has {n_frames} frames but the shifts are for "
                    f"{self.n_frames} frames")
        if len(frame_shape) != self.ndim:
            return (f"'{name}' has {len(frame_shape)}D frames but the shifts are for "
                    f"{self.ndim}D frames")
        measured = self.frame_shape or frame_shape
        if frame_shape != measured:
            return (f"'{name}' has frames of shape {frame_shape} but the shifts were measured "
                    f"on frames of shape {measured}; shifts are in pixels of those frames")
        return None

    def mean_exclude(self) -> np.ndarray | None:
        """The frames the mean leaves out (the flagged outliers, unless asked otherwise)."""
        return None if self.mean_outliers else np.asarray(self.outliers, bool)

    # -- to and from layers ---------------------------------------------------
    @classmethod
    def from_registration(cls, result, *, source: str, frame_shape, reference: str,
                          mask: str | None, align: AlignSettings, **fields) -> AlignedResult:
        """From the engine's :class:`~napari_maskalign.engine.RegistrationResult`;
        ``fields``: the others (``valid``, ``reference_frame``, ...)."""
        moves = not result.transform_model.shift_only
        if getattr(result.transform_model, "fields", False):
            fields = {"fields": result.field_stack,
                      "deformation_rms": np.asarray(result.deformation_rms, float), **fields}
        return cls(
            source=source,
            shifts=np.asarray(result.shifts, float),
            quality=np.asarray(result.quality, float),
            outliers=np.asarray(result.outliers, bool),
            raw_shifts=np.asarray(result.raw_shifts, float),
            frame_shape=tuple(int(s) for s in frame_shape),
            reference=reference,
            mask=mask,
            params=dict(result.params),
            align=align,
            model=result.model,
            rotations=np.asarray(result.rotations, float) if moves else None,
            scales=np.asarray(result.scales, float) if moves else None,
            uncertainties=getattr(result, "uncertainties", None),
            parameter_uncertainties=getattr(result, "parameter_uncertainties", None),
            jumps=None if getattr(result, "jumps", None) is None else tuple(
                int(j) for j in result.jumps),
            **(_smoothed(result, frame_shape, moves) if getattr(result, "jumps", None) is not None
               else {}),
            **{"valid": result.valid_mask, **fields},
        )

    def to_metadata(self) -> dict:
        """``{META: {...}}`` for ``layer.metadata`` (plain values, role "aligned")."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["edited"] = list(self.edited)
        if self.jumps is not None:
            d["jumps"] = list(self.jumps)
        d["align"] = self.align.to_dict()
        if self.moves:  # the matrices too, for anyone reading the metadata
            d["transforms"] = self.transforms
        return {META: {"role": "aligned", "axes": self.axes, **d}}

    @classmethod
    def from_layer(cls, layer) -> AlignedResult | None:
        """The result an output layer carries, or None (no layer, or no shifts on it)."""
        if layer is None:
            return None
        meta = layer.metadata.get(META)
        if not isinstance(meta, dict) or "shifts" not in meta:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in meta.items() if k in known}
        shifts = np.asarray(d["shifts"], float)
        d["shifts"] = shifts
        d["raw_shifts"] = np.asarray(d.get("raw_shifts", shifts), float)
        d["quality"] = np.asarray(d.get("quality", np.full(len(shifts), np.nan)), float)
        d["outliers"] = np.asarray(d.get("outliers", np.zeros(len(shifts), bool)), bool)
        d["frame_shape"] = tuple(d.get("frame_shape", ()))
        d["edited"] = tuple(int(i) for i in d.get("edited", ()))
        if d.get("jumps") is not None:
            d["jumps"] = tuple(int(j) for j in d["jumps"])
        d["align"] = AlignSettings.from_dict(d.get("align"))
        if d.get("valid") is not None:
            d["valid"] = np.asarray(d["valid"], bool)
        for key in ("rotations", "scales", "deformation_rms", "uncertainties",
                    "parameter_uncertainties", "smoothed_sigma", "measured_turns"):
            if d.get(key) is not None:
                d[key] = np.asarray(d[key], float)
        return cls(**d)


def _smoothed(result, frame_shape, moves: bool) -> dict:
    """A smoothed result's errors of its smoothed values and (rigid, similarity) its
    measured rotations and scales."""
    if not moves:
        return {"smoothed_sigma": result.smoothed_uncertainties}
    from napari_maskalign.engine import transform_parameters

    _, rotations, scales = transform_parameters(result.raw_transforms, frame_shape)
    return {"smoothed_sigma": np.column_stack([result.smoothed_uncertainties,
                                               result.smoothed_parameter_uncertainties]),
            "measured_turns": np.column_stack([rotations, scales])}
