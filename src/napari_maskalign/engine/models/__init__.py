"""Motion models: one module per model, and :data:`MODELS`, the one list of them.

A model (:class:`Model`) knows its name, its table columns, the frames it
takes, its coarse search, its refinement Jacobian and how its parameters
become a transform. Also here: the Gauss-Newton refinement and its
Cramer-Rao bound, the mask-aware log-polar search, and aligned copies made
with shifts or transforms.

Adding a model: a module ``_name.py`` with a :class:`Model` subclass and its
instance, and one line in :data:`MODELS` below.

Imports only :mod:`~napari_maskalign.engine.kernels` and
:mod:`~napari_maskalign.engine.backends`.
"""

from __future__ import annotations

from ._base import AXIS_NAMES, Model
from ._rigid import RIGID
from ._similarity import SIMILARITY
from ._translation import TRANSLATION

__all__ = ["AXIS_NAMES", "DEFAULT_MODEL", "MODELS", "Model", "model_for_table", "model_named", "models_for",
           "table_columns"]

#: every model by name, in the order the faces list them (and a table is matched)
MODELS: dict[str, Model] = {m.name: m for m in (
    TRANSLATION,
    RIGID,
    SIMILARITY,
)}

#: the model a run uses unless told otherwise
DEFAULT_MODEL = TRANSLATION.name


def model_named(name) -> Model:
    """The model called ``name`` (a :class:`Model` passes through); ``ValueError``
    naming the choices otherwise."""
    if isinstance(name, Model):
        return name
    model = MODELS.get(name) if isinstance(name, str) else None
    if model is None:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {name!r}")
    return model


def model_for_table(rotations, scales) -> Model:
    """The model a shift table's columns describe (None: the column is absent)."""
    for model in MODELS.values():
        if model.fits_table(rotations, scales):
            return model
    raise ValueError("no model describes a table with these columns")


def table_columns() -> tuple[str, ...]:
    """Every column a model adds to a shift table, in order."""
    out: list[str] = []
    for model in MODELS.values():
        out += [c for c in model.columns if c not in out]
    return tuple(out)


def models_for(ndim: int) -> str:
    """The models that take ``ndim``-D frames, as options: ``"model='translation'"``."""
    return " or ".join(f"model={m.name!r}" for m in MODELS.values() if ndim in m.frame_ndims)
