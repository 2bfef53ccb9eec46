"""The shared workflow: the journal's prefix guarantee, resuming, registering to disk, aligning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import FrameRecord, Progress, RegistrationOptions, register_stack
from napari_maskalign.workflow import (
    AlignSettings,
    ShiftJournal,
    iter_align,
    iter_mean,
    register,
    resume_rows,
    run_settings,
    write_aligned,
)
from napari_maskalign.workflow import registration as registration_module

N = 12


@pytest.fixture(scope="module")
def sample():
    return make_beam_block_stack(N, (64, 64), max_drift=3.0, seed=8)


def table(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)), rng.uniform(0.5, 1.0, n)


def rows_on_disk(path):
    if not path.exists():
        return np.zeros((0, 2)), np.zeros(0)
    return io.read_shifts_csv(path)


# ----------------------------------------------------------------------------
# the journal writes only the finished leading frames


def test_out_of_order_frames_reach_the_file_only_as_a_contiguous_prefix(tmp_path):
    shifts, quality = table()
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, {"input": "x"}, interval=0)
    order = [[4, 5, 6, 7], [1], [0], [2, 3], [10, 11], [8, 9]]
    expected_prefix = [0, 0, 2, 8, 8, 12]
    for frames, k in zip(order, expected_prefix):
        journal.record(frames, shifts[frames], quality[frames])
        journal.save()
        assert journal.prefix() == k
        on_disk, q = rows_on_disk(path)
        assert len(on_disk) == k, (frames, len(on_disk))
        # every row on disk is a frame that finished, with its own numbers
        np.testing.assert_array_equal(on_disk, shifts[:k])
        np.testing.assert_array_equal(q, quality[:k])
    settings = json.loads((tmp_path / "s.csv.json").read_text())
    assert settings["registration"] == {"input": "x"}


def test_a_resumed_journal_never_saves_a_frame_after_a_gap(tmp_path):
    """Rows 0-4 come from the earlier run; frame 7 finishing first must not be written."""
    shifts, quality = table()
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, shifts[:5], quality[:5])
    journal = ShiftJournal(path, N, 2, {"input": "x"}, interval=0)
    journal.preload(*io.read_shifts_csv(path))
    journal.record([7], shifts[[7]], quality[[7]])
    journal.save(force=True)
    on_disk, _ = rows_on_disk(path)
    np.testing.assert_array_equal(on_disk, shifts[:5])
    journal.record([5, 6], shifts[5:7], quality[5:7])
    journal.save()
    np.testing.assert_array_equal(rows_on_disk(path)[0], shifts[:8])


def test_saves_are_rate_limited_but_forced_saves_are_not(tmp_path):
    shifts, quality = table()
    journal = ShiftJournal(tmp_path / "s.csv", N, 2, {}, interval=3600)
    journal.record([0, 1], shifts[:2], quality[:2])
    journal.save()  # not due: an hour has not passed since the journal was made
    assert journal.writes == 0
    journal.save(force=True)
    assert journal.writes == 1 and journal.saved == 2


class OutOfOrderRun:
    """Stands in for the engine's run: frames finish in a scrambled order (a cluster)."""

    order = [3, 0, 5, 1, 2, 4, 8, 6, 7, 11, 9, 10]

    def __init__(self, stack, options, *, mask=None, mask_name="mask", start=0,
                 previous_shift=None):
        self.valid = mask
        self.shifts, self.quality = table()
        self.total = N - start
        self.frames = [f for f in self.order if f >= start]
        self.result = SimpleNamespace(valid_mask=None, hot_pixels=None)

    def __iter__(self):
        for done, f in enumerate(self.frames, 1):
            rec = FrameRecord(self.shifts[f], float(self.quality[f]), self.shifts[f])
            yield Progress(done, self.total, f, rec)


