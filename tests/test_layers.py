"""The package's folders are its layers: imports only point down.

Every ``import`` of a chatd module anywhere in ``src/chatd`` (at the top,
inside a function, under ``TYPE_CHECKING``) is read from the source, so an
import that would only show at run time, or only to mypy, counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

SRC = Path(__file__).resolve().parent.parent / "src"

#: Bottom to top. A module may import from a lower layer, or from its own
#: package; never from a higher layer or from another package of its layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("chatd", "chatd.errors", "chatd.config"),
    ("chatd.protocol",),
    ("chatd.store",),
    ("chatd.core",),
    ("chatd.cluster", "chatd.transports"),
    ("chatd.daemon",),
    ("chatd.client", "chatd.tools"),
    ("chatd.cli", "chatd.soak"),
    ("chatd.__main__",),
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "chatd").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _unit(module: str) -> tuple[int, str]:
    """(layer, unit): the unit is the package (or top module) it belongs to."""
    best: tuple[int, str] | None = None
    for layer, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (
                best is None or len(unit) > len(best[1])
            ):
                best = (layer, unit)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _imports(module: str) -> set[str]:
    """The chatd modules ``module`` imports, resolved to modules that exist."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in MODULES else base)
    return {n for n in names if n in MODULES and n != module}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _unit(module)


def test_imports_only_point_down() -> None:
    upward = []
    for module in MODULES:
        layer, unit = _unit(module)
        for target in _imports(module):
            their_layer, their_unit = _unit(target)
            if their_unit == unit or target == "chatd":
                continue
            if their_layer >= layer:
                upward.append(f"{module} (layer {layer}) imports {target} (layer {their_layer})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circle() -> None:
    graph = {module: _imports(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circle = [*path[path.index(module) :], module]
            pytest.fail("import circle: " + " -> ".join(circle))
        if module in done:
            return
        for target in sorted(graph[module]):
            if target != "chatd":  # the package's __init__ holds only its version
                visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: core importing the cluster is caught."""
    assert "chatd.core.rooms" in MODULES
    layer, _ = _unit("chatd.core.rooms")
    assert _unit("chatd.cluster")[0] > layer
    assert _unit("chatd.daemon.session")[0] > _unit("chatd.transports.base")[0]
