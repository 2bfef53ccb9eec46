"""Stacks on disk, opened without loading them.

:func:`open_stack` opens a multi-page TIFF (memory-mapped when the file
allows it, else read page by page), a folder or glob of single-frame TIFFs (a
:class:`FrameSequence` that reads one file per frame, in natural order:
``frame_2`` before ``frame_10``), a ``.npy`` file (memory-mapped) or a zarr
array. Every result has ``shape``, ``dtype`` and per-frame indexing, which is
all the engine needs; :func:`as_dask` turns any of them into a lazy dask
array.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..engine.backends._frames import check_pixel_dtype, is_dask
from ._indexing import FrameIndexing
from .detectors import open_detector_stack  # HDF5, MRC, DM3/DM4, MIB

__all__ = [
    "FrameSequence",
    "TiffPages",
    "ZarrStack",
    "as_dask",
    "check_pixel_dtype",
    "dask_source",
    "is_glob",
    "is_tiff_name",
    "is_zarr_dir",
    "list_frame_files",
    "natural_key",
    "open_stack",
]

TIFF_SUFFIXES = (".tif", ".tiff")


# ----------------------------------------------------------------------------
# file lists


def natural_key(name: str) -> tuple:
    """Sort key that orders numbers by value: ``frame_2`` before ``frame_10``."""
    text = os.fspath(name)
    parts = re.split(r"(\d+)", text)
    # numbers by value, text without case; the exact name breaks ties last
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts), text


def is_glob(path) -> bool:
    """A text with glob characters that is not itself an existing path (a folder
    may be called ``run[1]``)."""
    return isinstance(path, str) and any(c in path for c in "*?[") and not os.path.exists(path)


def is_tiff_name(path: str) -> bool:
    """Whether a file name ends in .tif or .tiff (any case)."""
    return path.lower().endswith(TIFF_SUFFIXES)


def is_zarr_dir(path: Path) -> bool:
    """Whether ``path`` is a zarr store (a folder named .zarr or holding zarr metadata)."""
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))
    )


def _without(files: list[str], exclude) -> list[str]:
    """``files`` less those that are the same file as one in ``exclude`` (a mask kept
    beside the frames is not a frame)."""
    drop = {Path(os.fspath(e)).expanduser().resolve() for e in exclude if e is not None}
    return [f for f in files if Path(f).resolve() not in drop] if drop else files


def list_frame_files(source, exclude=()) -> list[str]:
    """The TIFF files of a folder, a glob pattern or a list, in natural order.

    Files in ``exclude`` (e.g. the mask, saved in the frames' folder) are
    left out. Raises ``FileNotFoundError`` when the folder does not exist or
    nothing matches, ``ValueError`` when the folder holds no TIFF files.
    """
    if isinstance(source, (list, tuple)):
        files = [os.fspath(p) for p in source]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"no such file: {missing[0]}")
        what = "the list of files"
    elif is_glob(os.fspath(source)):
        pattern = os.path.expanduser(os.fspath(source))
        files = [f for f in glob.glob(pattern) if os.path.isfile(f)]
        if not files:
            raise FileNotFoundError(f"no files match {pattern!r}")
        what = f"the files matching {pattern!r}"
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        files = [str(p) for p in folder.iterdir() if p.is_file() and is_tiff_name(p.name)]
        files = _without(files, exclude)
        if not files:
            raise ValueError(f"the folder {folder} contains no .tif/.tiff files")
        return sorted(files, key=natural_key)
    files = _without(files, exclude)
    if not files:
        raise FileNotFoundError(f"{what} hold no frames besides the mask")
    not_tiff = [f for f in files if not is_tiff_name(f)]
    if not_tiff:
        raise ValueError(
            f"{what} include files that are not TIFFs (e.g. {os.path.basename(not_tiff[0])}); "
            "a stack of frames is read from .tif/.tiff files only"
        )
    return sorted(files, key=natural_key)


# ----------------------------------------------------------------------------
# lazy stacks


def _frame_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop leading length-1 axes of a single-frame file (e.g. (1, Y, X) -> (Y, X))."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


_NO_IMAGE = "no image found in it (a damaged or truncated file, or not a TIFF)"


def _tiff_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series or not tf.series[0].shape:
                raise ValueError(_NO_IMAGE)
            series = tf.series[0]
            return _frame_shape(series.shape), np.dtype(series.dtype)
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as a TIFF image: {exc}") from exc


class FrameSequence(FrameIndexing):
    """A stack whose frames are single-frame TIFF files, read one file per access.

    Looks like a read-only array of shape ``(n_files, *frame_shape)``:
    ``seq[i]`` reads file ``i``; slices and index lists read the files they
    cover. Picklable (it holds only the file names), so dask workers can read
    frames themselves. With ``check_shapes`` (default) every file's header is
    read once (about 0.1 ms per file) so that frames of mixed shapes or dtypes
    are reported before any work starts; without it, a frame of the wrong
    shape raises ``ValueError`` when it is read.
    """

    kind = "folder of TIFF frames"

    def __init__(self, files: Sequence[str], *, check_shapes: bool = True):
        files = [os.fspath(f) for f in files]
        if not files:
            raise ValueError("no frame files given")
        self.files = files
        frame_shape, dtype = _tiff_header(files[0])
        check_pixel_dtype(dtype, files[0])
        if check_shapes:
            for f in files[1:]:
                s, d = _tiff_header(f)
                if s != frame_shape:
                    raise ValueError(
                        f"frames have mixed shapes: {os.path.basename(f)} is {s} but "
                        f"{os.path.basename(files[0])} is {frame_shape}; every frame of a "
                        "stack must have the same shape"
                    )
                if d != dtype:
                    raise ValueError(
                        f"frames have mixed data types: {os.path.basename(f)} is {d} but "
                        f"{os.path.basename(files[0])} is {dtype}"
                    )
        self.frame_shape = frame_shape
        self.dtype = dtype
        self.shape = (len(files), *frame_shape)

    def _read(self, i: int) -> np.ndarray:
        import tifffile

        path = self.files[i]
        try:
            frame = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many types for broken files
            raise ValueError(f"cannot read frame {i} from {path}: {exc}") from exc
        if frame.size != math.prod(self.frame_shape):
            raise ValueError(
                f"frame {i} ({os.path.basename(path)}) has shape {frame.shape}, expected "
                f"{self.frame_shape} like the first frame"
            )
        return frame.reshape(self.frame_shape).astype(self.dtype, copy=False)

    @property
    def chunking(self) -> str:
        return "one file per frame"

    def __repr__(self) -> str:
        return (
            f"FrameSequence({len(self.files)} files, frame shape {self.frame_shape}, "
            f"{self.dtype}, first {os.path.basename(self.files[0])!r})"
        )


class TiffPages(FrameIndexing):
    """A multi-page TIFF that cannot be memory-mapped (e.g. compressed), read page by page.

    Frame ``i`` is the ``i``-th group of pages of the file's first series. The
    file handle is opened on first use and reopened after unpickling.
    """

    kind = "multi-page TIFF (read page by page)"

    def __init__(self, path: str):
        import tifffile

        self.path = os.fspath(path)
        with tifffile.TiffFile(self.path) as tf:
            series = tf.series[0]
            shape = tuple(int(s) for s in series.shape)
            self.dtype = np.dtype(series.dtype)
            page = series.pages[0] if len(series.pages) else None
            page_shape = tuple(page.shape) if page is not None else shape[1:]
            comp = getattr(page, "compression", None)
            self.compression = str(getattr(comp, "name", comp)).lower()
            try:  # the pages the file really holds (a truncated file ends its chain early)
                pages = len(tf.pages)
            except Exception:  # tifffile raises many types for a broken page chain
                pages = 0
        if len(shape) < 3:
            raise ValueError(f"{self.path} holds a single image of shape {shape}, not a stack")
        self.shape = shape
        frame_size = math.prod(shape[1:])
        page_size = math.prod(page_shape)
        if frame_size % page_size:
            raise ValueError(
                f"cannot split {self.path} into frames: pages of shape {page_shape} do not "
                f"tile frames of shape {shape[1:]}"
            )
        self.pages_per_frame = frame_size // page_size
        self._tf = None
        if pages < shape[0] * self.pages_per_frame:
            raise ValueError(
                f"{self.path} is truncated: it holds {pages // self.pages_per_frame} whole frames of "
                f"the {shape[0]} its header announces (a copy cut short, or a run still writing)"
            )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tf"] = None
        return state

    def _read(self, i: int) -> np.ndarray:
        import tifffile

        if self._tf is None:
            self._tf = tifffile.TiffFile(self.path)
        k = self.pages_per_frame
        key = list(range(i * k, (i + 1) * k)) if k > 1 else i * k
        try:
            data = self._tf.series[0].asarray(key=key)
            return np.asarray(data).reshape(self.shape[1:])
        except Exception as exc:  # IndexError past a truncated end, tifffile's own errors
            raise ValueError(f"cannot read frame {i} from {self.path}: the file ends before it or "
                             f"is damaged ({type(exc).__name__}: {exc})") from None

    @property
    def chunking(self) -> str:
        per = "page" if self.pages_per_frame == 1 else f"{self.pages_per_frame} pages"
        return f"one {per} per frame, compression {self.compression}"

    def __repr__(self) -> str:
        return f"TiffPages({self.path!r}, shape {self.shape}, {self.dtype})"

    def close(self):
        if self._tf is not None:
            self._tf.close()
            self._tf = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _unsafe_codec(meta) -> str | None:
    """The reason a zarr metadata document (parsed JSON, any depth) is unsafe to decode:
    the pickle codec anywhere (a filter, a compressor, a v3 codec) or an object dtype,
    whose chunks are decoded by an object codec."""
    if isinstance(meta, dict):
        for key in ("id", "name", "object_codec_id"):
            if str(meta.get(key, "")).lower() == "pickle":
                return "the pickle codec"
        dtype = meta.get("dtype")
        if isinstance(dtype, str) and dtype.lstrip("|<>=").startswith("O"):
            return "Python objects (dtype O)"
        values = meta.values()
    elif isinstance(meta, list):
        values = meta
    else:
        return None
    for value in values:
        found = _unsafe_codec(value)
        if found:
            return found
    return None


def _check_zarr_metadata(store: Path, folder: Path, depth: int = 4) -> None:
    """Refuse, before zarr opens anything, a store whose metadata asks for unpickling: zarr 2
    with numcodecs before 0.15.2 would run the code in such chunks on the first read.

    ``folder`` is the store or a node in it; a group's nodes are checked too (folders
    only, ``depth`` levels down; an array's chunks are not listed)."""
    group = True
    for name in (".zarray", ".zmetadata", "zarr.json", ".zgroup"):
        meta = folder / name
        if not meta.is_file():
            continue
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot open {store} as a zarr array: {meta.relative_to(store.parent)}"
                             f" is not readable ({exc})") from None
        if name == ".zarray" or (name == "zarr.json" and isinstance(doc, dict)
                                 and doc.get("node_type") == "array"):
            group = False
        why = _unsafe_codec(doc)
        if why:
            raise ValueError(
                f"refusing {store}: its metadata ({meta.relative_to(store.parent)}) asks for "
                f"{why}, which could run code when the frames are read; a stack must hold "
                "real numbers (a zarr array written with the pickle codec is not one)"
            )
    if group and depth > 0:
        with os.scandir(folder) as entries:
            subfolders = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        for sub in subfolders:
            _check_zarr_metadata(store, sub, depth - 1)


