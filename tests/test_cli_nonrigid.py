"""maskalign register --model nonrigid and apply: the fields travel beside the shifts file."""

import json

import numpy as np

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
    # the shifts CSV: the global translation, then the per-frame summary
    lines = shifts.read_text().splitlines()
    assert lines[0] == ("frame,shift_y,shift_x,quality,sigma_y,sigma_x,deformation_rms,"
                        "deformation_max,valid_patches,fallback")
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


def test_nonrigid_resume_is_refused_in_plain_words(tmp_path, capsys):
    synth = make_nonrigid_stack(3, (96, 96), amplitude=1.0, seed=4)
    np.save(tmp_path / "stack.npy", synth.stack)
    shifts = tmp_path / "s.csv"
    args = ("register", tmp_path / "stack.npy", "--model", "nonrigid", "--hot-pixels", "off",
            "--shifts", shifts)
    assert cli(*args) == 0
    # cut the table to one frame, as an interrupted run leaves it, and resume
    lines = shifts.read_text().splitlines()
    shifts.write_text("\n".join(lines[:2]) + "\n")
    assert cli(*args, "--resume") == 1
    assert "cannot be resumed" in capsys.readouterr().err
