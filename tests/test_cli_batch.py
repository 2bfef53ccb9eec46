"""``maskalign`` for week-long batch runs: the mean, log lines, outputs checked first, a lost cluster.

Progress lines are driven by an injected clock (``_report.CLOCK``/``WALL``):
no test here waits for or measures real time.
"""

from __future__ import annotations

import errno
import itertools
import os
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_maskalign import _report, io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.cli import main
from napari_maskalign.engine import apply_shifts, interpolate_flagged

N = 16
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (registering|writing|averaging): "
    r"(?:starting|(\d+) of (\d+) frames)"
)


@pytest.fixture
def run(cli_run):
    """A folder of single-frame TIFFs (run/) and a painted mask PNG (block.png)."""
    return cli_run


@pytest.fixture
def fake_clock(monkeypatch):
    """Every reading of the clock is 4 s after the one before (thread-safe)."""
    ticks = itertools.count()
    clock = lambda: 4.0 * next(ticks)  # noqa: E731
    monkeypatch.setattr(_report, "CLOCK", clock)
    monkeypatch.setattr(_report, "WALL", lambda: 1.7e9)
    return clock


def cli(*args) -> int:
    return main([str(a) for a in args])


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------
# the done-when run: a folder of frames, a painted mask, --mean, stderr to a log


def test_folder_mask_mean_shifts_with_stderr_to_a_log(tmp_path, capsys, fake_clock):
    kw = dict(n_frames=N, shape=(96, 96), max_drift=4.0, noise=None, seed=3)
    synth, free = make_beam_block_stack(**kw), make_beam_block_stack(**kw, beam_block=False)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(synth.stack):
        tifffile.imwrite(frames / f"frame_{i}.tif", f)
    Image.fromarray(synth.beam_block.astype(np.uint8) * 255).save(frames / "block.png")
    rc = cli("register", frames, "--mask", frames / "block.png", "--mean", tmp_path / "mean.tif",
             "--shifts", tmp_path / "s.csv")  # fmt: skip
    assert rc == 0
    log = capsys.readouterr().err.splitlines()
    parsed = [LINE.match(ln) for ln in log]
    assert all(parsed), log
    assert log[0].endswith("registering: starting")
    reg = [(int(m[2]), ln) for m, ln in zip(parsed, log) if m[1] == "registering" and m[2]]
    assert len(reg) >= 5 and reg[0][0] == 1 and reg[-1][0] == N  # lines while it runs
    assert [d for d, _ in reg] == sorted(d for d, _ in reg)
    assert any(re.search(r"\(\d+\.\d%\), [\d.]+ frames/s, \d+s left$", ln) for _, ln in reg)
    assert any(m[1] == "averaging" for m in parsed)

    mean = tifffile.imread(tmp_path / "mean.tif")
    count = tifffile.imread(tmp_path / "mean_count.tif")
    assert mean.dtype == np.float32 and count.dtype == np.int32 and count.max() == N
    assert np.isnan(mean[count == 0]).all() and (count == 0).any()  # behind the block always
    assert np.isfinite(mean[count > 0]).all()
    # no darkening beside the block: where it hid a pixel in some frames only, the mean
    # matches the pattern without a block; averaging the block in as pixels does not
    shifts, _ = io.read_shifts_csv(tmp_path / "s.csv")
    naive = apply_shifts(synth.stack, shifts).mean(axis=0)
    truth = free.stack[0]
    edge = (count > 0) & (count < N) & np.isfinite(naive)
    assert edge.sum() > 50
    err_mean = np.median(np.abs(mean[edge] - truth[edge]))
    err_naive = np.median(np.abs(naive[edge] - truth[edge]))
    assert err_naive > 10 * err_mean, (err_naive, err_mean)
    assert "block.png" not in (tmp_path / "s.csv.json").read_text().split('"input"')[1][:200]


