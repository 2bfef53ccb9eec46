"""Non-rigid registration under a static beam block: accuracy and speed against other tools.

    python benchmarks/bench_nonrigid.py [--size 512] [--frames 3] [--amplitudes 2 1]
                                        [--skip-slow]

Stacks from ``_nonrigid_sample.make_nonrigid_stack``: frame 0 is the content,
every other frame the content warped by a global shift (uniform within +-3 px)
plus a smooth field (a sinusoid of wavelength 1/3 frame, vector RMS 2 px or 1
px), the beam block (rod + disk, painted dark) copied from the reference so it
stays still, Poisson noise at a mean of 100 counts per pixel. Content (the
issue's targets are on the first two): the sample generator's diffraction
pattern (rings and sparse spots: its corners are featureless), scikit-image's
camera image (both warped with cubic interpolation), and on request
``diffraction``, a dense lattice of sharp spots rendered at the warped coordinates.

Every frame is registered onto frame 0 by

* ``translation``: napari-maskalign ``register_stack(mask=..., upsample_factor=20)``,
  field = -shift everywhere (the anchor of the time ratio);
* ``nonrigid``: ``register_stack(mask=..., model="nonrigid")`` (defaults);
* scikit-image ``optical_flow_ilk`` (radius 7) and ``optical_flow_tvl1``
  (defaults), which take no mask;
* itk-elastix (``pip install itk-elastix``, the ``bench`` extra): translation then
  a B-spline of 32 px grid spacing, advanced normalized correlation, fixed and
  moving masks, 3 resolutions, 256 iterations each; one ITK thread like the others.

Columns: the RMS vector error of the field (px) over valid pixels eroded 8 px
("all"), over those within 24 px of the block ("near block") and over the 30 %
with the strongest smoothed reference gradient ("textured"), the median over
frames; the worst frame's "all" error over the translation's on the same frame
(above 1: a frame came out worse than the global translation); milliseconds per
frame (median, whole stack including the reference work, one thread each); the
time relative to the masked translation of the same run. The machine may be busy (8 engineers on 2 cores): compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time

import numpy as np
from scipy import ndimage as ndi

from napari_maskalign import register_stack
from napari_maskalign._nonrigid_sample import make_nonrigid_stack


def regions(valid, ref):
    inner = ndi.binary_erosion(valid, iterations=8, border_value=0)
    near = inner & (ndi.distance_transform_edt(valid) <= 24)
    g = ndi.gaussian_gradient_magnitude(ref.astype(float), 2.0)
    textured = inner & (g >= np.quantile(g[inner], 0.7))
    return {"all": inner, "near block": near, "textured": textured}


def rms(field, truth, where) -> float:
    e = ((np.asarray(field) - truth) ** 2).sum(axis=0)[where]
    return float(np.sqrt(np.mean(e)))


# -- the methods: each returns (fields (n - 1, 2, H, W) for frames 1.., seconds per frame) --

def translation(stack, valid):
    t = time.perf_counter()
    res = register_stack(stack, mask=valid, upsample_factor=20, hot_pixels="off", workers=1)
    dt = (time.perf_counter() - t) / len(stack)
    h, w = stack.shape[1:]
    return [np.broadcast_to(-s[:, None, None], (2, h, w)) for s in res.shifts[1:]], dt


def nonrigid(stack, valid):
    t = time.perf_counter()
    res = register_stack(stack, mask=valid, model="nonrigid", hot_pixels="off", workers=1)
    dt = (time.perf_counter() - t) / len(stack)
    return [res.field(i) for i in range(1, len(stack))], dt


def ilk(stack, valid):
    from skimage.registration import optical_flow_ilk

    scale = float(stack[0].max())  # its defaults expect images in [0, 1]
    ref = stack[0] / scale
    t = time.perf_counter()
    out = [optical_flow_ilk(ref, f / scale, radius=7) for f in stack[1:]]
    return out, (time.perf_counter() - t) / (len(stack) - 1)


def tvl1(stack, valid):
    from skimage.registration import optical_flow_tvl1

    scale = float(stack[0].max())
    ref = stack[0] / scale
    t = time.perf_counter()
    out = [optical_flow_tvl1(ref, f / scale) for f in stack[1:]]
    return out, (time.perf_counter() - t) / (len(stack) - 1)


def elastix(stack, valid):
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    params = itk.ParameterObject.New()
    tr = params.GetDefaultParameterMap("translation", 3)
    bs = params.GetDefaultParameterMap("bspline", 3, 32.0)
    for m in (tr, bs):
        m["Metric"] = ["AdvancedNormalizedCorrelation"]
        m["MaximumNumberOfIterations"] = ["256"]
        m["ImageSampler"] = ["RandomCoordinate"]
        m["ErodeMask"] = ["false"]
    params.AddParameterMap(tr)
    params.AddParameterMap(bs)
    mask = itk.GetImageFromArray(valid.astype(np.uint8))
    fixed = itk.GetImageFromArray(np.ascontiguousarray(stack[0], np.float32))
    out = []
    t = time.perf_counter()
    # transformix writes its field to the working directory: keep it out of the checkout
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for f in stack[1:]:
            moving = itk.GetImageFromArray(np.ascontiguousarray(f, np.float32))
            _, tp = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                    fixed_mask=mask, moving_mask=mask,
                                                    log_to_console=False)
            d = itk.GetArrayFromImage(itk.transformix_deformation_field(moving, tp))
            # elastix: fixed point x maps to moving point x + u(x), u in (x, y): our convention
            out.append(np.stack([d[..., 1], d[..., 0]]))
    return out, (time.perf_counter() - t) / (len(stack) - 1)


METHODS = {"translation": translation, "nonrigid": nonrigid, "ILK": ilk, "TV-L1": tvl1,
           "elastix": elastix}
SLOW = ("TV-L1", "elastix")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--amplitudes", type=float, nargs="+", default=[2.0, 1.0])
    p.add_argument("--contents", nargs="+", default=["pattern", "camera"],
                   help="pattern (the issue's diffraction-like content: rings and sparse "
                        "spots), camera, diffraction (a dense lattice of spots)")
    p.add_argument("--skip-slow", action="store_true", help="leave out TV-L1 and elastix")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    print(f"# {platform.processor() or platform.machine()}, {args.size}x{args.size}, "
          f"{args.frames - 1} deformed frames per stack, Poisson 100 counts/pixel")
    print("| content | field | method | all | near block | textured | worst frame / translation "
          "| ms/frame | x translation |")
    print("|---|---|---|---|---|---|---|---|---|")
    for content in args.contents:
        for amp in args.amplitudes:
            synth = make_nonrigid_stack(args.frames, (args.size, args.size), content=content,
                                        amplitude=amp, seed=args.seed)
            where = regions(synth.valid, synth.stack[0])
            anchor = base = None
            for name, fn in METHODS.items():
                if args.skip_slow and name in SLOW:
                    continue
                try:
                    fields, dt = fn(synth.stack, synth.valid)
                except ImportError as err:
                    print(f"| {content} | {amp:g} px | {name} | not installed ({err.name}) "
                          "| | | | | |")
                    continue
                per = {k: [rms(f, synth.fields[i + 1], m) for i, f in enumerate(fields)]
                       for k, m in where.items()}
                if name == "translation":
                    anchor, base = dt, np.asarray(per["all"])
                errs = {k: np.median(v) for k, v in per.items()}
                worst = float(np.max(np.asarray(per["all"]) / base))
                print(f"| {content} | {amp:g} px | {name} | {errs['all']:.2f} | "
                      f"{errs['near block']:.2f} | {errs['textured']:.2f} | {worst:.2f} | "
                      f"{dt * 1e3:.0f} | {dt / anchor:.1f} |", flush=True)


if __name__ == "__main__":
    main()
