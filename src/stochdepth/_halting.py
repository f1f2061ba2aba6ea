"""Learned halting (PonderNet): the halting distribution, its loss, and test-time depths.

PonderNet (Banino et al., 2021) gives a weight-shared layer a halting head: after the
``n``-th repeat it reads the state and says ``lambda_n``, the probability of halting
there given that no earlier step halted. These functions turn the heads' outputs into
what training and evaluation need, for a :class:`~stochdepth.RepeatedBlock` run in the
user's own loop (``block.iterate`` yields the states after each repeat):

* :func:`halting_distribution`: ``p_n = lambda_n * prod_{j<n} (1 - lambda_j)`` over
  the allowed steps, the last step taking what remains, so that it sums to 1;
* :func:`ponder_loss`: the expected task loss under ``p`` plus ``beta`` times
  ``KL(p || prior)``, the prior a geometric law (:class:`~stochdepth.GeometricDepth`);
* :func:`halting_depths`: the depth each row halts at, sampled from ``p`` or where its
  cumulative halting probability first reaches a threshold.

Column ``n - 1`` of a ``(rows, N)`` tensor always stands for step ``n``: the state after
``n`` repeats.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._validation import check_probability, check_real, describe

_TOLERANCE = 1e-6


def halting_distribution(lambdas: Tensor) -> Tensor:
    """The probability of halting at each step, from the per-step halting probabilities.

    ``p_n = lambda_n * prod_{j<n} (1 - lambda_j)`` for the steps ``n < N``, and
    ``p_N = prod_{j<N} (1 - lambda_j)``: the last allowed step takes the probability
    that no earlier step halted, whatever ``lambda_N`` says, so that every row's ``p``
    sums to 1. Differentiable in ``lambdas``.

    Args:
        lambdas: A float tensor of shape ``(..., N)``, ``N >= 1``, with values in
            ``[0, 1]`` (a sigmoid of the halting head's output): ``lambdas[..., n - 1]``
            is the probability of halting at step ``n`` given no earlier halt.

    Returns:
        ``p``, of the same shape, each row summing to 1.

    Raises:
        TypeError: ``lambdas`` is not a floating-point tensor.
        ValueError: ``lambdas`` is 0-d or has no step, or holds a value outside
            ``[0, 1]``.

    Example:
        >>> import torch
        >>> from stochdepth import halting_distribution
        >>> halting_distribution(torch.tensor([0.5, 0.5, 0.5]))
        tensor([0.5000, 0.2500, 0.2500])
    """
    _check_steps("lambdas", lambdas)
    if not torch.compiler.is_compiling() and lambdas.numel():
        low, high = (float(v) for v in torch.aminmax(lambdas.detach()))
        if not (low >= 0.0 and high <= 1.0):  # NaN fails both
            raise ValueError(
                f"lambdas must be probabilities in [0, 1], got values from {low} to {high}"
            )
    going = torch.cumprod(1.0 - lambdas, dim=-1)  # P(no halt at steps 1..n)
    # P(no halt before step n): 1 for the first step, then going shifted by one.
    before = torch.cat([torch.ones_like(going[..., :1]), going[..., :-1]], dim=-1)
    halting = lambdas * before
    return torch.cat([halting[..., :-1], before[..., -1:]], dim=-1)


def ponder_loss(
    task_losses: Tensor,
    halting: Tensor,
    prior: Any,
    beta: float,
) -> Tensor:
    """PonderNet's loss: the expected task loss under ``halting``, plus ``beta`` KL.

    ``mean over rows of [ sum_n p_n * L_n + beta * KL(p || prior) ]``, where ``L_n`` is
    the task loss of the output read after ``n`` repeats and
    ``KL(p || prior) = sum_n p_n * log(p_n / prior_n)`` (a step with ``p_n = 0`` adds
    nothing). The gradient reaches the layer through ``L_n`` and the halting head
    through ``p``.

    Args:
        task_losses: A tensor of shape ``(rows, N)``: row ``r``'s task loss at step
            ``n`` in column ``n - 1`` (``reduction="none"`` losses, stacked).
        halting: ``p``, of the same shape, from :func:`halting_distribution`.
        prior: The prior over the ``N`` steps: a sampler with a ``probabilities()``
            law over ``N`` depths, in depth order (``GeometricDepth(lambda_p,
            max_depth=N - 1)`` gives PonderNet's ``lambda_p (1 - lambda_p)^(n - 1)``
            for step ``n``, truncated and renormalised), or a tensor of shape ``(N,)``
            that sums to 1.
        beta: The weight of the KL term, a real >= 0.

    Returns:
        A 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type, or ``prior`` has no law.
        ValueError: The shapes differ, or ``prior`` has another number of steps, a
            negative value, or does not sum to 1.

    Example:
        >>> import torch
        >>> from stochdepth import GeometricDepth, halting_distribution, ponder_loss
        >>> p = halting_distribution(torch.full((2, 3), 0.5))
        >>> losses = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]])
        >>> prior = GeometricDepth(0.5, max_depth=2)  # 4/7, 2/7, 1/7
        >>> round(float(ponder_loss(losses, p, prior, beta=0.0)), 4)
        0.625
    """
    _check_steps("task_losses", task_losses)
    _check_steps("halting", halting)
    if task_losses.shape != halting.shape:
        raise ValueError(
            f"task_losses and halting must have the same shape (rows, steps), got "
            f"{tuple(task_losses.shape)} and {tuple(halting.shape)}"
        )
    beta = check_real("beta", beta, minimum=0.0)
    law = prior_vector(prior, halting.shape[-1]).to(halting)
    expected = (halting * task_losses).sum(dim=-1)
    if beta == 0.0:
        return expected.mean()
    return (expected + beta * kl_to_prior(halting, law)).mean()


def kl_to_prior(halting: Tensor, prior: Tensor) -> Tensor:
    """``KL(p || prior)`` of every row, ``sum_n p_n log(p_n / prior_n)``, with ``0 log 0 = 0``.

    Finite gradients where ``p_n = 0`` (its logarithm is clamped to the smallest
    normal number of the dtype, which the factor ``p_n = 0`` cancels).
    """
    tiny = torch.finfo(halting.dtype).tiny
    log_p = torch.log(halting.clamp_min(tiny))
    return (halting * (log_p - torch.log(prior))).sum(dim=-1)


def prior_vector(prior: Any, steps: int) -> Tensor:
    """The prior's probabilities over ``steps`` steps, as a float64 tensor of shape ``(steps,)``.

    Raises:
        TypeError: ``prior`` is neither a tensor nor has ``probabilities()``.
        ValueError: It has another number of steps, a negative value, or does not sum
            to 1.
    """
    if isinstance(prior, Tensor):
        law = prior.detach().to(dtype=torch.float64, device="cpu")
    elif callable(getattr(prior, "probabilities", None)):
        table = prior.probabilities()
        law = torch.tensor([table[depth] for depth in sorted(table)], dtype=torch.float64)
    else:
        raise TypeError(
            f"prior must be a tensor of shape (steps,) or a sampler with probabilities() "
            f"(GeometricDepth, say), got {describe(prior)}"
        )
    if law.shape != (steps,):
        raise ValueError(
            f"prior must give {steps} probabilities, one per step of halting, got "
            f"{tuple(law.shape)} from {prior!r}; "
            f"for GeometricDepth use max_depth={steps - 1}"
        )
    total = float(law.sum())
    if float(law.min()) < 0 or not math.isclose(total, 1.0, abs_tol=_TOLERANCE):
        raise ValueError(
            f"prior must be a probability law (values >= 0, summing to 1), got a sum of "
            f"{total} and a smallest value of {float(law.min())}"
        )
    return law.to(prior.device if isinstance(prior, Tensor) else "cpu")


def halting_depths(
    halting: Tensor,
    *,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The depth each row halts at: sampled from ``p``, or where it first reaches a threshold.

    Args:
        halting: ``p``, of shape ``(rows, N)``, from :func:`halting_distribution`.
        threshold: ``None`` to sample each row's step from ``p`` (PonderNet's own
            test-time rule); or a probability in ``(0, 1]``: the first step ``n`` whose
            cumulative halting probability ``p_1 + ... + p_n`` reaches it (0.5: the
            median step).
        generator: The ``torch.Generator`` to sample with (on ``halting``'s device).

    Returns:
        An int64 tensor of shape ``(rows,)`` of depths in ``[1, N]``.

    Raises:
        TypeError: ``halting`` is not a 2-d floating-point tensor.
        ValueError: ``threshold`` is not in ``(0, 1]``.

    Example:
        >>> import torch
        >>> from stochdepth import halting_depths
        >>> p = torch.tensor([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])
        >>> halting_depths(p, threshold=0.5)
        tensor([2, 1])
    """
    _check_steps("halting", halting)
    if halting.ndim != 2:
        raise TypeError(f"halting must have shape (rows, steps), got {tuple(halting.shape)}")
    p = halting.detach()
    if threshold is None:
        if p.shape[0] == 0:
            return torch.zeros(0, dtype=torch.int64, device=p.device)
        return torch.multinomial(p.clamp_min(0), 1, generator=generator).squeeze(1) + 1
    threshold = check_probability("threshold", threshold, allow_zero=False)
    reached = torch.cumsum(p, dim=-1) >= threshold - _TOLERANCE
    reached[:, -1] = True  # the last step takes what remains
    return reached.to(torch.int8).argmax(dim=-1).to(torch.int64) + 1


def _check_steps(name: str, value: object) -> None:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(value)}")
    if value.ndim == 0 or value.shape[-1] == 0:
        raise ValueError(
            f"{name} must have the steps along its last dimension (at least one), got "
            f"shape {tuple(value.shape)}"
        )
