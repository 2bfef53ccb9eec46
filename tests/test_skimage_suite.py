"""Our drop-in against scikit-image itself, with no network.

1. **Differential** (always runs): on many seeded cases -- the scenarios of
   scikit-image's own test file (camera crops, binary blobs in 1 to 4D,
   Fourier-space and real input, whole-pixel and subpixel, both
   normalizations) plus masked pairs with beam-block-like masks -- our
   ``phase_cross_correlation`` gives the same shifts as the installed
   ``skimage.registration.phase_cross_correlation``: equal for whole pixels,
   complex and Fourier-space input, and masked registration; within the one
   ``1/upsample_factor`` step documented for real input at subpixel precision.
2. **Their test file** (when a copy is at hand): scikit-image's
   ``test_phase_cross_correlation.py`` for the installed version, with its one
   import rewritten to ours, run in a pytest subprocess. It is read from the
   installed package when it ships its tests, from a source tree named by
   ``SKIMAGE_SOURCE`` (a git clone, read at the installed version's tag, or an
   unpacked source distribution), or from the cache that
   ``python scripts/fetch_skimage_tests.py`` fills (the network is used only
   there). Without any copy it is skipped and the reason says how to get one.
   Their ``test_disambiguate_2d`` needs the ``eagle`` image, which scikit-image
   downloads on first use; it is deselected unless that image is cached.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy import fft
from scipy import ndimage as ndi

skimage = pytest.importorskip("skimage")
from skimage.data import binary_blobs, camera  # bundled: no download
from skimage.registration import phase_cross_correlation as sk_pcc

from napari_maskalign import phase_cross_correlation as pcc

LAYOUTS = (  # where the file sits in scikit-image's tree, newest layout first
    "tests/skimage/registration/test_phase_cross_correlation.py",
    "skimage/registration/tests/test_phase_cross_correlation.py",
)
THEIR_IMPORT = """from skimage.registration._phase_cross_correlation import (
    phase_cross_correlation,
    _upsampled_dft,
)"""
OUR_IMPORT = """from skimage.registration._phase_cross_correlation import _upsampled_dft
from napari_maskalign import phase_cross_correlation"""


def _from_git(root: Path, version: str) -> str | None:
    for layout in LAYOUTS:
        out = subprocess.run(["git", "-C", str(root), "show", f"v{version}:{layout}"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout
    return None


def sdist_in_cache(version: str) -> Path:
    """Where ``scripts/fetch_skimage_tests.py`` keeps the source distribution."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-maskalign"
    return cache / f"scikit_image-{version}.tar.gz"


def _from_sdist(sdist: Path, version: str) -> str | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(sdist.read_bytes())) as tar:
            for layout in LAYOUTS:
                try:
                    member = tar.extractfile(f"scikit_image-{version}/{layout}")
                except KeyError:
                    continue
                if member is not None:
                    return member.read().decode()
    except (OSError, tarfile.TarError):  # a broken archive: fetch it again
        return None
    return None


def their_test_file() -> str | None:
    installed = Path(skimage.__file__).parent / "registration" / "tests"
    if (installed / "test_phase_cross_correlation.py").is_file():
        return (installed / "test_phase_cross_correlation.py").read_text()
    source = os.environ.get("SKIMAGE_SOURCE")
    if not source:
        sdist = sdist_in_cache(skimage.__version__)
        return _from_sdist(sdist, skimage.__version__) if sdist.is_file() else None
    root = Path(source)
    if (root / ".git").exists() or (root / "HEAD").exists():
        return _from_git(root, skimage.__version__)
    for layout in LAYOUTS:
        if (root / layout).is_file():
            return (root / layout).read_text()
    return None


def _cached(dataset_file: str) -> bool:
    """Whether scikit-image's data cache holds ``dataset_file`` (nothing is downloaded)."""
    try:
        from skimage.data._fetchers import _image_fetcher
    except ImportError:  # pragma: no cover - another scikit-image layout
        return False
    return _image_fetcher is not None and (Path(_image_fetcher.abspath) / dataset_file).is_file()


