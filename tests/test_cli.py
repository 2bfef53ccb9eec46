"""The ``maskalign`` command: register / apply / info on real files, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_maskalign import io
from napari_maskalign._sample_data import make_beam_block_stack
from napari_maskalign.cli import build_parser, main
from napari_maskalign.engine import apply_shifts, apply_transforms, register_stack

N = 16


@pytest.fixture
def sample(cli_sample):
    return cli_sample


@pytest.fixture
def run(cli_run):
    """A folder of single-frame TIFFs (run/) and a painted mask PNG (block.png)."""
    return cli_run


def cli(*args) -> int:
    return main([str(a) for a in args])


def csv_rows(path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


# ----------------------------------------------------------------------------
# help and info


def test_help_states_the_mask_convention(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["register", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "NONZERO MARKS PIXELS TO IGNORE" in text
    assert "--invert-mask" in text and "nonzero marks the valid pixels" in text
    assert "--resume" in text and "--scheduler ADDRESS" in text and "--workers N" in text
    assert "frame_2 before frame_10" in text


def test_info_describes_a_folder(run, capsys):
    assert cli("info", run / "run") == 0
    out = capsys.readouterr().out
    assert "folder of TIFF frames" in out
    assert "frames       16" in out
    assert "frame shape  64x64" in out
    assert "float32" in out and "one file per frame" in out
    assert "frame_15.tif" in out


# ----------------------------------------------------------------------------
# register and apply


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_register_writes_shifts_and_aligned_stack(run, sample, capsys, suffix):
    shifts_csv, out = run / "shifts.csv", run / f"aligned{suffix}"
    rc = cli("register", run / "run", "--mask", run / "block.png", "--shifts", shifts_csv,
             "--output", out)  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    # stderr is not a terminal: plain progress lines, a start and an end per stage
    stages = [ln.split(" ", 2)[2] for ln in captured.err.splitlines()]
    reg = [x for x in stages if x.startswith("registering: ")]
    wri = [x for x in stages if x.startswith("writing: ")]
    assert len(reg) + len(wri) == len(stages) and stages.index(reg[-1]) < stages.index(wri[0])
    assert reg[0] == "registering: starting" and "registering: 1 of 16 frames" in reg
    assert reg[-1].startswith("registering: 16 of 16 frames, 16 in ")
    assert wri[0] == "writing: starting" and wri[-1].startswith("writing: 16 of 16 frames, 16 in ")
    assert "registered 16 of 16 frames (64x64, float32)" in captured.out
    assert "shift: median" in captured.out and "outliers: none flagged" in captured.out

    shifts, quality = io.read_shifts_csv(shifts_csv, n_frames=N, ndim=2)
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20)
    np.testing.assert_array_equal(shifts, expected.raw_shifts)  # the engine's numbers, exactly
    np.testing.assert_array_equal(quality, expected.quality)
    assert np.abs(shifts - sample.expected_shifts()).max() < 0.1

    aligned = io.open_stack(out)
    if suffix == ".zarr":
        assert aligned.chunks == (1, 64, 64)
    expected, data = apply_shifts(sample.stack, shifts, valid_mask=sample.valid, return_valid=True)
    expected[~data] = np.nan  # the block is missing data where it lands, not pixels
    np.testing.assert_array_equal(np.asarray(aligned[:]), expected)
    assert np.isnan(np.asarray(aligned[:])[~data]).all() and (~data).any()
    assert "hot pixels: ignored 0 hot or dead pixels (found in the stack)" in captured.out
    settings = json.loads((run / "shifts.csv.json").read_text())["registration"]
    assert settings["frames"] == N and settings["upsample_factor"] == 20


def test_apply_saved_shifts_to_other_data(run, sample, capsys):
    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv") == 0
    other = run / "other.npy"
    np.save(other, sample.stack * 2 + 1)
    assert cli("apply", other, "--shifts", run / "s.csv", "--output", run / "o.tif",
               "--method", "fourier", "--hot-pixels", "off") == 0  # fmt: skip
    shifts, _ = io.read_shifts_csv(run / "s.csv")
    np.testing.assert_allclose(
        io.open_stack(run / "o.tif"),
        apply_shifts(sample.stack * 2 + 1, shifts, method="fourier"),
    )
    assert "aligned 16 frames" in capsys.readouterr().out
    # by default the static outliers of the data (here: on the unpainted block's edge) are
    # ignored, as register ignores them
    from napari_maskalign.engine import find_static_outliers

    hot = find_static_outliers(sample.stack * 2 + 1)
    assert cli("apply", other, "--shifts", run / "s.csv", "--output", run / "d.tif",
               "--method", "fourier") == 0  # fmt: skip
    assert f"hot pixels: ignored {hot.sum()} hot or dead pixels" in capsys.readouterr().out
    expected, data = apply_shifts(sample.stack * 2 + 1, shifts, method="fourier",
                                  valid_mask=~hot, return_valid=True)
    expected[~data] = np.nan
    np.testing.assert_allclose(io.open_stack(run / "d.tif"), expected, equal_nan=True)


def test_outliers_are_listed_in_the_summary(run, sample, capsys):
    noise = np.random.default_rng(0).poisson(400, (64, 64)).astype(np.float32)
    tifffile.imwrite(run / "run" / "frame_9.tif", noise)
    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "s.csv") == 0
    out = capsys.readouterr().out
    assert "outliers: 1 frame(s) flagged" in out and out.rstrip().split("\n")[-2].endswith(": 9")


# ----------------------------------------------------------------------------
# errors: one line, non-zero exit, nothing written


def _mixed(run):
    tifffile.imwrite(run / "run" / "frame_16.tif", np.zeros((8, 8), np.float32))


def _wrong_mask(run):
    np.save(run / "block.npy", np.zeros((10, 10), np.uint8))


def _all_masked(run):
    np.save(run / "block.npy", np.ones((64, 64), np.uint8))


def _existing_output(run):
    (run / "out.zarr").mkdir()


def _unreadable_frame(run):
    (run / "run" / "frame_3.tif").write_bytes(b"garbage")


@pytest.mark.parametrize(
    ("prepare", "argv", "message"),
    [
        (None, ["register", "{run}/nope", "--shifts", "{run}/s.csv"], "no such file or folder"),
        (None, ["register", "{run}/nope/*.tif", "--shifts", "{run}/s.csv"], "no files match"),
        (_unreadable_frame, ["register", "{run}/run", "--shifts", "{run}/s.csv"], "frame_3.tif"),
        (_mixed, ["register", "{run}/run", "--shifts", "{run}/s.csv"], "frames have mixed shapes"),
        (_wrong_mask, ["register", "{run}/run", "--mask", "{run}/block.npy", "--shifts", "{run}/s.csv"],
         r"has shape \(10, 10\) but one frame has shape \(64, 64\)"),
        (_all_masked, ["register", "{run}/run", "--mask", "{run}/block.npy", "--shifts", "{run}/s.csv"],
         "masks every pixel.*--invert-mask"),
        (None, ["register", "{run}/run", "--mask", "{run}/none.png", "--shifts", "{run}/s.csv"],
         "no such mask file"),
        (_existing_output, ["register", "{run}/run", "--shifts", "{run}/s.csv", "--output", "{run}/out.zarr"],
         "exists; use --overwrite"),
        (None, ["register", "{run}/run", "--shifts", "{run}/s.csv", "--output", "{run}/out.h5"],
         "end the name with .zarr"),
        (None, ["register", "{run}/run", "--shifts", "{run}/s.csv", "--reference", "40"],
         "out of range"),
        (None, ["register", "{run}/run", "--shifts", "{run}/s.csv", "--reference", "template", "--resume"],
         "cannot be resumed"),
        (None, ["apply", "{run}/run", "--shifts", "{run}/short.csv", "--output", "{run}/o.tif"],
         "has 3 rows but the stack has 16 frames"),
        (None, ["apply", "{run}/run", "--shifts", "{run}/3d.csv", "--output", "{run}/o.tif"],
         "frames are 2D"),
    ],
)  # fmt: skip
def test_errors_are_plain_and_exit_non_zero(run, capsys, prepare, argv, message):
    io.write_shifts_csv(run / "short.csv", np.zeros((3, 2)), np.ones(3))
    io.write_shifts_csv(run / "3d.csv", np.zeros((N, 3)), np.ones(N))
    if prepare:
        prepare(run)
    before = sorted(p.name for p in run.iterdir())
    rc = main([a.format(run=run) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("maskalign ") and "error:" in err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_unquoted_glob_is_explained(run, capsys):
    files = [str(run / "run" / f"frame_{i}.tif") for i in (0, 1, 10, 2)]
    assert cli("register", *files, "--shifts", run / "s.csv") == 2
    err = capsys.readouterr().err
    assert "got 4 inputs" in err and "quoted glob" in err
    assert not (run / "s.csv").exists()


def test_existing_shifts_need_overwrite(run, capsys):
    argv = ["register", run / "run", "--shifts", run / "s.csv"]
    assert cli(*argv) == 0
    assert cli(*argv) == 1
    assert "s.csv exists; use --overwrite" in capsys.readouterr().err
    assert cli(*argv, "--overwrite") == 0


def test_failed_output_leaves_no_file(run, monkeypatch):
    import napari_maskalign.workflow.align as align

    real, calls = align.apply_shifts, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated failure while writing the aligned stack")
        return real(*a, **k)

    monkeypatch.setattr(align, "apply_shifts", failing)
    with pytest.raises(MemoryError):
        cli("register", run / "run", "--shifts", run / "s.csv", "--output", run / "a.zarr",
            "--chunk-frames", "4")  # fmt: skip
    assert not (run / "a.zarr").exists()
    assert io.stale_partials(run / "a.zarr") == []
    assert csv_rows(run / "s.csv") == N  # the shifts are kept: --resume only writes the output


# ----------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("reference", ["0", "previous"])
def test_resume_from_a_partial_table_gives_the_same_shifts(run, reference, capsys):
    common = ["--mask", run / "block.png", "--reference", reference]
    assert cli("register", run / "run", *common, "--shifts", run / "full.csv") == 0
    assert cli("register", run / "run", *common, "--shifts", run / "part.csv") == 0
    # as a killed run leaves it: the first 7 rows
    lines = (run / "part.csv").read_text().splitlines(keepends=True)
    (run / "part.csv").write_text("".join(lines[:8]))
    capsys.readouterr()
    assert cli("register", run / "run", *common, "--shifts", run / "part.csv", "--resume") == 0
    out = capsys.readouterr().out
    assert "registered 9 of 16 frames" in out and "resumed at frame 7" in out
    assert (run / "part.csv").read_text() == (run / "full.csv").read_text()


def test_resume_refuses_other_settings(run, capsys):
    assert cli("register", run / "run", "--shifts", run / "s.csv", "--upsample", "10") == 0
    rc = cli("register", run / "run", "--shifts", run / "s.csv", "--upsample", "20", "--resume")
    assert rc == 1
    err = capsys.readouterr().err
    assert "different settings" in err and "upsample_factor: earlier 10.0, now 20.0" in err
    (run / "s.csv.json").unlink()
    assert (
        cli("register", run / "run", "--shifts", run / "s.csv", "--upsample", "10", "--resume") == 1
    )
    assert "run's parameters" in capsys.readouterr().err


def test_resume_of_a_finished_run_has_nothing_to_do(run, capsys):
    argv = ["register", run / "run", "--shifts", run / "s.csv", "--output", run / "a.tif"]
    assert cli(*argv) == 0
    assert cli(*argv, "--resume") == 0
    assert "nothing to do" in capsys.readouterr().out


def _cycled_frames(folder, n, shape, seed):
    """n frames on disk, cycling through 8 rendered ones (rendering n is slow)."""
    s = make_beam_block_stack(8, shape, max_drift=3.0, seed=seed)
    folder.mkdir()
    for i in range(n):
        tifffile.imwrite(folder / f"frame_{i}.tif", s.stack[i % 8])
    np.save(folder.parent / "block.npy", s.beam_block.astype(np.uint8))
    return folder


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(tmp_path, kill_after_rows):
    """Whatever moment the kill hits (before the output, during it, or after the run ended
    on its own), the table left is a whole prefix of the run's, and --resume then ends with
    the same bytes as a run that was never stopped."""
    n = 200
    frames = _cycled_frames(tmp_path / "run", n, (256, 256), seed=6)
    args = ["register", str(frames), "--mask", str(tmp_path / "block.npy"),
            "--output", str(tmp_path / "aligned.zarr")]  # fmt: skip
    shifts_csv = tmp_path / "shifts.csv"
    cmd = [sys.executable, "-m", "napari_maskalign.cli", *args, "--shifts", str(shifts_csv)]
    kill_after_rows(cmd, shifts_csv, 40)
    done, _ = io.read_shifts_csv(shifts_csv)  # whatever moment the kill hit, the table is whole

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    reference = tmp_path / "uninterrupted.csv"
    args[-1] = str(tmp_path / "uninterrupted.zarr")
    assert main([*args, "--shifts", str(reference)]) == 0
    whole, _ = io.read_shifts_csv(reference)
    np.testing.assert_array_equal(done, whole[: len(done)])  # the kill left a prefix
    assert shifts_csv.read_text() == reference.read_text()
    np.testing.assert_array_equal(
        io.open_stack(tmp_path / "aligned.zarr")[:],
        io.open_stack(tmp_path / "uninterrupted.zarr")[:],
    )
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ----------------------------------------------------------------------------
# memory and clusters


# The child reports its own peak resident memory: VmHWM of /proc/self/status,
# the high-water mark of this process image. (getrusage's ru_maxrss would not
# do: Linux carries it over from the parent across fork + exec, so it would
# report the test process's size.)
CHILD = """
import sys
from napari_maskalign.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    hwm = [ln for ln in f if ln.startswith("VmHWM:")][0].split()[1]
print("PEAK_KIB", hwm, file=sys.stderr)
sys.exit(rc)
"""


def _peak_rss_mib(argv) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("PEAK_KIB")][-1]
    return int(line.split()[1]) / 1024  # Linux reports KiB


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)"
)
def test_memory_does_not_grow_with_frame_count(tmp_path):
    """4x the frames (90 MiB more pixels) must not raise the peak resident memory, with the
    aligned output and the masked mean written in the same pass. (VmHWM is the process's own
    high-water mark: it does not depend on the machine's load.)"""
    small, large = 30, 120
    frames = _cycled_frames(tmp_path / "run", large, (512, 512), seed=7)
    few = tmp_path / "few"
    few.mkdir()
    for i in range(small):
        os.link(frames / f"frame_{i}.tif", few / f"frame_{i}.tif")
    peaks = {}
    for name, folder in (("small", few), ("large", frames)):
        peaks[name] = _peak_rss_mib(
            ["register", folder, "--mask", tmp_path / "block.npy", "--max-shift", "8",
             "--shifts", tmp_path / f"{name}.csv", "--output", tmp_path / f"{name}.zarr",
             "--mean", tmp_path / f"{name}_mean.tif"]
        )  # fmt: skip
    extra_pixels_mib = (large - small) * 512 * 512 * 4 / 2**20
    growth = peaks["large"] - peaks["small"]
    assert growth < 0.2 * extra_pixels_mib, (peaks, extra_pixels_mib)


def test_cli_on_a_local_cluster_matches_in_process(run, capsys):
    pytest.importorskip("distributed", reason="--workers needs dask.distributed")
    common = ["register", run / "run", "--mask", run / "block.png"]
    assert cli(*common, "--shifts", run / "local.csv") == 0
    assert cli(*common, "--shifts", run / "cluster.csv", "--workers", "2", "--chunk-frames", "5",
               "--output", run / "a.zarr") == 0  # fmt: skip
    local, _ = io.read_shifts_csv(run / "local.csv")
    cluster, _ = io.read_shifts_csv(run / "cluster.csv")
    np.testing.assert_allclose(cluster, local, rtol=0, atol=1e-9)
    assert io.open_stack(run / "a.zarr").shape == (N, 64, 64)
    assert cli(*common, "--shifts", run / "p.csv", "--workers", "2", "--reference", "previous") == 1
    assert "cannot be split across a cluster" in capsys.readouterr().err


def test_apply_with_a_truncated_frame_is_one_line_and_writes_nothing(run, capsys):
    """The frame's header is whole (the stack opens) but its pixels end early."""
    io.write_shifts_csv(run / "s.csv", np.zeros((N, 2)), np.ones(N))
    path = run / "run" / "frame_3.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = sorted(p.name for p in run.iterdir())
    assert cli("apply", run / "run", "--shifts", run / "s.csv", "--output", run / "o.tif") == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress lines
    # (met first by the hot-pixel search, which reads the frames before anything is written)
    assert err.startswith("maskalign apply: error: cannot ") and "frame_3.tif" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_outputs_never_replace_the_mask_or_land_in_the_input_folder(tmp_path, capsys):
    synth = make_beam_block_stack(4, (32, 32), seed=3)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(synth.stack):
        tifffile.imwrite(frames / f"frame_{i}.tif", f)
    mask = tmp_path / "block.npy"
    np.save(mask, synth.beam_block.astype(np.uint8))
    before = mask.read_bytes()
    rc = main(["register", str(frames), "--mask", str(mask), "--shifts", str(mask), "--overwrite"])
    assert rc == 1
    assert "is the mask itself" in capsys.readouterr().err
    assert mask.read_bytes() == before
    rc = main(
        ["register", str(frames), "--shifts", str(tmp_path / "s.csv"), "--output", str(frames / "al.tif")]
    )
    assert rc == 1
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i}.tif" for i in range(4)]


