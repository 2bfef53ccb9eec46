"""The workflow both faces share: no Qt, no argparse.

* :mod:`.journal` -- the shifts table written as frames finish, its
  settings file, and resuming a killed run;
* :mod:`.run` -- registering a stack to disk, locally or on a dask cluster;
* :mod:`.align` -- shifts (or transforms) -> aligned frames, in memory,
  lazily or into a file, with progress;
* :mod:`.paths` -- output paths checked before any work.

The ``maskalign`` command and the napari widgets are thin layers over these
and the engine; a setting walks from either face to the engine in one
:class:`~napari_maskalign.engine.RegistrationOptions`.
"""

from .align import (
    AlignProgress,
    MaskedMean,
    MeanAccumulator,
    align_frame,
    align_lazy,
    iter_align,
    iter_mean,
    to_apply,
    write_aligned,
)
from .journal import ShiftJournal, resume_rows, run_settings, sidecar_path
from .paths import check_output_path
from .run import dask_client, register_to_journal

__all__ = [
    "AlignProgress",
    "MaskedMean",
    "MeanAccumulator",
    "ShiftJournal",
    "align_frame",
    "align_lazy",
    "check_output_path",
    "dask_client",
    "iter_align",
    "iter_mean",
    "register_to_journal",
    "resume_rows",
    "run_settings",
    "sidecar_path",
    "to_apply",
    "write_aligned",
]
