"""The napari reader: a folder (glob, list) of TIFF frames, HDF5, MRC, DM3/DM4, MIB and zarr
open as one lazy stack, with the contrast of the pattern and the slider labelled "frame"."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_maskalign._display import sample_indices
from napari_maskalign._reader import get_reader, read_stack
from napari_maskalign._sample_data import make_beam_block_stack


@pytest.fixture(scope="module")
def sample():
    # big enough that the static-pixel search sees the block as a block (at 40 x 36 its
    # edge falls apart into small groups, which the search flags)
    return make_beam_block_stack(11, (96, 90), seed=2)


@pytest.fixture
def frames_dir(tmp_path, sample):
    folder = tmp_path / "run_7"
    folder.mkdir()
    for i, f in enumerate(sample.stack):
        tifffile.imwrite(folder / f"img{i}.tiff", f)
    return folder


@pytest.fixture
def reads(monkeypatch):
    calls = []
    real = tifffile.imread

    def imread(path, *a, **k):
        calls.append(os.path.basename(os.fspath(path)))
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imread", imread)
    return calls


def test_reader_claims_folders_globs_and_lists_of_frames(frames_dir, tmp_path, sample):
    assert callable(get_reader(str(frames_dir)))
    assert callable(get_reader(str(frames_dir / "img*.tiff")))
    files = sorted(str(p) for p in frames_dir.iterdir())
    assert callable(get_reader(files))
    # single TIFFs and other folders are left to other readers
    assert get_reader(files[0]) is None
    assert get_reader([files[0]]) is None
    assert get_reader(str(tmp_path / "nothing_*.tif")) is None
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    assert get_reader(str(other)) is None
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=(2, 4, 4), dtype="f4")
    z[:] = 1
    assert get_reader(str(tmp_path / "s.zarr")) is read_stack  # the CLI reads zarr: so do we


def test_folder_opens_lazily_in_natural_order(frames_dir, sample, reads):
    layers = get_reader(str(frames_dir))(str(frames_dir))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert kwargs["name"] == "run_7"
    assert isinstance(data, da.Array)
    assert data.shape == sample.stack.shape and data.dtype == sample.stack.dtype
    assert data.chunks[0] == (1,) * 11  # one file per chunk
    # only a few frames spread over the stack were read (for the contrast limits)
    assert reads == [f"img{i}.tiff" for i in sample_indices(11)] and len(reads) < 11
    np.testing.assert_array_equal(data[10].compute(), sample.stack[10])  # img10 after img9
    assert reads[-1] == "img10.tiff"
    lo, hi = kwargs["contrast_limits"]
    sampled = sample.stack[sample_indices(11)]
    # percentiles of the sampled frames (less the few pixels found static, if any)
    assert lo == pytest.approx(np.percentile(sampled, 0.1), rel=0.01)
    assert hi == pytest.approx(np.percentile(sampled, 99.9), rel=0.01)
    assert kwargs["axis_labels"] == ("frame", "y", "x")


def test_glob_and_list_open_the_matching_frames(frames_dir, sample):
    pattern = str(frames_dir / "img1*.tiff")
    data, kwargs, _ = get_reader(pattern)(pattern)[0]
    np.testing.assert_array_equal(data.compute(), sample.stack[[1, 10]])
    assert kwargs["name"] == "run_7/img1*.tiff"
    files = [str(frames_dir / f"img{i}.tiff") for i in (3, 2, 9)]
    data, kwargs, _ = get_reader(files)(files)[0]
    np.testing.assert_array_equal(data.compute(), sample.stack[[2, 3, 9]])
    # a folder handed over in a one-element list is named and described as the folder
    data, kwargs, _ = get_reader([str(frames_dir)])([str(frames_dir)])[0]
    assert data.shape == sample.stack.shape
    assert kwargs["name"] == "run_7" and kwargs["metadata"]["maskalign_source"] == str(frames_dir)


def test_mixed_frame_shapes_fail_when_opening(frames_dir):
    tifffile.imwrite(frames_dir / "img11.tiff", np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="mixed shapes"):
        get_reader(str(frames_dir))(str(frames_dir))


def test_napari_opens_the_folder_as_one_lazy_layer(frames_dir, sample):
    pytest.importorskip("napari", reason="opening through napari needs napari")
    npe2 = pytest.importorskip("npe2", reason="opening through napari needs npe2")
    from napari.components import ViewerModel

    pm = npe2.PluginManager.instance()
    pm.discover()
    # the manifest claims directories only: single files never offer this reader
    png = frames_dir.parent / "mask.png"
    readers = {r.command for r in pm.iter_compatible_readers([str(frames_dir / "img0.tiff")])}
    assert "napari-maskalign.read_stack" not in readers
    assert "napari-maskalign.read_stack" not in {
        r.command for r in pm.iter_compatible_readers([str(png)])
    }
    assert "napari-maskalign.read_stack" in {
        r.command for r in pm.iter_compatible_readers([str(frames_dir)])
    }
    viewer = ViewerModel()
    layers = viewer.open(str(frames_dir), plugin="napari-maskalign")
    assert [layer.name for layer in layers] == ["run_7"]
    assert isinstance(layers[0].data, da.Array)
    assert layers[0].data.shape == sample.stack.shape


def test_the_lazy_layer_registers_and_aligns_without_loading(frames_dir, sample, reads):
    """What the Register widget does with the layer: the engine's dask path, a lazy aligned copy."""
    from napari_maskalign.engine import apply_shifts, register_stack

    data = get_reader(str(frames_dir))(str(frames_dir))[0][0]
    result = register_stack(data, mask=sample.valid, upsample_factor=20)
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20)
    np.testing.assert_array_equal(result.shifts, expected.shifts)
    reads.clear()
    aligned = apply_shifts(data, result.shifts)
    assert isinstance(aligned, da.Array) and reads == []  # nothing read until a frame is shown
    np.testing.assert_array_equal(
        aligned[4].compute(), apply_shifts(sample.stack[4:5], result.shifts[4:5])[0]
    )
    assert reads == ["img4.tiff"]