def test_register_with_a_journal_keeps_the_prefix_when_frames_come_out_of_order(
    tmp_path, sample, monkeypatch
):
    monkeypatch.setattr(registration_module, "RegistrationRun", OutOfOrderRun)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, {}, interval=0)
    seen = []
    steps = register(sample.stack, RegistrationOptions(), journal=journal)
    for _ in steps:
        seen.append(len(rows_on_disk(path)[0]))
    # after frames 3, 0, 5, 1, 2, 4, 8, 6, ... the leading finished run is 0, 1, 1, 2, 4, 6, 6, 7, ...
    assert seen == [0, 1, 1, 2, 4, 6, 6, 7, 9, 9, 10, 12]
    np.testing.assert_array_equal(rows_on_disk(path)[0], table()[0])


def test_an_interrupted_run_keeps_its_finished_frames(tmp_path, sample, monkeypatch):
    monkeypatch.setattr(registration_module, "RegistrationRun", OutOfOrderRun)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, {}, interval=3600)  # nothing saved while it runs
    steps = register(sample.stack, RegistrationOptions(), journal=journal)
    for _ in range(5):  # frames 3, 0, 5, 1, 2
        next(steps)
    steps.close()  # Ctrl-C, a cancel, a lost cluster...
    np.testing.assert_array_equal(rows_on_disk(path)[0], table()[0][:4])


# ----------------------------------------------------------------------------
# resuming and registering to disk


def test_register_with_a_journal_then_resume_equals_one_run(tmp_path, sample, drain):
    options = RegistrationOptions(upsample_factor=20, reference="previous")
    valid = sample.valid
    settings = run_settings(tmp_path / "in.npy", sample.stack, valid, options)
    full = register_stack(sample.stack, mask=valid, upsample_factor=20, reference="previous")

    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, settings, interval=0)
    steps = register(sample.stack, options, mask=valid, journal=journal)
    for _ in range(7):
        next(steps)
    steps.close()
    done = resume_rows(path, settings, N, 2)
    assert len(done[0]) == 7
    resumed = ShiftJournal(path, N, 2, settings, interval=0)
    resumed.preload(*done)
    progress, result = drain(register(sample.stack, options, mask=valid, journal=resumed))
    assert [p.frame for p in progress] == list(range(7, N))
    np.testing.assert_allclose(result.raw_shifts, full.raw_shifts, atol=1e-9)
    np.testing.assert_array_equal(result.outliers, full.outliers)  # flagged over the whole table
    assert result.params["start"] == 7


def test_resume_refuses_other_settings_and_names_them(tmp_path, sample):
    options = RegistrationOptions(upsample_factor=10)
    settings = run_settings(tmp_path / "in.npy", sample.stack, sample.valid, options)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, settings, interval=0)
    for _ in register(sample.stack, options, mask=sample.valid, journal=journal):
        pass
    other = run_settings(tmp_path / "in.npy", sample.stack, sample.valid, options.replace(max_shift=5))
    with pytest.raises(ValueError, match=r"different settings \(max_shift: earlier None, now 5.0\)"):
        resume_rows(path, other, N, 2)
    unmasked = run_settings(tmp_path / "in.npy", sample.stack, None, options)
    with pytest.raises(ValueError, match="mask_sha256"):
        resume_rows(path, unmasked, N, 2)
    (tmp_path / "s.csv.json").unlink()
    with pytest.raises(ValueError, match="is missing"):
        resume_rows(path, settings, N, 2)


def test_the_outlier_thresholds_of_the_options_decide_the_flags(tmp_path, sample, drain):
    strict = RegistrationOptions(min_quality=1.01)  # nothing is that good
    journal = ShiftJournal(tmp_path / "s.csv", N, 2, {}, interval=0)
    _, result = drain(register(sample.stack, strict, mask=sample.valid, journal=journal))
    assert result.outliers.all()


# ----------------------------------------------------------------------------
# aligning


def test_iter_align_and_write_aligned_give_the_engine_numbers(tmp_path, sample, drain):
    from napari_maskalign.engine import apply_shifts

    shifts = sample.expected_shifts()
    expected = apply_shifts(sample.stack, shifts)
    progress, aligned = drain(iter_align(sample.stack, shifts))
    assert [p.done for p in progress] == list(range(1, N + 1))
    np.testing.assert_array_equal(aligned, expected)
    out = tmp_path / "a.zarr"
    steps = list(write_aligned(out, sample.stack, shifts))
    assert steps[-1].done == N
    np.testing.assert_array_equal(np.asarray(io.open_stack(out)[:]), expected)