def _multiscales_path(path: Path, attrs) -> str:
    """The full-resolution array of an OME-Zarr image, from its ``multiscales`` metadata."""
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    try:
        sub = multiscales[0]["datasets"][0]["path"]
        if not isinstance(sub, str) or not sub or ".." in Path(sub).parts or Path(sub).is_absolute():
            raise TypeError(f"path {sub!r}")
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(
            f"cannot read {path} as OME-Zarr: its 'multiscales' metadata is malformed (no "
            f"datasets[0].path in multiscales[0]: {exc})"
        ) from None
    return sub


def _open_zarr(path: Path):
    import zarr

    _check_zarr_metadata(path, path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"cannot open {path} as a zarr array: {exc}") from exc
    if hasattr(node, "shape"):
        return node
    attrs = node.attrs
    if attrs.get("multiscales") or (isinstance(attrs.get("ome"), dict)
                                    and attrs["ome"].get("multiscales")):
        return _zarr_child(path, node, _multiscales_path(path, attrs))  # OME-Zarr: full resolution
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) == 1:
        return _zarr_child(path, node, arrays[0])
    if not arrays:
        raise ValueError(f"the zarr group {path} contains no arrays")
    raise ValueError(
        f"the zarr group {path} contains several arrays ({', '.join(arrays)}); give one of "
        f"them, e.g. {path / arrays[0]}"
    )