def test_quiet_silences_the_progress_lines(run, capsys, fake_clock):
    assert cli("register", run / "run", "--shifts", run / "s.csv", "--mean", run / "m.npy",
               "--quiet") == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.err == "" and "registered 16 of 16" in captured.out
    assert np.load(run / "m_count.npy").max() == N


def test_mean_leaves_out_outliers_unless_asked(run, cli_sample, capsys):
    noise = np.random.default_rng(0).poisson(400, (64, 64)).astype(np.float32)
    tifffile.imwrite(run / "run" / "frame_9.tif", noise)
    common = ["register", run / "run", "--mask", run / "block.png", "--quiet"]
    assert cli(*common, "--shifts", run / "a.csv", "--mean", run / "a.tif") == 0
    assert cli(*common, "--shifts", run / "b.csv", "--mean", run / "b.tif",
               "--mean-with-outliers") == 0  # fmt: skip
    assert tifffile.imread(run / "a_count.tif").max() == N - 1
    assert tifffile.imread(run / "b_count.tif").max() == N


def test_interpolated_outliers_align_the_output_and_the_table_keeps_what_was_measured(
    run, cli_sample, capsys
):
    noise = np.random.default_rng(0).poisson(400, (64, 64)).astype(np.float32)
    tifffile.imwrite(run / "run" / "frame_9.tif", noise)
    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
               "--interpolate-outliers", "--output", run / "a.tif", "--quiet") == 0  # fmt: skip
    assert "interpolated from good neighbours" in capsys.readouterr().out
    measured, _ = io.read_shifts_csv(run / "s.csv")
    flags = np.zeros(N, bool)
    flags[9] = True
    used = interpolate_flagged(measured, flags)
    assert not np.allclose(used[9], measured[9])
    stack = io.open_stack(run / "run")
    expected, data = apply_shifts(stack[9:10], used[9:10], valid_mask=cli_sample.valid,
                                  return_valid=True)  # fmt: skip
    expected[~data] = np.nan
    np.testing.assert_array_equal(io.open_stack(run / "a.tif")[9], expected[0])


def test_integer_output_keeps_the_type_with_its_no_data_mask_beside_it(run, cli_sample, capsys):
    counts = np.clip(cli_sample.stack, 0, 65535).astype(np.uint16)
    np.save(run / "counts.npy", counts)
    io.write_shifts_csv(run / "s.csv", cli_sample.expected_shifts(), np.ones(N))
    assert cli("apply", run / "counts.npy", "--shifts", run / "s.csv", "--mask", run / "block.png",
               "--output", run / "a.tif", "--dtype", "input", "--quiet") == 0  # fmt: skip
    out, nodata = io.open_stack(run / "a.tif"), io.open_stack(run / "a_mask.tif")
    assert out.dtype == np.uint16 and nodata.dtype == np.uint8
    aligned, data = apply_shifts(counts, cli_sample.expected_shifts(), valid_mask=cli_sample.valid,
                                 return_valid=True)  # fmt: skip
    np.testing.assert_array_equal(nodata[:] != 0, ~data)
    np.testing.assert_array_equal(out[:][data], np.clip(np.rint(aligned[data]), 0, 65535))
    assert (out[:][~data] == 0).all()


def test_zarr_output_is_ome_zarr_with_named_axes(run, capsys):
    ome = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    assert cli("register", run / "run", "--shifts", run / "s.csv", "--output", run / "a.zarr",
               "--quiet") == 0  # fmt: skip
    node = next(iter(ome.Reader(parse_url(str(run / "a.zarr")))()))
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "y", "x"]
    assert [a["type"] for a in node.metadata["axes"]] == ["time", "space", "space"]
    assert node.data[0].shape == (N, 64, 64)
    np.testing.assert_array_equal(np.asarray(node.data[0][3]), io.open_stack(run / "a.zarr")[3])


