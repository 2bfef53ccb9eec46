"""Registration of dask stacks: one task per frame chunk, locally and on a cluster."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import FrameRegistrar, RegistrationOptions, register_stack
from napari_maskalign.engine.backends._frames import frame_groups, iter_frames
from napari_maskalign.engine.run._dask import active_client, iter_register_chunks


@pytest.fixture(scope="module")
def sample():
    return make_beam_block_stack(12, (64, 64), max_drift=3.0, seed=4)


def registrar_for(sample, **kw):
    return FrameRegistrar(sample.stack[0], sample.valid, RegistrationOptions(upsample_factor=20, **kw))


def collect(chunks, n, ndim):
    shifts = np.full((n, ndim), np.nan)
    quality = np.full(n, np.nan)
    for frames, records in chunks:
        shifts[frames] = [r.shift for r in records]
        quality[frames] = [r.quality for r in records]
    return shifts, quality


def test_dask_on_the_local_scheduler_matches_numpy(sample):
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20)
    stack = da.from_array(sample.stack, chunks=(5, 64, 64))
    result = register_stack(stack, mask=sample.valid, upsample_factor=20)
    np.testing.assert_array_equal(result.raw_shifts, expected.raw_shifts)
    np.testing.assert_array_equal(result.quality, expected.quality)
    assert np.abs(result.shifts - sample.expected_shifts()).max() < 0.1


def test_frame_groups_are_whole_chunks_of_about_target_frames():
    assert list(frame_groups((5,) * 8, 0, 16)) == [(0, 20), (20, 40)]
    assert list(frame_groups((1,) * 40, 7, 16)) == [(7, 23), (23, 39), (39, 40)]
    assert list(frame_groups((50, 50), 10, 16)) == [(10, 50), (50, 100)]
    assert list(frame_groups((3,), 0, 16)) == [(0, 3)]
    assert list(frame_groups((1,) * 40, 7, 16, stop=30)) == [(7, 23), (23, 30)]


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
        if self.ndim == 3:  # groups of frames (the reference frame is read on its own)
            computes.append(self.shape[0])
        return real(self, **kw)

    monkeypatch.setattr(da.Array, "compute", counting)
    assert len(list(iter_frames(lazy, 2, 40))) == 38
    assert computes == [16, 16, 6]
    computes.clear()
    result = register_stack(lazy, mask=sample.valid, upsample_factor=20, start=2)
    assert computes == [16, 16, 6]
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20).raw_shifts
    np.testing.assert_array_equal(result.raw_shifts, expected[np.arange(2, 40) % 12])


def test_start_skips_done_frames_and_xcorr_comes_back(sample):
    stack = da.from_array(sample.stack, chunks=(4, 32, 64))  # split frames are made whole
    r = register_stack(stack, mask=sample.valid, upsample_factor=20, start=6,
                       return_xcorr=True, xcorr_radius=3)
    assert r.n_frames == 6
    assert r.xcorr.shape == (6, 7, 7) and r.xcorr.dtype == np.float32
    # each correlation window peaks within a pixel of the frame's shift
    for shift, window in zip(r.shifts, r.xcorr):
        peak = np.array(np.unravel_index(np.argmax(window), window.shape)) - 3
        assert np.all(np.abs(peak - shift) <= 1), (peak, shift)


def test_bad_calls(sample):
    reg = registrar_for(sample)
    with pytest.raises(TypeError, match="dask array"):
        next(iter_register_chunks(sample.stack, reg, client=None))
    with pytest.raises(ValueError, match="start must be"):
        next(iter_register_chunks(da.from_array(sample.stack), reg, client=None, start=12))
    other = da.zeros((3, 32, 32), chunks=(1, 32, 32))
    with pytest.raises(ValueError, match=r"frames have shape \(32, 32\)"):
        next(iter_register_chunks(other, reg, client=None))


def test_local_scheduler_is_used_without_a_client(sample):
    assert active_client() is None
    with dask.config.set(scheduler="synchronous"):
        assert active_client() is None
        r = register_stack(da.from_array(sample.stack, chunks=6), mask=sample.valid)
    assert r.n_frames == 12


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
            out = list(iter_register_chunks(lazy, registrar_for(sample, workers=1), client))
        assert sorted(len(f) for f, _ in out) == [4, 4, 4]
        ran = [t for t in stream.data if "register-chunk" in str(t["key"])]
        assert len(ran) == 3  # one task per chunk, run by the cluster's workers
        assert {t["worker"] for t in ran} <= set(client.scheduler_info()["workers"])
        shifts, quality = collect(out, 12, 2)
        # the engine's public call routes a dask stack through the same tasks
        result = register_stack(lazy, mask=sample.valid, upsample_factor=20, workers=1)
    np.testing.assert_allclose(shifts, expected.raw_shifts, rtol=0, atol=1e-9)
    np.testing.assert_allclose(quality, expected.quality, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.shifts, expected.shifts, rtol=0, atol=1e-9)


def test_earlier_chunks_are_asked_for_first(sample, monkeypatch):
    """The saved shifts are the finished prefix of frames: with the scheduler's own order
    (which ran chunk 0 last) a run that lost its cluster would have saved nothing."""
    distributed = pytest.importorskip("distributed")
    lazy = da.from_array(sample.stack, chunks=(3, 48, 40))
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                 dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        asked, real = [], client.compute

        def compute(task, **kwargs):
            asked.append((str(task.key), kwargs.get("priority")))
            return real(task, **kwargs)

        monkeypatch.setattr(client, "compute", compute)
        out = list(iter_register_chunks(lazy, registrar_for(sample, workers=1), client))
    assert len(out) == 4
    assert [key.rsplit("-", 1)[1] for key, _ in asked] == ["0", "1", "2", "3"]
    priorities = [p for _, p in asked]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 4
def test_the_next_group_is_read_while_a_group_is_handed_out(sample):
    """A slow read does not stall a run once per group: while the frames of one group are
    registered, the next group is already being read."""
    import threading

    lazy = da.from_array(sample.stack, chunks=(1, *sample.stack.shape[1:]))  # 12 one-frame chunks
    second_read = threading.Event()
    starts = []
    real = da.Array.compute

    def counting(self, **kw):
        starts.append(self.shape[0])
        if len(starts) == 2:
            second_read.set()
        return real(self, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(da.Array, "compute", counting)
        mp.setattr("napari_maskalign.engine.backends._frames.GROUP_FRAMES", 4)
        frames = iter_frames(lazy, 0, 12)
        first = next(frames)
        # the first frame is out; the second group's read has started (or will, without
        # anything more being asked of the iterator)
        assert second_read.wait(timeout=30), "the next group is read only when it is needed"
        rest = list(frames)
    np.testing.assert_array_equal(np.stack([first, *rest]), sample.stack)
    assert starts == [4, 4, 4]
