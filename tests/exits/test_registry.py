"""Exit criteria: the protocol, the registry and plugins from entry points."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stochdepth import (
    ExitCriterion,
    ExitWhenConverged,
    LatentChange,
    OutputKL,
    PluginError,
    PluginWarning,
    UnknownPluginError,
    available_exit_criteria,
    get_exit_criterion,
    refresh_exit_criteria,
    register_exit_criterion,
    unregister_exit_criterion,
)
from stochdepth.exits import _registry

from support.fakes import Never


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    registered = _registry.EXIT_CRITERIA.snapshot()
    yield
    _registry.EXIT_CRITERIA.restore(registered)
    _registry.EXIT_CRITERIA.refresh()


# --- the protocol and the registry -----------------------------------------------------


def test_the_builtins_satisfy_the_protocol() -> None:
    assert isinstance(LatentChange(0.1), ExitCriterion)
    assert isinstance(OutputKL(0.1), ExitCriterion)
    assert isinstance(Never(), ExitCriterion)


def test_the_builtins_are_available_by_name() -> None:
    names = available_exit_criteria()
    assert {"latent_change", "output_kl"} <= set(names)
    assert names == sorted(names)
    assert get_exit_criterion("latent_change", 0.01) == LatentChange(0.01)
    assert get_exit_criterion("latent_change", 0.01, ord=1) == LatentChange(0.01, ord=1)
    assert get_exit_criterion("output_kl", 0.5) == OutputKL(0.5)


def test_an_unknown_name_lists_the_criteria_and_suggests_the_closest() -> None:
    with pytest.raises(UnknownPluginError, match="did you mean 'latent_change'") as info:
        get_exit_criterion("latent_chang", 0.1)
    assert "output_kl" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_register_and_unregister_a_criterion() -> None:
    @register_exit_criterion("never")
    class NeverWithTol(Never):
        def __init__(self, tol: float) -> None:
            self.tol = tol

    assert "never" in available_exit_criteria()
    built = get_exit_criterion("never", 0.3)
    assert isinstance(built, NeverWithTol)
    assert built.tol == 0.3
    policy = ExitWhenConverged(0.3, 5, criterion="never")
    assert isinstance(policy.criterion, NeverWithTol)
    with pytest.raises(ValueError, match="already registered as 'never'"):
        register_exit_criterion("never")(NeverWithTol)
    register_exit_criterion("never", overwrite=True)(NeverWithTol)
    unregister_exit_criterion("never")
    assert "never" not in available_exit_criteria()
    with pytest.raises(UnknownPluginError, match="no exit criterion is registered"):
        unregister_exit_criterion("never")


def test_registering_something_that_is_no_criterion_factory_is_refused() -> None:
    class NotCallable:
        pass

    with pytest.raises(TypeError, match="has no __call__"):
        register_exit_criterion("bad")(NotCallable)
    with pytest.raises(TypeError, match="not callable"):
        register_exit_criterion("bad")(3)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="name must be letters"):
        register_exit_criterion("-bad")


def test_a_factorys_bad_parameter_is_reported_with_the_criterions_name() -> None:
    with pytest.raises(ValueError, match="exit criterion 'latent_change': tol must be >= 0"):
        get_exit_criterion("latent_change", -1.0)
    with pytest.raises(TypeError, match="exit criterion 'latent_change'"):
        get_exit_criterion("latent_change", 0.1, norm=2)


# --- plugins ------------------------------------------------------------------------------

PLUGIN = """
    import torch

    class Calm:
        '''Stop a row whose largest change is at most tol.'''

        def __init__(self, tol):
            self.tol = tol

        def __call__(self, previous, current, repeat, outputs=None):
            return (current - previous).flatten(1).abs().amax(dim=1) <= self.tol
"""


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake distribution declaring ``calm`` (good) and ``broken`` (fails to import)."""
    info = tmp_path / "calm_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: calm-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[stochdepth.exit_criteria]\ncalm = calm_plugin:Calm\nbroken = calm_broken:Nope\n"
    )
    (tmp_path / "calm_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "calm_broken.py").write_text("import no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refresh_exit_criteria()
    yield tmp_path
    for module in ("calm_plugin", "calm_broken"):
        sys.modules.pop(module, None)
    refresh_exit_criteria()


def test_a_plugin_criterion_is_found_by_name_and_a_broken_one_is_left_out(
    plugin_path: Path,
) -> None:
    criterion = get_exit_criterion("calm", 0.5)
    assert type(criterion).__name__ == "Calm"
    policy = ExitWhenConverged(0.5, 4, criterion="calm")
    assert type(policy.criterion).__name__ == "Calm"
    with pytest.warns(PluginWarning, match="broken"):
        names = available_exit_criteria()
    assert "calm" in names
    assert "broken" not in names
    with pytest.raises(PluginError, match="no_such_module"):
        get_exit_criterion("broken", 0.5)
