"""Stack, mask and shift-table readers and writers (napari_maskalign.io)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack


@pytest.fixture(scope="module")
def sample():
    return make_beam_block_stack(12, (48, 40), seed=1)


def write_frames(folder, stack, name="frame_{}.tif"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(stack):
        tifffile.imwrite(folder / name.format(i), f)
    return folder


@pytest.fixture
def frames_dir(tmp_path, sample):
    return write_frames(tmp_path / "run", sample.stack)


class CountingReads:
    """Counts tifffile.imread calls (the reads of frame files)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = tifffile.imread

        def imread(path, *a, **k):
            self.calls.append(os.path.basename(os.fspath(path)))
            return real(path, *a, **k)

        monkeypatch.setattr(tifffile, "imread", imread)


# ----------------------------------------------------------------------------
# file lists


def test_natural_sort_puts_frame_2_before_frame_10():
    names = ["frame_10.tif", "frame_2.tif", "frame_1.tif", "Frame_3.tif", "frame_100.tif"]
    assert sorted(names, key=io.natural_key) == [
        "frame_1.tif",
        "frame_2.tif",
        "Frame_3.tif",
        "frame_10.tif",
        "frame_100.tif",
    ]


def test_folder_glob_and_list_give_natural_order(frames_dir):
    files = io.list_frame_files(frames_dir)
    assert [os.path.basename(f) for f in files] == [f"frame_{i}.tif" for i in range(12)]
    glob_files = io.list_frame_files(str(frames_dir / "frame_1*.tif"))
    assert [os.path.basename(f) for f in glob_files] == [
        "frame_1.tif",
        "frame_10.tif",
        "frame_11.tif",
    ]
    shuffled = [files[i] for i in (5, 0, 11, 2)]
    assert io.list_frame_files(shuffled) == [files[i] for i in (0, 2, 5, 11)]


def test_folder_with_glob_characters_in_its_name(tmp_path, sample):
    folder = tmp_path / "run[1]"
    folder.mkdir()
    for i, f in enumerate(sample.stack[:3]):
        tifffile.imwrite(folder / f"frame_{i}.tif", f)
    files = io.list_frame_files(str(folder))  # the folder itself, not the pattern run[1]
    assert [os.path.basename(f) for f in files] == ["frame_0.tif", "frame_1.tif", "frame_2.tif"]
    np.testing.assert_array_equal(io.open_stack(str(folder))[2], sample.stack[2])


def test_folder_ignores_other_files(frames_dir):
    (frames_dir / "notes.txt").write_text("beam current 3 nA")
    assert len(io.list_frame_files(frames_dir)) == 12


def test_file_list_errors(tmp_path, frames_dir):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        io.list_frame_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no .tif"):
        io.list_frame_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no files match"):
        io.list_frame_files(str(tmp_path / "nope" / "*.tif"))
    (frames_dir / "frame_x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not TIFFs"):
        io.list_frame_files(str(frames_dir / "frame_*"))


# ----------------------------------------------------------------------------
# stacks


def test_folder_reads_one_file_per_frame(frames_dir, sample, monkeypatch):
    stack = io.open_stack(frames_dir)
    assert isinstance(stack, io.FrameSequence)
    assert stack.shape == sample.stack.shape and stack.dtype == sample.stack.dtype
    reads = CountingReads(monkeypatch)
    np.testing.assert_array_equal(stack[7], sample.stack[7])
    assert reads.calls == ["frame_7.tif"]
    np.testing.assert_array_equal(stack[-1], sample.stack[-1])
    np.testing.assert_array_equal(stack[2:9:3], sample.stack[2:9:3])
    np.testing.assert_array_equal(stack[[4, 1], 5:9, ::2], sample.stack[[4, 1], 5:9, ::2])
    np.testing.assert_array_equal(np.asarray(stack), sample.stack)
    with pytest.raises(IndexError, match="out of range"):
        stack[12]
    with pytest.raises(IndexError, match="frame 12 is out of range"):
        stack[[1, 12]]  # an index list is checked too (it used to wrap to frame 0)


