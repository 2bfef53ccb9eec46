"""Reading and writing stacks, masks and shift tables, without loading whole stacks.

Stacks
    :func:`open_stack` opens a multi-page TIFF (memory-mapped when the file
    allows it, else read page by page), a folder or glob of single-frame
    TIFFs (a :class:`FrameSequence` that reads one file per frame, in natural
    order: ``frame_2`` before ``frame_10``), a ``.npy`` file (memory-mapped)
    or a zarr array. Every result has ``shape``, ``dtype`` and per-frame
    indexing, which is all the engine needs; :func:`as_dask` turns any of them
    into a lazy dask array.
Masks
    :func:`read_mask` reads a mask file (``.npy``, ``.tif``/``.tiff``,
    ``.png``) as it is stored: **nonzero marks pixels to ignore** (the beam
    block, as painted in napari). :func:`read_valid_mask` converts it to the
    engine's convention (True = valid) through
    :func:`napari_maskalign.engine.valid_from_ignore` -- the one place where
    the two conventions meet -- and checks it against the frame shape.
Shift tables
    :func:`read_shifts_csv` / :func:`write_shifts_csv`: one row per frame,
    columns ``frame``, ``shift_y``, ``shift_x`` (``shift_z`` first for 3D
    frames), ``quality``; scikit-image's sign convention (the shift that
    registers the frame onto the reference). Written atomically.
Aligned stacks
    :class:`StackWriter` writes zarr (one frame per chunk) or TIFF under a
    temporary name in the destination folder and renames it when complete,
    so an output never exists half-written under its final name.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "FrameSequence",
    "StackWriter",
    "TiffPages",
    "as_dask",
    "atomic_write_text",
    "describe_stack",
    "list_frame_files",
    "natural_key",
    "open_stack",
    "read_mask",
    "read_shifts_csv",
    "read_valid_mask",
    "shift_columns",
    "write_shifts_csv",
]

TIFF_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIXES = (".npy", ".tif", ".tiff", ".png")
AXIS_NAMES = "zyx"


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


def _is_tiff(path: str) -> bool:
    return path.lower().endswith(TIFF_SUFFIXES)


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))
    )


def list_frame_files(source) -> list[str]:
    """The TIFF files of a folder, a glob pattern or a list, in natural order.

    Raises ``FileNotFoundError`` when the folder does not exist or nothing
    matches, ``ValueError`` when the folder holds no TIFF files.
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
        files = [str(p) for p in folder.iterdir() if p.is_file() and _is_tiff(p.name)]
        if not files:
            raise ValueError(f"the folder {folder} contains no .tif/.tiff files")
        return sorted(files, key=natural_key)
    not_tiff = [f for f in files if not _is_tiff(f)]
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


def _tiff_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            return _frame_shape(series.shape), np.dtype(series.dtype)
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as a TIFF image: {exc}") from exc


class _LazyArrayMixin:
    """Indexing on top of ``_read(i) -> frame``: ints, slices, index lists, tuples."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key):
        rest: tuple = ()
        if isinstance(key, tuple):
            if not key:
                key = slice(None)
            else:
                key, rest = key[0], key[1:]
        n = self.shape[0]

        def frame_index(i) -> int:
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"frame {i} is out of range: the stack has {n} frames")
            return i % n

        if isinstance(key, (int, np.integer)):
            frame = self._read(frame_index(key))
            return frame[rest] if rest else frame
        if isinstance(key, slice):
            idx = range(*key.indices(n))
        elif key is Ellipsis:
            idx, rest = range(n), (Ellipsis, *rest)
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                arr = np.flatnonzero(arr)
            idx = [frame_index(i) for i in arr.ravel()]
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(idx):
            out[j] = self._read(i)
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


class FrameSequence(_LazyArrayMixin):
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


class TiffPages(_LazyArrayMixin):
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
        data = self._tf.series[0].asarray(key=key)
        return np.asarray(data).reshape(self.shape[1:])

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


def _open_zarr(path: Path):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"cannot open {path} as a zarr array: {exc}") from exc
    if hasattr(node, "shape"):
        return node
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) == 1:
        return node[arrays[0]]
    if not arrays:
        raise ValueError(f"the zarr group {path} contains no arrays")
    raise ValueError(
        f"the zarr group {path} contains several arrays ({', '.join(arrays)}); give one of "
        f"them, e.g. {path / arrays[0]}"
    )


def open_stack(source, *, check_shapes: bool = True):
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

    Returns
    -------
    An array-like of shape ``(n_frames, *frame_shape)`` with ``dtype`` and
    per-frame indexing. Raises ``FileNotFoundError`` for a missing input and
    ``ValueError`` (plain words) for one that cannot be read as a stack.
    """
    if isinstance(source, (list, tuple)):
        return FrameSequence(list_frame_files(source), check_shapes=check_shapes)
    text = os.fspath(source)
    if is_glob(text):
        return FrameSequence(list_frame_files(text), check_shapes=check_shapes)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if _is_zarr_dir(path):
        stack = _open_zarr(path)
    elif path.is_dir():
        return FrameSequence(list_frame_files(path), check_shapes=check_shapes)
    elif path.suffix.lower() == ".npy":
        try:
            stack = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc
    elif _is_tiff(path.name):
        stack = _open_multipage_tiff(path)
    else:
        raise ValueError(
            f"cannot read {path.name}: expected a multi-page TIFF, a folder or glob of TIFF "
            "frames, a .npy file or a zarr array"
        )
    if len(stack.shape) < 3:
        raise ValueError(
            f"{path} holds a single image of shape {tuple(stack.shape)}, not a stack of frames"
        )
    return stack


