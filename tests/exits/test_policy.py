"""ExitWhenConverged: its criterion from a name or an object, and its checks."""

from __future__ import annotations

import pickle

import pytest

import stochdepth
from stochdepth import ExitWhenConverged, LatentChange, UnknownPluginError

from support.fakes import Never

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
        ({"tol": 0.1, "max_depth": 3, "criterion": "nope"}, UnknownPluginError, "nope"),
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
