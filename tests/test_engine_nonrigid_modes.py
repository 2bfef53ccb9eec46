"""Non-rigid registration against the previous frame and the stack's own template,
against ground-truth fields (the generators know them)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_maskalign import register_stack
from napari_maskalign._nonrigid_sample import _diffraction, _invert, make_nonrigid_stack
from napari_maskalign._sample_data import _beam_block

SHAPE = (256, 256)


def _gradual(n, shape, seed, amplitude=2.0, step=0.8, counts=100.0):
    """Frames of diffraction-like content whose field grows over time: frame ``i``
    has a sinusoid of ``amplitude * i / (n - 1)`` px and a drift of ``step`` px a
    frame (a run's deformation builds up; neighbours differ little). Returns the
    stack, the valid mask and the true fields (engine convention)."""
    rng = np.random.default_rng(seed)
    render = _diffraction(shape, rng)
    block = _beam_block(shape, np.array(shape) / 2.0 + [0.37, -0.21], min(shape) / 2.0)
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    lam = min(shape) / 3.0
    ks = [np.array([np.cos(a), np.sin(a)]) * 2 * np.pi / lam for a in rng.uniform(0, 2 * np.pi, 2)]
    phases = rng.uniform(0, 2 * np.pi, 2)
    d = rng.uniform(-1, 1, 2)
    d = step * d / np.linalg.norm(d)
    frames = np.empty((n, *shape), np.float32)
    fields = np.zeros((n, 2, *shape), np.float32)
    scale = None
    for i in range(n):
        def v(yy, xx, f=i / (n - 1), i=i):
            smooth = np.stack([amplitude * f * np.sin(k[0] * yy + k[1] * xx + p)
                               for k, p in zip(ks, phases)])
            return smooth + (i * d).reshape((2,) + (1,) * np.ndim(yy))
        fields[i] = v(y, x)
        img = render(*_invert(v, shape))
        scale = 1.0 / img[~block].mean() if scale is None else scale
        frames[i] = rng.poisson(np.where(block, 0.03, np.maximum(img, 0) * scale) * counts)
    return frames, ~block, fields


def _rms(field, truth, valid):
    inner = ndi.binary_erosion(valid, iterations=8, border_value=0)
    err = np.sqrt(((field - truth) ** 2).sum(axis=0))[inner]
    return float(np.sqrt(np.mean(err**2)))


@pytest.fixture(scope="module")
def gradual():
    stack, valid, truth = _gradual(5, SHAPE, seed=3)
    res = register_stack(stack, mask=valid, model="nonrigid", reference="previous",
                         hot_pixels="off")
    return stack, valid, truth, res


def test_previous_composes_the_fields_onto_the_first_frame(gradual):
    stack, valid, truth, res = gradual
    assert res.n_frames == 5 and res.coefficients.shape[0] == 5
    assert np.allclose(res.field(0), 0.0) and np.all(res.shifts[0] == 0)
    for i in range(1, 5):
        rms = _rms(res.field(i), truth[i], valid)
        glob = _rms(-res.shifts[i][:, None, None], truth[i], valid)
        # each link adds its own error (about 0.08 px here): a chain, not a fixed reference
        assert rms <= 0.1 * i + 0.05, (i, rms)
        if i >= 2:
            assert rms < 0.35 * glob, (i, rms, glob)
        assert not res.fallback[i]
        # the global shifts add up to the truth's drift
        assert np.all(np.abs(res.shifts[i] + truth[i].mean(axis=(1, 2))) < 0.5)
    # the summary is the composed field beyond the accumulated global shift
    assert res.deformation_rms[4] > 1.0
    # the patches' view of the chain agrees with the composed field at their centres
    c = np.round(res.patch_centres).astype(int)
    good = np.isfinite(res.patch_shifts[4, :, 0])
    at = res.field(4)[:, c[good, 0], c[good, 1]].T
    assert np.median(np.abs(res.patch_shifts[4][good] - at)) < 0.5


def test_previous_resumes_from_a_frame(gradual):
    """A run that starts at frame 3 from frame 2's shift and field gives the frames an
    uninterrupted run gives."""
    stack, valid, _, res = gradual
    rest = register_stack(stack, mask=valid, model="nonrigid", reference="previous",
                          hot_pixels="off", start=3, previous_shift=res.shifts[2],
                          previous_field=res.coefficients[2])
    assert np.allclose(rest.coefficients, res.coefficients[3:], atol=1e-4)
    assert np.allclose(rest.shifts, res.shifts[3:], atol=1e-9)
    with pytest.raises(ValueError, match="previous_field"):
        register_stack(stack, mask=valid, model="nonrigid", reference="previous",
                       hot_pixels="off", start=3, previous_shift=res.shifts[2])


def test_template_matches_the_truth_up_to_a_common_field():
    """The template sits where the frames are on average, so each field is the truth
    plus one field common to every frame."""
    synth = make_nonrigid_stack(4, SHAPE, content="diffraction", amplitude=2.0, seed=3)
    res = register_stack(synth.stack, mask=synth.valid, model="nonrigid", reference="template",
                         hot_pixels="off")
    assert 1 <= res.params["template_passes"] <= 4
    common = np.mean([res.field(i) - synth.fields[i] for i in range(4)], axis=0)
    fixed = register_stack(synth.stack, mask=synth.valid, model="nonrigid", hot_pixels="off")
    for i in range(4):
        rms = _rms(res.field(i) - common, synth.fields[i], synth.valid)
        assert rms <= 0.3, (i, rms)
        assert not res.fallback[i]
    # no better fixed frame exists: the template does at least as well as frame 0
    rel = [_rms(res.field(i) - common, synth.fields[i], synth.valid) for i in range(1, 4)]
    by0 = [_rms(fixed.field(i), synth.fields[i], synth.valid) for i in range(1, 4)]
    assert np.mean(rel) <= np.mean(by0) + 0.05
