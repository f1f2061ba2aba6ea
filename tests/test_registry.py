"""The one registry mechanism: the three named plugin kinds have the same functions and errors."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

import stochdepth
from stochdepth import NestedDrop, UniformDepth
from stochdepth._registry import Registry
from stochdepth.exits._registry import EXIT_CRITERIA
from stochdepth.layer_drop._registry import DROP_RULES
from stochdepth.samplers._registry import SAMPLERS

from support.fakes import Never


class FirstOnly:
    def draw(self, drop_rates: Tensor, rows: int | None, generator: torch.Generator) -> Tensor:
        keep = torch.zeros(len(drop_rates), dtype=torch.bool)
        keep[0] = True
        return keep if rows is None else keep[:, None].expand(-1, rows)


class NeverWithTol(Never):
    def __init__(self, tol: float) -> None:
        self.tol = tol


# kind: (its registry, its functions' suffixes, a factory of the kind, how get builds one)
KINDS: dict[str, tuple[Registry[Any], tuple[str, str], object, Callable[[str], object]]] = {
    "sampler": (SAMPLERS, ("sampler", "samplers"), UniformDepth, stochdepth.get_sampler),
    "drop rule": (DROP_RULES, ("drop_rule", "drop_rules"), FirstOnly, stochdepth.get_drop_rule),
    "exit criterion": (
        EXIT_CRITERIA,
        ("exit_criterion", "exit_criteria"),
        NeverWithTol,
        lambda name: stochdepth.get_exit_criterion(name, 0.5),
    ),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each named kind in turn, with its registrations put back afterwards."""
    registry = KINDS[request.param][0]
    registered = registry.snapshot()
    yield request.param
    registry.restore(registered)
    registry.refresh()


def functions(kind: str) -> dict[str, Callable[..., Any]]:
    one, many = KINDS[kind][1]
    names = {
        "register": f"register_{one}",
        "unregister": f"unregister_{one}",
        "get": f"get_{one}",
        "available": f"available_{many}",
        "refresh": f"refresh_{many}",
    }
    for name in names.values():
        assert name in stochdepth.__all__, name
    return {role: getattr(stochdepth, name) for role, name in names.items()}


def test_each_kind_has_the_same_five_public_functions(kind: str) -> None:
    found = functions(kind)
    assert set(found) == {"register", "unregister", "get", "available", "refresh"}


def test_register_is_a_decorator_that_returns_the_factory_for_every_kind(kind: str) -> None:
    _, _, factory, get = KINDS[kind]
    found = functions(kind)
    assert found["register"]("mine")(factory) is factory
    assert "mine" in found["available"]()
    assert isinstance(get("mine"), factory)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"already registered as 'mine'.*pass overwrite=True"):
        found["register"]("mine")(factory)
    assert found["register"]("mine", overwrite=True)(factory) is factory
    found["unregister"]("mine")
    assert "mine" not in found["available"]()


def test_every_kind_raises_the_same_errors_naming_itself(kind: str) -> None:
    found = functions(kind)
    plural = {"sampler": "samplers", "drop rule": "drop rules", "exit criterion": "exit criteria"}
    with pytest.raises(
        stochdepth.UnknownPluginError, match=rf"^unknown {kind} 'nope'; the {plural[kind]} are: "
    ):
        KINDS[kind][3]("nope")
    with pytest.raises(stochdepth.UnknownPluginError, match=rf"^no {kind} is registered as 'nope'"):
        found["unregister"]("nope")
    with pytest.raises(ValueError, match=r"^name must be letters"):
        found["register"]("-x")


def test_every_kind_warns_and_raises_the_same_way_for_a_broken_plugin(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = KINDS[kind][0]
    found = functions(kind)
    point = importlib.metadata.EntryPoint("broken", "no_such_module_here:X", registry.group)

    def entry_points(**selection: Any) -> list[importlib.metadata.EntryPoint]:
        assert selection == {"group": registry.group}
        return [point]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    found["refresh"]()
    with pytest.warns(stochdepth.PluginWarning, match=rf"^{kind} plugin entry point 'broken = "):
        assert "broken" not in found["available"]()
    with pytest.raises(stochdepth.PluginError, match=rf"^{kind} 'broken' comes from the plugin"):
        KINDS[kind][3]("broken")


def test_the_registries_are_of_one_class_with_their_groups() -> None:
    assert {kind: registry.group for kind, (registry, *_) in KINDS.items()} == {
        "sampler": "stochdepth.samplers",
        "drop rule": "stochdepth.drop_rules",
        "exit criterion": "stochdepth.exit_criteria",
    }
    assert all(type(registry) is Registry for registry, *_ in KINDS.values())
    assert NestedDrop in DROP_RULES.builtins.values()
