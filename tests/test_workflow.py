"""The shared workflow: the journal's prefix guarantee, resuming, registering to disk, aligning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.engine import FrameRecord, Progress, RegistrationOptions, register_stack
from napari_maskalign.workflow import (
    ShiftJournal,
    iter_align,
    register_to_journal,
    resume_rows,
    run_settings,
    write_aligned,
)
from napari_maskalign.workflow import run as run_module

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

    def __init__(self, stack, options, *, mask=None, start=0, previous_shift=None):
        self.shifts, self.quality = table()
        self.total = N - start
        self.frames = [f for f in self.order if f >= start]
        self.result = None

    def __iter__(self):
        for done, f in enumerate(self.frames, 1):
            rec = FrameRecord(self.shifts[f], float(self.quality[f]), self.shifts[f])
            yield Progress(done, self.total, f, rec)


def test_register_to_journal_keeps_the_prefix_when_frames_come_out_of_order(
    tmp_path, sample, monkeypatch
):
    monkeypatch.setattr(run_module, "RegistrationRun", OutOfOrderRun)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, {}, interval=0)
    seen = []
    steps = register_to_journal(sample.stack, journal, RegistrationOptions())
    for _ in steps:
        seen.append(len(rows_on_disk(path)[0]))
    # after frames 3, 0, 5, 1, 2, 4, 8, 6, ... the leading finished run is 0, 1, 1, 2, 4, 6, 6, 7, ...
    assert seen == [0, 1, 1, 2, 4, 6, 6, 7, 9, 9, 10, 12]
    np.testing.assert_array_equal(rows_on_disk(path)[0], table()[0])


def test_an_interrupted_run_keeps_its_finished_frames(tmp_path, sample, monkeypatch):
    monkeypatch.setattr(run_module, "RegistrationRun", OutOfOrderRun)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, {}, interval=3600)  # nothing saved while it runs
    steps = register_to_journal(sample.stack, journal, RegistrationOptions())
    for _ in range(5):  # frames 3, 0, 5, 1, 2
        next(steps)
    steps.close()  # Ctrl-C, a cancel, a lost cluster...
    np.testing.assert_array_equal(rows_on_disk(path)[0], table()[0][:4])


# ----------------------------------------------------------------------------
# resuming and registering to disk


def test_register_to_journal_then_resume_equals_one_run(tmp_path, sample):
    options = RegistrationOptions(upsample_factor=20, reference="previous")
    valid = sample.valid
    settings = run_settings(tmp_path / "in.npy", sample.stack, valid, options)
    full = register_stack(sample.stack, mask=valid, upsample_factor=20, reference="previous")

    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, settings, interval=0)
    steps = register_to_journal(sample.stack, journal, options, mask=valid)
    for _ in range(7):
        next(steps)
    steps.close()
    done = resume_rows(path, settings, N, 2)
    assert len(done[0]) == 7
    resumed = ShiftJournal(path, N, 2, settings, interval=0)
    resumed.preload(*done)
    gen = register_to_journal(sample.stack, resumed, options, mask=valid)
    progress = []
    try:
        while True:
            progress.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert [p.frame for p in progress] == list(range(7, N))
    np.testing.assert_allclose(result.raw_shifts, full.raw_shifts, atol=1e-9)
    np.testing.assert_array_equal(result.outliers, full.outliers)  # flagged over the whole table
    assert result.params["start"] == 7


def test_resume_refuses_other_settings_and_names_them(tmp_path, sample):
    options = RegistrationOptions(upsample_factor=10)
    settings = run_settings(tmp_path / "in.npy", sample.stack, sample.valid, options)
    path = tmp_path / "s.csv"
    journal = ShiftJournal(path, N, 2, settings, interval=0)
    for _ in register_to_journal(sample.stack, journal, options, mask=sample.valid):
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


def test_the_outlier_thresholds_of_the_options_decide_the_flags(tmp_path, sample):
    strict = RegistrationOptions(min_quality=1.01)  # nothing is that good
    journal = ShiftJournal(tmp_path / "s.csv", N, 2, {}, interval=0)
    gen = register_to_journal(sample.stack, journal, strict, mask=sample.valid)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        assert stop.value.outliers.all()


# ----------------------------------------------------------------------------
# aligning


def test_iter_align_and_write_aligned_give_the_engine_numbers(tmp_path, sample):
    from napari_maskalign.engine import apply_shifts

    shifts = sample.expected_shifts()
    expected = apply_shifts(sample.stack, shifts)
    gen = iter_align(sample.stack, shifts)
    progress = []
    try:
        while True:
            progress.append(next(gen))
    except StopIteration as stop:
        aligned = stop.value
    assert [p.done for p in progress] == list(range(1, N + 1))
    np.testing.assert_array_equal(aligned, expected)
    out = tmp_path / "a.zarr"
    steps = list(write_aligned(out, sample.stack, shifts))
    assert steps[-1].done == N
    np.testing.assert_array_equal(np.asarray(io.open_stack(out)[:]), expected)
