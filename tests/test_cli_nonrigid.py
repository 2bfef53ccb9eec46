"""maskalign register --model nonrigid and apply: the fields travel beside the shifts file."""

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_maskalign import apply_fields, io, register_stack
from napari_maskalign._nonrigid_sample import make_nonrigid_stack
from napari_maskalign.cli import main
from napari_maskalign.io.fields import fields_path_for, read_fields


def cli(*args) -> int:
    return main([str(a) for a in args])


def test_register_nonrigid_writes_fields_and_apply_reads_them(tmp_path, capsys):
    synth = make_nonrigid_stack(3, (128, 128), amplitude=1.5, seed=4)
    np.save(tmp_path / "stack.npy", synth.stack)
    np.save(tmp_path / "block.npy", synth.beam_block.astype(np.uint8))
    shifts, out = tmp_path / "s.csv", tmp_path / "aligned.zarr"
    assert cli("register", tmp_path / "stack.npy", "--mask", tmp_path / "block.npy",
               "--model", "nonrigid", "--grid-spacing", "24", "--hot-pixels", "off",
               "--shifts", shifts, "--output", out) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "fields:" in text
    fields_file = fields_path_for(shifts)
    fields, extras = read_fields(fields_file, n_frames=3, frame_shape=(128, 128))
    assert fields.grid.spacing == 24 and extras["fallback"].shape == (3,)
    # the fields are the engine's (the accuracy is test_engine_nonrigid's business)
    res = register_stack(synth.stack, mask=synth.valid, model="nonrigid", grid_spacing=24,
                         hot_pixels="off")
    np.testing.assert_allclose(fields.coefficients, res.coefficients, atol=1e-4)
    np.testing.assert_array_equal(extras["fallback"], res.fallback)
    # the summary counts the frames whose field fitted no better than the global shift,
    # not the reference (flagged in the table, exact as it is)
    assert res.fallback[0]
    kept = [int(i) for i in np.flatnonzero(res.fallback[1:]) + 1]
    assert f"{len(kept)} frame(s) kept the global shift" in text, text
    # the shifts CSV: the global translation, then the per-frame summary
    lines = shifts.read_text().splitlines()
    assert lines[0] == ("frame,shift_y,shift_x,quality,sigma_y,sigma_x,deformation_rms,"
                        "deformation_max,valid_patches,fallback,second_peak_y,second_peak_x,"
                        "peak_lead")
    rows = np.array([[float(c) for c in line.split(",")] for line in lines[1:]])
    np.testing.assert_allclose(rows[:, 1:3], res.shifts, atol=1e-9)
    np.testing.assert_allclose(rows[:, 6], res.deformation_rms)
    np.testing.assert_array_equal(rows[:, 9], res.fallback)
    # the aligned zarr says how it was made, and holds the frames aligned by the fields
    import zarr

    attrs = dict(zarr.open(str(out), mode="r").attrs)["maskalign"]["fields"]
    assert attrs["grid"]["spacing"] == 24 and "moving(x + v(x))" in attrs["convention"]
    aligned = np.asarray(io.open_stack(out))
    expected, data = apply_fields(synth.stack, fields, valid_mask=synth.valid, return_valid=True)
    np.testing.assert_array_equal(np.isnan(aligned), ~data)
    np.testing.assert_allclose(aligned[data], expected[data], rtol=1e-5, atol=1e-4)
    # apply reads the fields back: the same output
    assert cli("apply", tmp_path / "stack.npy", "--shifts", shifts, "--mask",
               tmp_path / "block.npy", "--hot-pixels", "off", "--output",
               tmp_path / "again.zarr") == 0  # fmt: skip
    np.testing.assert_array_equal(np.asarray(io.open_stack(tmp_path / "again.zarr")), aligned)
    settings = json.loads((tmp_path / "s.csv.json").read_text())["registration"]
    assert settings["model"] == "nonrigid" and settings["grid_spacing"] == 24


def _interrupt_after(frames: int):
    """A stand-in for the progress bar that stops the run with Ctrl-C after ``frames``
    frame registrations (the command saves what finished and exits 130)."""
    def follow(steps, *args, **kwargs):
        for k, _ in enumerate(steps):
            if k + 1 == frames:
                raise KeyboardInterrupt
        return steps.result
    return follow


