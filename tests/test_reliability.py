"""Reliability: crafted files run no code, live runs and old tables are never lost, bad input
is one line naming the file, and checks that can be made before the first frame are made there.

Each test here reproduces a case an outside reliability round found (issue 20).
"""

from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest
import tifffile

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.cli import main

N = 16


def cli(*args) -> int:
    return main([str(a) for a in args])


def one_line_error(capsys, pattern: str) -> str:
    """The command's stderr is one line matching ``pattern``, without a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def run(cli_run):
    """A folder of single-frame TIFFs (run/) and a painted mask PNG (block.png)."""
    return cli_run


# ----------------------------------------------------------------------------
# 1. no code runs from a crafted file: the dtype is checked before any frame is read


@pytest.fixture
def complex_npy(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.random((6, 32, 32)) + 1j * rng.random((6, 32, 32))).astype(np.complex64)
    path = tmp_path / "complex.npy"
    np.save(path, data)
    return path


def _never_read(monkeypatch):
    """Fail the test if any frame is read (every frame read goes through these)."""
    from napari_maskalign.engine.backends import _frames
    from napari_maskalign.engine.run import _hotpixels, _stack

    def boom(*a, **k):
        raise AssertionError("a frame was read before the dtype was checked")

    for module in (_frames, _hotpixels, _stack):
        monkeypatch.setattr(module, "read_frame", boom)
    monkeypatch.setattr(_stack, "iter_frames", boom)


@pytest.mark.parametrize("command", ["info", "register", "apply"])
def test_complex_input_is_refused_before_any_frame_is_read(command, complex_npy, tmp_path,
                                                           capsys, monkeypatch):
    _never_read(monkeypatch)
    table = tmp_path / "s.csv"
    io.write_shifts_csv(table, np.zeros((6, 2)), np.ones(6))
    argv = {"info": ["info", complex_npy],
            "register": ["register", complex_npy, "--shifts", tmp_path / "new.csv"],
            "apply": ["apply", complex_npy, "--shifts", table, "--mean", tmp_path / "m.tif"]}
    assert cli(*argv[command]) == 1
    one_line_error(capsys, r"complex\.npy.*complex")
    assert not (tmp_path / "new.csv").exists() and not (tmp_path / "m.tif").exists()


def test_open_stack_refuses_objects_text_and_complex(tmp_path):
    import h5py

    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("names", data=np.array([[["a", "b"], ["c", "d"]]] * 3, dtype=object),
                         dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match=r"t\.h5.*(text|objects)"):
        io.open_stack(f"{tmp_path / 't.h5'}:/names")
    tifffile.imwrite(tmp_path / "c.tif", np.ones((3, 8, 8), np.complex64))
    with pytest.raises(ValueError, match=r"c\.tif.*complex"):
        io.open_stack(tmp_path / "c.tif")


def test_find_static_outliers_checks_the_dtype_before_reading(monkeypatch):
    from napari_maskalign.engine import find_static_outliers

    _never_read(monkeypatch)
    with pytest.raises(ValueError, match="complex"):
        find_static_outliers(np.ones((4, 16, 16), np.complex64))
    with pytest.raises(ValueError, match="object"):
        find_static_outliers(np.empty((4, 16, 16), object))


def test_the_napari_reader_refuses_complex_frames(tmp_path):
    from napari_maskalign._reader import get_reader

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"f{i}.tif", np.ones((8, 8), np.complex64))
    reader = get_reader(str(folder))
    with pytest.raises(ValueError, match=r"f0\.tif.*complex"):
        reader(str(folder))


def _pickle_zarr(path, dtype: str, *, group: bool = False):
    """A zarr v2 array whose chunks are pickles that would create ``path/../PWNED``."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(path.parent / "PWNED"),))

    array = path / "0" if group else path
    array.mkdir(parents=True)
    if group:
        (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (path / ".zattrs").write_text(json.dumps(
            {"multiscales": [{"version": "0.4", "datasets": [{"path": "0"}]}]}))
    (array / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [3, 8, 8], "chunks": [1, 8, 8], "dtype": dtype,
        "compressor": None, "fill_value": 0, "filters": [{"id": "pickle"}], "order": "C"}))
    for i in range(3):
        (array / f"{i}.0.0").write_bytes(pickle.dumps(Payload()))
    return path


