"""Rotation and scale under a static beam block: accuracy and speed against other tools.

    python benchmarks/bench_similarity.py [--size 512] [--frames 8] [--seeds 2] [--counts 400]

Stacks from the sample generator (rings, a hexagonal lattice of Bragg spots, a
static rod + disk beam block, Poisson noise) whose pattern turns by up to 3
degrees, grows or shrinks by up to 2 % (the "scaled" rows; not in the
"rotated" rows) and drifts by up to 6 px; every frame is registered onto frame
0 by

* napari-maskalign ``register_stack(model="rigid" / "similarity", mask=...,
  hot_pixels="off")`` (the whole stack: reference work included in the time
  per frame; the default search for hot pixels, done once per stack, is timed
  on its own line);
* pystackreg ``RIGID_BODY`` and ``SCALED_ROTATION``, the block's pixels set to
  zero (it takes no mask), one ``register`` call per frame;
* scikit-image's log-polar recipe (its gallery example): band-pass
  (difference of Gaussians), Hann window, ``warp_polar`` of the Fourier
  magnitude with log scaling, phase correlation there for rotation and scale,
  then the rotation and scale undone and the shift found by its masked
  ``phase_cross_correlation`` (block masked).

Columns: the RMS over the valid pixels of how far the found transform puts a
pixel from where the true one does (median over frames), the median absolute
angle (degrees) and scale errors, milliseconds per frame (median over stacks)
and the speed relative to pystackreg SCALED_ROTATION measured in the same run.
A competitor that is not installed is skipped with a note (``pip install
'napari-maskalign[bench]'``). The machine may be busy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine import (
    find_static_outliers,
    similarity_transforms,
    transform_parameters,
)


def rms_displacement(found, truth, valid) -> float:
    p = np.argwhere(valid).astype(float)
    ph = np.column_stack([p, np.ones(len(p))])
    d = ph @ (np.asarray(found) - np.asarray(truth)).T
    return float(np.sqrt(np.mean(np.sum(d[:, :2] ** 2, axis=1))))


# -- the competitors: each returns (transforms (n, 3, 3), seconds) -----------------


def ours(model):
    def run(stack, valid):
        t0 = time.perf_counter()
        # the stacks have no hot pixels: no search for them (it reads up to 16 frames
        # once per stack; its cost is printed on its own line)
        r = register_stack(stack, mask=valid, model=model, hot_pixels="off")
        return r.transforms, time.perf_counter() - t0

    return run


def pystackreg(mode):
    def run(stack, valid):
        from pystackreg import StackReg

        sr = StackReg(getattr(StackReg, mode))
        ref = np.where(valid, stack[0], 0).astype(np.float64)
        swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)  # (x, y) <-> (row, col)
        out = []
        t0 = time.perf_counter()
        for frame in stack:
            tmat = sr.register(ref, np.where(valid, frame, 0).astype(np.float64))
            # pystackreg's matrix maps reference (x, y) to moving (x, y)
            out.append(np.linalg.inv(swap @ tmat @ swap))
        return np.array(out), time.perf_counter() - t0

    return run


def skimage_log_polar(stack, valid):
    """scikit-image's gallery recipe ("Using Polar and Log-Polar Transformations for
    Registration"), then the masked translation of the frame with them undone."""
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    shape = stack.shape[1:]
    radius = shape[0] // 8  # the recipe's choice: the lower frequencies only
    hann = window("hann", shape)

    def polar(img):
        mag = np.abs(np.fft.fftshift(np.fft.fft2(difference_of_gaussians(img, 5, None) * hann)))
        return warp_polar(mag, radius=radius, output_shape=shape, scaling="log",
                          order=0)[: shape[0] // 2]

    ref = stack[0].astype(np.float64)
    ref_polar = polar(ref)
    klog = shape[1] / np.log(radius)
    out = []
    t0 = time.perf_counter()
    for frame in stack.astype(np.float64):
        (dr, dc), _, _ = phase_cross_correlation(ref_polar, polar(frame), upsample_factor=10,
                                                 normalization=None)
        # the recipe's angle is the frame's counterclockwise turn and its scale the frame's
        # magnification: the registering transform undoes both
        turned, grown = (360.0 / shape[0]) * dr, np.exp(dc / klog)
        t = similarity_transforms(np.zeros((1, 2)), [-turned], [1 / grown], shape)[0]
        inv = np.linalg.inv(t)
        undone = ndi.affine_transform(frame, inv[:2, :2], offset=inv[:2, 2], order=1)
        moved = ndi.affine_transform(valid.astype(float), inv[:2, :2], offset=inv[:2, 2],
                                     order=1) > 0.999
        shift = phase_cross_correlation(ref, undone, reference_mask=valid, moving_mask=moved)[0]
        step = np.eye(3)
        step[:2, 2] = shift
        out.append(step @ t)
    return np.array(out), time.perf_counter() - t0


METHODS = [
    ("maskalign rigid", ours("rigid"), "rigid"),
    ("maskalign similarity", ours("similarity"), None),
    ("pystackreg RIGID_BODY", pystackreg("RIGID_BODY"), "rigid"),
    ("pystackreg SCALED_ROTATION", pystackreg("SCALED_ROTATION"), None),
    ("scikit-image log-polar", skimage_log_polar, None),
]


def available(name) -> bool:
    try:
        if name.startswith("pystackreg"):
            import pystackreg  # noqa: F401
        if name.startswith("scikit-image"):
            import skimage  # noqa: F401
    except ImportError as exc:
        print(f"# skipped {name}: {exc.name} is not installed (pip install "
              "'napari-maskalign[bench]')")
        return False
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seeds", type=int, default=2, help="stacks per kind")
    p.add_argument("--counts", type=float, default=400.0, help="Poisson counts at the brightest ring")
    args = p.parse_args(argv)
    methods = [(n, f, m) for n, f, m in METHODS if available(n)]
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}; "
          f"{args.size}x{args.size}, {args.seeds} stacks x {args.frames - 1} frames per row, "
          f"Poisson {args.counts:g} counts, block masked")
    print(f"{'stacks':<9} {'method':<34} {'RMS px':>8} {'angle deg':>10} {'scale':>9} "
          f"{'ms/frame':>9} {'speed vs SR':>12}")
    for kind, max_scale in (("rotated", 0.0), ("scaled", 0.02)):
        stacks = [make_beam_block_stack(args.frames, (args.size,) * 2, max_drift=6.0,
                                        max_rotation=3.0, max_scale=max_scale,
                                        counts=args.counts, seed=100 + s)
                  for s in range(args.seeds)]
        rows = {}
        for name, fn, only in methods:
            errs, times = [], []
            for synth in stacks:
                found, seconds = fn(synth.stack, synth.valid)
                truth = synth.expected_transforms(0)
                times.append(1000 * seconds / args.frames)
                _, a_f, s_f = transform_parameters(found, synth.stack.shape[1:])
                _, a_t, s_t = transform_parameters(truth, synth.stack.shape[1:])
                for i in range(1, args.frames):
                    errs.append((rms_displacement(found[i], truth[i], synth.valid),
                                 abs(a_f[i] - a_t[i]), abs(s_f[i] - s_t[i])))
            e = np.median(np.array(errs), axis=0)
            rows[name] = (e, float(np.median(times)), only)
        base = rows.get("pystackreg SCALED_ROTATION", (None, None))[1]
        for name, (e, ms, only) in rows.items():
            ratio = f"{base / ms:11.1f}x" if base else f"{'-':>12}"
            note = " (no scale)" if only == "rigid" and max_scale else ""
            print(f"{kind:<9} {name + note:<34} {e[0]:8.3f} {e[1]:10.3f} {e[2]:9.5f} "
                  f"{ms:9.1f} {ratio}", flush=True)
    t0 = time.perf_counter()
    find_static_outliers(stacks[0].stack, valid=stacks[0].valid)
    ms = 1000 * (time.perf_counter() - t0)
    print(f"# the default hot-pixel search (hot_pixels='auto'): {ms:.0f} ms "
          f"once per stack ({ms / args.frames:.1f} ms/frame on these "
          f"{args.frames}-frame stacks)")


if __name__ == "__main__":
    main()
