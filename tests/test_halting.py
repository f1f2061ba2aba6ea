"""PonderNet's learned halting: the halting distribution, the loss and test-time depths."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from stochdepth import GeometricDepth, halting_depths, halting_distribution, ponder_loss

lambdas_strategy = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12).map(
    lambda values: torch.tensor(values, dtype=torch.float64)
)


@given(lambdas_strategy)
def test_the_halting_distribution_sums_to_one_over_the_allowed_steps(lambdas: torch.Tensor) -> None:
    p = halting_distribution(lambdas)
    assert p.shape == lambdas.shape
    assert (p >= 0).all()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)


@given(lambdas_strategy)
def test_each_step_is_lambda_times_no_earlier_halt(lambdas: torch.Tensor) -> None:
    p = halting_distribution(lambdas)
    values = lambdas.tolist()
    for n in range(len(values) - 1):
        expected = values[n] * math.prod(1 - v for v in values[:n])
        assert float(p[n]) == pytest.approx(expected, abs=1e-12)
    assert float(p[-1]) == pytest.approx(math.prod(1 - v for v in values[:-1]), abs=1e-12)


def test_rows_are_independent() -> None:
    lambdas = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.2, 0.3]])
    p = halting_distribution(lambdas)
    torch.testing.assert_close(p[0], torch.tensor([0.5, 0.25, 0.25]))
    torch.testing.assert_close(p[1], torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_the_kl_term_equals_its_closed_form(lam: float, steps: int) -> None:
    # A constant lambda gives p_n = lam (1 - lam)^(n - 1) for n < N and (1 - lam)^(N - 1)
    # for n = N; the prior is GeometricDepth's truncated law q_n = lp (1 - lp)^(n - 1) / Z.
    prior_p = 0.25
    lambdas = torch.full((3, steps), lam, dtype=torch.float64)
    p = halting_distribution(lambdas)
    zeros = torch.zeros_like(p)
    kl = float(ponder_loss(zeros, p, GeometricDepth(prior_p, max_depth=steps - 1), beta=1.0))
    z = 1 - (1 - prior_p) ** steps
    expected = 0.0
    for n in range(1, steps + 1):
        pn = lam * (1 - lam) ** (n - 1) if n < steps else (1 - lam) ** (steps - 1)
        qn = prior_p * (1 - prior_p) ** (n - 1) / z
        expected += pn * math.log(pn / qn)
    assert kl == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_the_loss_is_the_expected_task_loss_plus_beta_kl() -> None:
    lambdas = torch.tensor([[0.2, 0.7, 0.4], [0.9, 0.1, 0.5]], dtype=torch.float64)
    p = halting_distribution(lambdas)
    losses = torch.tensor([[3.0, 1.0, 0.5], [2.0, 2.0, 0.0]], dtype=torch.float64)
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    kl = (p * (p / prior).log()).sum(dim=1)
    expected = ((p * losses).sum(dim=1) + 0.1 * kl).mean()
    torch.testing.assert_close(ponder_loss(losses, p, prior, beta=0.1), expected)


def test_a_step_of_zero_probability_adds_nothing_and_keeps_gradients_finite() -> None:
    lambdas = torch.tensor([[1.0, 0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    p = halting_distribution(lambdas)
    loss = ponder_loss(torch.ones_like(p), p, GeometricDepth(0.5, max_depth=2), beta=1.0)
    expected = 1.0 + math.log(1.0 / (4 / 7))
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert lambdas.grad is not None
    assert torch.isfinite(lambdas.grad).all()


def test_gradients_reach_the_halting_head_and_the_layer() -> None:
    torch.manual_seed(0)
    layer, halt, readout = nn.Linear(4, 4), nn.Linear(4, 1), nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    states, h = [], x
    for _ in range(5):
        h = torch.tanh(layer(h))
        states.append(h)
    stacked = torch.stack(states, dim=1)  # (rows, steps, width)
    lambdas = torch.sigmoid(halt(stacked)).squeeze(-1)
    logits = readout(stacked)
    losses = nn.functional.cross_entropy(
        logits.flatten(0, 1), y.repeat_interleave(5), reduction="none"
    ).view(8, 5)
    loss = ponder_loss(losses, halting_distribution(lambdas), GeometricDepth(0.3, 4), beta=0.01)
    loss.backward()
    for module in (layer, halt, readout):
        for parameter in module.parameters():
            assert parameter.grad is not None
            assert parameter.grad.abs().sum() > 0


def test_threshold_depths_are_where_the_cumulative_probability_first_reaches_it() -> None:
    p = torch.tensor([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])
    assert halting_depths(p, threshold=0.5).tolist() == [2, 1, 3, 1]
    assert halting_depths(p, threshold=1.0).tolist() == [3, 3, 3, 3]
    assert halting_depths(p, threshold=0.05).tolist() == [1, 1, 1, 1]


def test_sampled_depths_follow_the_halting_distribution() -> None:
    p = torch.tensor([[0.2, 0.5, 0.3]]).expand(20_000, 3)
    generator = torch.Generator().manual_seed(0)
    depths = halting_depths(p, generator=generator)
    assert set(depths.tolist()) <= {1, 2, 3}
    frequencies = torch.bincount(depths, minlength=4)[1:].double() / depths.numel()
    # 20 000 draws: the standard error of each frequency is below 0.004.
    torch.testing.assert_close(
        frequencies, torch.tensor([0.2, 0.5, 0.3]).double(), atol=0.02, rtol=0
    )


def test_bad_input_is_refused_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"lambdas must be probabilities in \[0, 1\]"):
        halting_distribution(torch.tensor([0.5, 1.5]))
    with pytest.raises(TypeError, match="lambdas must be a floating-point tensor"):
        halting_distribution([0.5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lambdas must have the steps"):
        halting_distribution(torch.tensor(0.5))
    p = halting_distribution(torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="for GeometricDepth use max_depth=2"):
        ponder_loss(torch.zeros(2, 3), p, GeometricDepth(0.5, max_depth=3), beta=0.1)
    with pytest.raises(ValueError, match="same shape"):
        ponder_loss(torch.zeros(2, 4), p, GeometricDepth(0.5, max_depth=2), beta=0.1)
    with pytest.raises(ValueError, match="summing to 1"):
        ponder_loss(torch.zeros(2, 3), p, torch.tensor([0.5, 0.5, 0.5]), beta=0.1)
    with pytest.raises(TypeError, match="prior must be a tensor"):
        ponder_loss(torch.zeros(2, 3), p, "geometric", beta=0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        ponder_loss(torch.zeros(2, 3), p, GeometricDepth(0.5, max_depth=2), beta=-1.0)
    with pytest.raises(ValueError, match=r"threshold must be a probability in \(0, 1\]"):
        halting_depths(p, threshold=0.0)