def _open_multipage_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            n_series = len(tf.series)
            shape = tuple(tf.series[0].shape) if n_series else ()
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as a TIFF: {exc}") from exc
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
    if isinstance(stack, da.Array):
        return stack.rechunk((k, *frame))
    meta = np.empty((0,) * len(stack.shape), dtype=stack.dtype)
    return da.from_array(stack, chunks=(k, *frame), asarray=True, fancy=False, meta=meta)


def describe_stack(stack, source=None) -> dict:
    """Shape, dtype, frame count, storage and chunking of an opened stack (for ``info``)."""
    shape = tuple(int(s) for s in stack.shape)
    dtype = np.dtype(stack.dtype)
    out = {
        "source": None if source is None else os.fspath(source),
        "frames": shape[0],
        "frame_shape": shape[1:],
        "dtype": str(dtype),
        "size_bytes": math.prod(shape) * dtype.itemsize,
    }
    if isinstance(stack, FrameSequence):
        out["kind"] = stack.kind
        out["chunking"] = stack.chunking
        out["first_file"] = stack.files[0]
        out["last_file"] = stack.files[-1]
    elif isinstance(stack, TiffPages):
        out["kind"] = stack.kind
        out["chunking"] = stack.chunking
    elif isinstance(stack, np.memmap):
        suffix = "" if source is None else Path(os.fspath(source)).suffix.lower()
        out["kind"] = (
            "multi-page TIFF (memory-mapped)" if suffix in TIFF_SUFFIXES else ".npy (memory-mapped)"
        )
        out["chunking"] = "contiguous, memory-mapped"
    elif hasattr(stack, "chunks") and not isinstance(stack, np.ndarray):
        chunks = stack.chunks
        if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], tuple):  # dask
            out["kind"] = "dask array"
            out["chunking"] = "chunks of " + " x ".join(str(max(c)) for c in chunks)
        else:
            out["kind"] = "zarr array"
            out["chunking"] = "chunks of " + " x ".join(str(c) for c in chunks)
            comp = getattr(stack, "compressors", None) or getattr(stack, "compressor", None)
            if comp:
                codecs = comp if isinstance(comp, (tuple, list)) else (comp,)
                out["compression"] = ", ".join(str(c) for c in codecs)
    else:
        out["kind"] = "in-memory array"
        out["chunking"] = "none (in memory)"
    return out


# ----------------------------------------------------------------------------
# masks