def test_hot_pixels_are_found_by_default_and_said_in_the_summary(tmp_path, capsys):
    """A drifting folder whose detector has static hot pixels, only the block painted."""
    synth = make_beam_block_stack(10, (96, 96), max_drift=4.0, seed=8)
    stack = synth.stack.copy()
    rng = np.random.default_rng(1)
    hot = np.zeros(synth.valid.shape, bool)
    hot.flat[rng.choice(np.flatnonzero(synth.valid), 60, replace=False)] = True
    stack[:, hot] += 20 * stack.max()
    folder = tmp_path / "run"
    folder.mkdir()
    for i, f in enumerate(stack):
        tifffile.imwrite(folder / f"frame_{i}.tif", f)
    np.save(tmp_path / "block.npy", synth.beam_block.astype(np.uint8))
    np.save(tmp_path / "hot.npy", hot.astype(np.uint8))
    common = ["register", folder, "--mask", tmp_path / "block.npy", "--upsample", "20"]
    truth = synth.expected_shifts()
    errors = {}
    for name, extra in (("auto", []), ("off", ["--hot-pixels", "off"]),
                        ("file", ["--hot-pixels", tmp_path / "hot.npy"])):
        assert cli(*common, *extra, "--shifts", tmp_path / f"{name}.csv") == 0
        out = capsys.readouterr().out
        shifts, _ = io.read_shifts_csv(tmp_path / f"{name}.csv")
        errors[name] = np.median(np.abs(shifts - truth)[1:])
        if name == "auto":
            assert ("hot pixels: ignored 60 hot or dead pixels (found in the stack, added to the "
                    "mask)") in out
        elif name == "file":
            assert "hot pixels: ignored 60 hot or dead pixels (given, added to the mask)" in out
        else:
            assert "hot pixels" not in out
    assert errors["off"] > 1.0 and errors["auto"] < 0.05 and errors["file"] < 0.05
    rc = cli(*common, "--hot-pixels", tmp_path / "nope.npy", "--shifts", tmp_path / "x.csv")
    assert rc == 1 and "no file" in capsys.readouterr().err
    # apply ignores the same pixels as register did: the same table gives the same outputs
    assert cli(*common, "--shifts", tmp_path / "r.csv", "--output", tmp_path / "r.tif",
               "--mean", tmp_path / "rm.tif") == 0  # fmt: skip
    capsys.readouterr()
    apply = ["apply", folder, "--mask", tmp_path / "block.npy", "--shifts", tmp_path / "r.csv"]
    assert cli(*apply, "--output", tmp_path / "a.tif", "--mean", tmp_path / "am.tif") == 0
    assert "hot pixels: ignored 60 hot or dead pixels" in capsys.readouterr().out
    for ours, theirs in (("a.tif", "r.tif"), ("am.tif", "rm.tif")):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / ours),
                                      tifffile.imread(tmp_path / theirs))
    assert np.isnan(tifffile.imread(tmp_path / "a.tif")[0][hot]).all()  # frame 0: not moved
    assert cli(*apply, "--output", tmp_path / "off.tif", "--hot-pixels", "off") == 0
    assert not np.isnan(tifffile.imread(tmp_path / "off.tif")[0][hot]).any()
    np.save(tmp_path / "small.npy", np.zeros((4, 4), np.uint8))
    capsys.readouterr()
    assert cli(*apply, "--output", tmp_path / "s.tif", "--hot-pixels", tmp_path / "small.npy") == 1
    assert "the hot_pixels mask has shape (4, 4)" in capsys.readouterr().err


