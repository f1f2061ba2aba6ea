"""No module reads another object's private attributes: a driver uses public methods.

Read from the source with ``ast``, beside the import-cycle check in ``test_imports.py``:
an attribute access ``obj._name`` (``_name`` not a dunder) is allowed only where ``obj``
is ``self``, ``cls``, ``super()``, or a module of this package (``_distributed._tie``
style imports), or where it is listed in :data:`ALLOWED` with a reason. A
``getattr(obj, "_name", ...)`` with a literal name counts as an access too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "stochdepth"

# (module path relative to src/stochdepth, "receiver._name") -> why it is allowed. Empty
# today: torch's own internals (``torch._dynamo`` and the like) would go here too, each
# with its reason, since a library's private API is a separate risk from our own.
ALLOWED: dict[tuple[str, str], str] = {
    ("__init__.py", "_sys._getframe"): (
        "CPython's documented sys._getframe: the deprecated names' __getattr__ tells "
        "importlib's probe of `from stochdepth import X` from a user's access, to warn once"
    ),
    ("_tie.py", "DistributedDataParallel._active_ddp_module"): (
        "torch has no public way to ask whether a DDP forward pass is running; read with "
        "getattr and a default, so a torch without it means 'not in DDP'"
    ),
}

# Names that are public API despite the underscore, on any object.
PUBLIC_NAMES: dict[str, str] = {
    "_fields": "namedtuple's documented API (the underscore only avoids field-name clashes)",
}

_SELF_NAMES = {"self", "cls"}


def _own_module_names(tree: ast.Module) -> set[str]:
    """Names bound by ``import``/``from . import`` of this package's modules."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("stochdepth")
        ):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("stochdepth"):
                    names.add((alias.asname or alias.name).split(".")[0])
    return {name for name in names if name.startswith("_")} | {"stochdepth"}


def private_accesses(path: Path) -> list[tuple[int, str]]:
    """``(line, "receiver._name")`` for every private access on a foreign object."""
    tree = ast.parse(path.read_text(), str(path))
    modules = _own_module_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name, receiver = node.attr, node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr", "setattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name, receiver = node.args[1].value, node.args[0]
        else:
            continue
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if name in PUBLIC_NAMES:
            continue
        if isinstance(receiver, ast.Name) and receiver.id in _SELF_NAMES | modules:
            continue
        if (
            isinstance(receiver, ast.Call)
            and isinstance(receiver.func, ast.Name)
            and receiver.func.id == "super"
        ):
            continue
        found.append((node.lineno, f"{ast.unparse(receiver)}.{name}"))
    return found


def test_no_module_reads_another_objects_private_attributes() -> None:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for line, access in private_accesses(path):
            if (relative, access) not in ALLOWED:
                offences.append(f"{relative}:{line}: {access}")
    assert not offences, "private attributes read from outside their class:\n" + "\n".join(offences)


def test_the_scan_finds_a_foreign_private_access(tmp_path: Path) -> None:
    module = tmp_path / "_driver.py"
    module.write_text(
        "from . import _tie\n"
        "import torch\n"
        "def f(block, self):\n"
        "    _tie.helper()\n"
        "    self._ok = 1\n"
        "    block.__class__\n"
        "    getattr(block, '_grad', None)\n"
        "    return block._choice, torch._dynamo\n"
    )
    assert sorted(private_accesses(module)) == [
        (7, "block._grad"),
        (8, "block._choice"),
        (8, "torch._dynamo"),
    ]


def test_every_allowed_access_still_exists() -> None:
    present = {
        (path.relative_to(PACKAGE).as_posix(), access)
        for path in PACKAGE.rglob("*.py")
        for _, access in private_accesses(path)
    }
    assert set(ALLOWED) <= present, sorted(set(ALLOWED) - present)