class ZarrStack(FrameIndexing):
    """A zarr array as a stack: reads go straight to zarr; a chunk that cannot be decoded
    (corrupt, cut short) is a ``ValueError`` naming the store and the frames."""

    kind = "zarr array"

    def __init__(self, array, path):
        self.array = array
        self.path = Path(os.fspath(path))
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    @property
    def chunks(self):
        return self.array.chunks

    @property
    def compressors(self):
        comp = getattr(self.array, "compressors", None)
        return comp if comp is not None else getattr(self.array, "compressor", None)

    @property
    def attrs(self):
        return self.array.attrs

    def _read(self, i: int) -> np.ndarray:
        return self[i]

    def __getitem__(self, key):
        try:
            return np.asarray(self.array[key])
        except IndexError:
            raise
        except Exception as exc:  # numcodecs and zarr raise RuntimeError, ValueError, ...
            first = key[0] if isinstance(key, tuple) and key else key
            if isinstance(first, slice):
                lo, hi, _ = first.indices(self.shape[0])
                where = f"frames {lo} to {hi - 1}"
            else:
                where = f"frame {first}"
            raise ValueError(f"cannot read {self.path} ({where}): a chunk is damaged "
                             f"({type(exc).__name__}: {exc})") from None

    def __repr__(self) -> str:
        return f"ZarrStack({str(self.path)!r}, shape {self.shape}, {self.dtype})"


