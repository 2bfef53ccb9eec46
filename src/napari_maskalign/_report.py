"""Progress of the ``maskalign`` command: a bar on a terminal."""

from __future__ import annotations

import os
import sys

__all__ = ["follow"]


def follow(steps, desc: str, initial: int = 0):
    """Drive a workflow generator, showing its progress on a terminal; return its value.

    Each step has ``done`` and ``total`` (of this generator, after ``initial``
    frames already done) and maybe a ``stage``. The bar is silent when stderr
    is not a terminal.
    """
    from tqdm import tqdm

    try:  # a pseudo-terminal without a size would get a bar zero columns wide
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        sized = False
    bar = None
    try:
        while True:
            try:
                p = next(steps)
            except StopIteration as stop:
                return stop.value
            if bar is None:
                bar = tqdm(total=initial + p.total, initial=initial, desc=desc, unit="frame",
                           file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=sized,
                           ncols=None if sized else 100, smoothing=0.1)
            stage = getattr(p, "stage", desc)
            if stage not in (desc, "registering") and bar.desc != stage:
                bar.set_description(stage)
            bar.update(initial + p.done - bar.n)
    finally:
        if bar is not None:
            bar.close()
