"""Reading and writing stacks, masks and shift tables, without loading whole stacks.

* :mod:`.stacks` -- :func:`open_stack` and :func:`as_dask`: TIFF (multi-page,
  or a folder or glob of frames), ``.npy``, zarr; lazily, frame by frame;
* :mod:`.detectors` -- HDF5 (``FILE.h5:/dataset``), MRC/MRCS, Gatan
  DM3/DM4 and Merlin MIB through h5py, mrcfile and RosettaSciIO (extras);
* :mod:`.describe` -- :func:`describe_stack` for ``maskalign info``;
* :mod:`.masks` -- mask files, where **nonzero marks pixels to ignore** (the
  beam block, as painted in napari); :func:`read_valid_mask` converts to the
  engine's True = valid, once;
* :mod:`.tables` -- shift tables (CSV), one row per frame;
* :mod:`.writers` -- :func:`replacing` and :class:`StackWriter`: outputs
  appear under their final name only when complete.

Errors are ``ValueError`` (or ``FileNotFoundError``) in plain words that
name the file.
"""

from .describe import describe_stack
from .detectors import DETECTOR_SUFFIXES, open_detector_stack, source_file
from .masks import MASK_SUFFIXES, read_mask, read_valid_mask, write_mask
from .stacks import (
    TIFF_SUFFIXES,
    FrameSequence,
    TiffPages,
    as_dask,
    dask_source,
    is_glob,
    is_tiff_name,
    is_zarr_dir,
    list_frame_files,
    natural_key,
    open_stack,
)
from .tables import (
    AXIS_NAMES,
    TRANSFORM_COLUMNS,
    ShiftTable,
    format_shifts_csv,
    read_shift_table,
    read_shifts_csv,
    shift_columns,
    write_shifts_csv,
)
from .writers import (
    OutputBusy,
    OutputLock,
    StackWriter,
    WriteFailed,
    atomic_write_text,
    iter_blocks,
    output_format,
    output_locks,
    partial_name,
    remove_path,
    replacing,
    stale_partials,
    write_json_atomic,
)

__all__ = [
    "AXIS_NAMES",
    "DETECTOR_SUFFIXES",
    "MASK_SUFFIXES",
    "TIFF_SUFFIXES",
    "TRANSFORM_COLUMNS",
    "FrameSequence",
    "OutputBusy",
    "OutputLock",
    "ShiftTable",
    "StackWriter",
    "TiffPages",
    "WriteFailed",
    "as_dask",
    "atomic_write_text",
    "dask_source",
    "describe_stack",
    "format_shifts_csv",
    "is_glob",
    "is_tiff_name",
    "is_zarr_dir",
    "iter_blocks",
    "list_frame_files",
    "natural_key",
    "open_detector_stack",
    "open_stack",
    "output_format",
    "output_locks",
    "partial_name",
    "read_mask",
    "read_shift_table",
    "read_shifts_csv",
    "read_valid_mask",
    "remove_path",
    "replacing",
    "shift_columns",
    "source_file",
    "stale_partials",
    "write_json_atomic",
    "write_mask",
    "write_shifts_csv",
]
