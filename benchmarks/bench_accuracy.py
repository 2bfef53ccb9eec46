"""Translation accuracy against the Cramer-Rao bound, with and without ``refine``.

    python benchmarks/bench_accuracy.py [--size 256] [--frames 4] [--seeds 20] [--quick]
                                        [--content "sharp spots"]

Two contents. For every noise case, ``--seeds`` independent beam-block stacks
of ``--frames`` frames of the sample generator (rings, Bragg spots, a static
rod + disk block, drift up to 3 px); and at 20, 200 and 2000 counts the same
drift and block over sharp spots alone (0.8 px wide, nothing smooth: the
content that exposes an interpolation model's bias), and at 2000 counts the
same spots integrated over each pixel as a detector's pixels do (``sharp
px-integ``: less of the spectrum folds, but still some). Each is registered
against its frame 0 with the mask, three ways: the masked correlation peak on a
1/20 px grid, on a 1/100 px grid, and ``register_stack(upsample_factor=20)``
with every default on (the hot-pixel search, the refinement). The bound is
computed for the same frames from their noiseless truth (both frames noisy:
``F_moving^-1 + F_reference^-1`` over the valid pixels) and reported as the
median absolute error it allows per axis; each method's column is its median
absolute error (all frames but the reference, both axes) divided by that. The
``z rms`` column: the defaults' errors over their claimed one-sigma
``uncertainties`` (1 when calibrated). Many short stacks rather than one long
one: every frame of a stack shares its reference's noise, so only independent
references average it out.

``--stack`` runs the second table instead: beyond the two-frame bound. One
stack per row (``--stack-frames`` frames drifting smoothly, a slow sinusoid
plus a linear creep, under the static block), on content with sharp Bragg
spots and on smooth rings only, at 20, 200 and 2000 counts; each frame
registered against frame 0 and with ``reference="template"``, each with and
without ``smoothing="auto"``. Errors are taken up to a common offset (a
template sits at the frames' mean position) and reported as the median
absolute error over the two-frame bound (both frames noisy) and over the
noise-free-template bound (half the two-frame variance: 0.71x its median
error), with the RMS of error / uncertainty (1 = calibrated).

Times are per frame (``register_stack`` on the whole stack, reference work
included, divided by its frame count), medians over the stacks. The machine
may be busy: compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import numpy as np

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine import shift_bound

#: (label, generator keywords); add rows here (e.g. hot pixels) to extend the table
CASES = [
    ("Poisson, 20 counts", dict(noise="poisson", counts=20.0)),
    ("Poisson, 100 counts", dict(noise="poisson", counts=100.0)),
    ("Poisson, 200 counts", dict(noise="poisson", counts=200.0)),
    ("Poisson, 2000 counts", dict(noise="poisson", counts=2000.0)),
    ("Gaussian, sigma 0.1", dict(noise="gaussian", sigma=0.1)),
    ("Gaussian, sigma 0.03", dict(noise="gaussian", sigma=0.03)),
    ("Gaussian, sigma 0.01", dict(noise="gaussian", sigma=0.01)),
]

#: the contents: the sample generator (rings, Bragg spots 1.5 px wide at 256 px), and
#: sharp spots alone (Bragg-like spots 0.8 px wide on a faint background: nothing smooth),
#: point-sampled, and the same spots integrated over each pixel (as a detector's pixels
#: do: 0.64x the spectrum at Nyquist, still not band-limited), at 2000 counts only
CONTENTS = ("rings + spots", "sharp spots", "sharp px-integ")

#: the sharp-spot rows: Poisson doses (counts at the brightest spot's peak)
SHARP_DOSES = (20.0, 200.0, 2000.0)

#: (column, register_stack keywords)
METHODS = [
    ("peak 1/20", dict(upsample_factor=20, refine=False, hot_pixels="off")),
    ("peak 1/100", dict(upsample_factor=100, refine=False, hot_pixels="off")),
    ("defaults 1/20", dict(upsample_factor=20)),
]


class SharpSpots:
    """A drifting lattice of sharp spots under a static rod + disk block, Poisson
    counts: the content that punishes an interpolation model (no smooth rings).
    The same interface as the generator's stack for :func:`bound_per_frame`."""

    def __init__(self, n_frames, size, counts, seed, max_drift=3.0, width=0.8, integrate=False):
        from napari_maskalign._sample_data import make_beam_block_stack

        base = make_beam_block_stack(n_frames, (size, size), max_drift=max_drift, seed=seed,
                                     noise=None)
        self.drift, self.beam_block = base.drift, base.beam_block
        self.valid = ~base.beam_block
        rng = np.random.default_rng(seed + 1000)
        half = size / 2
        step = size / 14
        g = np.arange(-6, 7) * step
        pts = np.array([(a, b) for a in g for b in g if 0.15 * half < np.hypot(a, b) < 0.9 * half])
        self.points = pts + rng.normal(scale=0.3, size=pts.shape)
        self.amps = rng.uniform(0.3, 1.0, len(pts))
        self.counts, self.width, self.size = float(counts), float(width), size
        self.integrate = bool(integrate)
        self.centre = np.array([half + 0.37, half - 0.21])
        self.stack = np.stack([rng.poisson(self.noiseless(i)).astype(np.float32)
                               for i in range(n_frames)])

    def _render(self, i, offset=(0.0, 0.0)):
        yy, xx = np.indices((self.size, self.size), dtype=np.float64)
        img = np.full((self.size, self.size), 0.02)
        c = self.centre + self.drift[i] + np.asarray(offset)
        if self.integrate:
            return (img + self._integrated(c)) * self.counts
        for p, a in zip(self.points, self.amps):
            dy, dx = yy - (c[0] + p[0]), xx - (c[1] + p[1])
            img += a * np.exp(-0.5 * (dy * dy + dx * dx) / self.width**2)
        return img * self.counts

    def _integrated(self, c):
        """The spots integrated over each pixel (per axis a difference of error
        functions), scaled to the point-sampled spots' peak."""
        from scipy.special import erf

        edges = np.arange(self.size + 1, dtype=np.float64) - 0.5
        k = np.sqrt(2.0) * self.width
        scale = 0.5 * np.sqrt(2 * np.pi) * self.width
        img = np.zeros((self.size, self.size))
        for p, a in zip(self.points, self.amps):
            py, px = (scale * np.diff(erf((edges - (cc + pp)) / k)) for cc, pp in zip(c, p))
            img += a * np.outer(py, px)
        return img

    def noiseless(self, i):
        return self._render(i)

    def gradient(self, i, step=1e-3):
        out = np.empty((2, self.size, self.size))
        for ax in range(2):
            e = np.zeros(2)
            e[ax] = step
            out[ax] = (self._render(i, e) - self._render(i, -e)) / (2 * step)
        return out

    def noise_variance(self, i):
        return self.noiseless(i)

    def expected_shifts(self, reference=0):
        return -(self.drift - self.drift[reference])