def test_threads_and_device_options(run, sample, capsys):
    """--threads sets the frames registered at once (same shifts as the default), --device cpu
    computes on the CPU; --device gpu without CuPy or a GPU is one plain line naming the extra."""
    from napari_maskalign.engine.backends._device import gpu_available

    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "a.csv",
               "--threads", 1, "--device", "cpu") == 0  # fmt: skip
    assert cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "b.csv") == 0
    a, _ = io.read_shifts_csv(run / "a.csv")
    b, _ = io.read_shifts_csv(run / "b.csv")
    np.testing.assert_array_equal(a, b)
    for threads in (1, 3):  # frames shifted at once: the same aligned stack
        assert cli("apply", run / "run", "--shifts", run / "a.csv", "--output",
                   run / f"t{threads}.tif", "--threads", threads, "--hot-pixels", "off") == 0  # fmt: skip
        np.testing.assert_array_equal(io.open_stack(run / f"t{threads}.tif")[:],
                                      apply_shifts(sample.stack, a))
    capsys.readouterr()
    if gpu_available():
        pytest.skip("this machine has a GPU: the missing-GPU message cannot be shown")
    rc = cli("register", run / "run", "--mask", run / "block.png", "--shifts", run / "c.csv",
             "--device", "gpu")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "install the 'gpu' extra" in err
    rc = cli("apply", run / "run", "--shifts", run / "a.csv", "--output", run / "o.tif",
             "--device", "gpu")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "install the 'gpu' extra" in err and not (run / "o.tif").exists()