def test_scikit_image_test_file_passes_against_the_drop_in(tmp_path):
    text = their_test_file()
    if text is None:
        pytest.skip(
            f"scikit-image {skimage.__version__}'s test file is not installed and not in the "
            "cache: run `python scripts/fetch_skimage_tests.py` (downloads it once), or set "
            "SKIMAGE_SOURCE to a scikit-image git clone or source tree"
        )
    assert THEIR_IMPORT in text, "scikit-image changed how its test file imports the function"
    (tmp_path / "test_their_pcc.py").write_text(text.replace(THEIR_IMPORT, OUR_IMPORT))
    deselect = [] if _cached("data/eagle.png") else ["-k", "not test_disambiguate_2d"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect,
         str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


# ---------------------------------------------------------------------------
# differential: the same shifts as the installed scikit-image, no download

SEEDS = range(12)


def _fourier_shifted(image, shift):
    return fft.ifftn(ndi.fourier_shift(fft.fftn(image), shift)).real


def _camera_pair(rng, size, shift):
    """A crop of ``camera`` and the same crop moved by ``shift`` (periodic, exact)."""
    r0, c0 = (int(v) for v in rng.integers(0, 512 - size, 2))
    ref = camera()[r0 : r0 + size, c0 : c0 + size].astype(float)
    return ref, _fourier_shifted(ref, shift) + rng.normal(0, 2.0, ref.shape)


def _block_mask(rng, shape):
    """True = valid, with a beam-block-like rod and disk at a random place."""
    rows, cols = np.indices(shape)
    cy, cx = rng.uniform(0.3, 0.7, 2) * np.array(shape)
    disk = (rows - cy) ** 2 + (cols - cx) ** 2 < (min(shape) / 8) ** 2
    rod = (rows < cy) & (np.abs(cols - cx) < 3)
    return ~(disk | rod)


def _same_whole_pixels(ours, theirs, context):
    np.testing.assert_array_equal(ours[0], theirs[0], err_msg=context)
    assert ours[0].dtype == theirs[0].dtype, context


@pytest.mark.parametrize("normalization", [None, "phase"])
@pytest.mark.parametrize("seed", SEEDS)
def test_whole_pixels_equal_scikit_image(seed, normalization):
    """Real and Fourier-space input, integer and fractional shifts, 2D camera crops:
    the whole-pixel shift (and its error and phase difference) equal scikit-image's."""
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-12, 12, 2)
    if seed % 2:
        shift = np.round(shift)
    ref, mov = _camera_pair(rng, int(rng.integers(64, 160)), shift)
    context = f"seed {seed}, shift {shift}, {normalization}"
    for space, a, b in (("real", ref, mov), ("fourier", fft.fftn(ref), fft.fftn(mov))):
        ours = pcc(a, b, space=space, normalization=normalization)
        theirs = sk_pcc(a, b, space=space, normalization=normalization)
        _same_whole_pixels(ours, theirs, f"{context}, {space}")
        np.testing.assert_allclose(ours[1:], theirs[1:], rtol=1e-9, atol=1e-12, err_msg=context)


@pytest.mark.parametrize("normalization", [None, "phase"])
@pytest.mark.parametrize("seed", SEEDS)
def test_subpixel_within_one_step_of_scikit_image(seed, normalization):
    """Subpixel shifts of camera crops (their test_subpixel_precision, test_real_input):
    Fourier-space input follows scikit-image's arithmetic and is equal; real input is
    within the one 1/upsample_factor step the drop-in documents."""
    rng = np.random.default_rng(100 + seed)
    shift = rng.uniform(-8, 8, 2)
    upsample = int(rng.choice([10, 20]))
    ref, mov = _camera_pair(rng, int(rng.integers(64, 160)), shift)
    context = f"seed {seed}, shift {shift}, upsample {upsample}, {normalization}"
    ours = pcc(fft.fftn(ref), fft.fftn(mov), space="fourier", upsample_factor=upsample,
               normalization=normalization)
    theirs = sk_pcc(fft.fftn(ref), fft.fftn(mov), space="fourier", upsample_factor=upsample,
                    normalization=normalization)
    np.testing.assert_array_equal(ours[0], theirs[0], err_msg=context)
    ours = pcc(ref, mov, upsample_factor=upsample, normalization=normalization)
    theirs = sk_pcc(ref, mov, upsample_factor=upsample, normalization=normalization)
    assert np.abs(ours[0] - theirs[0]).max() <= 1 / upsample + 1e-9, (context, ours, theirs)


@pytest.mark.parametrize("ndim", [1, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_blobs_in_other_dimensions_equal_scikit_image(seed, ndim):
    """Binary blobs in 1, 3 and 4 dimensions (their test_3d_input, test_4d_input_*),
    whole pixel and upsampled, Fourier-space: equal to scikit-image."""
    rng = np.random.default_rng(200 + seed)
    length = 64 if ndim == 1 else 16
    blobs = binary_blobs(length=length, n_dim=ndim, rng=int(seed)).astype(float)
    shift = rng.uniform(-4, 4, ndim)
    a, b = fft.fftn(blobs), ndi.fourier_shift(fft.fftn(blobs), shift)
    for upsample in (1, 10):
        ours = pcc(a, b, space="fourier", upsample_factor=upsample)
        theirs = sk_pcc(a, b, space="fourier", upsample_factor=upsample)
        np.testing.assert_array_equal(ours[0], theirs[0],
                                      err_msg=f"seed {seed}, {ndim}D, upsample {upsample}")


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_equals_scikit_image(seed):
    """Masked pairs (beam-block-like masks, one for each image, crops that really move):
    scikit-image's masked registration gives whole pixels, and so do we, equal to it;
    with only a reference mask, it serves both images in both."""
    rng = np.random.default_rng(300 + seed)
    size = int(rng.integers(48, 96))
    shift = np.round(rng.uniform(-6, 6, 2))
    r0, c0 = (int(v) for v in rng.integers(16, 512 - size - 16, 2))
    image = camera().astype(float)
    ref = image[r0 : r0 + size, c0 : c0 + size]
    mov = image[r0 - int(shift[0]) : r0 - int(shift[0]) + size,
                c0 - int(shift[1]) : c0 - int(shift[1]) + size]
    ref_mask, mov_mask = _block_mask(rng, ref.shape), _block_mask(rng, ref.shape)
    context = f"seed {seed}, shift {shift}"
    for kwargs in ({"reference_mask": ref_mask, "moving_mask": mov_mask},
                   {"reference_mask": ref_mask}):
        ours = pcc(ref, mov, **kwargs)
        theirs = sk_pcc(ref, mov, **kwargs)
        _same_whole_pixels(ours, theirs, context)
        np.testing.assert_array_equal(ours[0], -shift, err_msg=context)  # and it is right