def test_plot_marks_outliers(run, capsys):
    from napari_maskalign._drift_plot import drift_figure
    from napari_maskalign.engine import RegistrationOptions, build_result

    noise = np.random.default_rng(0).poisson(400, (64, 64)).astype(np.float32)
    tifffile.imwrite(run / "run" / "frame_9.tif", noise)
    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
               "--plot", run / "drift.png", "--quiet") == 0  # fmt: skip
    with Image.open(run / "drift.png") as img:
        assert img.format == "PNG" and img.size[0] > 400
    shifts, quality = io.read_shifts_csv(run / "s.csv")
    result = build_result(shifts, quality, RegistrationOptions())
    fig = drift_figure(result)
    marked = [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert marked and all(list(ln.get_xdata()) == [9] for ln in marked)


def test_version(capsys):
    from napari_maskalign import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"maskalign {__version__}"


def test_normalization_reaches_the_settings_file(run, capsys):
    import json

    assert cli("register", run / "run", "--shifts", run / "s.csv", "--normalization", "phase",
               "--quiet") == 0  # fmt: skip
    settings = json.loads((run / "s.csv.json").read_text())["registration"]
    assert settings["normalization"] == "phase"


@pytest.mark.parametrize("value", ["1e6", "1001", "inf", "nan", "0.5"])
def test_absurd_upsample_factors_are_refused_with_the_range(run, capsys, value):
    with pytest.raises(SystemExit) as stop:
        cli("register", run / "run", "--shifts", run / "s.csv", "--upsample", value)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"from 1 to 1000|finite number", err), err
    assert not (run / "s.csv").exists()


# ----------------------------------------------------------------------------
# outputs checked before any work


def _no_work(run, capsys, argv, message, rc=1):
    before = listing(run)
    assert cli(*argv) == rc
    captured = capsys.readouterr()
    assert "registered" not in captured.out  # refused before registering
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), captured.err
    assert listing(run) == before
    return lines[0]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_same_file_twice_is_refused_before_registering(run, capsys, overwrite):
    r = ["register", run / "run", *overwrite]
    _no_work(run, capsys, [*r, "--shifts", run / "a.tif", "--output", run / "a.tif"],
             r"the output and the shifts file are the same file \(.*a\.tif\)")
    _no_work(run, capsys, [*r, "--shifts", run / "s.csv", "--mean", run / "a.tif", "--output",
                           run / "a.tif"], "the mean and the output are the same file")
    _no_work(run, capsys, [*r, "--shifts", run / "s.csv", "--mean", run / "m.tif", "--output",
                           run / "m_count.tif"], "frame count and the output are the same file")


def test_non_regular_targets_are_refused_even_with_overwrite(run, capsys):
    (run / "folder.csv").mkdir()
    _no_work(run, capsys, ["register", run / "run", "--shifts", run / "folder.csv", "--overwrite"],
             r"shifts file .*folder\.csv exists and is a folder: it is never replaced")
    os.mkfifo(run / "pipe.csv")
    _no_work(run, capsys, ["register", run / "run", "--shifts", run / "pipe.csv", "--overwrite"],
             r"pipe\.csv exists and is not a regular file")
    assert (run / "pipe.csv").is_fifo()
    (run / "notzarr.zarr").mkdir()
    (run / "notzarr.zarr" / "notes.txt").write_text("mine")
    _no_work(run, capsys, ["register", run / "run", "--shifts", run / "s.csv", "--output",
                           run / "notzarr.zarr", "--overwrite"], "is a folder")
    assert (run / "notzarr.zarr" / "notes.txt").read_text() == "mine"


def test_a_path_under_a_regular_file_is_refused(run, capsys):
    (run / "file.txt").write_text("x")
    _no_work(run, capsys, ["register", run / "run", "--shifts", run / "file.txt" / "s.csv"],
             r"cannot write the shifts file .*file\.txt is a file, not a folder")
    _no_work(run, capsys, ["register", run / "run", "--shifts", run / "s.csv", "--mean",
                           run / "file.txt" / "m.tif"], "file.txt is a file, not a folder")


