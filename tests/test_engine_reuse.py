"""The drop-in's reuse of correlators across calls: by content, bounded, thread-safe."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from skimage.registration import phase_cross_correlation as sk_pcc

from napari_maskalign import make_beam_block_stack, phase_cross_correlation
from napari_maskalign.engine.kernels import _reuse


@pytest.fixture
def cache(monkeypatch):
    fresh = _reuse.CorrelatorCache(max_entries=3)
    monkeypatch.setattr(_reuse, "CACHE", fresh)
    return fresh


@pytest.fixture(scope="module")
def synth():
    return make_beam_block_stack(5, (40, 44), counts=400, max_drift=3.0, seed=3)


def test_a_loop_against_one_reference_builds_once_and_equals_skimage(cache, synth):
    ref, valid = synth.stack[0], synth.valid
    for frame in synth.stack:
        ours, _, _ = phase_cross_correlation(ref, frame, reference_mask=valid)
        theirs, _, _ = sk_pcc(ref, frame, reference_mask=valid)
        np.testing.assert_array_equal(ours, theirs)
    assert cache.misses == 1 and cache.hits == len(synth.stack) - 1


def test_an_array_changed_in_place_is_never_served_stale(cache, synth):
    ref, valid = synth.stack[0].copy(), synth.valid.copy()
    frame = synth.stack[2]
    phase_cross_correlation(ref, frame, reference_mask=valid)
    # change one value the sampled fingerprint does not look at: the full comparison must see it
    step = max(1, ref.size // _reuse._SAMPLE)
    flat_index = 1 if step > 1 else 0
    for array, new in ((ref, 1e3), (valid, not valid.flat[flat_index])):
        array.flat[flat_index] = new
        ours, _, _ = phase_cross_correlation(ref, frame, reference_mask=valid)
        theirs, _, _ = sk_pcc(ref, frame, reference_mask=valid)
        np.testing.assert_array_equal(ours, theirs)
    assert cache.hits == 0 and cache.misses == 3


def test_settings_are_part_of_the_key_and_memory_is_bounded(cache, synth):
    ref, valid = synth.stack[0], synth.valid
    for u in (1, 5, 10, 20):
        a, _, _ = phase_cross_correlation(ref, synth.stack[1], reference_mask=valid, upsample_factor=u)
        b, _, _ = phase_cross_correlation(ref, synth.stack[1], reference_mask=valid, upsample_factor=u)
        np.testing.assert_array_equal(a, b)
    assert len(cache) == 3 and cache.misses == 4 and cache.hits == 4
    small = _reuse.CorrelatorCache(max_entries=10, max_bytes=1)
    for k in range(3):
        small.get((np.full(8, k),), (), lambda a: a.copy())
    assert len(small) == 1  # over the byte budget: only the newest entry stays


def test_threads_share_the_cache_safely(cache, synth):
    ref, valid = synth.stack[0], synth.valid
    expected = [phase_cross_correlation(ref, f, reference_mask=valid, upsample_factor=10)[0]
                for f in synth.stack]
    jobs = [f for f in synth.stack for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: phase_cross_correlation(
            ref, f, reference_mask=valid, upsample_factor=10)[0], jobs))
    for k, shift in enumerate(got):
        np.testing.assert_array_equal(shift, expected[k // 4])