def read_mask(path) -> np.ndarray:
    """Read a mask file as stored: **nonzero marks pixels to ignore** (the beam block).

    ``.npy`` (read with ``allow_pickle=False``), ``.tif``/``.tiff`` or
    ``.png``. Leading length-1 axes are dropped; the colour channels of an
    RGB(A) PNG are combined (a pixel is nonzero if any colour is; alpha is
    not used). Files that mark *valid* pixels with nonzero are read the same
    way and converted with ``invert=True`` (see :func:`read_valid_mask`).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such mask file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            mask = np.load(path, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            mask = tifffile.imread(str(path))
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as img:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mask = np.asarray(img)
                if img.mode in ("RGB", "RGBA", "LA"):
                    colours = mask[..., :3] if img.mode != "LA" else mask[..., :1]
                    mask = colours.max(axis=-1)
        else:
            raise ValueError(
                f"cannot read the mask {path.name}: expected a .npy, .tif/.tiff or .png file"
            )
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read the mask {path}: {exc}") from exc
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"the mask {path.name} holds {mask.dtype} values, expected numbers")
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    return mask


def write_mask(path, mask) -> Path:
    """Write a mask (nonzero = ignore, as painted) as .npy, .tif/.tiff (0/1) or .png (0/255).

    Written to a temporary file in the destination folder and renamed when
    complete, so a mask file is never half-written. PNG holds 2D masks only.
    """
    path = Path(os.fspath(path)).expanduser()
    suffix = path.suffix.lower()
    from .engine import valid_from_ignore

    if suffix not in MASK_SUFFIXES:
        raise ValueError(f"cannot save masks as '{path.name}': use .npy, .tif/.tiff or .png")
    ignore = (~valid_from_ignore(mask)).astype(np.uint8)
    if suffix == ".png" and ignore.ndim != 2:
        raise ValueError("a PNG holds 2D images only: save a 3D mask as .npy or .tif")
    with replacing(path, suffix=f".tmp{suffix}") as tmp:
        if suffix == ".npy":
            with open(tmp, "xb") as f:
                np.save(f, ignore, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, ignore)
        else:
            from PIL import Image

            Image.fromarray(ignore * np.uint8(255)).save(tmp, format="PNG")
    return path


def read_valid_mask(path, frame_shape=None, *, invert: bool = False) -> np.ndarray:
    """Read a mask file and return the engine's valid mask (True = use the pixel).

    The file marks pixels to **ignore** with nonzero (the beam block, as
    painted in napari); with ``invert=True`` it marks **valid** pixels with
    nonzero instead. The conversion goes through
    :func:`~napari_maskalign.engine.valid_from_ignore`. With ``frame_shape``
    the mask is checked: right shape, not everything masked (``ValueError``
    in plain words otherwise).
    """
    from .engine import check_valid_mask, valid_from_ignore

    valid = valid_from_ignore(read_mask(path), invert=invert)
    if frame_shape is not None:
        check_valid_mask(valid, tuple(frame_shape), f"mask {Path(os.fspath(path)).name}")
    return valid


# ----------------------------------------------------------------------------
# shift tables


def shift_columns(ndim: int) -> list[str]:
    """``["shift_y", "shift_x"]`` for 2D frames, ``["shift_z", "shift_y", "shift_x"]`` for 3D."""
    if not 1 <= ndim <= len(AXIS_NAMES):
        raise ValueError(f"frames must have 1 to {len(AXIS_NAMES)} dimensions, got {ndim}")
    return [f"shift_{a}" for a in AXIS_NAMES[-ndim:]]


@contextlib.contextmanager
def replacing(path, suffix: str = ".tmp"):
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` on success.

    Readers see either the old file or the new one, never a half-written one,
    even if the process is killed mid-write; on an error the temporary file
    is removed. (A random name, not mkstemp: its files are private, 0600, and
    the result should get the usual permissions.)
    """
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to a temporary file in the destination folder, then rename it."""
    with replacing(path) as tmp, open(tmp, "x", newline="") as f:
        f.write(text)
        f.flush()
        if durable:
            os.fsync(f.fileno())


def format_shifts_csv(shifts, quality, frames=None) -> str:
    shifts = np.asarray(shifts, dtype=float)
    if shifts.ndim != 2:
        raise ValueError(f"shifts must be a table of shape (n_frames, ndim), got {shifts.shape}")
    n, ndim = shifts.shape
    quality = np.full(n, np.nan) if quality is None else np.asarray(quality, dtype=float)
    if quality.shape != (n,):
        raise ValueError(f"quality must have one value per frame ({n}), got {quality.shape}")
    frames = np.arange(n) if frames is None else np.asarray(frames, dtype=int)
    if frames.shape != (n,):
        raise ValueError(f"frames must have one index per row ({n}), got {frames.shape}")
    lines = [",".join(["frame", *shift_columns(ndim), "quality"])]
    # repr() is the shortest text that reads back to the same float: a resumed
    # run continues from exactly the numbers it wrote
    for f, row, q in zip(frames.tolist(), shifts.tolist(), quality.tolist()):
        # (+ 0.0 turns -0.0 into 0.0)
        lines.append(",".join([str(f), *(repr(v + 0.0) for v in row), repr(q + 0.0)]))
    return "\n".join(lines) + "\n"


def write_shifts_csv(path, shifts, quality=None, *, frames=None, durable: bool = True) -> None:
    """Write a shift table atomically (temporary file in the same folder, then rename).

    Columns: ``frame``, ``shift_y``, ``shift_x`` (``shift_z`` first for 3D
    frames), ``quality``. Shifts follow scikit-image's convention: the shift
    that registers each frame onto the reference. Floats are written with
    full precision (they read back exactly).
    """
    atomic_write_text(path, format_shifts_csv(shifts, quality, frames), durable=durable)


def read_shifts_csv(path, n_frames: int | None = None, ndim: int | None = None):
    """Read a shift table written by :func:`write_shifts_csv` (or by hand).

    Columns are found by name: ``frame``, ``shift_y``, ``shift_x`` (and
    ``shift_z`` for 3D frames), optional ``quality`` (NaN when absent);
    other columns are ignored. Rows must count frames ``0, 1, 2, ...`` in
    order.

    Parameters
    ----------
    n_frames : int, optional
        Require exactly this many rows (one per frame of the stack).
    ndim : int, optional
        Require shifts for frames of this many dimensions.

    Returns
    -------
    shifts : ndarray, shape (n_rows, ndim)
    quality : ndarray, shape (n_rows,)

    Raises ``ValueError`` in plain words for a table that does not fit.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such shifts file: {path}")
    name = path.name
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"the shifts file {name} is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "frame" not in header:
        raise ValueError(
            f"the shifts file {name} has no 'frame' column; expected columns "
            f"frame, {', '.join(shift_columns(ndim or 2))}, quality (found: {', '.join(header)})"
        )
    found = [a for a in AXIS_NAMES if f"shift_{a}" in header]
    if ndim is None:
        if "shift_y" not in header or "shift_x" not in header:
            raise ValueError(
                f"the shifts file {name} needs columns shift_y and shift_x (and shift_z for 3D "
                f"frames); found: {', '.join(header)}"
            )
        ndim = 3 if "shift_z" in header else 2
    cols = shift_columns(ndim)
    missing = [c for c in cols if c not in header]
    if missing:
        raise ValueError(
            f"the shifts file {name} lacks column(s) {', '.join(missing)} for {ndim}D frames "
            f"(it has shifts along {', '.join(found) or 'no axis'})"
        )
    extra = [a for a in found if f"shift_{a}" not in cols]
    if extra:
        raise ValueError(
            f"the shifts file {name} has shifts along {', '.join(found)} but the frames are "
            f"{ndim}D ({', '.join(cols)})"
        )
    idx_frame = header.index("frame")
    idx_shift = [header.index(c) for c in cols]
    idx_q = header.index("quality") if "quality" in header else None
    body = rows[1:]
    shifts = np.empty((len(body), ndim))
    quality = np.full(len(body), np.nan)
    for r, row in enumerate(body):
        line = r + 2
        if len(row) < len(header):
            raise ValueError(f"line {line} of {name} has {len(row)} values, expected {len(header)}")
        try:
            frame = int(row[idx_frame].strip())
        except ValueError:
            raise ValueError(
                f"line {line} of {name}: frame {row[idx_frame]!r} is not a whole number"
            ) from None
        if frame != r:
            raise ValueError(
                f"line {line} of {name} is for frame {frame}, expected frame {r}: rows must "
                "list frames 0, 1, 2, ... in order"
            )
        for k, c in enumerate(idx_shift):
            shifts[r, k] = _number(row[c], line, cols[k], name)
        if idx_q is not None and row[idx_q].strip():
            quality[r] = _number(row[idx_q], line, "quality", name, allow_nan=True)
    if not np.all(np.isfinite(shifts)):
        bad = int(np.argwhere(~np.isfinite(shifts))[0, 0])
        raise ValueError(f"the shifts file {name} has a NaN or infinite shift for frame {bad}")
    if n_frames is not None and len(body) != n_frames:
        raise ValueError(
            f"the shifts file {name} has {len(body)} rows but the stack has {n_frames} frames; "
            "it must have one row per frame"
        )
    return shifts, quality


