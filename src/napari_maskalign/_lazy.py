"""Lazy module attributes: a package exports names whose modules load on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each name in ``where`` is imported
    from the module named there when first asked for, then kept in the package."""

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # what the package offers: its __all__
        return sorted(getattr(sys.modules[package], "__all__", where))

    return __getattr__, __dir__
