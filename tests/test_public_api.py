"""The public API: the names, where they say they live, and the installed metadata."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

import stochdepth

CONTRACT = {
    "DepthSampler",
    "UniformDepth",
    "FixedDepth",
    "SeededDepth",
    "RepeatedBlock",
    "DynamicNet",
    "train",
}
# The subpackages that hold the exit criteria, layer drop, the sampler family and the
# training loop; their names are attributes of the package once imported, but their contents
# are reached through __all__.
SUBPACKAGES = {"exits", "layer_drop", "samplers", "scheduling", "training"}


def test_all_holds_the_contract_and_nothing_missing() -> None:
    assert set(stochdepth.__all__) >= CONTRACT
    assert sorted(stochdepth.__all__) == stochdepth.__all__
    for name in stochdepth.__all__:
        assert hasattr(stochdepth, name), name
    public = {name for name in vars(stochdepth) if not name.startswith("_")}
    assert public == (set(stochdepth.__all__) - {"__version__"}) | SUBPACKAGES


def test_public_objects_say_they_live_in_stochdepth() -> None:
    for name in set(stochdepth.__all__) - {"__version__"}:
        obj = getattr(stochdepth, name)
        assert obj.__module__ == "stochdepth", name
    assert repr(stochdepth.RepeatedBlock) == "<class 'stochdepth.RepeatedBlock'>"


def test_public_objects_have_google_style_docstrings() -> None:
    for name in set(stochdepth.__all__) - {"__version__"}:
        doc = inspect.getdoc(getattr(stochdepth, name))
        assert doc, name
        obj = getattr(stochdepth, name)
        # Protocols, records, containers and exceptions are not called with arguments
        # of their own to document.
        if name in (
            "DepthSampler",
            "DropRule",
            "ExitCriterion",
            "HaltingRule",
            "StepRecord",
            "TrainingHistory",
        ) or (isinstance(obj, type) and issubclass(obj, (Exception, Warning))):
            continue
        if inspect.signature(obj).parameters:
            assert "Args:" in doc, name
        else:
            assert "Args:" not in doc, name


def test_version_is_the_installed_distributions() -> None:
    assert stochdepth.__version__ == importlib.metadata.version("stochdepth")


def test_runtime_dependencies_are_torch_numpy_and_typing_extensions_only() -> None:
    # numpy only so that torch starts without its "Failed to initialize NumPy" warning
    # (docs/changelog.md; tests/test_no_warning.py runs the commands).
    requirements = importlib.metadata.requires("stochdepth") or []
    runtime = {re.split(r"[<>=!~; ]", req)[0] for req in requirements if "extra ==" not in req}
    assert runtime == {"torch", "numpy", "typing-extensions"}


def test_the_package_ships_py_typed() -> None:
    assert (Path(stochdepth.__file__).parent / "py.typed").is_file()


def test_the_console_script_is_the_command_line() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts", name="stochdepth")
    assert [entry.value for entry in scripts] == ["stochdepth._cli:main"]
