"""The extension point: what an exit criterion is, and the checks made of it and its answers."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import Protocol, runtime_checkable

from stochdepth._validation import describe


@runtime_checkable
class ExitCriterion(Protocol):
    """Says, after a repeat, which rows of a batch may stop: "should these rows stop now?".

    Any callable with this signature is a criterion; it need not inherit from anything.
    :class:`~stochdepth.ExitWhenConverged` calls it after every repeat from its
    ``min_depth`` on, with the rows still running only.

    An optional member extends it: ``needs_head = True`` says that the criterion reads
    the head's outputs, so that :class:`~stochdepth.ExitWhenConverged` refuses it
    without a ``head``.
    Another, ``reads_repeat = False``, says that its answer does not depend on the
    ``repeat`` argument (the built-in criteria), so that
    :class:`~stochdepth.DepthScheduler` may ask rows at different depths in one call;
    without it the scheduler calls the criterion once per depth among its rows.

    Example:
        >>> import torch
        >>> import stochdepth
        >>> class CloseToZero:
        ...     def __call__(self, previous, current, repeat, outputs=None):
        ...         return current.flatten(1).abs().amax(dim=1) < 0.1
        >>> isinstance(CloseToZero(), stochdepth.ExitCriterion)
        True
        >>> CloseToZero()(torch.ones(2, 3), torch.tensor([[0.0, 0, 0], [1, 0, 0]]), 0)
        tensor([ True, False])
    """

    def __call__(
        self,
        previous: Tensor,
        current: Tensor,
        repeat: int,
        outputs: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Say which rows stop after this repeat.

        Args:
            previous: The state before the repeat (the block's input before the
                first), rows along dimension 0.
            current: The state after it, of the same shape.
            repeat: The repeat's 0-based index: ``current`` is the state after
                ``repeat + 1`` repeats.
            outputs: The head's outputs on ``previous`` and on ``current``, when the
                policy has a head; ``None`` otherwise.

        Returns:
            A bool tensor of shape ``(rows,)``: ``True`` for a row that stops here.
        """
        ...


def check_criterion(criterion: object, name: str = "criterion") -> ExitCriterion:
    """Check once that ``criterion`` is callable as an :class:`ExitCriterion`.

    Args:
        criterion: The object to check.
        name: The argument's name, for error messages.

    Returns:
        ``criterion``, typed as an :class:`ExitCriterion`.

    Raises:
        TypeError: ``criterion`` is a class rather than an instance, or is not callable.
    """
    if isinstance(criterion, type):
        raise TypeError(
            f"{name} must be an exit criterion instance or a registered name, got the class "
            f"{criterion.__name__}; did you mean {criterion.__name__}(...)?"
        )
    if not isinstance(criterion, ExitCriterion):
        raise TypeError(
            f"{name} must be a registered exit criterion's name or a callable "
            f"(previous, current, repeat, outputs) -> bool tensor, got {describe(criterion)}"
        )
    return criterion


def needs_head(criterion: object) -> bool:
    """Whether ``criterion`` reads a head's outputs (its optional ``needs_head``)."""
    return bool(getattr(criterion, "needs_head", False))


def check_answers(
    answers: object, rows: int, kind: str, source: object, repeat: int | None = None
) -> Tensor:
    """``answers`` if it is a bool tensor of shape ``(rows,)``, one per row; else a TypeError.

    The one check of what an exit criterion or a halting rule returns. The error names
    ``kind`` and ``source`` (``"the exit criterion"``, the criterion) and, when given,
    the repeat it answered after; the message is built only when the check fails.
    """
    if isinstance(answers, Tensor) and answers.dtype == torch.bool and answers.shape == (rows,):
        return answers
    shown = (
        f"a tensor of dtype {answers.dtype} and shape {tuple(answers.shape)}"
        if isinstance(answers, Tensor)
        else describe(answers)
    )
    at = "" if repeat is None else f" at repeat {repeat}"
    raise TypeError(
        f"{kind} {source!r} must return a bool tensor of shape ({rows},), one answer per "
        f"row, but returned {shown}{at}"
    )