def test_unwritable_locations_are_found_by_creating_a_file_first(run, capsys, monkeypatch):
    import napari_maskalign.workflow.paths as paths

    real_open = open
    doomed = str(run / "full")

    def full_disk(file, *a, **k):
        if str(file).startswith(doomed):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, *a, **k)

    (run / "full").mkdir()
    monkeypatch.setattr(paths, "open", full_disk, raising=False)
    _no_work(run, capsys, ["register", run / "run", "--shifts", run / "s.csv", "--output",
                           run / "full" / "a.zarr"], r"cannot write the output .*a\.zarr: No space")
    assert listing(run / "full") == []  # the probe left nothing
    # a folder where nothing may be created, as a read-only mount is (also for root)
    _no_work(run, capsys, ["register", run / "run", "--shifts", "/proc/maskalign-shifts.csv"],
             r"cannot write the shifts file /proc/maskalign-shifts\.csv")


# ----------------------------------------------------------------------------
# stopped runs


def test_an_interrupted_overwrite_run_resumes(run, capsys, monkeypatch):
    from napari_maskalign.workflow import journal

    argv = ["register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
            "--output", run / "a.zarr", "--quiet"]  # fmt: skip
    assert cli(*argv) == 0
    first = (run / "s.csv").read_text()
    real, calls = journal.ShiftJournal.record, []

    def ctrl_c_at_frame_6(self, *a, **k):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(journal.ShiftJournal, "record", ctrl_c_at_frame_6)
    assert cli(*argv, "--overwrite", "--upsample", "10") == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(journal.ShiftJournal, "record", real)
    assert (run / "s.csv").read_text() == first  # kept until the new table is complete
    assert 0 < len(io.read_shifts_csv(run / ".s.csv.partial")[0]) < N
    assert cli(*argv, "--upsample", "10", "--resume") == 1  # the old output is in the way
    assert "a.zarr exists (from an earlier run); add --overwrite" in capsys.readouterr().err
    assert cli(*argv, "--upsample", "10", "--resume", "--overwrite") == 0
    assert "resumed at frame 6" in capsys.readouterr().out
    assert (run / "s.csv").read_text() != first
    assert cli(*argv[:-5], "--shifts", run / "u.csv", "--upsample", "10", "--quiet") == 0
    assert (run / "s.csv").read_text() == (run / "u.csv").read_text()


def test_a_lost_cluster_saves_the_finished_frames_and_says_how_to_resume(run, capsys, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from napari_maskalign.engine.run import _dask

    real = _dask.iter_register_chunks

    def cluster_dies_after_two_chunks(*a, **k):
        chunks = real(*a, **k)
        yield next(chunks)
        yield next(chunks)
        chunks.close()
        worker = type("Worker", (), {"address": "tcp://127.0.0.1:1"})()
        raise distributed.KilledWorker("register-chunk-x", worker, 3)

    monkeypatch.setattr(_dask, "iter_register_chunks", cluster_dies_after_two_chunks)
    argv = ["register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
            "--workers", "1", "--chunk-frames", "4", "--quiet"]  # fmt: skip
    assert cli(*argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    saved = len(io.read_shifts_csv(run / "s.csv")[0]) if (run / "s.csv").exists() else 0
    assert re.search(rf"the dask cluster was lost \(KilledWorker.*\): {saved} of {N} frames are "
                     r"saved in .*s\.csv; run the same command with --resume", err), err
    assert "Traceback" not in err
    monkeypatch.setattr(_dask, "iter_register_chunks", real)
    assert cli(*argv, "--resume") == 0
    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "u.csv",
               "--quiet") == 0  # fmt: skip
    a, _ = io.read_shifts_csv(run / "s.csv")
    b, _ = io.read_shifts_csv(run / "u.csv")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