# ----------------------------------------------------------------------------
# the masked mean and the beam block as missing data


@pytest.fixture(scope="module")
def clean():
    """Noiseless frames with a static beam block, and the same pattern without the block."""
    kw = dict(n_frames=10, shape=(96, 96), max_drift=4.0, noise=None, seed=3)
    return make_beam_block_stack(**kw), make_beam_block_stack(**kw, beam_block=False)


def test_aligned_frames_carry_the_block_as_nan_where_it_lands(clean, drain):
    from napari_maskalign.engine import apply_shifts

    synth, _ = clean
    shifts = synth.expected_shifts()
    _, (aligned, data) = drain(iter_align(synth.stack, shifts, valid=synth.valid, return_data=True))
    _, expected_data = apply_shifts(synth.stack, shifts, valid_mask=synth.valid, return_valid=True)
    np.testing.assert_array_equal(data, expected_data)
    assert np.isnan(aligned[~data]).all() and np.isfinite(aligned[data]).all()
    # the block lands elsewhere in every frame: frames with different shifts differ in where
    moved = np.abs(shifts[1:] - shifts[0]).max(axis=1) >= 1
    assert any((np.isnan(aligned[i + 1]) != np.isnan(aligned[0])).any() for i in np.flatnonzero(moved))


def test_the_masked_mean_has_no_darkening_beside_the_block(clean, drain):
    synth, free = clean
    shifts = synth.expected_shifts()
    truth = free.stack[0]  # the pattern at the reference position, nothing in front of it
    steps, masked = drain(iter_mean(synth.stack, shifts, valid=synth.valid))
    assert [s.done for s in steps] == list(range(1, 11)) and steps[-1].stage == "averaging"
    _, naive = drain(iter_mean(synth.stack, shifts))  # the block averaged in as pixels
    # pixels the block hid in some frames but not all: where it moved
    edge = (masked.count > 0) & (masked.count < naive.count)
    assert edge.sum() > 50
    err_masked = np.abs(masked.mean[edge] - truth[edge]) / truth.max()
    err_naive = np.abs(naive.mean[edge] - truth[edge]) / truth.max()
    assert np.median(err_naive) > 10 * np.median(err_masked), (
        np.median(err_naive), np.median(err_masked))
    inside = masked.count == 0  # behind the block in every frame
    assert inside.any() and np.isnan(masked.mean[inside]).all()
    assert masked.frames == 10 and masked.count.max() == 10


