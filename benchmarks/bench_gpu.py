"""Masked registration on the CPU (all cores) and on a GPU (CuPy), in the same run.

    python benchmarks/bench_gpu.py [--sizes 512 1024 2048] [--repeats 3]

For each frame size: a synthetic beam-block stack (numpy, in host memory, so
the GPU times include copying every frame to the device), registered with a
mask at full search, ``upsample_factor`` 1 and 20, by ``register_stack`` with
``device="cpu"`` (every core) and ``device="gpu"``. Prints ms per frame
(median of the repeats, set-up included; the correlation peak: the host-side
refinement and hot-pixel search are left out), the GPU's speed-up, the largest
difference between the two runs' shifts, and the GPU floor: five real FFTs at
the padded size the masked search uses.

Needs CuPy and a CUDA GPU (``pip install 'napari-maskalign[gpu]'``); without
them it says so and exits without measuring.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial

import numpy as np

from napari_maskalign import make_beam_block_stack, register_stack
from napari_maskalign.engine.backends._device import gpu_available
from napari_maskalign.engine.kernels._masked import MaskedCorrelator

FRAMES = {512: 48, 1024: 24, 2048: 8}


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def gpu_fft_floor(pad, repeats=5):
    """Five real FFTs of one padded frame on the GPU, ms (synchronized)."""
    import cupy

    x = cupy.random.random(pad, dtype=cupy.float32)
    cupy.fft.rfftn(x)  # plan
    cupy.cuda.Device().synchronize()

    def run():
        for _ in range(5):
            cupy.fft.rfftn(x)
        cupy.cuda.Device().synchronize()

    return _median_time(run, repeats)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not gpu_available():
        print("bench_gpu: skipped -- CuPy with a CUDA GPU is needed (pip install "
              "'napari-maskalign[gpu]' on a machine with an NVIDIA GPU); nothing was measured.")
        return 0
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    cores = os.cpu_count() or 1
    rows = []
    for size in args.sizes:
        n = FRAMES.get(size, 16)
        synth = make_beam_block_stack(n, (size, size), counts=400, max_drift=4.0, seed=7)
        pad = MaskedCorrelator(synth.stack[0], synth.valid).pad
        floor = gpu_fft_floor(pad)
        for u in (1, 20):
            # the correlation on the device; the refinement and the hot-pixel search run on
            # the host whatever the device, so they are left out of this comparison
            kw = dict(mask=synth.valid, upsample_factor=u, refine=False, hot_pixels="off")
            register_stack(synth.stack[:2], device="gpu", **kw)  # CUDA context, kernels, plans
            on_cpu = partial(register_stack, synth.stack, device="cpu", workers=cores, **kw)
            on_gpu = partial(register_stack, synth.stack, device="gpu", **kw)
            t_cpu, cpu = _median_time(on_cpu, args.repeats)
            t_gpu, gpu = _median_time(on_gpu, args.repeats)
            diff = float(np.abs(gpu.shifts - cpu.shifts).max())
            rows.append((f"{size}x{size}", f"{pad[0]}x{pad[1]}", u, n, f"{t_cpu / n * 1e3:.2f}",
                         f"{t_gpu / n * 1e3:.2f}", f"{t_cpu / t_gpu:.1f}x", f"{floor * 1e3:.3f}",
                         f"{diff:.1e}"))
    print(f"# masked registration, CPU ({cores} cores) vs GPU ({name}), full search, frames "
          "copied from host memory; ms per frame, median of "
          f"{args.repeats} runs, set-up included")
    print(f"# machine: {platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"cupy {cupy.__version__}")
    header = ("frame", "FFT size", "upsample", "frames", "CPU ms", "GPU ms", "GPU speed-up",
              "GPU floor: 5 FFTs ms", "max |shift diff| px")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
