"""The workflow both faces share: no Qt, no argparse.

* :mod:`.journal` -- the shifts table written as frames finish, its
  settings file, and resuming a killed run;
* :mod:`.run` -- registering a stack to disk, locally or on a dask cluster;
* :mod:`.align` -- shifts (or transforms) -> aligned frames, in memory,
  lazily or into a file, with progress;
* :mod:`.outputs` -- the aligned stack and the masked mean in one pass;
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
    aligned_mask_path,
    check_mean_name,
    check_output_names,
    count_path,
    planned_outputs,
    write_mean,
    write_outputs,
)
from .paths import check_output_path, check_outputs, sibling
from .run import ClusterLost, cluster_errors, dask_client, register_to_journal

__all__ = [
    "saturation_warning",
    "AlignProgress",
    "ClusterLost",
    "MaskedMean",
    "MeanAccumulator",
    "ShiftJournal",
    "align_frame",
    "aligned_mask_path",
    "align_lazy",
    "check_mean_name",
    "check_output_names",
    "check_output_path",
    "check_outputs",
    "cluster_errors",
    "continue_run",
    "count_path",
    "dask_client",
    "iter_align",
    "iter_mean",
    "planned_outputs",
    "register_to_journal",
    "pending_path",
    "resume_rows",
    "run_settings",
    "sibling",
    "sidecar_path",
    "to_apply",
    "write_aligned",
    "write_mean",
    "write_outputs",
]