@pytest.mark.parametrize("dtype", ["|O", "<f4"])
@pytest.mark.parametrize("group", [False, True])
def test_a_pickled_zarr_is_refused_before_zarr_decodes_anything(tmp_path, monkeypatch, capsys,
                                                                dtype, group):
    """zarr 2.18 with numcodecs 0.13 unpickles such chunks; zarr is not even asked here."""
    import zarr

    evil = _pickle_zarr(tmp_path / "evil.zarr", dtype, group=group)

    asked = []

    def no_zarr(*a, **k):  # what zarr 2.18 would do: open, then unpickle on the first read
        asked.append(a)
        raise RuntimeError("zarr opened it")

    monkeypatch.setattr(zarr, "open", no_zarr)
    monkeypatch.setattr(zarr, "open_group", no_zarr)
    monkeypatch.setattr(zarr, "open_array", no_zarr)
    with pytest.raises(ValueError, match=r"evil\.zarr.*pickle"):
        io.open_stack(evil)
    assert cli("info", evil) == 1
    one_line_error(capsys, r"evil\.zarr.*pickle")
    assert not asked and not (tmp_path / "PWNED").exists()


def test_numcodecs_has_a_floor_that_refuses_to_unpickle():
    """pyproject pins numcodecs where Pickle.decode refuses by default (GHSA-jqc8-qjfv-5m6r)."""
    import pathlib
    import sys

    text = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r"\"numcodecs>=0\.16\.6; python_version >= .3\.11.\"", text)
    if sys.version_info >= (3, 11):
        import numcodecs
        from numcodecs.pickles import Pickle

        blob = Pickle().encode(np.array([1, 2], dtype=object))
        with pytest.raises(Exception, match="(?i)unsafe|pickle"):
            Pickle().decode(blob)
        assert tuple(int(x) for x in numcodecs.__version__.split(".")[:3]) >= (0, 16, 6)


# ----------------------------------------------------------------------------
# 2. data never lost: a live run's output is not stale; --overwrite keeps the old table