# ----------------------------------------------------------------------------
# --model and --refine


def test_register_similarity_writes_rotation_and_scale_and_apply_uses_them(tmp_path, capsys):
    turning = make_beam_block_stack(6, (64, 64), max_drift=2.0, max_rotation=2.0,
                                    max_scale=0.02, seed=7)
    folder = tmp_path / "turning"
    folder.mkdir()
    for i, f in enumerate(turning.stack):
        tifffile.imwrite(folder / f"frame_{i}.tif", f)
    np.save(tmp_path / "block.npy", turning.beam_block.astype(np.uint8))
    shifts_csv, out = tmp_path / "s.csv", tmp_path / "aligned.tif"
    assert cli("register", folder, "--mask", tmp_path / "block.npy", "--model", "similarity",
               "--shifts", shifts_csv, "--output", out) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "rotation: median" in text and "scale: max change" in text
    assert shifts_csv.read_text().splitlines()[0] == (
        "frame,shift_y,shift_x,rotation_deg,scale,quality,sigma_y,sigma_x,sigma_rotation_deg,"
        "sigma_scale,second_peak_y,second_peak_x,peak_lead")
    table = io.read_shift_table(shifts_csv, n_frames=6, ndim=2)
    np.testing.assert_allclose(table.rotations, -turning.rotation, atol=0.2)  # 64 px: noisy
    np.testing.assert_allclose(table.scales, 1 / turning.scale, atol=3e-3)
    settings = json.loads((tmp_path / "s.csv.json").read_text())["registration"]
    assert settings["model"] == "similarity" and settings["refine"] is True
    # apply the table to other data: the same turning and scaling as the registration's output
    other = tmp_path / "other.npy"
    np.save(other, turning.stack)
    assert cli("apply", other, "--shifts", shifts_csv, "--mask", tmp_path / "block.npy",
               "--output", tmp_path / "o.tif") == 0  # fmt: skip
    aligned = io.open_stack(out)[:]
    np.testing.assert_array_equal(io.open_stack(tmp_path / "o.tif")[:], aligned)
    expected, data = apply_transforms(turning.stack, table.transforms((64, 64)),
                                      valid_mask=turning.valid, return_valid=True)
    np.testing.assert_array_equal(np.isnan(aligned), ~data)  # the block's pixels are no data
    np.testing.assert_allclose(aligned[data], expected[data])