def bound_per_frame(synth, reference: int = 0) -> np.ndarray:
    """``(n_frames - 1, ndim)``: the median absolute error the bound allows per axis."""
    ref_g, ref_v = synth.gradient(reference), synth.noise_variance(reference)
    rows = []
    for i in range(len(synth.stack)):
        if i != reference:
            rows.append(shift_bound(synth.gradient(i), synth.noise_variance(i), synth.valid,
                                    reference_gradient=ref_g, reference_variance=ref_v))
    return np.array(rows)


def measure(make, seeds: int):
    """Bound, per-method errors, per-frame times and the errors' scatter over their
    claimed one-sigma (the defaults' ``uncertainties``) over ``seeds`` stacks made by
    ``make(seed)``."""
    bounds, errors, times = [], {m: [] for m, _ in METHODS}, {m: [] for m, _ in METHODS}
    z = []
    for seed in range(seeds):
        synth = make(seed)
        frames = len(synth.stack)
        truth = synth.expected_shifts(0)[1:]
        bounds.append(bound_per_frame(synth))
        for name, kw in METHODS:
            t0 = time.perf_counter()
            r = register_stack(synth.stack, mask=synth.valid, **kw)
            times[name].append((time.perf_counter() - t0) / frames)
            errors[name].append(np.abs(r.shifts[1:] - truth))
            if name == METHODS[-1][0]:
                z.append((r.shifts[1:] - truth) / r.uncertainties[1:])
    b = float(np.median(np.concatenate(bounds)))
    err = {m: float(np.median(np.concatenate(v))) for m, v in errors.items()}
    ms = {m: 1000 * float(np.median(v)) for m, v in times.items()}
    zz = np.concatenate(z).ravel()
    return b, err, ms, float(np.sqrt(np.mean(zz**2))), _interval(bounds, errors[METHODS[-1][0]])


def _interval(bounds, errors, level=0.9, draws=2000) -> tuple[float, float]:
    """The ``level`` bootstrap interval of median error / median bound, resampling whole
    stacks (the frames of one stack share their reference's noise: not independent)."""
    rng = np.random.default_rng(0)
    n = len(bounds)
    ratios = []
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        ratios.append(np.median(np.concatenate([errors[i] for i in pick]))
                      / np.median(np.concatenate([bounds[i] for i in pick])))
    tail = 100 * (1 - level) / 2
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


#: (column, register_stack keywords) of the stack table; each also smoothed
STACK_METHODS = [
    ("frame 0", dict(reference=0)),
    ("template", dict(reference="template")),
]
STACK_COUNTS = (20.0, 200.0, 2000.0)


def smooth_drift(n: int, amplitude: float = 2.0) -> np.ndarray:
    """A slow sinusoid plus a linear creep per axis, ``amplitude`` px at most."""
    t = np.linspace(0.0, 1.0, n)
    drift = np.stack([0.6 * np.sin(2 * np.pi * t) + 0.4 * t,
                      0.5 * np.cos(1.3 * np.pi * t) - 0.5 - 0.3 * t], axis=1)
    return drift * amplitude / max(np.abs(drift).max(), 1e-9)