def test_the_mean_skips_excluded_frames_and_reads_lazy_stacks_the_same(clean, drain):
    import dask.array as da

    synth, _ = clean
    shifts = synth.expected_shifts()
    exclude = np.zeros(10, bool)
    exclude[[2, 7]] = True
    _, eager = drain(iter_mean(synth.stack, shifts, valid=synth.valid, exclude=exclude))
    lazy_stack = da.from_array(synth.stack, chunks=(3, 96, 96))
    _, lazy = drain(iter_mean(lazy_stack, shifts, valid=synth.valid, exclude=exclude, block=4))
    assert eager.frames == 8 and eager.count.max() == 8
    np.testing.assert_allclose(lazy.mean, eager.mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(lazy.count, eager.count)


def test_integer_output_keeps_the_type_and_gives_the_data_area(clean, drain):
    synth, _ = clean
    counts = np.clip(synth.stack, 0, 65535).astype(np.uint16)
    shifts = synth.expected_shifts()
    _, (as_float, data) = drain(iter_align(counts, shifts, valid=synth.valid, return_data=True))
    _, as_int = drain(iter_align(counts, shifts, valid=synth.valid, settings=AlignSettings(integer=True)))
    assert as_float.dtype == np.float32 and as_int.dtype == np.uint16
    np.testing.assert_array_equal(as_int[data], np.clip(np.rint(as_float[data]), 0, 65535))
    assert (as_int[~data] == 0).all()


def test_write_aligned_accumulates_the_same_mean_in_one_pass(tmp_path, clean, drain):
    from napari_maskalign.workflow import MeanAccumulator

    synth, _ = clean
    shifts = synth.expected_shifts()
    acc = MeanAccumulator(synth.stack.shape[1:])
    exclude = np.zeros(10, bool)
    exclude[4] = True
    list(write_aligned(tmp_path / "a.tif", synth.stack, shifts, valid=synth.valid, mean=acc,
                       exclude=exclude))
    _, direct = drain(iter_mean(synth.stack, shifts, valid=synth.valid, exclude=exclude))
    in_one_pass = acc.result()
    np.testing.assert_allclose(in_one_pass.mean, direct.mean, rtol=1e-6, equal_nan=True)
    written = np.asarray(io.open_stack(tmp_path / "a.tif")[:])
    assert np.isnan(written).any()  # the block, as missing data


def test_iter_align_accumulates_the_same_mean_in_one_pass(clean, drain):
    from napari_maskalign.workflow import MeanAccumulator

    synth, _ = clean
    shifts = synth.expected_shifts()
    exclude = np.zeros(10, bool)
    exclude[[1, 6]] = True
    acc = MeanAccumulator(synth.stack.shape[1:])
    _, (aligned, data) = drain(iter_align(synth.stack, shifts, valid=synth.valid,
                                          return_data=True, mean=acc, exclude=exclude))
    _, direct = drain(iter_mean(synth.stack, shifts, valid=synth.valid, exclude=exclude))
    one_pass = acc.result()
    np.testing.assert_allclose(one_pass.mean, direct.mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(one_pass.count, direct.count)
    assert one_pass.frames == 8
    # the aligned frames are the same as without the mean
    _, alone = drain(iter_align(synth.stack, shifts, valid=synth.valid))
    np.testing.assert_array_equal(aligned, alone)
    with pytest.raises(ValueError, match="iter_mean"):
        drain(iter_align(synth.stack, shifts, lazy=True, mean=acc))
    with pytest.raises(ValueError, match="one flag per frame"):
        drain(iter_align(synth.stack, shifts, mean=acc, exclude=[True]))


def test_align_frame_gives_the_data_area_of_one_frame(clean, drain):
    from napari_maskalign.workflow import align_frame

    synth, _ = clean
    shifts = synth.expected_shifts()
    counts = np.clip(synth.stack, 0, 65535).astype(np.uint16)
    as_input = AlignSettings(integer=True)
    _, (whole, data) = drain(iter_align(counts, shifts, valid=synth.valid, settings=as_input,
                                        return_data=True))
    frame, frame_data = align_frame(counts, shifts, 6, valid=synth.valid, settings=as_input,
                                    return_data=True)
    np.testing.assert_array_equal(frame, whole[6])
    np.testing.assert_array_equal(frame_data, data[6])


def test_the_mean_reads_a_block_of_frames_in_one_read(clean, drain):
    synth, _ = clean
    shifts = synth.expected_shifts()
    reads = []

    class Counting:
        shape, dtype = synth.stack.shape, synth.stack.dtype

        def __getitem__(self, key):
            reads.append(key)
            return synth.stack[key]

    _, counted = drain(iter_mean(Counting(), shifts, valid=synth.valid, block=4))
    assert reads == [slice(0, 4), slice(4, 8), slice(8, 10)]
    _, direct = drain(iter_mean(synth.stack, shifts, valid=synth.valid))
    np.testing.assert_allclose(counted.mean, direct.mean, rtol=1e-6, equal_nan=True)


# ----------------------------------------------------------------------------
# rigid and similarity runs: the journal keeps rotation and scale, resume continues them


@pytest.fixture(scope="module")
def turning():
    return make_beam_block_stack(8, (64, 64), max_drift=2.0, max_rotation=2.0, seed=9)


@pytest.mark.parametrize("reference", [0, "previous"])
def test_resume_of_a_rigid_run_equals_one_run(tmp_path, turning, reference, drain):
    options = RegistrationOptions(model="rigid", reference=reference)
    n = len(turning.stack)
    settings = run_settings(tmp_path / "in.npy", turning.stack, turning.valid, options)
    full = register_stack(turning.stack, mask=turning.valid, options=options)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, n, 2, settings, interval=0)
    steps = register(turning.stack, options, mask=turning.valid, journal=journal)
    for _ in range(5):
        next(steps)
    steps.close()
    header = path.read_text().splitlines()[0]
    assert header == ("frame,shift_y,shift_x,rotation_deg,scale,quality,"
                      "sigma_y,sigma_x,sigma_rotation_deg,sigma_scale,second_peak_y,"
                      "second_peak_x,peak_lead")
    done = resume_rows(path, settings, n, 2)
    assert len(done.shifts) == 5 and done.rotations is not None
    # the one-sigma errors come back with the rows they belong to
    np.testing.assert_array_equal(done.uncertainties, full.uncertainties[:5])
    np.testing.assert_array_equal(done.parameter_uncertainties, full.parameter_uncertainties[:5])
    resumed = ShiftJournal(path, n, 2, settings, interval=0)
    resumed.preload(*done)
    _, result = drain(register(turning.stack, options, mask=turning.valid, journal=resumed))
    assert result.model == "rigid" and result.params["start"] == 5
    np.testing.assert_allclose(result.transforms, full.transforms, atol=1e-9)
    # a translation table cannot continue a rigid run
    io.write_shifts_csv(path, done.shifts, done.quality)
    with pytest.raises(ValueError, match="no rotation_deg and scale columns"):
        resume_rows(path, settings, n, 2)


@pytest.mark.parametrize("model", ["rigid", "similarity"])
def test_a_smoothed_rigid_run_resumed_gives_the_table_of_one_run(tmp_path, turning, model,
                                                                  drain):
    """A smoothed table's shift, rotation, scale and sigma columns are smoothed: a resume,
    of a killed run or of a finished one (its outputs not written yet), must continue
    from the measured values, kept in the raw_* columns, and end with the same table."""
    options = RegistrationOptions(model=model, smoothing="auto")
    n = len(turning.stack)
    settings = run_settings(tmp_path / "in.npy", turning.stack, turning.valid, options)

    def run(path, stop=None):
        journal = ShiftJournal(path, n, 2, settings, interval=0)
        journal.preload(*resume_rows(path, settings, n, 2))
        steps = register(turning.stack, options, mask=turning.valid, journal=journal)
        if stop is None:
            return drain(steps)[1]
        for _ in range(stop):
            next(steps)
        steps.close()

    one = run(tmp_path / "one.csv")
    assert one.jumps is not None and one.smoothed_uncertainties is not None
    expected = (tmp_path / "one.csv").read_text()
    header = expected.splitlines()[0].split(",")
    assert header[10:] == ["raw_shift_y", "raw_shift_x", "raw_rotation_deg", "raw_scale",
                           "raw_sigma_y", "raw_sigma_x", "raw_sigma_rotation_deg",
                           "raw_sigma_scale", "second_peak_y", "second_peak_x", "peak_lead"]
    measured = io.read_shift_table(tmp_path / "one.csv", measured=True)
    np.testing.assert_array_equal(measured.shifts, one.raw_shifts)
    np.testing.assert_allclose(measured.transforms(turning.stack.shape[1:]), one.raw_transforms,
                               atol=1e-12)
    # (frame 0 is the reference: measured ~1e-17, which the smoothing counts as unknown)
    assert np.all(measured.uncertainties[0] < 1e-12)
    np.testing.assert_array_equal(measured.uncertainties[1:], one.uncertainties[1:])
    np.testing.assert_array_equal(measured.parameter_uncertainties,
                                  one.parameter_uncertainties)
    # the main columns: the smoothed values with their own (smaller) errors
    smoothed = io.read_shift_table(tmp_path / "one.csv")
    np.testing.assert_allclose(smoothed.rotations, one.rotations)
    np.testing.assert_array_equal(smoothed.parameter_uncertainties,
                                  one.smoothed_parameter_uncertainties)
    assert np.all(smoothed.parameter_uncertainties[1:, 0]
                  < measured.parameter_uncertainties[1:, 0])  # the rotation's

    killed = tmp_path / "killed.csv"
    run(killed, stop=5)
    assert len(io.read_shift_table(killed).shifts) == 5
    run(killed)  # killed, then resumed
    run(killed)  # finished, then resumed again (an output was missing): nothing changes
    for mode in (False, True):
        a = io.read_shift_table(killed, measured=mode)
        b = io.read_shift_table(tmp_path / "one.csv", measured=mode)
        for x, y in zip(a[:-1], b[:-1]):  # (every column but the peaks)
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
        for x, y in zip(a.peaks, b.peaks):  # (each frame's second peak and lead)
            np.testing.assert_array_equal(x, y)
    assert killed.read_text().splitlines()[0] == expected.splitlines()[0]


def test_align_and_mean_follow_the_transforms(turning, drain):
    r = register_stack(turning.stack, mask=turning.valid, model="rigid")
    assert r.transforms.shape == (8, 3, 3)
    aligned = drain(iter_align(turning.stack, r.transforms, valid=turning.valid))[1]
    from napari_maskalign.engine import apply_transforms

    expected, data = apply_transforms(turning.stack, r.transforms, valid_mask=turning.valid,
                                      return_valid=True)
    np.testing.assert_array_equal(np.isnan(aligned), ~data)
    np.testing.assert_allclose(aligned[data], expected[data])
    mean = drain(iter_mean(turning.stack, r.transforms, valid=turning.valid))[1]
    seen = data.sum(axis=0)
    by_hand = np.where(data, expected, 0).sum(axis=0) / np.maximum(seen, 1)
    np.testing.assert_array_equal(mean.count, seen)
    np.testing.assert_allclose(mean.mean[seen > 0], by_hand[seen > 0], rtol=1e-5)
    assert np.isnan(mean.mean[seen == 0]).all()
    # shifts alone would leave the turning pattern blurred in the mean: check the
    # transforms did turn the frames (the last frame turned the most)
    shifted = drain(iter_align(turning.stack, r.shifts, valid=turning.valid))[1]
    ok = data[-1] & ~np.isnan(shifted[-1])
    assert np.nanstd(aligned[-1][ok] - aligned[0][ok]) < np.nanstd(shifted[-1][ok] - aligned[0][ok])



def test_shifts_or_transforms_that_do_not_fit_are_refused_before_any_frame(clean, tmp_path):
    from napari_maskalign.workflow import align_frame, align_lazy, write_aligned

    synth, _ = clean
    n = len(synth.stack)
    short = synth.expected_shifts()[:-1]
    turns = np.tile(np.eye(3), (n - 1, 1, 1))
    for bad in (short, turns, synth.expected_shifts()[:, 0]):
        with pytest.raises(ValueError, match=rf"the stack has {n} frames of 2D"):
            next(iter_align(synth.stack, bad))
        with pytest.raises(ValueError, match=rf"the stack has {n} frames of 2D"):
            next(iter_mean(synth.stack, bad))
        with pytest.raises(ValueError, match=rf"the stack has {n} frames of 2D"):
            align_lazy(synth.stack, bad)
        with pytest.raises(ValueError, match=rf"the stack has {n} frames of 2D"):
            align_frame(synth.stack, bad, 0)
        with pytest.raises(ValueError, match=rf"the stack has {n} frames of 2D"):
            next(write_aligned(tmp_path / "out.tif", synth.stack, bad))
        assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
    shifts = synth.expected_shifts()
    with pytest.raises(ValueError, match=rf"frame {n} does not exist: the stack has {n} frames"):
        align_frame(synth.stack, shifts, n)
    np.testing.assert_array_equal(align_frame(synth.stack, shifts, -1),
                                  align_frame(synth.stack, shifts, n - 1))