def test_refine_flags_and_their_errors(run, sample, capsys):
    assert cli("register", run / "run", "--mask", run / "block.png", "--no-refine",
               "--shifts", run / "peak.csv") == 0  # fmt: skip
    peak, _ = io.read_shifts_csv(run / "peak.csv")
    expected = register_stack(sample.stack, mask=sample.valid, upsample_factor=20, refine=False)
    np.testing.assert_array_equal(peak, expected.raw_shifts)
    assert cli("register", run / "run", "--mask", run / "block.png", "--model", "rigid",
               "--no-refine", "--shifts", run / "x.csv") == 1  # fmt: skip
    assert "refine=False applies to model='translation' only" in capsys.readouterr().err
    vol = run / "vol.npy"
    np.save(vol, np.zeros((3, 4, 8, 8), np.float32))
    assert cli("register", vol, "--model", "rigid", "--shifts", run / "v.csv") == 1
    assert "the rigid model needs 2D frames" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# the mask's sanity check and the lock warning: no confident wrong answer


def _inverted_png(run):
    """The block mask as scikit-ued writes them: nonzero marks the VALID pixels."""
    from PIL import Image

    block = np.asarray(Image.open(run / "block.png")) > 0
    Image.fromarray((~block).astype(np.uint8) * 255).save(run / "valid.png")
    return run / "valid.png"