@pytest.mark.parametrize("reference", ["0", "previous"])
def test_interrupted_nonrigid_run_resumes_to_the_same_result(tmp_path, monkeypatch, capsys,
                                                             reference):
    synth = make_nonrigid_stack(5, (96, 96), amplitude=1.0, max_shift=1.5, seed=4)
    np.save(tmp_path / "stack.npy", synth.stack)
    np.save(tmp_path / "block.npy", synth.beam_block.astype(np.uint8))

    def args(name):
        return ("register", tmp_path / "stack.npy", "--mask", tmp_path / "block.npy",
                "--model", "nonrigid", "--reference", reference, "--hot-pixels", "off",
                "--save-interval", "0", "--shifts", tmp_path / f"{name}.csv",
                "--output", tmp_path / f"{name}.zarr")  # fmt: skip

    assert cli(*args("whole")) == 0
    import napari_maskalign.cli as cli_module

    real = cli_module.follow
    monkeypatch.setattr(cli_module, "follow", _interrupt_after(3))
    assert cli(*args("cut")) == 130
    partial = tmp_path / ".cut.csv.fields.partial.npz"
    assert len(io.read_shifts_csv(tmp_path / "cut.csv")[0]) == 3
    with np.load(partial) as z:
        assert len(z["coefficients"]) == 3  # the fields of the saved rows wait beside them
    assert not fields_path_for(tmp_path / "cut.csv").exists()
    monkeypatch.setattr(cli_module, "follow", real)
    capsys.readouterr()
    assert cli(*args("cut"), "--resume") == 0
    assert "resumed at frame 3" in capsys.readouterr().out
    # the same table (shifts, uncertainties, the summary columns), fields and output
    assert (tmp_path / "cut.csv").read_text() == (tmp_path / "whole.csv").read_text()
    a, ea = read_fields(fields_path_for(tmp_path / "cut.csv"))
    b, eb = read_fields(fields_path_for(tmp_path / "whole.csv"))
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    for key in ("fallback", "deformation_rms", "patch_shifts", "patch_centres"):
        np.testing.assert_array_equal(ea[key], eb[key])
    np.testing.assert_array_equal(np.asarray(io.open_stack(tmp_path / "cut.zarr")),
                                  np.asarray(io.open_stack(tmp_path / "whole.zarr")))
    assert not partial.exists()
    # the uninterrupted fields are the engine's
    res = register_stack(synth.stack, mask=synth.valid, model="nonrigid",
                         reference="previous" if reference == "previous" else 0,
                         hot_pixels="off")
    np.testing.assert_allclose(b.coefficients, res.coefficients, atol=1e-4)


def test_kill_9_then_resume_a_nonrigid_run(tmp_path, kill_after_rows):
    """A run killed at any moment resumes to the table and fields of a run never stopped."""
    synth = make_nonrigid_stack(8, (96, 96), amplitude=1.0, seed=2)
    np.save(tmp_path / "stack.npy", synth.stack)
    shifts = tmp_path / "s.csv"
    cmd = [sys.executable, "-m", "napari_maskalign.cli", "register", str(tmp_path / "stack.npy"),
           "--model", "nonrigid", "--hot-pixels", "off", "--shifts", str(shifts)]
    kill_after_rows(cmd, shifts, 2)  # at any moment after the second row
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert cli("register", tmp_path / "stack.npy", "--model", "nonrigid", "--hot-pixels", "off",
               "--shifts", tmp_path / "whole.csv") == 0  # fmt: skip
    assert shifts.read_text() == (tmp_path / "whole.csv").read_text()
    a, _ = read_fields(fields_path_for(shifts))
    b, _ = read_fields(fields_path_for(tmp_path / "whole.csv"))
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_without_saved_fields_starts_over(tmp_path, monkeypatch, capsys):
    """A table whose fields were not kept (removed, or written before fields were) is
    registered again from frame 0, to the same result: never rows without fields."""
    synth = make_nonrigid_stack(4, (96, 96), amplitude=1.0, seed=4)
    np.save(tmp_path / "stack.npy", synth.stack)
    args = ("register", tmp_path / "stack.npy", "--model", "nonrigid", "--hot-pixels", "off",
            "--save-interval", "0", "--shifts", tmp_path / "s.csv")
    import napari_maskalign.cli as cli_module

    real = cli_module.follow
    monkeypatch.setattr(cli_module, "follow", _interrupt_after(2))
    assert cli(*args) == 130
    (tmp_path / ".s.csv.fields.partial.npz").unlink()
    monkeypatch.setattr(cli_module, "follow", real)
    capsys.readouterr()
    assert cli(*args, "--resume") == 0
    out = capsys.readouterr().out
    assert "registered 4 of 4 frames" in out and "resumed" not in out
    res = register_stack(synth.stack, model="nonrigid", hot_pixels="off")
    fields, extras = read_fields(fields_path_for(tmp_path / "s.csv"), n_frames=4)
    np.testing.assert_allclose(fields.coefficients, res.coefficients, atol=1e-4)
    np.testing.assert_allclose(io.read_shifts_csv(tmp_path / "s.csv")[0], res.shifts, atol=1e-9)
