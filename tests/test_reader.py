"""The napari reader: a folder (glob, list) of TIFF frames opens as one lazy stack."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_maskalign._reader import get_reader
from napari_maskalign._sample_data import make_beam_block_stack


@pytest.fixture(scope="module")
def sample():
    return make_beam_block_stack(11, (40, 36), seed=2)


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
    # single files, other folders and zarr stores are left to other readers
    assert get_reader(files[0]) is None
    assert get_reader([files[0]]) is None
    assert get_reader(str(tmp_path / "nothing_*.tif")) is None
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    assert get_reader(str(other)) is None
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=(2, 4, 4), dtype="f4")
    z[:] = 1
    assert get_reader(str(tmp_path / "s.zarr")) is None


def test_folder_opens_lazily_in_natural_order(frames_dir, sample, reads):
    layers = get_reader(str(frames_dir))(str(frames_dir))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert kwargs["name"] == "run_7"
    assert isinstance(data, da.Array)
    assert data.shape == sample.stack.shape and data.dtype == sample.stack.dtype
    assert data.chunks[0] == (1,) * 11  # one file per chunk
    assert reads == ["img0.tiff"]  # only the first frame (for contrast limits) was read
    np.testing.assert_array_equal(data[10].compute(), sample.stack[10])  # img10 after img9
    assert reads[-1] == "img10.tiff"
    lo, hi = kwargs["contrast_limits"]
    assert lo == sample.stack[0].min() and hi == sample.stack[0].max()


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
    assert "napari-maskalign.read_frames" not in readers
    assert "napari-maskalign.read_frames" not in {
        r.command for r in pm.iter_compatible_readers([str(png)])
    }
    assert "napari-maskalign.read_frames" in {
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
