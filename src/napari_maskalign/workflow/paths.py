"""Output paths checked before any work: a week-long run must not fail at its end.

:func:`check_output_path` refuses, in plain words, an output that could not
be written or that would destroy an input: one whose folder is missing, that
is an input itself (the stack, the mask), that lies inside an input folder
(it would be read as a frame next time), or that exists when replacing was
not asked for (``FileExistsError``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_output_path"]


def check_output_path(path, *, overwrite: bool, inputs: dict, what: str = "output") -> Path:
    """``path`` as a ``Path`` if an output may be written there.

    Parameters
    ----------
    path : path
        Where the output will go.
    overwrite : bool
        Whether an existing file there may be replaced.
    inputs : dict
        The run's inputs by what they are (``{"input": ..., "mask": ...}``);
        None values are skipped.
    what : str
        What the output is, for the messages ("output", "shifts file").

    Raises
    ------
    FileExistsError
        The path exists and ``overwrite`` is false.
    ValueError
        Any other reason, in plain words naming the path.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.parent.is_dir():
        raise ValueError(f"the folder of the {what} {p} does not exist")
    for name, source in inputs.items():
        if source is None:
            continue
        src = Path(os.fspath(source)).expanduser()
        if p.resolve() == src.resolve():
            raise ValueError(f"the {what} {p} is the {name} itself; input files are never modified")
        if src.is_dir() and src.resolve() in p.resolve().parents:
            raise ValueError(
                f"the {what} {p} is inside the {name} folder {src}: it would be read as a frame "
                "next time; write it elsewhere"
            )
    if p.exists() and not overwrite:
        raise FileExistsError(f"the {what} {p} exists")
    return p