def measure_stack(counts: float, spots: bool, size: int, frames: int, seed: int = 0):
    """One stack: the two-frame bound, then per method (raw and smoothed) the median
    |error| and the RMS of error / uncertainty."""
    synth = make_beam_block_stack(frames, (size, size), counts=counts, spots=spots, seed=seed,
                                  drift=smooth_drift(frames))
    bound = float(np.median(bound_per_frame(synth)))
    truth = synth.expected_shifts(0)
    out = {}
    for name, kw in STACK_METHODS:
        t0 = time.perf_counter()
        r = register_stack(synth.stack, mask=synth.valid, upsample_factor=20,
                           hot_pixels="off", smoothing="auto", **kw)
        ms = 1000 * (time.perf_counter() - t0) / frames
        for label, shifts, sigma in ((name, r.raw_shifts, r.uncertainties),
                                     (name + " + smoothing", r.shifts, r.smoothed_uncertainties)):
            e = shifts - truth
            e = e - np.median(e, axis=0)
            z = float(np.sqrt(np.mean((e / sigma) ** 2)))
            out[label] = (float(np.median(np.abs(e))), z, ms)
    return bound, out


def main_stack(args) -> None:
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{args.size}x{args.size} frames, one stack of {args.stack_frames} frames per row; "
          "the machine may be busy: compare within a row")
    print("# per method: median |error| / two-frame bound, / noise-free-template bound "
          "(bound / sqrt 2), RMS error/sigma, ms per frame (smoothing: same run)")
    for spots in (True, False):
        for counts in STACK_COUNTS:
            bound, rows = measure_stack(counts, spots, args.size, args.stack_frames)
            content = "spots" if spots else "rings"
            for label, (err, z, ms) in rows.items():
                print(f"{content:<6} {counts:6.0f} {label:<24} bound {bound:.4f} px  "
                      f"{err / bound:5.2f}x  {err / (bound / np.sqrt(2)):5.2f}x  z {z:4.2f}  "
                      f"{ms:7.0f} ms", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="frame size (square)")
    p.add_argument("--frames", type=int, default=4, help="frames per stack")
    p.add_argument("--seeds", type=int, default=20, help="independent stacks per case")
    p.add_argument("--quick", action="store_true", help="3 stacks per case (a smoke run)")
    p.add_argument("--content", choices=("all", *CONTENTS), default="all",
                   help="only the rows of one content (e.g. 'sharp spots')")
    p.add_argument("--stack", action="store_true",
                   help="the second table: frame 0 / template, with and without smoothing")
    p.add_argument("--stack-frames", type=int, default=30, help="frames per stack (--stack)")
    args = p.parse_args(argv)
    if args.stack:
        main_stack(args)
        return
    seeds = 3 if args.quick else args.seeds
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{args.size}x{args.size} frames, {seeds} stacks x {args.frames - 1} frames x 2 axes "
          "per row")
    print("# columns: the bound (median |error| it allows, px), then each method's median "
          "|error| / the bound ('defaults 1/20': register_stack(upsample_factor=20) with every "
          "default on: the hot-pixel search, the refinement), the defaults' measured error over "
          "their claimed one-sigma uncertainty (RMS: 1 when calibrated), then ms per frame; "
          "'90% interval': the defaults' ratio, bootstrapped over whole stacks")
    head = f"{'content':<14} {'case':<22} {'bound px':>9} " + " ".join(f"{m:>14}" for m, _ in METHODS)
    head += f" {'90% interval':>11} {'z rms':>6}  " + " ".join(f"{'ms ' + m:>18}" for m, _ in METHODS)
    print(head)
    rows = [("rings + spots", label, partial(make_beam_block_stack, args.frames,
                                             (args.size, args.size), max_drift=3.0, **case))
            for label, case in CASES]
    rows += [("sharp spots", f"Poisson, {c:g} counts", partial(SharpSpots, args.frames, args.size, c))
             for c in SHARP_DOSES]
    rows += [(CONTENTS[2], "Poisson, 2000 counts",
              partial(SharpSpots, args.frames, args.size, 2000.0, integrate=True))]
    rows = [row for row in rows if args.content in ("all", row[0])]
    for content, label, factory in rows:
        def make(seed, factory=factory):
            return factory(seed=seed)

        b, err, ms, zrms, (lo, hi) = measure(make, seeds)
        row = f"{content:<14} {label:<22} {b:9.4f} " + " ".join(f"{err[m] / b:14.2f}" for m, _ in METHODS)
        row += f" {f'{lo:.2f}-{hi:.2f}':>11} {zrms:6.2f}  " + " ".join(f"{ms[m]:18.1f}" for m, _ in METHODS)
        print(row, flush=True)


if __name__ == "__main__":
    main()
