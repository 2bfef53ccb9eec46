"""Shared fixtures. Keep this file small: fixtures used by one test file live there."""

from __future__ import annotations

import numpy as np
import pytest

from napari_maskalign._sample_data import make_beam_block_stack


@pytest.fixture(scope="session")
def small_stack():
    """20 frames of 128x128 with a static beam block and known subpixel drift."""
    return make_beam_block_stack(n_frames=20, shape=(128, 128), seed=5)


@pytest.fixture(scope="session")
def cli_sample():
    """16 frames of 64x64 for the command-line tests (test_cli, test_cli_batch)."""
    return make_beam_block_stack(16, (64, 64), max_drift=3.0, seed=5)


@pytest.fixture
def cli_run(tmp_path, cli_sample):
    """tmp_path with run/ (a folder of single-frame TIFFs) and block.png (255 = beam block)."""
    import tifffile
    from PIL import Image

    folder = tmp_path / "run"
    folder.mkdir()
    for i, f in enumerate(cli_sample.stack):
        tifffile.imwrite(folder / f"frame_{i}.tif", f)
    Image.fromarray(cli_sample.beam_block.astype(np.uint8) * 255).save(tmp_path / "block.png")
    return tmp_path


@pytest.fixture
def viewer_model(qtbot):
    """A napari ViewerModel (no canvas, no window) for widget tests."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def loaded_model(viewer_model, small_stack):
    """ViewerModel holding the small stack ('stack') and its beam-block mask ('stack mask')."""
    viewer_model.add_image(small_stack.stack, name="stack", colormap="magma")
    viewer_model.add_labels(small_stack.beam_block.astype(np.uint8), name="stack mask")
    return viewer_model


@pytest.fixture
def notes():
    """Messages of napari notifications shown during the test (a fresh list each time)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    def messages() -> list[str]:
        return [str(r.message) for r in notification_manager.records[start:]]

    return messages


@pytest.fixture
def drain():
    """Run a generator to its end: ``(what it yielded, what it returned)``."""

    def run(gen):
        yielded = []
        while True:
            try:
                yielded.append(next(gen))
            except StopIteration as stop:
                return yielded, stop.value

    return run


@pytest.fixture
def kill_after_rows():
    """``kill(cmd, table, rows)``: start ``cmd`` (saving after every frame), kill -9 it once
    ``table`` has ``rows`` data rows (or let it end), and return its exit status."""
    import os
    import signal
    import subprocess
    import time

    def rows_in(path) -> int:
        return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0

    def kill(cmd, table, rows: int) -> int:
        proc = subprocess.Popen([*cmd, "--save-interval", "0"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        hang = time.monotonic() + 600  # a guard against a hang, not a window for the kill
        try:
            while rows_in(table) < rows and proc.poll() is None:
                assert time.monotonic() < hang, "the run neither wrote rows nor ended"
                time.sleep(0.01)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()
        return proc.returncode

    return kill