def test_frame_sequence_pickles_as_file_names(frames_dir, sample):
    stack = io.open_stack(frames_dir)
    blob = pickle.dumps(stack)
    assert len(blob) < 5000  # names only, never pixels
    np.testing.assert_array_equal(pickle.loads(blob)[3], sample.stack[3])


def test_mixed_shapes_and_dtypes_are_reported(frames_dir, sample):
    tifffile.imwrite(frames_dir / "frame_12.tif", np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match=r"mixed shapes: frame_12.tif is \(10, 10\)"):
        io.open_stack(frames_dir)
    lazy = io.open_stack(frames_dir, check_shapes=False)
    np.testing.assert_array_equal(lazy[0], sample.stack[0])
    with pytest.raises(ValueError, match="frame 12"):
        lazy[12]
    tifffile.imwrite(frames_dir / "frame_12.tif", sample.stack[0].astype(np.uint16))
    with pytest.raises(ValueError, match="mixed data types"):
        io.open_stack(frames_dir)


def test_broken_frame_file_is_reported(frames_dir):
    (frames_dir / "frame_3.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="frame_3.tif"):
        io.open_stack(frames_dir)


def test_multipage_tiff_is_memory_mapped(tmp_path, sample):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, sample.stack)
    stack = io.open_stack(path)
    assert isinstance(stack, np.memmap)
    np.testing.assert_array_equal(stack, sample.stack)
    assert io.describe_stack(stack, path)["kind"] == "multi-page TIFF (memory-mapped)"


def test_compressed_tiff_is_read_page_by_page(tmp_path, sample):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, sample.stack, compression="zlib")
    stack = io.open_stack(path)
    assert isinstance(stack, io.TiffPages)
    assert stack.shape == sample.stack.shape
    np.testing.assert_array_equal(stack[5], sample.stack[5])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack))[:], sample.stack)
    assert "deflate" in io.describe_stack(stack)["chunking"].lower()


def test_npy_is_memory_mapped_without_pickle(tmp_path, sample):
    path = tmp_path / "stack.npy"
    np.save(path, sample.stack)
    stack = io.open_stack(path)
    assert isinstance(stack, np.memmap)
    np.testing.assert_array_equal(stack, sample.stack)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read"):
        io.open_stack(objects)


def test_zarr_array_and_group(tmp_path, sample):
    arr = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=sample.stack.shape, chunks=(1, 48, 40), dtype="f4"
    )
    arr[:] = sample.stack
    stack = io.open_stack(tmp_path / "a.zarr")
    np.testing.assert_array_equal(stack[:], sample.stack)
    assert io.describe_stack(stack)["chunking"] == "chunks of 1 x 48 x 40"
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("frames", shape=sample.stack.shape, dtype="f4")[:] = sample.stack
    np.testing.assert_array_equal(io.open_stack(tmp_path / "g.zarr")[3], sample.stack[3])
    group.create_array("dark", shape=(2, 48, 40), dtype="f4")
    with pytest.raises(ValueError, match="several arrays"):
        io.open_stack(tmp_path / "g.zarr")


def test_open_stack_errors(tmp_path, sample):
    with pytest.raises(FileNotFoundError):
        io.open_stack(tmp_path / "missing.tif")
    tifffile.imwrite(tmp_path / "one.tif", sample.stack[0])
    with pytest.raises(ValueError, match="single image"):
        io.open_stack(tmp_path / "one.tif")
    (tmp_path / "data.h5").write_bytes(b"")  # HDF5 is read (with h5py), but this is empty
    with pytest.raises(ValueError, match=r"cannot read .*data\.h5"):
        io.open_stack(tmp_path / "data.h5")


def test_as_dask_is_lazy_and_whole_frames(frames_dir, sample, monkeypatch):
    stack = io.open_stack(frames_dir)
    reads = CountingReads(monkeypatch)
    lazy = io.as_dask(stack, frames_per_chunk=5)
    assert reads.calls == []
    assert lazy.chunks == ((5, 5, 2), (48,), (40,))
    np.testing.assert_array_equal(lazy[6].compute(), sample.stack[6])
    assert set(reads.calls) <= {f"frame_{i}.tif" for i in range(5, 10)}
    np.testing.assert_array_equal(lazy.compute(), sample.stack)