def _zarr_child(path: Path, group, name: str):
    """The array ``name`` of a zarr group, its metadata checked before zarr reads it."""
    try:
        return group[name]
    except Exception as exc:  # zarr raises KeyError, ValueError, ... for broken metadata
        raise ValueError(f"cannot open the array {name!r} of {path}: {exc}") from None


def open_stack(source, *, check_shapes: bool = True, exclude=()):
    """Open a stack without loading it.

    Parameters
    ----------
    source : str, path or list of paths
        * a multi-page TIFF -> ``numpy.memmap`` when uncompressed and
          contiguous, else :class:`TiffPages` (page by page);
        * a folder of single-frame TIFFs, a glob pattern (``"run/frame_*.tif"``)
          or a list of TIFF files -> :class:`FrameSequence`, natural order;
        * a ``.npy`` file -> ``numpy.memmap`` (``allow_pickle=False``);
        * a zarr array (a ``.zarr`` folder, or a group holding one array).
    check_shapes : bool
        For frame files: read every header first and report mixed shapes.
    exclude : paths
        For frame files: files that are not frames (the mask file kept in
        the frames' folder).

    Returns
    -------
    An array-like of shape ``(n_frames, *frame_shape)`` with ``dtype`` and
    per-frame indexing. Raises ``FileNotFoundError`` for a missing input and
    ``ValueError`` (plain words, naming the file) for one that cannot be read as
    a stack: a damaged or truncated file, malformed OME-Zarr metadata, pixels
    that are not real numbers (objects, text, complex; checked from the header
    before any frame is read), or zarr metadata that asks for the pickle codec
    (refused before zarr opens the store). A zarr array comes back as a
    :class:`ZarrStack`, whose damaged chunks are a ``ValueError`` naming the
    frames.
    """
    if isinstance(source, (list, tuple)) or is_glob(os.fspath(source)):
        return FrameSequence(list_frame_files(source, exclude), check_shapes=check_shapes)
    text = os.fspath(source)
    detector = open_detector_stack(text)
    if detector is not None:
        check_pixel_dtype(detector.dtype, text)
        return detector
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if is_zarr_dir(path):
        stack = _open_zarr(path)
        stack = ZarrStack(stack, path) if len(stack.shape) >= 3 else stack
    elif path.is_dir():
        return FrameSequence(list_frame_files(path, exclude), check_shapes=check_shapes)
    elif path.suffix.lower() == ".npy":
        try:
            stack = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc
    elif is_tiff_name(path.name):
        stack = _open_multipage_tiff(path)
    else:
        raise ValueError(
            f"cannot read {path.name}: expected a multi-page TIFF, a folder or glob of TIFF "
            "frames, a .npy file, a zarr array, an HDF5 dataset (FILE.h5:/path), .mrc/.mrcs, "
            ".dm3/.dm4 or .mib"
        )
    if len(stack.shape) < 3:
        raise ValueError(
            f"{path} holds a single image of shape {tuple(stack.shape)}, not a stack of frames"
        )
    check_pixel_dtype(stack.dtype, path)  # before any frame is read
    return stack


