"""The built-in exit criteria, LatentChange and OutputKL: what they compare, their parameters."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stochdepth import LatentChange, OutputKL

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