# ----------------------------------------------------------------------------
# every format the command line reads, through napari


def _viewer():
    pytest.importorskip("napari", reason="opening through napari needs napari")
    from napari.components import ViewerModel

    return ViewerModel()


def _hot(stack: np.ndarray, n: int = 12, seed: int = 0) -> np.ndarray:
    """``stack`` with ``n`` static hot pixels far above the pattern."""
    out = stack.astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    flat = rng.choice(out[0].size, n, replace=False)
    out.reshape(len(out), -1)[:, flat] = 60000.0
    return out


def _open_in_napari(path):
    viewer = _viewer()
    layers = viewer.open(path, plugin="napari-maskalign")
    assert len(layers) == 1
    return viewer, layers[0]


def _check_layer(viewer, layer, expected):
    assert isinstance(layer.data, da.Array)
    assert layer.data.chunks[0] == (1,) * len(expected)  # one frame per read
    np.testing.assert_array_equal(np.asarray(layer.data[len(expected) - 1]), expected[-1])
    # the pattern's contrast, not the hot pixels' (they hold 60000)
    hi = layer.contrast_limits[1]
    assert hi <= 2 * np.percentile(expected[expected < 60000], 99.9)
    assert viewer.dims.axis_labels[0] == "frame"  # not "-3"


