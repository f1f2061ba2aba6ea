"""The drop rules' registry: names, registration, its errors and plugins from entry points."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import stochdepth
from stochdepth import (
    BernoulliDrop,
    LayerDropList,
    NestedDrop,
    available_drop_rules,
    get_drop_rule,
    register_drop_rule,
    unregister_drop_rule,
)
from stochdepth.layer_drop import _registry

# --------------------------------------------------------------------------- rules


def test_the_registry_names_rules_and_suggests_the_closest() -> None:
    assert {"bernoulli", "nested"} <= set(available_drop_rules())
    assert isinstance(get_drop_rule("nested"), NestedDrop)
    with pytest.raises(ValueError, match="did you mean 'bernoulli'"):
        LayerDropList([nn.Identity()], 0.5, rule="bernouli")
    with pytest.raises(ValueError, match="is a built-in drop rule"):
        register_drop_rule("nested")(BernoulliDrop)


@pytest.fixture
def drop_rules() -> Iterator[None]:
    """Give the test the drop-rule registrations of a fresh process, and put them back."""
    registered = _registry.DROP_RULES.snapshot()
    _registry.DROP_RULES.restore(_registry.BUILTIN_DROP_RULES)
    yield
    _registry.DROP_RULES.restore(registered)


@pytest.mark.usefixtures("drop_rules")
def test_a_registered_rule_is_used_by_name() -> None:

    class FirstOnly:
        def draw(self, drop_rates: Tensor, rows: int | None, generator: torch.Generator) -> Tensor:
            keep = torch.zeros(len(drop_rates), dtype=torch.bool)
            keep[0] = True
            return keep if rows is None else keep[:, None].expand(-1, rows)

    assert register_drop_rule("first-only")(FirstOnly) is FirstOnly
    with pytest.raises(ValueError, match="already registered"):
        register_drop_rule("first-only")(FirstOnly)
    stack = LayerDropList([nn.Identity()] * 3, 0.5, rule="first-only", per_sample=True, seed=0)
    stack(torch.zeros(4, 1))
    assert stack.layer_runs == [4, 0, 0]
    unregister_drop_rule("first-only")
    assert "first-only" not in available_drop_rules()
    with pytest.raises(ValueError, match="registered in this process"):
        unregister_drop_rule("first-only")
    with pytest.raises(ValueError, match="built-in drop rule and cannot be removed"):
        unregister_drop_rule("bernoulli")


@pytest.mark.usefixtures("drop_rules")
def test_drop_rule_errors_are_the_shared_plugin_classes_with_the_old_bases() -> None:
    with pytest.raises(
        stochdepth.UnknownPluginError, match=r"^unknown drop rule 'nestd'.*'nested'\?$"
    ):
        get_drop_rule("nestd")
    assert issubclass(stochdepth.UnknownPluginError, ValueError)
    assert issubclass(stochdepth.UnknownPluginError, LookupError)
    assert issubclass(stochdepth.PluginError, LookupError)
    register_drop_rule("mine")(NestedDrop)
    with pytest.raises(ValueError, match=r"already registered as 'mine'.*pass overwrite=True"):
        register_drop_rule("mine")(BernoulliDrop)
    register_drop_rule("mine", overwrite=True)(BernoulliDrop)
    assert isinstance(get_drop_rule("mine"), BernoulliDrop)
    with pytest.raises(TypeError, match=r"^register_drop_rule\('x'\) needs a DropRule factory"):
        register_drop_rule("x")(NestedDrop())  # type: ignore[type-var]
    with pytest.raises(ValueError, match=r"^name must be letters"):
        register_drop_rule("-x")
    with pytest.raises(
        stochdepth.UnknownPluginError,
        match=r"no drop rule is registered as 'other'; the names registered in this process are: "
        r"mine$",
    ):
        unregister_drop_rule("other")
    with pytest.raises(ValueError, match="built-in drop rule and cannot be replaced"):
        register_drop_rule("bernoulli", overwrite=True)(NestedDrop)


@pytest.mark.usefixtures("drop_rules")
def test_the_old_call_and_replace_still_register_with_a_future_warning() -> None:
    with pytest.warns(FutureWarning, match=r"register_drop_rule\(name\)\(factory\)"):
        assert register_drop_rule("mine", NestedDrop) is None
    assert isinstance(get_drop_rule("mine"), NestedDrop)
    with pytest.warns(FutureWarning, match=r"replace=\.\.\.\) is deprecated; pass overwrite"):
        register_drop_rule("mine", replace=True)(BernoulliDrop)
    assert isinstance(get_drop_rule("mine"), BernoulliDrop)
    with (
        pytest.warns(FutureWarning, match="replace"),
        pytest.raises(ValueError, match="already registered as 'mine'"),
    ):
        register_drop_rule("mine", replace=False)(NestedDrop)


def test_plugins_come_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    group = _registry.ENTRY_POINT_GROUP
    points = [
        importlib.metadata.EntryPoint("plugged", "stochdepth:NestedDrop", group),
        importlib.metadata.EntryPoint("broken", "no_such_module_here:Rule", group),
    ]

    def entry_points(**selection: Any) -> list[importlib.metadata.EntryPoint]:
        assert selection == {"group": group}
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    _registry.refresh_drop_rules()
    try:
        assert isinstance(get_drop_rule("plugged"), NestedDrop)
        with pytest.warns(stochdepth.PluginWarning, match="'broken = no_such_module_here"):
            names = available_drop_rules()
        assert "plugged" in names
        assert "broken" not in names
        with pytest.raises(LookupError, match="failed to load: ModuleNotFoundError") as info:
            get_drop_rule("broken")
        assert isinstance(info.value, stochdepth.PluginError)
    finally:
        monkeypatch.undo()
        _registry.refresh_drop_rules()
