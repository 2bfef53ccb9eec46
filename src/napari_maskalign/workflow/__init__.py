"""The workflow both faces share: no Qt, no argparse.

* :mod:`.journal` -- the shifts table written as frames finish, its
  settings file, and resuming a killed run;
* :mod:`.registration` -- :func:`register`, the registration both faces call
  (the mask, the options, a journal, a cluster), and :func:`table_result`
  for a saved table;
* :mod:`.run` -- a dask cluster: its client, losing it;
* :mod:`.align` -- shifts (or transforms) -> aligned frames, in memory,
  lazily or into a file, with progress, made as one :class:`AlignSettings`
  says;
* :mod:`.outputs` -- a result applied: the aligned stack and the masked
  mean in one pass, to the typed :class:`OutputPaths`;
* :mod:`.paths` -- output paths checked before any work.

The ``maskalign`` command and the napari widgets are thin layers over these
and the engine; a setting walks from either face to the engine in one
:class:`~napari_maskalign.engine.RegistrationOptions`.
"""

from .align import (
    AlignProgress,
    AlignSettings,
    MaskedMean,
    MeanAccumulator,
    align_frame,
    align_lazy,
    iter_align,
    iter_mean,
    to_apply,
    write_aligned,
)
from .checks import saturation_warning
from .journal import (
    ShiftJournal,
    continue_run,
    pending_path,
    resume_rows,
    run_settings,
    sidecar_path,
)
from .outputs import (
    OutputPaths,
    aligned_mask_path,
    check_mean_name,
    count_path,
    write_mean,
    write_outputs,
)
from .paths import check_output_path, check_outputs, sibling
from .registration import Registration, register, table_result
from .run import ClusterLost, cluster_errors, dask_client

__all__ = [
    "AlignProgress",
    "AlignSettings",
    "ClusterLost",
    "MaskedMean",
    "MeanAccumulator",
    "OutputPaths",
    "Registration",
    "ShiftJournal",
    "align_frame",
    "aligned_mask_path",
    "align_lazy",
    "check_mean_name",
    "check_output_path",
    "check_outputs",
    "cluster_errors",
    "continue_run",
    "count_path",
    "dask_client",
    "iter_align",
    "iter_mean",
    "pending_path",
    "register",
    "resume_rows",
    "run_settings",
    "saturation_warning",
    "sibling",
    "sidecar_path",
    "table_result",
    "to_apply",
    "write_aligned",
    "write_mean",
    "write_outputs",
]