def test_dask_source_is_the_stack_behind_as_dask(frames_dir, sample):
    stack = io.open_stack(frames_dir)
    lazy = io.as_dask(stack, frames_per_chunk=1)
    assert io.dask_source(lazy) is stack
    np.testing.assert_array_equal(io.dask_source(lazy)[3], lazy[3].compute())
    # anything derived from the array reads other frames or values: kept as it is
    for other in (lazy[::2], lazy + 1, lazy.astype(np.float64)):
        assert io.dask_source(other) is other
    plain = np.zeros((2, 3, 4))
    assert io.dask_source(plain) is plain
    assert io.dask_source(io.as_dask(plain)) is plain  # a numpy array behind dask, too


def test_describe_folder(frames_dir):
    d = io.describe_stack(io.open_stack(frames_dir), frames_dir)
    assert d["frames"] == 12 and d["frame_shape"] == (48, 40) and d["dtype"] == "float32"
    assert d["chunking"] == "one file per frame"
    assert d["size_bytes"] == 12 * 48 * 40 * 4
    assert os.path.basename(d["last_file"]) == "frame_11.tif"


# ----------------------------------------------------------------------------
# masks: files mark pixels to IGNORE with nonzero


@pytest.mark.parametrize("fmt", ["npy", "tif", "png-L", "png-RGB", "png-P"])
def test_mask_files_mark_ignored_pixels(tmp_path, sample, fmt):
    block = sample.beam_block
    if fmt == "npy":
        path = tmp_path / "m.npy"
        np.save(path, block.astype(np.uint8))
    elif fmt == "tif":
        path = tmp_path / "m.tif"
        tifffile.imwrite(path, block.astype(np.uint16)[None] * 3)  # (1, Y, X), any nonzero
    else:
        path = tmp_path / "m.png"
        grey = block.astype(np.uint8) * 255
        if fmt == "png-L":
            Image.fromarray(grey).save(path)
        elif fmt == "png-RGB":
            rgb = np.zeros((*block.shape, 3), np.uint8)
            rgb[..., 0] = grey  # painted in red
            Image.fromarray(rgb).save(path)
        else:
            Image.fromarray(grey).convert("P").save(path)
    assert io.read_mask(path).shape == block.shape
    valid = io.read_valid_mask(path, block.shape)
    assert valid.dtype == bool
    np.testing.assert_array_equal(valid, ~block)
    np.testing.assert_array_equal(io.read_valid_mask(path, block.shape, invert=True), block)


def test_mask_errors(tmp_path, sample):
    shape = sample.beam_block.shape
    np.save(tmp_path / "small.npy", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"has shape \(5, 5\) but one frame has shape \(48, 40\)"):
        io.read_valid_mask(tmp_path / "small.npy", shape)
    np.save(tmp_path / "all.npy", np.ones(shape, np.uint8))
    with pytest.raises(ValueError, match="masks every pixel"):
        io.read_valid_mask(tmp_path / "all.npy", shape)
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        io.read_mask(tmp_path / "obj.npy")
    (tmp_path / "m.bmp").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .npy, .tif/.tiff or .png"):
        io.read_mask(tmp_path / "m.bmp")
    with pytest.raises(FileNotFoundError):
        io.read_mask(tmp_path / "none.png")


# ----------------------------------------------------------------------------
# shift tables


def test_shifts_csv_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    shifts = rng.normal(scale=3, size=(50, 2))
    shifts[0] = -0.0
    quality = rng.random(50)
    path = tmp_path / "shifts.csv"
    io.write_shifts_csv(path, shifts, quality)
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,shift_y,shift_x,quality"
    assert lines[1] == "0,0.0,0.0," + repr(float(quality[0]))
    back, q = io.read_shifts_csv(path, n_frames=50, ndim=2)
    np.testing.assert_array_equal(back, shifts)  # bit for bit: resumed runs depend on it
    np.testing.assert_array_equal(q, quality)
    assert [p.name for p in tmp_path.iterdir()] == ["shifts.csv"]  # no temp file left