@pytest.mark.parametrize("command", ["register", "apply"])
def test_an_inverted_mask_stops_with_the_fix(run, capsys, command):
    valid_png = _inverted_png(run)
    io.write_shifts_csv(run / "zero.csv", np.zeros((N, 2)), np.ones(N))
    out = ["--shifts", run / "s.csv"] if command == "register" else [
        "--shifts", run / "zero.csv", "--output", run / "o.tif"]
    assert cli(command, run / "run", "--mask", valid_png, *out) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "looks inverted" in err and "add --invert-mask" in err
    assert not (run / "s.csv").exists() and not (run / "o.tif").exists()
    # with the switch the same file is the right mask, and nothing is said about it
    assert cli(command, run / "run", "--mask", valid_png, "--invert-mask", *out) == 0
    captured = capsys.readouterr()
    assert "inverted" not in captured.err and "warning" not in captured.out


def test_a_doubtful_mask_is_a_warning(run, capsys):
    from PIL import Image

    # a small bright patch painted out on purpose, plus the block: ignored pixels are
    # brighter than the rest, but the mask covers little of the frame
    block = np.asarray(Image.open(run / "block.png")) > 0
    frame = io.open_stack(str(run / "run"))[0]
    bright = frame > np.percentile(frame, 97)
    Image.fromarray((bright & ~block).astype(np.uint8) * 255).save(run / "bright.png")
    assert cli("register", run / "run", "--mask", run / "bright.png",
               "--shifts", run / "s.csv") == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "warning: " in err and "brighter" in err


