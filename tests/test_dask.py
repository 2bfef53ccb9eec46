"""Registration of dask stacks: one task per frame chunk, locally and on a cluster."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import FrameRegistrar, register_stack
from napari_maskalign.engine._dask import _local_groups, active_client, iter_register_chunks


@pytest.fixture(scope="module")
def sample():
    return make_beam_block_stack(12, (64, 64), max_drift=3.0, seed=4)


def registrar_for(sample, **kw):
    return FrameRegistrar(sample.stack[0], valid_mask=sample.valid, upsample_factor=20, **kw)


def collect(chunks, n, ndim):
    shifts = np.full((n, ndim), np.nan)
    quality = np.full(n, np.nan)
    for frames, s, q, _ in chunks:
        shifts[frames], quality[frames] = s, q
    return shifts, quality


def test_chunks_on_local_scheduler_match_in_process(sample):
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20)
    stack = da.from_array(sample.stack, chunks=(5, 64, 64))
    out = list(iter_register_chunks(stack, registrar_for(sample)))
    assert sorted(np.concatenate([f for f, *_ in out]).tolist()) == list(range(12))
    shifts, quality = collect(out, 12, 2)
    np.testing.assert_array_equal(shifts, expected.raw_shifts)
    np.testing.assert_array_equal(quality, expected.quality)
    assert np.abs(shifts - sample.expected_shifts()).max() < 0.1


def test_local_groups_are_whole_chunks_of_about_target_frames():
    groups = list(_local_groups((5,) * 8, 0, 16))
    assert groups == [(0, 20), (20, 40)]
    assert list(_local_groups((1,) * 40, 7, 16)) == [(7, 23), (23, 39), (39, 40)]
    assert list(_local_groups((50, 50), 10, 16)) == [(10, 50), (50, 100)]
    assert list(_local_groups((3,), 0, 16)) == [(0, 3)]


def test_one_frame_chunks_are_read_in_groups(sample, tmp_path, monkeypatch):
    """A folder of frames (one chunk per file) costs one dask compute per ~16 frames."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(40):
        tifffile.imwrite(folder / f"f{i}.tif", sample.stack[i % 12])
    lazy = io.as_dask(io.open_stack(folder), frames_per_chunk=1)
    computes = []
    real = da.Array.compute

    def counting(self, **kw):
        computes.append(self.shape[0])
        return real(self, **kw)

    monkeypatch.setattr(da.Array, "compute", counting)
    out = list(iter_register_chunks(lazy, registrar_for(sample), start=2))
    assert computes == [16, 16, 6]
    assert [len(f) for f, *_ in out] == [16, 16, 6]
    shifts, _ = collect(out, 40, 2)
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20).raw_shifts
    np.testing.assert_array_equal(shifts[2:], expected[np.arange(2, 40) % 12])


def test_start_skips_done_frames_and_xcorr_comes_back(sample):
    stack = da.from_array(sample.stack, chunks=(4, 32, 64))  # split frames are made whole
    out = list(iter_register_chunks(stack, registrar_for(sample, xcorr_radius=3), start=6))
    frames = np.concatenate([f for f, *_ in out])
    assert frames.tolist() == list(range(6, 12))
    windows = np.concatenate([x for *_, x in out])
    shifts = np.concatenate([s for _, s, _, _ in out])
    assert windows.shape == (6, 7, 7) and windows.dtype == np.float32
    # each correlation window peaks within a pixel of the frame's shift
    for shift, window in zip(shifts, windows):
        peak = np.array(np.unravel_index(np.argmax(window), window.shape)) - 3
        assert np.all(np.abs(peak - shift) <= 1), (peak, shift)


def test_bad_calls(sample):
    reg = registrar_for(sample)
    with pytest.raises(TypeError, match="dask array"):
        next(iter_register_chunks(sample.stack, reg))
    with pytest.raises(ValueError, match="start must be"):
        next(iter_register_chunks(da.from_array(sample.stack), reg, start=12))
    other = da.zeros((3, 32, 32), chunks=(1, 32, 32))
    with pytest.raises(ValueError, match=r"frames have shape \(32, 32\)"):
        next(iter_register_chunks(other, reg))


def test_local_scheduler_is_used_without_a_client(sample):
    assert active_client() is None
    with dask.config.set(scheduler="synchronous"):
        assert active_client() is None
        out = list(
            iter_register_chunks(da.from_array(sample.stack, chunks=6), registrar_for(sample))
        )
    assert [len(f) for f, *_ in out] == [12]  # two chunks of 6, read as one group


def test_local_cluster_with_two_worker_processes_matches_in_process(sample, tmp_path):
    """The same call, on a dask.distributed LocalCluster of two worker processes."""
    distributed = pytest.importorskip("distributed")
    # frames come from files the workers read themselves (a FrameSequence in the graph)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(sample.stack):
        tifffile.imwrite(folder / f"f{i}.tif", f)
    lazy = io.as_dask(io.open_stack(folder), frames_per_chunk=4)
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            worker_dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert active_client() is client
        with distributed.get_task_stream(client) as stream:
            out = list(iter_register_chunks(lazy, registrar_for(sample, workers=1)))
        assert sorted(len(f) for f, *_ in out) == [4, 4, 4]
        ran = [t for t in stream.data if "register-chunk" in str(t["key"])]
        assert len(ran) == 3  # one task per chunk, run by the cluster's workers
        assert {t["worker"] for t in ran} <= set(client.scheduler_info()["workers"])
        shifts, quality = collect(out, 12, 2)
        # the engine's public call routes a dask stack through the same tasks
        result = register_stack(lazy, mask=sample.valid, upsample_factor=20, workers=1)
    np.testing.assert_allclose(shifts, expected.raw_shifts, rtol=0, atol=1e-9)
    np.testing.assert_allclose(quality, expected.quality, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.shifts, expected.shifts, rtol=0, atol=1e-9)
