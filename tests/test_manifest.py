"""The npe2 manifest is valid and every contribution it names can be imported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_maskalign

MANIFEST = Path(napari_maskalign.__file__).with_name("napari.yaml")
WIDGETS = {"Beam-block mask": "MaskWidget", "Register stack": "RegisterWidget", "Shifts": "ShiftsWidget"}


def npe2_command() -> list[str]:
    exe = Path(sys.executable).with_name("npe2")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("npe2")
    if found is None:  # pragma: no cover - npe2 is in the test extra
        pytest.skip("the npe2 command is missing: pip install -e '.[test]'")
    return [found]


def test_npe2_validate_passes_with_imports():
    """`npe2 validate napari-maskalign --imports`: schema and every python_name import."""
    proc = subprocess.run(
        [*npe2_command(), "validate", "napari-maskalign", "--imports"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_installed_manifest_is_this_file():
    from npe2 import PluginManifest

    installed = PluginManifest.from_distribution("napari-maskalign")
    assert installed == PluginManifest.from_file(MANIFEST)


def test_widgets_and_sample_contributions():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    names = {w.display_name: commands[w.command] for w in manifest.contributions.widgets}
    assert names == {k: f"napari_maskalign.widgets:{v}" for k, v in WIDGETS.items()}
    samples = {s.key: s for s in manifest.contributions.sample_data}
    assert "beam_block" in samples
