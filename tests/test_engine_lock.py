"""No confident wrong answer: a run that locked onto something static says so."""

import numpy as np
import pytest

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign._report import summary_lines


def plant_clusters(synth, n=400, seed=0):
    """Static hot pixels in clusters of 1 to 9 pixels (the mix of a real detector:
    mostly single, a quarter in clusters), 10 to 300 times the pattern's median level,
    where the block is not. Returns (stack, truth)."""
    rng = np.random.default_rng(seed)
    stack = synth.stack.copy()
    shape = stack.shape[1:]
    level = max(float(np.median(stack.mean(0))), 1.0)
    truth = np.zeros(shape, bool)
    for k in rng.choice([1, 2, 3, 4, 6, 9], n, p=[0.55, 0.15, 0.1, 0.08, 0.07, 0.05]):
        r, c = rng.integers(4, shape[0] - 4), rng.integers(4, shape[1] - 4)
        h = int(np.ceil(np.sqrt(k)))
        truth[r:r + h, c:c + int(np.ceil(k / h))] = True
    truth &= synth.valid
    stack[:, truth] += rng.uniform(10, 300, int(truth.sum())).astype(stack.dtype) * level
    return stack, truth


@pytest.fixture(scope="module")
def clustered():
    synth = make_beam_block_stack(10, (192, 192), max_drift=5.0, counts=200, seed=3)
    stack, truth = plant_clusters(synth, n=300, seed=1)
    return synth, stack, truth


def test_a_run_locked_on_clustered_hot_pixels_warns(clustered):
    synth, stack, _ = clustered
    r = register_stack(stack, mask=synth.valid, upsample_factor=20, hot_pixels="off")
    truth = synth.expected_shifts()
    assert np.median(np.abs(r.shifts - truth)[1:]) > 1.0  # it did lock
    assert r.lock_suspected
    assert len(r.warnings) == 1 and "locked" in r.warnings[0]
    lines = summary_lines(r, start=0, seconds=1.0, shape=(192, 192), dtype=np.dtype("f4"),
                          shifts_path="s.csv")
    assert any(line.startswith("warning: ") and "locked" in line for line in lines)


def test_the_correct_run_of_the_same_stack_does_not_warn(clustered):
    synth, stack, truth = clustered
    r = register_stack(stack, mask=synth.valid & ~truth, upsample_factor=20, hot_pixels="off")
    assert np.median(np.abs(r.shifts - synth.expected_shifts())[1:]) < 0.05
    assert not r.lock_suspected and r.warnings == []


@pytest.mark.parametrize("counts", [20.0, 2000.0])
def test_a_stack_that_does_not_drift_does_not_warn(counts):
    synth = make_beam_block_stack(6, (128, 128), drift=np.zeros((6, 2)), counts=counts, seed=4)
    r = register_stack(synth.stack, mask=synth.valid, upsample_factor=20, hot_pixels="off")
    assert np.abs(r.shifts).max() < 0.5
    assert not r.lock_suspected, r.warnings