def test_hdf5_opens_in_napari_with_a_dataset_choice(tmp_path, sample):
    h5py = pytest.importorskip("h5py")
    stack = _hot(sample.stack)
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f["meta/flat"] = np.zeros((4, 4))  # 2D: not a stack
        f["entry/data"] = stack
        f["entry/other"] = stack[::-1] + 1
    # no dataset named: one layer per stack, in the file's order (keep the one you want)
    viewer = _viewer()
    layers = viewer.open(str(path), plugin="napari-maskalign")
    assert [la.name for la in layers] == ["run.h5:/entry/data", "run.h5:/entry/other"]
    _check_layer(viewer, layers[0], stack)
    _check_layer(viewer, layers[1], stack[::-1] + 1)
    for layer in layers:
        assert layer.metadata["datasets"] == ["/entry/data", "/entry/other"]
    assert layers[1].metadata["maskalign_source"] == f"{path}:/entry/other"
    # one stack: one layer
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["entry/data"] = stack
    _, layer = _open_in_napari(str(tmp_path / "one.h5"))
    assert layer.name == "one.h5:/entry/data"
    # a dataset named as FILE:/path, as the command line takes it (napari's viewer.open
    # and npe2 match a path that exists by its suffix, so this form is for the reader's
    # own callers: scripts, the docks)
    spec = f"{path}:/entry/other"
    assert get_reader(spec) is read_stack
    viewer = _viewer()
    for data, kwargs, kind in read_stack(spec):
        viewer._add_layer_from_data(data, kwargs, kind)
    layer = viewer.layers[-1]
    _check_layer(viewer, layer, stack[::-1] + 1)
    assert layer.name == "run.h5:/entry/other"


def test_mrc_opens_in_napari(tmp_path, sample):
    mrcfile = pytest.importorskip("mrcfile")
    stack = _hot(sample.stack)
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stack)
    _check_layer(*_open_in_napari(str(path)), stack)


@pytest.mark.parametrize("version", [3, 4])
def test_gatan_dm_opens_in_napari(tmp_path, sample, version):
    pytest.importorskip("rsciio")
    from test_io_detectors import _dm_bytes

    stack = _hot(sample.stack)
    path = tmp_path / f"stack.dm{version}"
    path.write_bytes(_dm_bytes(stack, version))
    _check_layer(*_open_in_napari(str(path)), stack)


def test_merlin_mib_opens_in_napari(tmp_path, sample):
    pytest.importorskip("rsciio")
    from test_io_detectors import _mib_bytes

    counts = np.clip(_hot(sample.stack), 0, 60000).astype(np.uint16)
    path = tmp_path / "scan.mib"
    path.write_bytes(_mib_bytes(counts))
    viewer, layer = _open_in_napari(str(path))
    _check_layer(viewer, layer, counts[:, ::-1])  # upside down, as RosettaSciIO shows it


def test_zarr_opens_in_napari(tmp_path, sample):
    stack = _hot(sample.stack)
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=stack.shape, dtype="f4")
    z[:] = stack
    _check_layer(*_open_in_napari(str(tmp_path / "s.zarr")), stack)


def test_hdf5_with_many_stacks_opens_the_first_few_and_says_so(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    from napari_maskalign import _reader

    monkeypatch.setattr(_reader, "MAX_H5_LAYERS", 2)
    said = []
    monkeypatch.setattr("napari.utils.notifications.show_info", said.append)
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        for k in range(3):
            f[f"s{k}"] = np.full((2, 8, 8), k, np.float32)
    layers = read_stack(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["many.h5:/s0", "many.h5:/s1"]
    assert layers[0][1]["metadata"]["datasets"] == ["/s0", "/s1", "/s2"]
    assert said and "holds 3 stacks; opened the first 2" in said[0]


def test_one_hdf5_walk_for_the_reader_and_the_command_line(tmp_path):
    """The reader and H5Stack find the same stacks with one function (h5_stacks)."""
    h5py = pytest.importorskip("h5py")
    from napari_maskalign import _reader
    from napari_maskalign.io import detectors

    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a/flat"] = np.zeros((4, 4))
        f["a/b"] = np.zeros((2, 4, 4))
        f["c"] = np.zeros((2, 2, 4, 4))
    assert detectors.h5_stacks(path) == ["/a/b", "/c"]
    assert not hasattr(_reader, "_first_h5_stack")
    with pytest.raises(ValueError, match="datasets of 3 or more dimensions: /a/b, /c"):
        detectors.H5Stack(path)


def test_hdf5_without_a_stack_is_refused_by_name(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((4, 4))
    with pytest.raises(ValueError, match="flat.h5 holds no dataset of 3 or more dimensions"):
        read_stack(str(path))
