"""scikit-image's own test file for ``phase_cross_correlation``, run against our drop-in.

Their file is not copied into this repository: it is taken, for the installed
scikit-image version, from the installed package when it ships its tests, from
a scikit-image source tree named by the environment variable ``SKIMAGE_SOURCE``
(a git clone: the file is read at the tag of the installed version; or an
unpacked source distribution), or else from that version's source
distribution on PyPI (the package registry; checked against its SHA-256 and
kept in the user's cache). The one import of their function is rewritten to
ours and the file runs in a pytest subprocess. Without any copy (offline, no
source tree) the test is skipped and says how to provide one.

Tests that need a data set scikit-image downloads on first use (``eagle``)
are deselected when it cannot be fetched (no network); the rest must pass.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

skimage = pytest.importorskip("skimage")

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


def _from_pypi(version: str) -> str | None:
    """The file from scikit-image's source distribution on PyPI (cached)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-maskalign"
    sdist = cache / f"scikit_image-{version}.tar.gz"
    try:
        if not sdist.is_file():
            index = urllib.request.urlopen("https://pypi.org/simple/scikit-image/", timeout=30)
            html = index.read().decode()
            found = re.search(
                rf'href="([^"]*scikit_image-{re.escape(version)}\.tar\.gz)#sha256=([0-9a-f]+)"', html
            )
            if found is None:
                return None
            data = urllib.request.urlopen(found.group(1), timeout=120).read()
            if hashlib.sha256(data).hexdigest() != found.group(2):
                return None
            cache.mkdir(parents=True, exist_ok=True)
            sdist.write_bytes(data)
        with tarfile.open(fileobj=io.BytesIO(sdist.read_bytes())) as tar:
            for layout in LAYOUTS:
                try:
                    member = tar.extractfile(f"scikit_image-{version}/{layout}")
                except KeyError:
                    continue
                if member is not None:
                    return member.read().decode()
    except (OSError, tarfile.TarError):  # offline, or a broken download
        return None
    return None


def their_test_file() -> str | None:
    installed = Path(skimage.__file__).parent / "registration" / "tests"
    if (installed / "test_phase_cross_correlation.py").is_file():
        return (installed / "test_phase_cross_correlation.py").read_text()
    source = os.environ.get("SKIMAGE_SOURCE")
    if not source:
        return _from_pypi(skimage.__version__)
    root = Path(source)
    if (root / ".git").exists() or (root / "HEAD").exists():
        return _from_git(root, skimage.__version__)
    for layout in LAYOUTS:
        if (root / layout).is_file():
            return (root / layout).read_text()
    return None


def _offline(dataset: str) -> bool:
    from skimage import data

    try:
        getattr(data, dataset)()
    except Exception:  # pooch cannot download it here
        return True
    return False


def test_scikit_image_test_file_passes_against_the_drop_in(tmp_path):
    text = their_test_file()
    if text is None:
        pytest.skip(
            f"scikit-image {skimage.__version__}'s test file is not installed and its source "
            "distribution could not be fetched from PyPI; set SKIMAGE_SOURCE to a scikit-image "
            "git clone or source tree to run it"
        )
    assert THEIR_IMPORT in text, "scikit-image changed how its test file imports the function"
    (tmp_path / "test_their_pcc.py").write_text(text.replace(THEIR_IMPORT, OUR_IMPORT))
    deselect = ["-k", "not test_disambiguate_2d"] if _offline("eagle") else []
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect,
         str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
