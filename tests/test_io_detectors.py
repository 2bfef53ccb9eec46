"""Detector formats (HDF5, MRC/MRCS, Gatan DM3/DM4, Merlin MIB) on small files the tests write.

HDF5 and MRC files are written with h5py and mrcfile. RosettaSciIO cannot
write .dm3/.dm4 or .mib (its specifications say ``writes: False``), so those
files are built here byte by byte from the formats' layouts (the DM tag
tree; the Merlin per-frame ASCII header + big-endian pixels) and checked
against RosettaSciIO's own full (non-lazy) readers as well as the pixels
written.
"""

from __future__ import annotations

import pickle
import struct
import sys

import numpy as np
import pytest

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.cli import main

N = 6


@pytest.fixture(scope="module")
def frames():
    return make_beam_block_stack(N, (40, 48), seed=2).stack


def check_lazy_stack(stack, expected, monkeypatch=None):
    assert stack.shape == expected.shape and stack.dtype == expected.dtype.newbyteorder("=")
    for i in (0, N - 1, 2):
        np.testing.assert_array_equal(stack[i], expected[i])
    np.testing.assert_array_equal(np.asarray(stack[1:4]), expected[1:4])
    again = pickle.loads(pickle.dumps(stack))  # dask workers reopen it by name
    np.testing.assert_array_equal(again[3], expected[3])


# ----------------------------------------------------------------------------
# HDF5


def test_hdf5_dataset_by_path_read_frame_by_frame(tmp_path, frames):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/frames", data=frames, chunks=(1, 40, 48), compression="gzip")
        f.create_dataset("entry/data/dark", data=frames[0])
        f.create_dataset("entry/other", data=frames[:2])
    stack = io.open_stack(f"{path}:/entry/data/frames")
    check_lazy_stack(stack, frames)
    d = io.describe_stack(stack)
    assert d["dataset"] == "/entry/data/frames" and d["compression"] == "gzip"
    assert d["chunking"] == "chunks of 1 x 40 x 48" and d["kind"].startswith("HDF5")
    with pytest.raises(ValueError, match=r"say which dataset .*/entry/data/frames, /entry/other"):
        io.open_stack(path)
    with pytest.raises(ValueError, match=r"run\.h5 has no dataset /nope"):
        io.open_stack(f"{path}:/nope")
    with pytest.raises(ValueError, match=r"single image of shape \(40, 48\)"):
        io.open_stack(f"{path}:/entry/data/dark")
    with pytest.raises(FileNotFoundError, match=r"no such file: .*gone\.h5"):
        io.open_stack(f"{tmp_path / 'gone.h5'}:/entry")


def test_hdf5_reads_one_frame_per_access(tmp_path, frames, monkeypatch):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f["movie"] = frames
    stack = io.open_stack(path)  # one stack in the file: no dataset needed
    reads = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__",
                        lambda self, key: reads.append(key) or real(self, key))
    stack[4]
    assert reads == [4]


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.mrc").write_bytes(b"\0" * 1024)
    monkeypatch.setitem(sys.modules, "mrcfile", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"needs the package mrcfile: pip install "
                                         r"'napari-maskalign\[mrc\]'"):
        io.open_stack(tmp_path / "a.mrc")
    monkeypatch.setitem(sys.modules, "rsciio", None)
    (tmp_path / "a.mib").write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match=r"package rosettasciio: pip install "
                                         r"'napari-maskalign\[rsciio\]'"):
        io.open_stack(tmp_path / "a.mib")


# ----------------------------------------------------------------------------
# MRC


@pytest.mark.parametrize("suffix", [".mrc", ".mrcs"])
def test_mrc_movies_are_memory_mapped(tmp_path, frames, suffix):
    mrcfile = pytest.importorskip("mrcfile")
    path = tmp_path / f"movie{suffix}"
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames)
        mrc.voxel_size = 1.25
    stack = io.open_stack(path)
    check_lazy_stack(stack, frames)
    d = io.describe_stack(stack)
    assert d["kind"] == "MRC stack (memory-mapped)" and d["pixel size"] == "1.25 x 1.25 A"
    single = tmp_path / f"one{suffix}"
    with mrcfile.new(single) as mrc:
        mrc.set_data(frames[0])
    with pytest.raises(ValueError, match="single image"):
        io.open_stack(single)


def test_a_damaged_mrc_is_named(tmp_path):
    pytest.importorskip("mrcfile")
    path = tmp_path / "bad.mrc"
    path.write_bytes(b"not an mrc file" * 10)
    with pytest.raises(ValueError, match=r"bad\.mrc"):
        io.open_stack(path)


# ----------------------------------------------------------------------------
# Gatan DM3 / DM4, built from the tag-tree layout


