"""The source keeps its shape: the engine's layers import downwards only, no module-level
import cycle, array-library branches only in engine/backends, model names only in their
model's module. Read from the source with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_maskalign"
#: the engine's layers, lowest first: a module may import its own layer or one below
LAYERS = ("backends", "kernels", "models", "run")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(name: str, path: Path, *, top_level_only: bool):
    """The package modules ``name`` imports (``from x import y`` counts ``x.y`` when it
    is a module), never those under ``if TYPE_CHECKING``; with ``top_level_only``, not
    those inside functions either."""
    known = modules()
    nodes = []

    def collect(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            collect(child)

    collect(ast.parse(path.read_text()))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(name, path).split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    yield sub
                elif target in known:
                    yield target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "engine" and parts[2] in LAYERS else None


def test_engine_layers_import_downwards_only():
    wrong = []
    for name, path in modules().items():
        here = layer(name)
        if here is None:
            continue
        for target in imports(name, path, top_level_only=False):
            there = layer(target)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{name} imports {target}")
            if target.startswith("napari_maskalign.") and not target.startswith(
                    "napari_maskalign.engine"):
                wrong.append(f"{name} imports {target} (outside the engine)")
    assert not wrong, wrong


def cycles_in(graph: dict) -> list:
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_module_level_import_cycle():
    graph = {name: set(imports(name, path, top_level_only=True))
             for name, path in modules().items()}
    cycles = cycles_in(graph)
    assert not cycles, cycles


def test_no_import_cycle_in_the_engine_even_inside_functions():
    """A function-level import only hides a cycle: in the engine there is none at all."""
    graph = {name: set(imports(name, path, top_level_only=False))
             for name, path in modules().items() if ".engine" in name}
    cycles = cycles_in(graph)
    assert not cycles, cycles


def _code_strings(tree):
    """String constants that are code, not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                body[0].value, ast.Constant):
            docs.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def test_array_library_branches_live_in_backends():
    found = []
    for name, path in modules().items():
        if ".engine.backends" in name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Name) and s.id == "np" for s in sides):
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        if "cupy" in path.read_text().lower().replace("cupy-cuda", ""):
            found += [f"{path.name}: names cupy" for line in path.read_text().splitlines()
                      if "cupy" in line and "import" in line]
    assert not found, found


@pytest.mark.parametrize("model", ["translation", "rigid", "similarity"])
def test_model_names_are_spelled_in_their_module_only(model):
    own = f"napari_maskalign.engine.models._{model}"
    found = []
    for name, path in modules().items():
        if name == own:
            continue
        for node in _code_strings(ast.parse(path.read_text())):
            if node.value == model:
                found.append(f"{path.name}:{node.lineno}")
    assert not found, f"{model!r} compared or listed outside {own}: {found}"