def test_register_prints_the_median_error(run, capsys):
    assert cli("register", run / "run", "--mask", run / "block.png", "--upsample", "20",
               "--shifts", run / "s.csv") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "error (one sigma): median y " in out and "lock" not in out
    table = io.read_shift_table(run / "s.csv")
    assert table.uncertainties.shape == (N, 2)
    assert np.all(table.uncertainties[1:] > 0) and np.all(table.uncertainties[1:] < 0.2)


def test_register_smoothing_writes_smoothed_and_raw_shifts_and_says_what_it_did(tmp_path, capsys):
    t = np.arange(40)
    drift = np.stack([0.5 * np.sin(2 * np.pi * t / 60), 0.01 * t], axis=1)
    drift[20:, 0] += 1.5
    s = make_beam_block_stack(40, (96, 96), counts=50, drift=drift, seed=1)
    np.save(tmp_path / "stack.npy", s.stack)
    np.save(tmp_path / "block.npy", s.beam_block.astype(np.uint8))
    shifts_csv = tmp_path / "s.csv"
    assert cli("register", tmp_path / "stack.npy", "--mask", tmp_path / "block.npy",
               "--upsample", 20, "--hot-pixels", "off", "--smoothing", "auto",
               "--shifts", shifts_csv) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "smoothing: kept 1 jump(s) (at frame 20); uncertainty lowered" in text
    lines = shifts_csv.read_text().splitlines()
    assert lines[0] == ("frame,shift_y,shift_x,quality,sigma_y,sigma_x,raw_shift_y,raw_shift_x,"
                        "raw_sigma_y,raw_sigma_x,second_peak_y,second_peak_x,peak_lead")
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    measured = register_stack(s.stack, mask=s.valid, upsample_factor=20, hot_pixels="off")
    np.testing.assert_allclose(rows[:, 6:8], measured.raw_shifts)
    np.testing.assert_array_equal(rows[1:, 8:10], measured.uncertainties[1:])  # as measured
    table = io.read_shift_table(shifts_csv, n_frames=40, ndim=2)  # readers take the smoothed
    np.testing.assert_allclose(table.shifts, rows[:, 1:3])
    truth = s.expected_shifts(0)
    err = np.abs(table.shifts - truth).mean()
    assert err < np.abs(measured.raw_shifts - truth).mean()
    # --resume continues from the measured shifts and errors, not the smoothed ones
    assert cli("register", tmp_path / "stack.npy", "--mask", tmp_path / "block.npy",
               "--upsample", 20, "--hot-pixels", "off", "--smoothing", "auto",
               "--shifts", shifts_csv, "--resume") == 0  # fmt: skip
    again = np.array([[float(v) for v in line.split(",")]
                      for line in shifts_csv.read_text().splitlines()[1:]])
    np.testing.assert_allclose(again[:, 6:8], measured.raw_shifts)
    np.testing.assert_array_equal(again, rows)  # the table of the one run, unchanged
    with pytest.raises(SystemExit):
        build_parser().parse_args(["register", "x.npy", "--smoothing", "strong"])