def _number(text: str, line: int, column: str, name: str, allow_nan: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"line {line} of {name}: {column} {text!r} is not a number") from None
    if not allow_nan and not math.isfinite(value):
        raise ValueError(
            f"line {line} of {name}: {column} is {text.strip()}, expected a finite number"
        )
    return value


# ----------------------------------------------------------------------------
# writers


def output_format(path) -> str:
    """``"zarr"`` or ``"tiff"`` from the output name; ``ValueError`` otherwise."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    raise ValueError(
        f"cannot tell the output format from {Path(os.fspath(path)).name!r}: end the name "
        "with .zarr (chunked, one frame per chunk) or .tif/.tiff"
    )


def partial_name(path, token: str | None = None) -> Path:
    """The temporary name an output is written under before it is renamed."""
    path = Path(os.fspath(path))
    return path.with_name(f".{path.name}.partial-{token or uuid.uuid4().hex[:8]}")


def stale_partials(path) -> list[Path]:
    """Unfinished outputs left by earlier runs that were killed (``.NAME.partial-*``)."""
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    return sorted(folder.glob(f".{glob.escape(path.name)}.partial-*"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class StackWriter:
    """Write a stack frame by frame under a temporary name; rename it when complete.

    ``.zarr`` outputs are chunked one frame per chunk; ``.tif``/``.tiff``
    outputs are one uncompressed multi-page TIFF (BigTIFF above 2 GB) that
    :func:`open_stack` memory-maps. Frames must be written in order. Use as a
    context manager: leaving the block normally renames the finished file to
    its final name (replacing an existing one only with ``overwrite=True``);
    an exception removes the temporary file.

    Parameters
    ----------
    path : str or path
        Final name.
    shape, dtype
        Of the whole stack.
    overwrite : bool
        Replace an existing output (only once the new one is complete).
    attrs : dict, optional
        JSON-serializable metadata (zarr attributes; TIFF image description).
    """

    def __init__(self, path, shape, dtype, *, overwrite: bool = False, attrs: dict | None = None):
        self.path = Path(os.fspath(path)).expanduser()
        self.format = output_format(self.path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.overwrite = overwrite
        self.attrs = dict(attrs or {})
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"the output {self.path} exists; use --overwrite to replace it")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"the output folder {self.path.parent} does not exist")
        self.tmp = partial_name(self.path)
        self.written = 0
        self._tw = None
        self._z = None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def open(self):
        if self.format == "zarr":
            import zarr

            self._z = zarr.open_array(
                str(self.tmp),
                mode="w-",
                shape=self.shape,
                chunks=(1, *self.shape[1:]),
                dtype=self.dtype,
                fill_value=np.nan if self.dtype.kind == "f" else 0,
            )
            if self.attrs:
                self._z.attrs.update(self.attrs)
        else:
            import tifffile

            big = math.prod(self.shape) * self.dtype.itemsize > 2**31
            self._tw = tifffile.TiffWriter(str(self.tmp), bigtiff=big)
        return self

    def write(self, block) -> None:
        """Append frames (one frame, or a block of frames along the first axis)."""
        block = np.asarray(block, dtype=self.dtype)
        if block.shape == self.shape[1:]:
            block = block[None]
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"frames of shape {block.shape[1:]} do not fit {self.shape[1:]}")
        lo, hi = self.written, self.written + block.shape[0]
        if hi > self.shape[0]:
            raise ValueError(f"too many frames: the output holds {self.shape[0]}")
        if self._z is not None:
            self._z[lo:hi] = block
        else:
            for j, frame in enumerate(block):
                if lo + j == 0:
                    # tifffile keeps the series' shape in a JSON description
                    self._tw.write(frame, contiguous=True, metadata=dict(self.attrs))
                else:
                    self._tw.write(frame, contiguous=True)
        self.written = hi

    def commit(self) -> Path:
        if self.written != self.shape[0]:
            self.abort()
            raise RuntimeError(
                f"only {self.written} of {self.shape[0]} frames were written to {self.path}"
            )
        if self._tw is not None:
            self._tw.close()
            self._tw = None
        self._z = None
        old = None
        if self.path.exists():
            if not self.overwrite:
                self.abort()
                raise FileExistsError(
                    f"the output {self.path} appeared while writing; not replaced"
                )
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            _remove(old)
        return self.path

    def abort(self) -> None:
        if self._tw is not None:
            try:
                self._tw.close()
            except Exception:
                pass
            self._tw = None
        self._z = None
        if self.tmp.exists():
            _remove(self.tmp)


def write_json_atomic(path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def iter_blocks(n: int, size: int, start: int = 0) -> Iterable[tuple[int, int]]:
    """``(lo, hi)`` ranges covering ``start..n`` in steps of ``size``."""
    size = max(1, int(size))
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)
