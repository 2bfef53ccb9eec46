"""Importing the package (and the widgets package) pulls in no GUI stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy", "superqt")


def imported_roots(statement: str) -> list[str]:
    code = (
        f"import sys, json\n{statement}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import napari_maskalign",
        "import napari_maskalign.widgets",
        "import napari_maskalign; napari_maskalign.register_stack",
    ],
)
def test_no_gui_modules(statement):
    roots = imported_roots(statement)
    assert "napari_maskalign" in roots
    leaked = sorted(set(roots) & set(GUI))
    assert not leaked, f"{statement!r} imported {leaked}"


def test_the_check_would_notice_a_gui_import():
    """The subprocess check above really sees modules that get imported."""
    pytest.importorskip("magicgui", reason="the widgets (and this check) need magicgui")
    assert "magicgui" in imported_roots("import napari_maskalign.widgets._common")
