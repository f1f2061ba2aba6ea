"""The package's modules import one way: no cycle, and none imports the package's ``__init__``.

Every ``import`` statement counts, at module level or inside a function, read from the
source with ``ast`` (a function-level import is a cycle that only hides until the
function runs).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "stochdepth"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import x`, the module
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in MODULES)
    return found


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def test_the_import_graph_is_read() -> None:
    # The graph is not vacuous: known edges, relative and absolute, are in it.
    assert "stochdepth._depth" in GRAPH["stochdepth._block"]
    assert "stochdepth._repeats" in GRAPH["stochdepth._block"]
    assert "stochdepth.samplers._builtin" in GRAPH["stochdepth._depth"]
    assert "stochdepth._validation" in GRAPH["stochdepth.samplers._builtin"]
    assert "stochdepth._errors" in GRAPH["stochdepth.training._checkpoint"]


def test_there_is_no_import_cycle() -> None:
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    assert set(order) == set(MODULES)


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"stochdepth", "stochdepth.__main__"}))
def test_no_module_imports_the_packages_init(name: str) -> None:
    assert "stochdepth" not in GRAPH[name], f"{name} imports stochdepth's __init__"


def test_function_level_imports_count_and_a_cycle_through_them_is_found(
    tmp_path: Path,
) -> None:
    module = tmp_path / "_late.py"
    module.write_text(
        "def late():\n    from ._block import RepeatedBlock\n    from . import _depth\n"
    )
    late = imported("stochdepth._late", module)
    assert late == {"stochdepth._block", "stochdepth._depth"}
    # _validation importing _block late, inside a function, would close a cycle.
    graph = {**GRAPH, "stochdepth._validation": {"stochdepth._block"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
