"""Output paths checked before any work: a week-long run must not fail at its end.

:func:`check_output_path` refuses, in plain words, an output that could not
be written or that would destroy an input: one whose folder is missing (or
is a file), that is an input itself (the stack, the mask), that lies inside
an input folder (it would be read as a frame next time), that is not a
regular file (a folder, a device, a pipe: never replaced, not even with
``overwrite``), where no file can be created (a read-only mount, a full disk:
tried by creating and removing a temporary file there), or that exists when
replacing was not asked for (``FileExistsError``). :func:`check_outputs`
checks all outputs of one run together and also refuses two outputs with the
same path (``--shifts a.tif --output a.tif``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["check_output_path", "check_outputs", "sibling"]


def sibling(path, tag: str) -> Path:
    """The file written beside an output: ``mean.tif`` -> ``mean_count.tif``."""
    p = Path(os.fspath(path))
    return p.with_name(f"{p.stem}_{tag}{p.suffix}")


def _is_store(p: Path) -> bool:
    """A zarr store we may replace: a folder named .zarr holding zarr metadata (or empty)."""
    if p.suffix.lower() != ".zarr" or not p.is_dir() or p.is_symlink():
        return False
    names = {c.name for c in p.iterdir()}
    return not names or bool(names & {"zarr.json", ".zarray", ".zgroup", ".zattrs"})


def _try_create(folder: Path, what: str, p: Path) -> None:
    """Create and remove a small file in ``folder``: proves an output can go there."""
    probe = folder / f".{p.name}.maskalign-check-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "xb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ValueError(
            f"cannot write the {what} {p}: {exc.strerror or exc} (in the folder {folder})"
        ) from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def check_output_path(path, *, overwrite: bool, inputs: dict, what: str = "output",
                      probe: bool = True) -> Path:
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
    probe : bool
        Create and remove a temporary file in the output's folder.

    Raises
    ------
    FileExistsError
        The path exists and ``overwrite`` is false.
    ValueError
        Any other reason, in plain words naming the path.
    """
    p = Path(os.fspath(path)).expanduser()
    folder = p.parent
    if not folder.is_dir():
        above = next((a for a in p.parents if a.exists()), None)
        if above is not None and not above.is_dir():
            raise ValueError(f"cannot write the {what} {p}: {above} is a file, not a folder")
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
    if p.exists() or p.is_symlink():
        if not (p.is_file() or _is_store(p)):
            kind = "a folder" if p.is_dir() else "not a regular file"
            raise ValueError(
                f"the {what} {p} exists and is {kind}: it is never replaced, not even with "
                "--overwrite; choose another name"
            )
        if not overwrite:
            raise FileExistsError(f"the {what} {p} exists")
    if probe:
        _try_create(folder, what, p)
    return p


def check_outputs(outputs: dict, *, inputs: dict, overwrite: bool = False,
                  may_exist: tuple = ()) -> dict:
    """Check every output of a run together, before any work.

    ``outputs`` maps what each output is ("shifts file", "output", "mean",
    ...) to its path (None: not asked for). Outputs named in ``may_exist``
    may exist without ``overwrite`` (a resumed run's shifts file). Besides
    :func:`check_output_path` for each, two outputs may not share a path.
    Returns the checked paths by name (only those asked for).
    """
    checked: dict = {}
    seen: dict = {}
    for what, path in outputs.items():
        if path is None:
            continue
        p = check_output_path(path, overwrite=overwrite or what in may_exist, inputs=inputs,
                              what=what)
        key = p.resolve()
        if key in seen:
            raise ValueError(
                f"the {what} and the {seen[key]} are the same file ({p}); give each output "
                "its own name"
            )
        seen[key] = what
        checked[what] = p
    return checked