def test_a_smoothed_table_reads_back_smoothed_or_measured(tmp_path):
    rng = np.random.default_rng(1)
    n = 6
    smooth, raw = (io.ShiftTable(rng.normal(size=(n, 2)), rng.random(n), rng.normal(size=n),
                                 1 + 0.01 * rng.normal(size=n), rng.random((n, 2)),
                                 rng.random((n, 2))) for _ in range(2))
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, *smooth[:2], rotations=smooth.rotations, scales=smooth.scales,
                        uncertainties=smooth.uncertainties,
                        parameter_uncertainties=smooth.parameter_uncertainties, raw=raw)
    for measured, expected in ((False, smooth), (True, raw)):
        back = io.read_shift_table(path, n_frames=n, measured=measured)
        np.testing.assert_array_equal(back.quality, smooth.quality)  # one quality column
        for got, want in zip(back[:1] + back[2:], expected[:1] + expected[2:]):
            np.testing.assert_array_equal(got, want)  # bit for bit
    # a table without raw columns reads the same either way
    io.write_shifts_csv(path, *smooth[:2], uncertainties=smooth.uncertainties)
    np.testing.assert_array_equal(io.read_shift_table(path, measured=True).shifts, smooth.shifts)
    # a smoothed table written before the raw_sigma columns: the measured shifts, errors unknown
    path.write_text("frame,shift_y,shift_x,quality,sigma_y,sigma_x,raw_shift_y,raw_shift_x\n"
                    "0,0.5,0.25,1.0,0.01,0.01,0.75,0.125\n")
    old = io.read_shift_table(path, measured=True)
    np.testing.assert_array_equal(old.shifts, [[0.75, 0.125]])
    assert old.uncertainties is None
    with pytest.raises(ValueError, match="shape of shifts"):
        io.write_shifts_csv(path, smooth.shifts, smooth.quality, raw=io.ShiftTable(
            raw.shifts[:2], raw.quality[:2]))


def test_shifts_csv_3d_and_hand_written(tmp_path):
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, np.arange(9.0).reshape(3, 3), [1, 1, 1])
    assert path.read_text().splitlines()[0] == "frame,shift_z,shift_y,shift_x,quality"
    shifts, _ = io.read_shifts_csv(path)
    assert shifts.shape == (3, 3)
    hand = tmp_path / "hand.csv"
    hand.write_text("Frame, shift_x ,shift_y,note\n0,1.5,2,start\n1, -1 ,0.25,\n")
    shifts, quality = io.read_shifts_csv(hand, n_frames=2, ndim=2)
    np.testing.assert_array_equal(shifts, [[2, 1.5], [0.25, -1]])  # found by name, y then x
    assert np.isnan(quality).all()


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "is empty"),
        (
            "frame,shift_y,shift_x,quality\n0,0,0,1\n1,0,0,1\n",
            {"n_frames": 3},
            "has 2 rows but the stack has 3 frames",
        ),
        ("shift_y,shift_x\n0,0\n", {}, "no 'frame' column"),
        ("frame,shift_x,quality\n0,0,1\n", {}, "needs columns shift_y and shift_x"),
        ("frame,shift_y,shift_x\n0,0,0\n", {"ndim": 3}, r"lacks column\(s\) shift_z"),
        ("frame,shift_z,shift_y,shift_x\n0,0,0,0\n", {"ndim": 2}, "frames are 2D"),
        (
            "frame,shift_y,shift_x\n0,zero,0\n",
            {},
            "line 2 of s.csv: shift_y 'zero' is not a number",
        ),
        ("frame,shift_y,shift_x\n0,0,0\n2,0,0\n", {}, "is for frame 2, expected frame 1"),
        ("frame,shift_y,shift_x\n0,nan,0\n", {}, "expected a finite number"),
        ("frame,shift_y,shift_x\n0.5,0,0\n", {}, "not a whole number"),
        ("frame,shift_y,shift_x\n0,0\n", {}, "has 2 values, expected 3"),
    ],
)
def test_shifts_csv_errors_in_plain_words(tmp_path, text, kwargs, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        io.read_shifts_csv(path, **kwargs)


def test_shifts_csv_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, np.zeros((3, 2)), np.ones(3))
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        io.write_shifts_csv(path, np.ones((5, 2)), np.ones(5))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


