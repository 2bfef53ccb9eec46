"""Shared fixtures. Keep this file small: fixtures used by one test file live there."""

from __future__ import annotations

import numpy as np
import pytest

from napari_maskalign._sample_data import make_beam_block_stack


@pytest.fixture(scope="session")
def small_stack():
    """20 frames of 128x128 with a static beam block and known subpixel drift."""
    return make_beam_block_stack(n_frames=20, shape=(128, 128), seed=5)


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
