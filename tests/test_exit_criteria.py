"""Exit criteria: the built-ins, the protocol, the registry and ExitWhenConverged's checks."""

from __future__ import annotations

import math
import pickle
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import stochdepth
from stochdepth import (
    ExitCriterion,
    ExitCriterionPluginError,
    ExitCriterionPluginWarning,
    ExitWhenConverged,
    LatentChange,
    OutputKL,
    UnknownExitCriterionError,
    available_exit_criteria,
    get_exit_criterion,
    refresh_exit_criteria,
    register_exit_criterion,
    unregister_exit_criterion,
)
from stochdepth.exits import _registry


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    registered = _registry.EXIT_CRITERIA.snapshot()
    yield
    _registry.EXIT_CRITERIA.restore(registered)
    _registry.EXIT_CRITERIA.refresh()


class Never:
    """A criterion that never stops a row."""

    def __call__(self, previous, current, repeat, outputs=None):  # type: ignore[no-untyped-def]
        return torch.zeros(current.shape[0], dtype=torch.bool)


# --- the built-ins ---------------------------------------------------------------------


@given(
    st.integers(1, 5),
    st.integers(1, 6),
    st.floats(0.0, 2.0),
    st.sampled_from([1.0, 2.0, 3.0, math.inf]),
    st.integers(0, 2**16),
)
def test_latent_change_compares_each_rows_relative_change_with_tol(
    rows: int, width: int, tol: float, order: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    previous = torch.randn(rows, 2, width, generator=generator, dtype=torch.float64)
    current = previous + 0.5 * torch.randn(rows, 2, width, generator=generator, dtype=torch.float64)
    stop = LatentChange(tol, ord=order)(previous, current, 0)
    assert stop.dtype == torch.bool
    assert stop.shape == (rows,)
    for row in range(rows):
        change = torch.linalg.vector_norm((current[row] - previous[row]).flatten(), order)
        size = torch.linalg.vector_norm(current[row].flatten(), order)
        assert bool(stop[row]) == bool(change <= tol * size)


def test_latent_change_counts_a_zero_state_that_stays_zero_as_converged() -> None:
    zeros = torch.zeros(2, 3)
    assert LatentChange(0.0)(zeros, zeros, 0).tolist() == [True, True]
    assert LatentChange(0.5)(torch.ones(2, 3), zeros, 0).tolist() == [False, False]
    change = LatentChange(0.1).change(torch.ones(1, 2), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(change, torch.tensor([0.5]))


def test_output_kl_is_the_divergence_of_the_previous_distribution_from_the_new_one() -> None:
    before = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    after = torch.tensor([[1.0, 0.2, -1.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    p, q = before.softmax(-1), after.softmax(-1)
    expected = (p * (p / q).log()).sum(-1)
    criterion = OutputKL(0.01)
    torch.testing.assert_close(criterion.divergence(before, after), expected)
    assert criterion(before, after, 3, (before, after)).tolist() == (expected <= 0.01).tolist()


def test_output_kl_stops_a_row_with_several_distributions_when_all_have_converged() -> None:
    before = torch.zeros(2, 4, 3)  # two rows, four positions, three classes
    after = before.clone()
    after[1, 2] = torch.tensor([5.0, 0.0, 0.0])  # one position of row 1 still moves
    assert OutputKL(1e-3)(before, after, 0, (before, after)).tolist() == [True, False]


def test_output_kl_without_outputs_says_it_needs_a_head() -> None:
    with pytest.raises(ValueError, match=r"give ExitWhenConverged\(\.\.\., head=\.\.\.\)"):
        OutputKL(0.1)(torch.zeros(1, 2), torch.zeros(1, 2), 0)


def test_the_builtins_compare_and_hash_by_their_parameters() -> None:
    assert LatentChange(0.1) == LatentChange(0.1) != LatentChange(0.1, ord=1)
    assert OutputKL(0.1) == OutputKL(0.1) != OutputKL(0.1, dim=1)
    assert len({LatentChange(0.1), LatentChange(0.1), OutputKL(0.1)}) == 2
    assert repr(LatentChange(0.1, ord=math.inf)) == "LatentChange(tol=0.1, ord=inf)"


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: LatentChange(-0.1), ValueError, "tol must be >= 0.0"),
        (lambda: LatentChange("0.1"), TypeError, "tol must be a real number"),
        (lambda: LatentChange(0.1, ord=0.5), ValueError, "ord must be a real >= 1"),
        (lambda: OutputKL(math.nan), ValueError, "tol must be finite"),
        (lambda: OutputKL(0.1, dim=1.5), TypeError, "dim must be an int"),
    ],
)
def test_bad_parameters_are_refused(build, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        build()


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
    with pytest.raises(UnknownExitCriterionError, match="did you mean 'latent_change'") as info:
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
    with pytest.raises(UnknownExitCriterionError, match="no exit criterion is registered"):
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
    with pytest.warns(ExitCriterionPluginWarning, match="broken"):
        names = available_exit_criteria()
    assert "calm" in names
    assert "broken" not in names
    with pytest.raises(ExitCriterionPluginError, match="no_such_module"):
        get_exit_criterion("broken", 0.5)


# --- ExitWhenConverged -------------------------------------------------------------------


def test_exit_when_converged_builds_its_criterion_from_the_name_and_tol() -> None:
    policy = ExitWhenConverged(1e-3, 20)
    assert policy.criterion == LatentChange(1e-3)
    assert (policy.tol, policy.max_depth, policy.min_depth, policy.head) == (1e-3, 20, 1, None)
    assert policy == ExitWhenConverged(1e-3, 20, criterion="latent_change")
    assert policy != ExitWhenConverged(1e-4, 20)
    assert pickle.loads(pickle.dumps(policy)) == policy
    with pytest.raises(AttributeError):
        policy.tol = 0.5  # type: ignore[misc]


def test_exit_when_converged_takes_a_criterion_object_with_tol_none() -> None:
    never = Never()
    assert ExitWhenConverged(None, 4, criterion=never).criterion is never
    with pytest.raises(TypeError, match="tol must be None with a criterion object"):
        ExitWhenConverged(0.1, 4, criterion=never)
    with pytest.raises(TypeError, match="tol must be a real >= 0 for the criterion"):
        ExitWhenConverged(None, 4)


def test_a_criterion_that_is_neither_name_nor_callable_is_named_even_with_a_tol() -> None:
    # The default tol is given positionally in most calls: the error must name the
    # criterion that is wrong, not ask for tol=None.
    with pytest.raises(TypeError, match=r"criterion must be .* got 3 of type int"):
        ExitWhenConverged(0.1, 4, criterion=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tol": 0.1, "max_depth": 0}, ValueError, "max_depth must be an int >= 1"),
        (
            {"tol": 0.1, "max_depth": 3, "min_depth": 4},
            ValueError,
            "min_depth must be <= max_depth=3",
        ),
        ({"tol": 0.1, "max_depth": 3, "min_depth": 0}, ValueError, "min_depth must be an int >= 1"),
        ({"tol": -0.1, "max_depth": 3}, ValueError, "tol must be >= 0"),
        ({"tol": 0.1, "max_depth": 3, "criterion": "nope"}, UnknownExitCriterionError, "nope"),
        ({"tol": 0.1, "max_depth": 3, "criterion": "output_kl"}, ValueError, "give head="),
        ({"tol": 0.1, "max_depth": 3, "head": 3}, TypeError, "head must be a callable"),
        ({"tol": None, "max_depth": 3, "criterion": LatentChange}, TypeError, "got the class"),
        ({"tol": None, "max_depth": 3, "criterion": 3}, TypeError, "criterion must be"),
    ],
)
def test_exit_when_converged_refuses_bad_arguments(kwargs, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        ExitWhenConverged(**kwargs)


def test_the_public_names_are_shown_as_stochdepths() -> None:
    assert ExitWhenConverged.__module__ == "stochdepth"
    assert stochdepth.LatentChange.__module__ == "stochdepth"
