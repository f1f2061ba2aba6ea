"""The built-in exit criteria: a converged latent state, a converged output distribution."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional

from stochdepth._validation import check_int, check_real, describe


class LatentChange:
    """Stop a row when its state has stopped changing: a relative change at or below ``tol``.

    A row stops after a repeat when ``||current - previous|| <= tol * ||current||``,
    the norms taken over all of the row's elements (the row flattened), in the
    ``ord``-norm (2, the Euclidean norm, by default; ``math.inf`` for the largest
    absolute change). Written as a product, not a quotient, so that a state that is
    and stays zero counts as converged. The recurrent-depth model's latent-difference
    exit evaluator (repository seal-rg/recurrent-pretraining) uses this test with the
    Euclidean norm.

    Args:
        tol: The largest relative change that counts as converged, a real >= 0.
        ord: The norm's order: a real >= 1, or ``math.inf``.

    Raises:
        TypeError: An argument is not a real number.
        ValueError: ``tol`` is negative or not finite, or ``ord`` is below 1.

    Example:
        >>> import torch
        >>> from stochdepth import LatentChange
        >>> stop = LatentChange(0.01)
        >>> before = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> stop(before, torch.tensor([[1.0, 0.001], [0.0, 1.0]]), 0)
        tensor([ True, False])
    """

    reads_repeat = False  # the same answer at every repeat: a scheduler may ask rows at once

    def __init__(self, tol: float, ord: float = 2.0) -> None:
        self.tol = check_real("tol", tol, minimum=0.0)
        self.ord = _check_order(ord)

    def change(self, previous: Tensor, current: Tensor) -> Tensor:
        """The relative change of every row, ``||current - previous|| / ||current||``.

        Args:
            previous: The state before the repeat.
            current: The state after it.

        Returns:
            A float tensor of shape ``(rows,)`` (``inf`` for a row whose ``current`` is
            zero and whose ``previous`` is not, ``nan`` for one where both are zero).
        """
        step, size = self._norms(previous, current)
        return step / size

    def _norms(self, previous: Tensor, current: Tensor) -> tuple[Tensor, Tensor]:
        """Every row's ``||current - previous||`` and ``||current||``."""
        difference = current - previous
        # Rows of one dimension need no flattening (an operation less each).
        if difference.ndim != 2:
            difference = difference.flatten(1)
        if current.ndim != 2:
            current = current.flatten(1)
        step = torch.linalg.vector_norm(difference, self.ord, dim=1)
        return step, torch.linalg.vector_norm(current, self.ord, dim=1)

    def __call__(
        self,
        previous: Tensor,
        current: Tensor,
        repeat: int,
        outputs: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``True`` for the rows whose relative change is at or below ``tol``."""
        step, size = self._norms(previous, current)
        return step <= self.tol * size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatentChange):
            return NotImplemented
        return (self.tol, self.ord) == (other.tol, other.ord)

    def __hash__(self) -> int:
        return hash((LatentChange, self.tol, self.ord))

    def __repr__(self) -> str:
        order = "" if self.ord == 2.0 else f", ord={self.ord!r}"
        return f"LatentChange(tol={self.tol!r}{order})"


class OutputKL:
    """Stop a row when a head's output distribution has stopped changing.

    The head's outputs are logits over ``dim`` (a softmax makes them distributions). A
    row stops after a repeat when ``KL(previous || current) <= tol``, the KL divergence
    of the distribution before the repeat from the one after it, as the recurrent-depth
    model's KL exit evaluator computes it (repository seal-rg/recurrent-pretraining).
    An output with more than one distribution per row (one per position of a sequence)
    stops the row when every one of them has converged: the largest KL is compared.

    Needs :class:`~stochdepth.ExitWhenConverged`'s ``head``.

    Args:
        tol: The largest KL divergence, in nats, that counts as converged, a real >= 0.
        dim: The dimension of the head's output that holds the classes.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``tol`` is negative or not finite.

    Example:
        >>> import torch
        >>> from stochdepth import OutputKL
        >>> stop = OutputKL(1e-3)
        >>> before = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
        >>> after = torch.tensor([[2.0, 0.01], [0.0, 2.0]])
        >>> stop(before, after, 0, outputs=(before, after))
        tensor([ True, False])
    """

    needs_head = True
    reads_repeat = False  # the same answer at every repeat: a scheduler may ask rows at once

    def __init__(self, tol: float, dim: int = -1) -> None:
        self.tol = check_real("tol", tol, minimum=0.0)
        self.dim = check_int("dim", dim, minimum=None)

    def divergence(self, previous_output: Tensor, output: Tensor) -> Tensor:
        """``KL(previous || current)`` of every row (the largest, when a row has several).

        Args:
            previous_output: The head's logits on the state before the repeat.
            output: The head's logits on the state after it.

        Returns:
            A float tensor of shape ``(rows,)``.
        """
        before = functional.log_softmax(previous_output, dim=self.dim)
        after = functional.log_softmax(output, dim=self.dim)
        kl = (before.exp() * (before - after)).sum(dim=self.dim)
        return kl.reshape(kl.shape[0], -1).amax(dim=1) if kl.ndim > 1 else kl

    def __call__(
        self,
        previous: Tensor,
        current: Tensor,
        repeat: int,
        outputs: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``True`` for the rows whose output distribution moved by at most ``tol``."""
        if outputs is None:
            raise ValueError(
                "OutputKL compares a head's output distributions before and after each "
                "repeat, but got no outputs: give ExitWhenConverged(..., head=...)"
            )
        return self.divergence(*outputs) <= self.tol

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutputKL):
            return NotImplemented
        return (self.tol, self.dim) == (other.tol, other.dim)

    def __hash__(self) -> int:
        return hash((OutputKL, self.tol, self.dim))

    def __repr__(self) -> str:
        dim = "" if self.dim == -1 else f", dim={self.dim}"
        return f"OutputKL(tol={self.tol!r}{dim})"


def _check_order(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"ord must be a real >= 1 or math.inf, got {describe(value)}")
    order = float(value)
    if math.isnan(order) or order < 1:
        raise ValueError(f"ord must be a real >= 1 or math.inf, got {value!r}")
    return order