def _open_multipage_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            shape = tuple(tf.series[0].shape) if tf.series else ()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise ValueError(f"cannot read {path} as a TIFF: {exc}") from exc
    if not shape:
        raise ValueError(f"cannot read {path} as a TIFF: {_NO_IMAGE}")
    if len(shape) < 3:
        raise ValueError(
            f"{path} holds a single image of shape {shape}, not a stack; to read a folder of "
            "single-frame TIFFs, give the folder or a glob pattern"
        )
    try:
        return tifffile.memmap(str(path), mode="r")
    except ValueError:  # compressed or not contiguous
        return TiffPages(str(path))


def as_dask(stack, frames_per_chunk: int = 1):
    """A lazy dask array over any stack from :func:`open_stack` (or a numpy/zarr array).

    Frames are whole in every chunk; ``frames_per_chunk`` frames along the
    first axis. A dask array is rechunked to that layout.
    """
    import dask.array as da

    k = max(1, int(frames_per_chunk))
    frame = tuple(stack.shape[1:])
    if is_dask(stack):
        return stack.rechunk((k, *frame))
    meta = np.empty((0,) * len(stack.shape), dtype=stack.dtype)
    lazy = da.from_array(stack, chunks=(k, *frame), asarray=True, fancy=False, meta=meta)
    try:  # the array's graph holds the stack: the entry lives as long as the array
        _DASK_SOURCES[lazy.name] = stack
    except TypeError:  # not weakly referable: no way back, the dask array still works
        pass
    return lazy


#: the stack behind each dask array :func:`as_dask` made, by the array's name
_DASK_SOURCES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def dask_source(data):
    """The stack a dask array from :func:`as_dask` reads (a :class:`FrameSequence`,
    memmap, ...), or ``data`` itself for anything else (a dask array sliced or computed
    on has another name). Reading frames from the stack itself skips a dask compute
    (a graph and the threaded scheduler) per read: the same frames, as the command
    line reads them."""
    if is_dask(data):
        found = _DASK_SOURCES.get(data.name)
        if (found is not None and tuple(found.shape) == tuple(data.shape)
                and np.dtype(found.dtype) == np.dtype(data.dtype)):
            return found
    return data
