"""Detector and facility formats, each read through the library made for it, frame by frame.

* HDF5 datasets, given as ``file.h5:/path/in/file`` (or just ``file.h5``
  when it holds one stack): :mod:`h5py`, extra ``hdf5``;
* MRC / MRCS movies (cryo-EM): :mod:`mrcfile`, memory-mapped, extra ``mrc``;
* Gatan ``.dm3``/``.dm4`` and Quantum Detectors Merlin ``.mib``:
  RosettaSciIO (:mod:`rsciio`), memory-mapped, extra ``rsciio``.

Every stack here reads one frame per access (frames along the first axis;
memory holds a frame, never the file), pickles as its file name (dask
workers reopen it) and reports a missing library with the extra that brings
it (``pip install 'napari-maskalign[hdf5]'``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ._indexing import FrameIndexing

__all__ = [
    "DETECTOR_SUFFIXES",
    "DetectorStack",
    "H5Stack",
    "h5_stacks",
    "MibStack",
    "MrcStack",
    "RsciioStack",
    "open_detector_stack",
    "source_file",
]

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".he5")
DETECTOR_SUFFIXES = (*H5_SUFFIXES, ".mrc", ".mrcs", ".dm3", ".dm4", ".mib")
_H5_SPEC = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|nxs|he5)):(?P<dataset>/.*)$", re.IGNORECASE)


def _split(source: str) -> tuple[str, str | None]:
    """``"run.h5:/entry/data"`` -> ``("run.h5", "/entry/data")``; others unchanged."""
    m = _H5_SPEC.match(source)
    return (m["file"], m["dataset"]) if m else (source, None)


def source_file(source) -> str:
    """The file a source names (``run.h5:/entry/data`` -> ``run.h5``)."""
    return _split(os.fspath(source))[0] if isinstance(source, (str, os.PathLike)) else source


def _require(module: str, extra: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"rsciio": "rosettasciio"}.get(module, module)
        raise ValueError(
            f"reading {what} needs the package {package}: pip install 'napari-maskalign[{extra}]'"
        ) from None


class DetectorStack(FrameIndexing):
    """A stack in a detector file; subclasses open it (``_open``) and read frame ``i``."""

    kind = "detector file"

    def __init__(self, path):
        self.path = os.fspath(path)
        self._handle = None
        data = self._data()
        if data.ndim < 3:
            raise ValueError(
                f"{self.name} holds a single image of shape {tuple(data.shape)}, not a stack of "
                "frames"
            )
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype).newbyteorder("=")

    @property
    def name(self) -> str:
        return self.path

    def _data(self):
        if self._handle is None:
            self._handle = self._open()
        return self._handle[-1]

    def _open(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, i: int) -> np.ndarray:
        try:
            frame = np.asarray(self._data()[i])
        except Exception as exc:  # the libraries raise many types for damaged files
            raise ValueError(f"cannot read frame {i} from {self.name}: {exc}") from exc
        return frame.astype(self.dtype, copy=True)

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and hasattr(handle[0], "close"):
            handle[0].close()

    def info(self) -> dict:
        return {"kind": self.kind, "chunking": "one frame per read (memory-mapped)"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape {self.shape}, {self.dtype})"


def h5_stacks(path) -> list[str]:
    """The datasets of an HDF5 file that can be stacks of frames (3 or more dimensions),
    as ``/path/in/file``, in the file's order: what ``H5Stack`` takes when none is named
    and what the napari reader opens."""
    h5py = _require("h5py", "hdf5", "HDF5 files")
    stacks: list[str] = []
    with h5py.File(os.fspath(path), "r") as f:
        f.visititems(lambda name, obj: stacks.append("/" + name)
                     if isinstance(obj, h5py.Dataset) and obj.ndim >= 3 else None)
    return stacks


class H5Stack(DetectorStack):
    """An HDF5 dataset (h5py), read one frame per access."""

    kind = "HDF5 dataset (read frame by frame)"

    def __init__(self, path, dataset: str | None = None):
        self.dataset = dataset
        if dataset is None:  # one stack in the file: take it
            stacks = h5_stacks(path)
            if len(stacks) != 1:
                found = ", ".join(stacks[:10]) or "none"
                raise ValueError(
                    f"say which dataset of {os.fspath(path)} holds the frames, as FILE:/path/in/"
                    f"file (datasets of 3 or more dimensions: {found})"
                )
            self.dataset = stacks[0]
        super().__init__(path)

    @property
    def name(self) -> str:
        return f"{self.path}:{self.dataset}"

    def _open(self):
        import h5py

        f = h5py.File(self.path, "r")
        if self.dataset not in f or not isinstance(f[self.dataset], h5py.Dataset):
            f.close()
            raise ValueError(f"{self.path} has no dataset {self.dataset}")
        return f, f[self.dataset]

    def info(self) -> dict:
        ds = self._data()
        chunks = "contiguous" if ds.chunks is None else "chunks of " + " x ".join(
            map(str, ds.chunks))
        out = {"kind": self.kind, "chunking": chunks, "dataset": self.dataset}
        if ds.compression:
            out["compression"] = str(ds.compression)
        return out


class MrcStack(DetectorStack):
    """An MRC/MRCS movie or image stack (mrcfile), memory-mapped."""

    kind = "MRC stack (memory-mapped)"

    def _open(self):
        mrcfile = _require("mrcfile", "mrc", "MRC files")
        mrc = mrcfile.mmap(self.path, mode="r", permissive=True)
        if mrc.data is None:
            mrc.close()
            raise ValueError(f"cannot read {self.path} as an MRC file: no data in it")
        return mrc, mrc.data

    def info(self) -> dict:
        mrc = self._handle[0]
        size = mrc.voxel_size
        return {**super().info(), "pixel size": f"{float(size.x):g} x {float(size.y):g} A"}


class RsciioStack(DetectorStack):
    """A Gatan DM3/DM4 image stack (RosettaSciIO), memory-mapped one frame per chunk."""

    kind = "Gatan Digital Micrograph stack (memory-mapped)"

    def _open(self):
        _require("rsciio", "rsciio", "Gatan .dm3/.dm4 files")
        from rsciio.digitalmicrograph import file_reader

        images = file_reader(self.path, lazy=True, chunks={0: 1})
        stacks = [im for im in images if np.ndim(im["data"]) >= 3]
        if not stacks:
            shape = tuple(images[0]["data"].shape) if images else ()
            raise ValueError(f"{self.path} holds a single image of shape {shape}, not a stack")
        return (None, stacks[0]["data"])


class MibStack(DetectorStack):
    """A Quantum Detectors Merlin .mib file (RosettaSciIO), memory-mapped; frames are
    flipped upside down as RosettaSciIO's reader (and so HyperSpy) shows them."""

    kind = "Merlin MIB frames (memory-mapped)"

    def _open(self):
        _require("rsciio", "rsciio", "Merlin .mib files")
        from rsciio.quantumdetector import load_mib_data

        data = load_mib_data(self.path, lazy=True, return_mmap=True, mmap_mode="r")
        return (None, data)

    def _read(self, i: int) -> np.ndarray:
        return np.flip(super()._read(i), axis=-2).copy()


_BY_SUFFIX = {".mrc": MrcStack, ".mrcs": MrcStack, ".dm3": RsciioStack, ".dm4": RsciioStack,
              ".mib": MibStack}


def open_detector_stack(source: str):
    """The stack ``source`` names if it is a detector format, else None (another reader's).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (the
    file named) for one its library cannot read or that holds no stack.
    """
    path, dataset = _split(source)
    suffix = Path(path).suffix.lower()
    if suffix not in DETECTOR_SUFFIXES:
        return None
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"no such file: {path}")
    path = os.path.expanduser(path)
    try:
        if suffix in H5_SUFFIXES:
            return H5Stack(path, dataset)
        return _BY_SUFFIX[suffix](path)
    except Exception as exc:  # each library has its own errors for a damaged file
        if isinstance(exc, ValueError) and path in str(exc):
            raise  # ours: it names the file already
        raise ValueError(f"cannot read {source} as a {suffix} file: {exc}") from exc