# ----------------------------------------------------------------------------
# writers


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_writer_renames_only_when_complete(tmp_path, sample, suffix):
    out = tmp_path / f"aligned{suffix}"
    with io.StackWriter(out, sample.stack.shape, np.float32, attrs={"note": "x"}) as w:
        for lo, hi in io.iter_blocks(12, 5):
            w.write(sample.stack[lo:hi])
            assert not out.exists()  # nothing under the final name until the end
            assert len(io.stale_partials(out)) == 1
    assert io.stale_partials(out) == []
    back = io.open_stack(out)
    np.testing.assert_array_equal(np.asarray(back[:]), sample.stack)
    if suffix == ".zarr":
        assert back.chunks == (1, 48, 40)  # one frame per chunk
    else:
        assert isinstance(back, np.memmap)


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_writer_failure_leaves_nothing(tmp_path, sample, suffix):
    out = tmp_path / f"aligned{suffix}"
    with pytest.raises(RuntimeError, match="boom"):
        with io.StackWriter(out, sample.stack.shape, np.float32) as w:
            w.write(sample.stack[:4])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="only 4 of 12 frames"):
        with io.StackWriter(out, sample.stack.shape, np.float32) as w:
            w.write(sample.stack[:4])
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_only_with_overwrite(tmp_path, sample):
    out = tmp_path / "a.tif"
    out.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="exists and overwrite was not asked for"):
        io.StackWriter(out, sample.stack.shape, np.float32)
    with io.StackWriter(out, sample.stack.shape, np.float32, overwrite=True) as w:
        w.write(sample.stack[:6])
        assert out.read_bytes() == b"old"  # the old output stays until the new one is done
        w.write(sample.stack[6:])
    np.testing.assert_array_equal(io.open_stack(out), sample.stack)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_output_format_from_name():
    assert io.output_format("x.ZARR") == "zarr"
    assert io.output_format("x.tiff") == "tiff"
    with pytest.raises(ValueError, match="end the name with .zarr"):
        io.output_format("x.h5")


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".png"])
def test_write_mask_round_trips_and_leaves_no_temporary_file(tmp_path, sample, suffix):
    painted = sample.beam_block.astype(np.uint8) * 3  # any nonzero label means "ignore"
    out = io.write_mask(tmp_path / f"block{suffix}", painted)
    back = io.read_mask(out)
    np.testing.assert_array_equal(back != 0, sample.beam_block)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"block{suffix}"]


