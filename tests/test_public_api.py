"""The public API: the names, where they say they live, and the installed metadata."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import typing
import warnings
from pathlib import Path

import pytest

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
# The subpackages that hold the exit criteria, layer drop, the sampler family, the
# training loop, the conversion of pretrained stacks, the depth scheduler, and generation
# (imported when stochdepth.DepthCache is first used); their names are attributes of the
# package once imported, but their contents are reached through __all__.
# The type aliases of RepeatedBlock's options: typing objects, which have no module or
# docstring of their own to set (their docstrings are the attribute docstrings in src/).
TYPE_ALIASES = {"EvalDepth", "Mode", "Output", "RowDraws"}
SUBPACKAGES = {
    "conversion",
    "exits",
    "generation",
    "layer_drop",
    "samplers",
    "scheduling",
    "training",
}


# stochdepth.__all__ before issue 19 merged the plugin kinds' exceptions: every name in it
# still imports. The kinds' own exception names are deprecated aliases of the shared ones.
ALL_BEFORE_ISSUE_19 = [
    *("BernoulliDepth", "BernoulliDrop", "BroadcastDepth", "CUDAGraphStep", "Checkpoint"),
    *("CheckpointError", "DepthMismatchError", "DepthSampler", "DropRule"),
    *("DropRulePluginError", "DynamicNet", "ExitCriterion", "ExitCriterionPluginError"),
    *("ExitCriterionPluginWarning", "ExitWhenConverged", "FixedDepth", "GeometricDepth"),
    *("LatentChange", "LayerDropList", "LogNormalPoissonDepth", "NestedDrop", "NonFiniteError"),
    *("OutputKL", "RepeatedBlock", "SamplerPluginError", "SamplerPluginWarning"),
    *("ScheduledDepth", "SeededDepth", "SkippedLayerTie", "StepRecord", "TrainingHistory"),
    *("UniformDepth", "UnknownDropRuleError", "UnknownExitCriterionError"),
    *("UnknownSamplerError", "__version__", "available_drop_rules", "available_exit_criteria"),
    *("available_samplers", "check_depth_agreement", "get_drop_rule", "get_exit_criterion"),
    *("get_sampler", "halting_depths", "halting_distribution", "linear_drop_rates"),
    *("load_checkpoint", "ponder_loss", "refresh_exit_criteria", "refresh_samplers"),
    *("register_drop_rule", "register_exit_criterion", "register_sampler", "train"),
    *("unregister_drop_rule", "unregister_exit_criterion", "unregister_sampler"),
]
DEPRECATED = {
    "UnknownSamplerError": "UnknownPluginError",
    "UnknownDropRuleError": "UnknownPluginError",
    "UnknownExitCriterionError": "UnknownPluginError",
    "SamplerPluginError": "PluginError",
    "DropRulePluginError": "PluginError",
    "ExitCriterionPluginError": "PluginError",
    "SamplerPluginWarning": "PluginWarning",
    "ExitCriterionPluginWarning": "PluginWarning",
}


def test_all_holds_the_contract_and_nothing_missing() -> None:
    assert set(stochdepth.__all__) >= CONTRACT
    assert sorted(stochdepth.__all__) == stochdepth.__all__
    for name in stochdepth.__all__:
        assert hasattr(stochdepth, name), name
    public = {name for name in vars(stochdepth) if not name.startswith("_")}
    assert public == (set(stochdepth.__all__) - {"__version__"}) | SUBPACKAGES


def test_public_objects_say_they_live_in_stochdepth() -> None:
    for name in set(stochdepth.__all__) - {"__version__"} - TYPE_ALIASES:
        obj = getattr(stochdepth, name)
        assert obj.__module__ == "stochdepth", name
    assert repr(stochdepth.RepeatedBlock) == "<class 'stochdepth.RepeatedBlock'>"


def test_public_objects_have_google_style_docstrings() -> None:
    for name in set(stochdepth.__all__) - {"__version__"} - TYPE_ALIASES:
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
            "RecursifyReport",
            "StepRecord",
            "TrainingHistory",
        ) or (isinstance(obj, type) and issubclass(obj, (Exception, Warning))):
            continue
        if inspect.signature(obj).parameters:
            assert "Args:" in doc, name
        else:
            assert "Args:" not in doc, name


def test_the_type_aliases_are_the_types_of_the_block_options() -> None:
    hints = typing.get_type_hints(stochdepth.RepeatedBlock.__init__)
    assert hints["eval_depth"] == stochdepth.EvalDepth
    assert hints["mode"] == stochdepth.Mode
    assert hints["output"] == stochdepth.Output
    assert hints["row_draws"] == stochdepth.RowDraws
    assert typing.get_args(stochdepth.Mode) == ("skip", "masked")
    assert typing.get_args(stochdepth.RowDraws) == ("global", "local")


def test_the_type_aliases_keep_their_own_module() -> None:
    # Not relabelled as stochdepth's: typing caches Literal[...] objects, so a relabelled
    # alias would relabel every equal Literal elsewhere.
    for name in TYPE_ALIASES:
        assert getattr(stochdepth, name).__module__ in ("typing", "types"), name
    assert stochdepth.Mode == typing.Literal["skip", "masked"]  # typing's cache may drop it


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


def test_every_name_of_the_old_all_still_imports_and_only_the_deprecated_ones_warn() -> None:
    assert len(ALL_BEFORE_ISSUE_19) == 57
    for name in ALL_BEFORE_ISSUE_19:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(f"from stochdepth import {name}", {})
        if name in DEPRECATED:
            assert [w.category for w in caught] == [FutureWarning], name
            assert f"stochdepth.{name} is deprecated" in str(caught[0].message)
            assert f"use stochdepth.{DEPRECATED[name]}," in str(caught[0].message)
            assert name not in stochdepth.__all__
        else:
            assert caught == [], name
            assert name in stochdepth.__all__


@pytest.mark.parametrize("name", sorted(DEPRECATED))
def test_a_deprecated_name_is_its_replacement_so_except_clauses_still_catch(name: str) -> None:
    with pytest.warns(FutureWarning, match=rf"^stochdepth\.{name} is deprecated"):
        old = getattr(stochdepth, name)
    assert old is getattr(stochdepth, DEPRECATED[name])
    if issubclass(old, Exception):
        with pytest.raises(old):
            raise getattr(stochdepth, DEPRECATED[name])("raised under the new name")


def test_the_old_exception_bases_hold() -> None:
    # What each kind's own class was, the shared class still is.
    assert issubclass(stochdepth.UnknownPluginError, LookupError)
    assert issubclass(stochdepth.UnknownPluginError, ValueError)  # as UnknownDropRuleError
    assert issubclass(stochdepth.PluginError, RuntimeError)  # as SamplerPluginError
    assert issubclass(stochdepth.PluginError, LookupError)  # as DropRulePluginError
    assert issubclass(stochdepth.PluginWarning, UserWarning)


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'stochdepth' has no attribute 'Nope'"):
        stochdepth.Nope  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(stochdepth, "SamplerPluginErrors")
