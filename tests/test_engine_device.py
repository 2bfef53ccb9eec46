"""The array API code path (array-api-strict stands in for a GPU) and the device option.

The masked kernels are written against the array API standard; running them
through array-api-strict, which allows nothing outside the standard, checks
that the code a GPU runs (CuPy) is the code the CPU runs, on machines without
a GPU. Tests that need a real GPU say so and skip without one.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine import FrameRegistrar, RegistrationOptions, RegistrationRun
from napari_maskalign.engine.backends._device import GPU_MISSING, gpu_available, namespace_for
from napari_maskalign.engine.kernels._masked import MaskedCorrelator
from napari_maskalign.engine.run._parallel import register_frames

xp_strict = pytest.importorskip("array_api_strict")
needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")


@pytest.fixture(scope="module")
def synth():
    return make_beam_block_stack(6, (48, 56), counts=400, max_drift=3.0, seed=11)


@pytest.mark.parametrize("upsample", [1, 20])
@pytest.mark.parametrize("max_shift", [None, 6])
def test_strict_namespace_run_equals_numpy(synth, upsample, max_shift):
    """A whole run (the run's frame loop in batches) through array-api-strict gives the
    numpy run's shifts, qualities and correlation windows."""
    opts = dict(mask=synth.valid, upsample_factor=upsample, max_shift=max_shift,
                return_xcorr=True, xcorr_radius=4)
    expected = register_stack(synth.stack, **opts)
    run = RegistrationRun(synth.stack, RegistrationOptions(
        upsample_factor=upsample, max_shift=max_shift, return_xcorr=True, xcorr_radius=4),
        mask=synth.valid)
    run.xp = xp_strict  # where the frames are registered
    got = run.run()
    np.testing.assert_allclose(got.shifts, expected.shifts, atol=1e-6)
    np.testing.assert_allclose(got.quality, expected.quality, atol=1e-5)
    np.testing.assert_allclose(got.xcorr, expected.xcorr, atol=1e-5)
    # and both recover the known drift
    err = np.abs(got.shifts - synth.expected_shifts())[1:]
    assert np.median(err) < (0.6 if upsample == 1 else 0.1)


def test_strict_batch_handles_flat_and_nan_frames(synth):
    """In a batch: a frame without contrast gets quality 0, NaN under the mask is ignored,
    NaN on a valid pixel is refused in plain words."""
    reg = FrameRegistrar(synth.stack[0], synth.valid, RegistrationOptions(upsample_factor=10),
                         xp=xp_strict)
    ref = FrameRegistrar(synth.stack[0], synth.valid, RegistrationOptions(upsample_factor=10))
    frames = synth.stack[1:4].copy()
    frames[1] = 5.0  # flat
    frames[2][~synth.valid] = np.nan
    got = reg.register_batch(frames)
    want = [ref.register(f) for f in frames]
    assert got[1].quality == 0.0 and np.all(got[1].shift == 0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.shift, w.shift, atol=1e-6)
    bad = synth.stack[1:3].copy()
    bad[0][np.argwhere(synth.valid)[10][0], np.argwhere(synth.valid)[10][1]] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        reg.register_batch(bad)


def test_strict_cropped_refinement_equals_numpy(synth):
    """The cropped-window refinement (megapixel frames) runs through the standard too."""
    ref, frame = synth.stack[0], synth.stack[3]
    kw = dict(upsample_factor=20, refine_window=16)
    a = MaskedCorrelator(ref, synth.valid, synth.valid, **kw).register(frame)
    b = MaskedCorrelator(ref, synth.valid, synth.valid, xp=xp_strict, **kw).register(
        xp_strict.asarray(frame.astype(np.float32)))
    np.testing.assert_allclose(b.shift, a.shift, atol=1e-6)


def test_workers_give_identical_shifts(synth):
    one = register_stack(synth.stack, mask=synth.valid, upsample_factor=20, workers=1)
    two = register_stack(synth.stack, mask=synth.valid, upsample_factor=20, workers=2)
    np.testing.assert_array_equal(two.shifts, one.shifts)
    np.testing.assert_array_equal(two.quality, one.quality)


def test_register_frames_keeps_order_in_threads(synth):
    reg = FrameRegistrar(synth.stack[0], synth.valid, RegistrationOptions(upsample_factor=5))
    serial = [reg.register(f).shift for f in synth.stack]
    threaded = [r.shift for r in register_frames(reg, iter(synth.stack), 3)]
    np.testing.assert_array_equal(np.array(threaded), np.array(serial))


def test_device_option_is_checked_and_not_in_fingerprint():
    with pytest.raises(ValueError, match="device must be 'cpu', 'gpu' or None"):
        RegistrationOptions(device="cuda")
    assert RegistrationOptions(device="cpu").fingerprint() == RegistrationOptions().fingerprint()
    assert namespace_for("cpu", np.zeros(3)) is np
    assert namespace_for(None, np.zeros(3)) is np


@pytest.mark.skipif(gpu_available(), reason="checks the error shown where no GPU is usable")
def test_gpu_without_cupy_or_gpu_names_the_extra(synth):
    assert "'gpu' extra" in GPU_MISSING
    with pytest.raises(ValueError, match="install the 'gpu' extra"):
        register_stack(synth.stack, mask=synth.valid, device="gpu")


def test_gpu_namespace_needs_a_mask(synth):
    with pytest.raises(ValueError, match="needs a mask"):
        FrameRegistrar(synth.stack[0], None, xp=xp_strict)


@needs_gpu
@pytest.mark.parametrize("upsample", [1, 20])
def test_gpu_equals_cpu(synth, upsample):
    cpu = register_stack(synth.stack, mask=synth.valid, upsample_factor=upsample)
    gpu = register_stack(synth.stack, mask=synth.valid, upsample_factor=upsample, device="gpu")
    np.testing.assert_allclose(gpu.shifts, cpu.shifts, atol=1e-3)


@needs_gpu
def test_cupy_stack_follows_the_input(synth):
    import cupy

    cpu = register_stack(synth.stack, mask=synth.valid, upsample_factor=20)
    gpu = register_stack(cupy.asarray(synth.stack), mask=synth.valid, upsample_factor=20)
    np.testing.assert_allclose(gpu.shifts, cpu.shifts, atol=1e-3)


@pytest.mark.parametrize("upsample", [20, 50])
def test_cropped_refinement_stays_within_one_grid_step(upsample):
    """Megapixel frames refine on a window cropped around the peak instead of the padded
    spectra: the shifts stay within one 1/u step of the exact grid search (forced here on
    small frames, where both are cheap)."""
    synth = make_beam_block_stack(8, (160, 160), counts=100, max_drift=4.0, seed=21)
    ref, valid = synth.stack[0], synth.valid
    exact = MaskedCorrelator(ref, valid, valid, upsample_factor=upsample, refine_window=None)
    crop = MaskedCorrelator(ref, valid, valid, upsample_factor=upsample, refine_window=64)
    for frame in synth.stack:
        a, b = exact.register(frame).shift, crop.register(frame).shift
        assert np.all(np.abs(a - b) <= 1.0 / upsample + 1e-9), (a, b)
        assert np.allclose(b * upsample, np.round(b * upsample), atol=1e-6)  # on the 1/u grid


def test_crop_is_chosen_for_megapixel_frames(monkeypatch, synth):
    from napari_maskalign.engine.kernels import _masked

    ref, valid = synth.stack[0], synth.valid
    assert MaskedCorrelator(ref, valid, upsample_factor=20).refine_window is None
    monkeypatch.setattr(_masked, "CROP_FROM", ref.size)  # as if these frames were a megapixel
    assert MaskedCorrelator(ref, valid, upsample_factor=20).refine_window == min(
        _masked.CROP_WINDOW, *MaskedCorrelator(ref, valid).pad)


def test_apply_shifts_and_mean_devices(synth, drain):
    """device="cpu" is today's numpy path; a namespace without ndimage is refused plainly;
    device="gpu" without CuPy or a GPU names the extra (with one: equals the CPU)."""
    from napari_maskalign.engine import apply_shifts
    from napari_maskalign.workflow import AlignSettings, iter_mean

    shifts = register_stack(synth.stack, mask=synth.valid, upsample_factor=10).shifts
    np.testing.assert_array_equal(apply_shifts(synth.stack, shifts, device="cpu"),
                                  apply_shifts(synth.stack, shifts))
    with pytest.raises(ValueError, match="numpy or CuPy"):
        apply_shifts(xp_strict.asarray(synth.stack), shifts)

    def mean(device):
        settings = AlignSettings(device=device)
        return drain(iter_mean(synth.stack, shifts, settings=settings, valid=synth.valid))[1]

    cpu = mean(device="cpu")
    if not gpu_available():
        with pytest.raises(ValueError, match="install the 'gpu' extra"):
            apply_shifts(synth.stack, shifts, device="gpu")
        with pytest.raises(ValueError, match="install the 'gpu' extra"):
            mean(device="gpu")
        return
    aligned = apply_shifts(synth.stack, shifts, device="gpu")
    np.testing.assert_allclose(aligned, apply_shifts(synth.stack, shifts), atol=1e-4, equal_nan=True)
    gpu = mean(device="gpu")
    np.testing.assert_allclose(gpu.mean, cpu.mean, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(gpu.count, cpu.count)