def _dm_bytes(data: np.ndarray, version: int) -> bytes:
    """A minimal Digital Micrograph file holding ``data`` (little-endian float32).

    Layout (as RosettaSciIO parses it): header (version, file size, byte
    order), the root tag group, then tags: 1 byte kind (20 group, 21 data),
    the name's length (2 bytes) and name; a group: sorted, open, [its size
    in DM4], its tag count; a data tag: [its size in DM4], '%%%%', the
    length of its type description, the description, the value.
    """
    q = ">q" if version == 4 else ">l"  # DM4 counts in 8 bytes, DM3 in 4

    def count(n):
        return struct.pack(q, n)

    def tag(kind, name, body):
        return bytes([kind]) + struct.pack(">h", len(name)) + name.encode() + body

    def group(name, children):
        inner = b"".join(children)
        head = b"\x00\x00" + (count(len(inner)) if version == 4 else b"") + count(len(children))
        return tag(20, name, head + inner)

    def data_tag(name, info, payload):
        desc = b"".join(count(v) for v in info)
        body = b"%%%%" + count(len(info)) + desc + payload
        return tag(21, name, (count(len(body)) if version == 4 else b"") + body)

    def uint32(name, v):
        return data_tag(name, [5], struct.pack("<L", v))

    def double(name, v):
        return data_tag(name, [7], struct.pack("<d", v))

    def units(name):  # an empty array of 2-byte characters
        return data_tag(name, [20, 4, 0], b"")

    pixels = np.ascontiguousarray(data, dtype="<f4")
    calibration = [group("", [double("Origin", 0.0), double("Scale", 1.0), units("Units")])
                   for _ in range(data.ndim)]
    image = group("", [group("ImageData", [
        group("Calibrations", [
            group("Brightness", [double("Origin", 0.0), double("Scale", 1.0), units("Units")]),
            group("Dimension", calibration),
        ]),
        data_tag("Data", [20, 6, pixels.size], pixels.tobytes()),  # 6: float32
        uint32("DataType", 2),  # 2: float32
        group("Dimensions", [uint32("", n) for n in data.shape[::-1]]),  # x, y, z
    ]), group("ImageTags", [])])
    root = group("", [group("ImageList", [image])])[3:]  # the root has no kind or name
    root = root[:2] + root[2 + (8 if version == 4 else 0):]  # nor a size
    return struct.pack(">l", version) + count(len(root)) + struct.pack(">l", 1) + root


@pytest.mark.parametrize("version", [3, 4])
def test_gatan_dm_stacks_through_rosettasciio(tmp_path, frames, version):
    pytest.importorskip("rsciio")
    from rsciio.digitalmicrograph import file_reader

    path = tmp_path / f"stack.dm{version}"
    path.write_bytes(_dm_bytes(frames, version))
    whole = file_reader(str(path))[0]["data"]  # RosettaSciIO's own reader, all at once
    np.testing.assert_array_equal(whole, frames)
    stack = io.open_stack(path)
    check_lazy_stack(stack, frames)
    assert io.describe_stack(stack)["kind"].startswith("Gatan Digital Micrograph")
    assert stack._data().chunks[0] == (1,) * N  # one frame per read, not a big chunk
    single = tmp_path / f"one.dm{version}"
    single.write_bytes(_dm_bytes(frames[0], version))
    with pytest.raises(ValueError, match=r"single image of shape \(40, 48\)"):
        io.open_stack(single)


# ----------------------------------------------------------------------------
# Merlin MIB, built from the frame layout


def _mib_bytes(data: np.ndarray) -> bytes:
    """Merlin frames: per frame a 384-byte ASCII header (comma separated, space padded),
    then the pixels, big-endian 16-bit."""
    n, height, width = data.shape
    out = b""
    for i in range(n):
        fields = ["MQ1", f"{i + 1:06d}", "00384", "01", f"{width:04d}", f"{height:04d}", "U16",
                  "   1x1", "01", "2020-05-18 16:51:49.971626", "0.000555", "0", "0", "0",
                  "1.200000E+2", "5.110000E+2", "3RX", f"2020-05-18T14:51:49.{i:09d}Z",
                  "555000ns", "12", ""]
        out += ",".join(fields).encode().ljust(384, b" ") + data[i].astype(">u2").tobytes()
    return out


def test_merlin_mib_through_rosettasciio(tmp_path, frames):
    pytest.importorskip("rsciio")
    from rsciio.quantumdetector import file_reader

    counts = np.clip(frames, 0, 4095).astype(np.uint16)
    path = tmp_path / "scan.mib"
    path.write_bytes(_mib_bytes(counts))
    whole = file_reader(str(path), navigation_shape=(N,))[0]["data"]
    stack = io.open_stack(path)
    check_lazy_stack(stack, np.asarray(whole))
    np.testing.assert_array_equal(stack[2], counts[2][::-1])  # upside down, as RosettaSciIO shows it
    assert stack.dtype == np.uint16 and stack.dtype.isnative
    assert io.describe_stack(stack)["kind"] == "Merlin MIB frames (memory-mapped)"


# ----------------------------------------------------------------------------
# the command on these formats


def test_info_and_register_on_an_hdf5_dataset(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    synth = make_beam_block_stack(8, (48, 48), max_drift=2.0, seed=4)
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/frames", data=synth.stack, chunks=(1, 48, 48))
    np.save(tmp_path / "block.npy", synth.beam_block.astype(np.uint8))
    assert main(["info", f"{path}:/entry/frames"]) == 0
    out = capsys.readouterr().out
    assert "HDF5 dataset" in out and "dataset      /entry/frames" in out and "frames       8" in out
    assert main(["register", f"{path}:/entry/frames", "--mask", str(tmp_path / "block.npy"),
                 "--shifts", str(tmp_path / "s.csv"), "--quiet"]) == 0  # fmt: skip
    shifts, _ = io.read_shifts_csv(tmp_path / "s.csv")
    assert np.abs(shifts - synth.expected_shifts()).max() < 0.15
    # the input file is never an output, even through its dataset syntax
    assert main(["register", f"{path}:/entry/frames", "--shifts", str(path), "--overwrite"]) == 1
    assert "is the input itself" in capsys.readouterr().err
