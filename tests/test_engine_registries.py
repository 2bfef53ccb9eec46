"""The model and backend registries: the one list of models every face takes its choices
from, models asked instead of compared by name, and GPU runs refused when they are made."""

from __future__ import annotations

import pickle
import types

import numpy as np
import pytest

from napari_maskalign import make_beam_block_stack
from napari_maskalign.engine import (
    MODELS,
    FrameRegistrar,
    Model,
    RegistrationOptions,
    RegistrationRun,
    model_named,
)
from napari_maskalign.engine.backends import NUMPY, Backend, backend_for, backend_of, to_host
from napari_maskalign.engine.backends._cupy import CupyBackend
from napari_maskalign.engine.backends._device import GPU_MISSING, gpu_available
from napari_maskalign.engine.models import model_for_table, table_columns

xp_strict = pytest.importorskip("array_api_strict")


@pytest.fixture(scope="module")
def synth():
    return make_beam_block_stack(4, (40, 48), counts=400, max_drift=2.0, seed=5)


class Untouchable:
    """A stack whose pixels must not be read: any read fails the test."""

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        raise AssertionError("a frame was read before the run refused its arguments")

    def __len__(self):
        return self.shape[0]


# -- models ---------------------------------------------------------------------------
def test_every_face_offers_the_registry(synth):
    """The parser's --model, the options' check and the registry name the same models."""
    from napari_maskalign._parser import build_parser

    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["register"]
                  ._actions if a.dest == "model")
    assert tuple(action.choices) == tuple(MODELS)
    for name, model in MODELS.items():
        assert isinstance(model, Model) and model.name == name
        assert RegistrationOptions(model=name).transform_model is model
    with pytest.raises(ValueError, match="model must be one of 'translation', 'rigid'"):
        RegistrationOptions(model="affine")


def test_models_pickle():
    """Registrars travel to dask workers with their model (a stateless object)."""
    for model in MODELS.values():
        again = pickle.loads(pickle.dumps(model))
        assert type(again) is type(model) and again.name == model.name


def test_a_table_names_its_model():
    n = 3
    assert model_for_table(None, None) is MODELS["translation"]
    assert model_for_table(np.zeros(n), np.ones(n)) is MODELS["rigid"]
    assert model_for_table(np.zeros(n), np.full(n, 1.01)) is MODELS["similarity"]
    assert table_columns() == ("rotation_deg", "scale")


@pytest.mark.parametrize("name", ["rigid", "similarity"])
def test_transform_is_the_inverse_warp(name):
    """A model's params -> transform maps each warped reference pixel back onto itself."""
    model = model_named(name)
    params = np.array([1.5, -0.7, 0.03] + ([0.02] if model.n_params(2) == 4 else []))
    centre = np.array([20.0, 23.5])
    t = model.transform(params, centre)
    q = np.array([[3.0, 40.0], [17.0, 2.0]])
    warped = centre + (model.warp_matrix(params) @ (q - centre).T).T + params[:2]
    back = (t[:2, :2] @ warped.T).T + t[:2, 2]
    np.testing.assert_allclose(back, q, atol=1e-12)


def test_a_new_model_is_one_object():
    """The registry accepts a model it was not written for: the options and the run ask
    the object, so a model that takes no frames is refused in its own words."""
    class Planar(Model):
        name = "planar-test"
        frame_ndims = (4,)

    MODELS[Planar.name] = Planar()
    try:
        opts = RegistrationOptions(model="planar-test")
        with pytest.raises(ValueError, match="planar-test model needs 4D frames"):
            opts.check_for(5, (8, 8))
    finally:
        del MODELS[Planar.name]


# -- backends -------------------------------------------------------------------------
def test_backends_are_found_by_namespace_and_array():
    assert backend_for(np) is NUMPY
    assert backend_of(np.zeros(2)) is NUMPY and backend_of([1, 2]) is NUMPY
    strict = backend_of(xp_strict.asarray([1.0]))
    assert type(strict) is Backend and strict.batches and not strict.on_host
    assert isinstance(to_host(xp_strict.asarray([1.0, 2.0])), np.ndarray)
    assert not CupyBackend.serves(xp_strict)
    assert CupyBackend.serves(types.SimpleNamespace(__name__="array_api_compat.cupy"))
    with pytest.raises(ValueError, match="needs numpy or CuPy arrays"):
        _ = strict.ndimage


@pytest.mark.skipif(gpu_available(), reason="checks the refusal where no GPU is usable")
@pytest.mark.parametrize("case", ["masked", "unmasked", "hot pixels off", "rigid", "previous"])
def test_gpu_without_cupy_is_refused_when_the_run_is_made(synth, case):
    """Whatever the data and the settings, device='gpu' without CuPy or a GPU raises
    before a single frame is read."""
    opts = {"masked": {}, "unmasked": {}, "hot pixels off": {"hot_pixels": "off"},
            "rigid": {"model": "rigid"}, "previous": {"reference": "previous"}}[case]
    mask = None if case == "unmasked" else synth.valid
    stack = Untouchable(synth.stack.shape)
    with pytest.raises(ValueError) as err:
        RegistrationRun(stack, RegistrationOptions(device="gpu", **opts), mask=mask)
    assert str(err.value) == GPU_MISSING


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU that 'exists': array-api-strict stands in for CuPy's namespace."""
    monkeypatch.setattr(CupyBackend, "default_namespace", classmethod(lambda cls: xp_strict))


@pytest.mark.parametrize("hot", ["auto", "off"])
def test_unmasked_gpu_run_is_refused_whatever_the_hot_pixels(synth, fake_gpu, hot):
    """An unmasked GPU run used to be accepted and then fail or run masked depending on
    whether hot pixels were found; now it is refused when made, before any read."""
    stack = Untouchable(synth.stack.shape)
    with pytest.raises(ValueError, match="on a GPU needs a mask"):
        RegistrationRun(stack, RegistrationOptions(device="gpu", hot_pixels=hot))
    hot_stack = synth.stack.copy()
    hot_stack[:, 5, 7] = 1e6  # a hot pixel the search would find
    with pytest.raises(ValueError, match="on a GPU needs a mask"):
        RegistrationRun(hot_stack, RegistrationOptions(device="gpu"))


def test_gpu_run_of_a_cpu_model_is_refused_when_made(synth, fake_gpu):
    with pytest.raises(ValueError, match="the rigid model runs on the CPU.*registers translation"):
        RegistrationRun(Untouchable(synth.stack.shape), RegistrationOptions(
            device="gpu", model="rigid"), mask=synth.valid)


def test_masked_fake_gpu_run_equals_numpy(synth, fake_gpu):
    """The run made with device='gpu' (here: array-api-strict) gives numpy's shifts."""
    want = RegistrationRun(synth.stack, RegistrationOptions(upsample_factor=10),
                           mask=synth.valid).run()
    got = RegistrationRun(synth.stack, RegistrationOptions(upsample_factor=10, device="gpu"),
                          mask=synth.valid).run()
    np.testing.assert_allclose(got.shifts, want.shifts, atol=1e-6)


def test_registrar_pickles_with_its_backend(synth):
    reg = FrameRegistrar(synth.stack[0], synth.valid, RegistrationOptions(upsample_factor=10))
    again = pickle.loads(pickle.dumps(reg))
    assert again.backend is NUMPY
    np.testing.assert_allclose(again.register(synth.stack[2]).shift,
                               reg.register(synth.stack[2]).shift)
