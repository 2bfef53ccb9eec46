"""Fetch scikit-image's test file for ``phase_cross_correlation`` into the cache (network).

    python scripts/fetch_skimage_tests.py

``tests/test_skimage_suite.py`` runs that file against our drop-in. It needs
no network: it reads the file from the installed scikit-image (when it ships
its tests), from a source tree named by ``SKIMAGE_SOURCE``, or from the
cache this script fills -- the source distribution of the installed
scikit-image version from PyPI, checked against its SHA-256, kept as
``~/.cache/napari-maskalign/scikit_image-<version>.tar.gz`` (``XDG_CACHE_HOME``
moves it). Without any of them that test is skipped and says so.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from pathlib import Path


def cache_path(version: str) -> Path:
    """Where the source distribution of scikit-image ``version`` is kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-maskalign"
    return cache / f"scikit_image-{version}.tar.gz"


def fetch(version: str) -> Path:
    """Download scikit-image ``version``'s source distribution from PyPI into the cache."""
    sdist = cache_path(version)
    if sdist.is_file():
        return sdist
    index = urllib.request.urlopen("https://pypi.org/simple/scikit-image/", timeout=30)
    html = index.read().decode()
    found = re.search(
        rf'href="([^"]*scikit_image-{re.escape(version)}\.tar\.gz)#sha256=([0-9a-f]+)"', html
    )
    if found is None:
        raise SystemExit(f"PyPI lists no source distribution of scikit-image {version}")
    data = urllib.request.urlopen(found.group(1), timeout=300).read()
    if hashlib.sha256(data).hexdigest() != found.group(2):
        raise SystemExit("the download does not match the SHA-256 PyPI gives; try again")
    sdist.parent.mkdir(parents=True, exist_ok=True)
    tmp = sdist.with_name(sdist.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(sdist)  # never a half-written archive under the final name
    return sdist


def main() -> int:
    import skimage

    print(fetch(skimage.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