def test_a_live_runs_partial_output_is_never_removed_as_stale(run, capsys):
    out = run / "a.zarr"
    argv = ["register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
            "--output", out, "--quiet", "--overwrite"]  # fmt: skip
    live = io.partial_name(out, "live0001")
    live.mkdir()  # the output a running run is writing now ...
    with io.OutputLock(out):  # ... which holds the output's lock (as a running run does)
        assert cli(*argv) == 1
        one_line_error(capsys, rf"a\.zarr is being written by another run \(pid {os.getpid()},")
        assert live.exists() and not (run / "s.csv").exists()
    # once that run is gone (its lock with it), its partial output is an earlier run's leftover
    assert cli(*argv) == 0
    assert "removed the unfinished output of an earlier run" in capsys.readouterr().err
    assert not live.exists() and out.is_dir()
    assert not any(p.name.endswith(".lock") for p in run.iterdir())  # locks go with their run


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    """A kill -9 leaves the lock file, but not its lock: the next run takes it."""
    import subprocess
    import sys

    out = tmp_path / "a.zarr"
    code = ("import sys, os; from napari_maskalign.io import OutputLock; "
            f"l = OutputLock({str(out)!r}); l.acquire(); print('held', flush=True); "
            "os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "held" in proc.stdout and proc.returncode == -9
    assert io.OutputLock.path_for(out).exists()
    with io.OutputLock(out) as lock:
        assert lock.path.read_text().split()[0] == str(os.getpid())
    assert not io.OutputLock.path_for(out).exists()


def test_overwrite_keeps_the_old_table_until_the_new_one_is_complete(run, capsys, monkeypatch):
    from napari_maskalign.workflow import journal

    argv = ["register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
            "--quiet", "--save-interval", "0"]  # fmt: skip
    assert cli(*argv) == 0
    first, first_settings = (run / "s.csv").read_text(), (run / "s.csv.json").read_text()
    real, calls = journal.ShiftJournal.record, []

    def ctrl_c_at_frame_9(self, *a, **k):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(journal.ShiftJournal, "record", ctrl_c_at_frame_9)
    assert cli(*argv, "--overwrite", "--upsample", "10") == 130
    err = capsys.readouterr().err
    assert "9 of 16 frames are saved" in err and "--resume" in err
    # the complete old table and its settings are untouched, the new rows wait beside them
    assert (run / "s.csv").read_text() == first
    assert (run / "s.csv.json").read_text() == first_settings
    monkeypatch.setattr(journal.ShiftJournal, "record", real)
    assert cli(*argv, "--upsample", "10", "--resume") == 0
    assert "resumed at frame 9" in capsys.readouterr().out
    assert cli(*argv[:-5], "--shifts", run / "u.csv", "--upsample", "10", "--quiet") == 0
    assert (run / "s.csv").read_text() == (run / "u.csv").read_text() != first
    settings = json.loads((run / "s.csv.json").read_text())["registration"]
    assert settings["upsample_factor"] == 10
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_the_journal_writes_beside_an_old_table_and_swaps_when_complete(tmp_path):
    from napari_maskalign.workflow import ShiftJournal

    settings = {"frames": 4, "model": "translation"}
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, np.ones((4, 2)), np.ones(4))
    j = ShiftJournal(path, 4, 2, settings, interval=0)
    assert j.writing != path  # an old table exists: the new one is written beside it
    j.record(np.arange(3), np.full((3, 2), 2.0), np.full(3, 0.5))
    j.save(force=True)
    np.testing.assert_array_equal(io.read_shifts_csv(path)[0], 1.0)  # not yet
    j.record([3], np.full((1, 2), 2.0), [0.5])
    j.save(force=True)
    np.testing.assert_array_equal(io.read_shifts_csv(path)[0], 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.csv.json"]


def test_a_table_killed_between_the_two_renames_is_finished_by_resume(tmp_path):
    """The new settings are in place, the complete new table still at its partial name."""
    from napari_maskalign.workflow import ShiftJournal, pending_path, resume_rows, sidecar_path

    settings = {"frames": 4, "model": "translation"}
    path = tmp_path / "s.csv"
    io.write_shifts_csv(path, np.ones((4, 2)), np.ones(4))  # the old table
    io.write_shifts_csv(pending_path(path), np.full((4, 2), 2.0), np.ones(4))
    sidecar_path(path).write_text(json.dumps({"registration": settings}))
    rows = resume_rows(path, settings, 4, 2)
    np.testing.assert_array_equal(rows.shifts, 2.0)
    j = ShiftJournal(path, 4, 2, settings, interval=0)
    j.preload(*rows)
    j.save(force=True)
    np.testing.assert_array_equal(io.read_shifts_csv(path)[0], 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.csv.json"]


# ----------------------------------------------------------------------------
# 3. bad input: one line naming the file, never a traceback


def _register(run, *more):
    return ["register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv",
            "--quiet", *more]


@pytest.mark.parametrize("section", ["null", "list"])
def test_a_settings_file_with_a_null_section_is_one_line_on_resume(run, capsys, section):
    assert cli(*_register(run)) == 0
    side = run / "s.csv.json"
    doc = json.loads(side.read_text())
    doc["registration"] = None if section == "null" else [1, 2]
    side.write_text(json.dumps(doc))
    capsys.readouterr()
    assert cli(*_register(run, "--resume")) == 1
    one_line_error(capsys, r"cannot resume: .*s\.csv\.json is not readable")


@pytest.fixture(scope="module")
def sample8():
    return make_beam_block_stack(8, (64, 64), max_drift=2.0, seed=1)


def test_a_truncated_multipage_tiff_is_one_line(tmp_path, sample8, capsys):
    tifffile.imwrite(tmp_path / "full.tif", sample8.stack)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[: len(data) * 6 // 10])
    for command in (["info"], ["register", "--shifts", tmp_path / "s.csv", "--quiet"]):
        assert cli(command[0], tmp_path / "trunc.tif", *command[1:]) == 1
        one_line_error(capsys, r"trunc\.tif.*(truncated|ends)")
    with pytest.raises(ValueError, match=r"trunc\.tif"):
        np.asarray(io.open_stack(tmp_path / "trunc.tif"))


def test_a_corrupt_zarr_chunk_is_one_line(tmp_path, sample8, capsys):
    import zarr

    try:
        z = zarr.open(str(tmp_path / "c.zarr"), mode="w", shape=sample8.stack.shape,
                      chunks=(1, 64, 64), dtype="f4", zarr_format=2)
    except TypeError:  # zarr 2
        z = zarr.open(str(tmp_path / "c.zarr"), mode="w", shape=sample8.stack.shape,
                      chunks=(1, 64, 64), dtype="f4")
    z[:] = sample8.stack
    (tmp_path / "c.zarr" / "3.0.0").write_bytes(b"garbage!" * 10)
    stack = io.open_stack(tmp_path / "c.zarr")
    np.testing.assert_array_equal(stack[2], sample8.stack[2])
    with pytest.raises(ValueError, match=r"c\.zarr.*frame 3"):
        stack[3]
    assert cli("register", tmp_path / "c.zarr", "--shifts", tmp_path / "s.csv", "--quiet") == 1
    one_line_error(capsys, r"c\.zarr.*frame 3")
    assert cli("info", tmp_path / "c.zarr") == 0
    assert "zarr array" in capsys.readouterr().out


@pytest.mark.parametrize("multiscales", [[{"datasets": [{}]}], [{}], [], "x", [{"datasets": "0"}],
                                         [{"datasets": [{"path": "missing"}]}]])
def test_malformed_ome_zarr_multiscales_are_one_line(tmp_path, sample8, capsys, multiscales):
    import zarr

    try:
        group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w", zarr_format=2)
    except TypeError:  # zarr 2
        group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    group.attrs["multiscales"] = multiscales
    for name in ("0", "1"):
        group.create_array(name, shape=sample8.stack.shape, dtype="f4") if hasattr(
            group, "create_array") else group.create_dataset(name, shape=sample8.stack.shape,
                                                             dtype="f4")
    assert cli("info", tmp_path / "o.zarr") == 1
    one_line_error(capsys, r"o\.zarr")


def test_apply_hot_pixels_with_an_unreadable_file_is_one_line(run, capsys):
    assert cli(*_register(run)) == 0
    capsys.readouterr()
    (run / "hot.txt").write_text("not a mask")
    assert cli("apply", run / "run", "--shifts", run / "s.csv", "--mean", run / "m.tif",
               "--hot-pixels", run / "hot.txt") == 1
    one_line_error(capsys, r"--hot-pixels.*hot\.txt")
    assert not (run / "m.tif").exists()


@pytest.mark.parametrize("shape", [(2, 64), (64, 2), (2, 2), (3, 3)])
def test_rigid_on_too_small_frames_is_refused_in_words(tmp_path, capsys, shape):
    from napari_maskalign.engine import register_stack

    stack = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    with pytest.raises(ValueError, match=r"rigid model needs frames of at least"):
        register_stack(stack, model="rigid")
    np.save(tmp_path / "small.npy", stack)
    assert cli("register", tmp_path / "small.npy", "--model", "similarity", "--shifts",
               tmp_path / "s.csv") == 1
    one_line_error(capsys, r"similarity model needs frames of at least")


# ----------------------------------------------------------------------------
# 4. checks made before the first frame; clean stops


def test_rigid_with_a_fourier_output_is_refused_before_registering(run, capsys):
    argv = _register(run, "--model", "rigid", "--method", "fourier", "--output", run / "a.zarr")
    assert cli(*argv) == 1
    captured = capsys.readouterr()
    assert "registered" not in captured.out and "outliers" not in captured.out
    assert re.search(r"--method fourier .*rigid", captured.err.strip()), captured.err
    assert not (run / "s.csv").exists() and not (run / "a.zarr").exists()
    # apply with a rigid table: refused before any frame is written
    assert cli(*_register(run, "--model", "rigid")) == 0
    capsys.readouterr()
    assert cli("apply", run / "run", "--shifts", run / "s.csv", "--output", run / "b.zarr",
               "--method", "fourier") == 1
    one_line_error(capsys, r"--method fourier .*s\.csv")
    assert not any(p.name.startswith(".b.zarr") or p.name == "b.zarr" for p in run.iterdir())


def test_a_half_saturated_stack_is_warned_about(tmp_path, capsys):
    s = make_beam_block_stack(6, (64, 64), max_drift=3.0, seed=4, noise=None)
    frames = (s.stack / s.stack.max() * 4000).astype(np.uint16)
    frames[:, :, :32] = 65535  # half of every frame saturated: static, pulls shifts to 0
    tifffile.imwrite(tmp_path / "sat.tif", frames)
    assert cli("register", tmp_path / "sat.tif", "--shifts", tmp_path / "s.csv", "--quiet") == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: 50% of the pixels of frame 0 .*65535.*saturated", err), err
    # an ordinary stack: no such warning
    tifffile.imwrite(tmp_path / "ok.tif", (s.stack / s.stack.max() * 4000).astype(np.uint16))
    assert cli("register", tmp_path / "ok.tif", "--shifts", tmp_path / "t.csv", "--quiet") == 0
    assert "saturated" not in capsys.readouterr().err


def test_saturation_check_in_the_api():
    from napari_maskalign.workflow import saturation_warning

    frame = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    assert saturation_warning(frame) is None
    frame[:, :16] = frame.max()
    assert "50%" in saturation_warning(frame)
    valid = np.ones(frame.shape, bool)
    valid[:, :16] = False  # the saturated half masked: nothing to say
    assert saturation_warning(frame, valid) is None


def test_a_scheduler_without_workers_times_out_with_a_message(monkeypatch):
    distributed = pytest.importorskip("distributed")
    from napari_maskalign.workflow import run as workflow_run

    monkeypatch.setattr(workflow_run, "WORKER_WAIT", 1.0)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        with pytest.raises(ValueError, match=rf"no workers .*{re.escape(cluster.scheduler_address)}"):
            with workflow_run.dask_client(cluster.scheduler_address):
                pytest.fail("a client without workers was handed out")


def _full_disk_after(calls_allowed: int):
    calls = []

    def fail(*a, **k):
        calls.append(1)
        if len(calls) > calls_allowed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fail.real(*a, **k)

    return fail


def test_a_full_disk_while_saving_shifts_names_the_file_and_the_frames_saved(run, capsys,
                                                                             monkeypatch):
    from napari_maskalign.workflow import journal

    fail = _full_disk_after(5)
    fail.real = journal.write_shifts_csv
    monkeypatch.setattr(journal, "write_shifts_csv", fail)
    assert cli(*_register(run, "--save-interval", "0")) == 1
    line = one_line_error(capsys, r"cannot write .*s\.csv: No space left on device")
    assert re.search(r"5 of 16 frames are saved in .*s\.csv.*--resume", line), line
    assert len(io.read_shifts_csv(run / "s.csv")[0]) == 5


def test_a_full_disk_while_writing_the_output_names_the_file_and_the_frames(run, capsys,
                                                                          monkeypatch):
    fail = _full_disk_after(7)
    fail.real = tifffile.TiffWriter.write
    monkeypatch.setattr(tifffile.TiffWriter, "write", fail)
    assert cli(*_register(run, "--output", run / "a.tif")) == 1
    line = one_line_error(capsys, r"cannot write .*a\.tif: No space left on device")
    assert re.search(r"7 of 16 frames were written", line), line
    assert re.search(r"all 16 shifts are saved in .*s\.csv", line), line
    assert not any("a.tif" in p.name for p in run.iterdir())  # no partial left behind


def test_ctrl_c_while_writing_exits_130_even_when_cleanup_fails(run, capsys, monkeypatch):
    from napari_maskalign.io import writers

    fail = _full_disk_after(4)
    fail.real = writers.StackWriter.write

    def ctrl_c(*a, **k):
        try:
            return fail(*a, **k)
        except OSError:
            raise KeyboardInterrupt from None

    def busy_folder(path):  # a zarr thread still writing into it: "Directory not empty"
        raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(path))

    monkeypatch.setattr(writers.StackWriter, "write", ctrl_c)
    monkeypatch.setattr(writers, "remove_path", busy_folder)
    assert cli(*_register(run, "--output", run / "a.zarr")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Directory not empty" not in err and "Traceback" not in err
    assert not (run / "a.zarr").exists()


def test_dask_worker_logs_are_silenced_while_a_client_is_held(capfd):
    pytest.importorskip("distributed")
    import logging

    from napari_maskalign.workflow import dask_client

    before = logging.getLogger("distributed").level
    with dask_client(None, 1) as client:
        # what a worker and the nanny log when workers are killed, in their own processes
        client.run(lambda: logging.getLogger("distributed.worker").error("Traceback: killed"))
        logging.getLogger("distributed.nanny").error("Traceback: a worker was killed")
        logging.getLogger("distributed.worker").warning("heartbeat failed")
    assert logging.getLogger("distributed").level == before
    err = capfd.readouterr().err
    assert "Traceback" not in err and "heartbeat" not in err, err


def test_a_scale_beyond_the_search_bound_is_flagged():
    """Two frames, the second 1/0.65 = 1.54x: outside the +-25 % search, it came back as
    about 1.39 (wrong), with nothing flagged."""
    from napari_maskalign.engine import register_stack, transform_parameters

    s = make_beam_block_stack(2, (64, 64), scale=np.array([1.0, 0.65]), seed=1, max_drift=1)
    result = register_stack(s.stack, model="similarity", mask=~s.beam_block)
    _, _, scales = transform_parameters(result.raw_transforms, (64, 64))
    assert abs(scales[1] * 0.65 - 1) > 0.05  # measured wrong ...
    assert result.outliers.tolist() == [False, True]  # ... and flagged
    # within the search, a scale change is measured and not flagged
    s = make_beam_block_stack(2, (64, 64), scale=np.array([1.0, 1.15]), seed=1, max_drift=1)
    result = register_stack(s.stack, model="similarity", mask=~s.beam_block)
    _, _, scales = transform_parameters(result.raw_transforms, (64, 64))
    assert abs(scales[1] * 1.15 - 1) < 0.01 and not result.outliers.any()