def test_write_mask_refuses_unknown_formats_and_3d_png(tmp_path, sample):
    with pytest.raises(ValueError, match="use .npy, .tif/.tiff or .png"):
        io.write_mask(tmp_path / "block.jpg", sample.beam_block)
    with pytest.raises(ValueError, match="2D images only"):
        io.write_mask(tmp_path / "block.png", np.zeros((2, 4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------
# files that are not what their name says: one message naming the file


GARBAGE_TIFF = b"II*\x00" + bytes(range(7, 207))  # a TIFF signature, then no valid header


def test_a_tiff_with_a_garbage_header_is_named(tmp_path, frames_dir):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(GARBAGE_TIFF)
    with pytest.raises(ValueError, match=r"cannot read .*bad\.tif as a TIFF: no image found"):
        io.open_stack(bad)
    with pytest.raises(ValueError, match=r"cannot read the mask .*bad\.tif: no image found"):
        io.read_mask(bad)
    (frames_dir / "frame_5.tif").write_bytes(GARBAGE_TIFF)
    with pytest.raises(ValueError, match=r"frame_5\.tif as a TIFF image: no image found"):
        io.open_stack(frames_dir)


def test_a_pickled_mask_is_named_and_explained(tmp_path):
    path = tmp_path / "block.npy"
    np.save(path, np.array([{"block": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"cannot read the mask .*block\.npy: it holds Python "
                                         r"objects \(a pickle\)"):
        io.read_mask(path)


def test_a_binary_shifts_file_is_named(tmp_path):
    path = tmp_path / "shifts.csv"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match=r"shifts file shifts\.csv is not a text CSV file"):
        io.read_shifts_csv(path)
    path.write_bytes(b"frame,shift_y,shift_x\n0,\x00,1\n")
    with pytest.raises(ValueError, match=r"shifts\.csv"):  # a NUL byte: named too
        io.read_shifts_csv(path)


def test_a_shifts_file_with_a_utf8_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    io.write_shifts_csv(path, [[0.0, 0.0], [1.25, -2.5]], [1.0, 0.9])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    shifts, quality = io.read_shifts_csv(path, n_frames=2, ndim=2)
    np.testing.assert_array_equal(shifts, [[0.0, 0.0], [1.25, -2.5]])
    np.testing.assert_array_equal(quality, [1.0, 0.9])


def test_the_mask_in_the_frames_folder_is_not_a_frame(frames_dir, sample):
    mask = frames_dir / "block.tif"
    tifffile.imwrite(mask, sample.beam_block.astype(np.uint8))
    with pytest.raises(ValueError, match="mixed"):
        io.open_stack(frames_dir)  # without being told, the mask would be a frame
    stack = io.open_stack(frames_dir, exclude=[mask])
    assert stack.shape == sample.stack.shape and "block.tif" not in " ".join(stack.files)
    pattern = str(frames_dir / "*.tif")
    assert io.open_stack(pattern, exclude=[str(mask)]).shape == sample.stack.shape
    np.testing.assert_array_equal(io.open_stack(frames_dir, exclude=[mask])[3], sample.stack[3])


def test_shift_table_with_rotation_and_scale_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    shifts, quality = rng.normal(size=(6, 2)), rng.random(6)
    rotations, scales = rng.normal(size=6), 1 + 0.01 * rng.normal(size=6)
    path = tmp_path / "rigid.csv"
    io.write_shifts_csv(path, shifts, quality, rotations=rotations, scales=scales)
    assert path.read_text().splitlines()[0] == "frame,shift_y,shift_x,rotation_deg,scale,quality"
    table = io.read_shift_table(path, n_frames=6, ndim=2)
    for got, want in zip(table, (shifts, quality, rotations, scales)):
        np.testing.assert_array_equal(got, want)
    back, q = io.read_shifts_csv(path)  # the shifts reader still gives two columns
    np.testing.assert_array_equal(back, shifts)
    t = table.transforms((32, 48))
    assert t.shape == (6, 3, 3)
    np.testing.assert_allclose(np.linalg.det(t[:, :2, :2]), scales**2)
    # a translation table is exactly what it was, and reads back without rotations
    io.write_shifts_csv(tmp_path / "t.csv", shifts, quality)
    plain = io.read_shift_table(tmp_path / "t.csv")
    assert plain.rotations is None and plain.scales is None
    # a hand-written table may give only one of the two
    (tmp_path / "h.csv").write_text("frame,shift_y,shift_x,rotation_deg\n0,0,0,1.5\n")
    hand = io.read_shift_table(tmp_path / "h.csv")
    np.testing.assert_array_equal(hand.rotations, [1.5])
    np.testing.assert_array_equal(hand.scales, [1.0])


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("frame,shift_y,shift_x,scale\n0,0,0,0\n", {}, "scale must be positive"),
        ("frame,shift_y,shift_x,rotation_deg\n0,0,0,north\n", {}, "rotation_deg 'north'"),
        ("frame,shift_z,shift_y,shift_x,scale\n0,0,0,0,1\n", {}, "rotation and scale are for 2D"),
    ],
)
def test_rotation_and_scale_columns_are_checked(tmp_path, text, kwargs, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        io.read_shift_table(path, **kwargs)
