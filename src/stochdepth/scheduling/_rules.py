"""Halting rules: which rows of a batch, each at its own depth, stop after this repeat.

The scheduler asks its rule after every repeat, about every row in flight, with each
row's depth so far. A rule may keep a tensor of its own per row (``memory``): the
scheduler starts it for each new row with :meth:`HaltingRule.start`, keeps it row by
row as rows come and go, and hands it back at the next repeat.

* :class:`ConvergedRule` adapts :class:`~stochdepth.ExitWhenConverged` (any exit
  criterion, with its head and ``min_depth``), so that a scheduled row stops where
  the block's own early exit would stop it alone;
* :class:`~stochdepth.PonderHalting` stops a row where its cumulative PonderNet halting
  probability reaches a threshold, the rule of :func:`~stochdepth.halting_depths`;
* :class:`~stochdepth.ACTHalting` (``_act.py``, adapted by its ``ACTRule``) stops a
  row when its learned halt logit says "the answer is already right".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from typing_extensions import Protocol, runtime_checkable

from stochdepth._halting import _TOLERANCE
from stochdepth._validation import check_int, check_probability, describe
from stochdepth.exits._policy import ExitWhenConverged
from stochdepth.exits._protocol import check_answers

from ._act import ACTHalting, ACTRule


@runtime_checkable
class HaltingRule(Protocol):
    """Says, after a repeat, which rows of a batch stop, each row at its own depth.

    What :class:`~stochdepth.DepthScheduler` asks after every repeat. Any object with
    these two methods is a rule; an optional ``max_depth`` attribute (an int) is the
    scheduler's default ``max_depth``.

    Example:
        >>> import torch
        >>> import stochdepth
        >>> class Small:
        ...     def start(self, x):
        ...         return None
        ...     def __call__(self, previous, current, depth, memory):
        ...         return current.flatten(1).abs().amax(dim=1).cpu() < 0.1, memory
        >>> isinstance(Small(), stochdepth.HaltingRule)
        True
    """

    def start(self, x: Tensor) -> Tensor | None:
        """The rule's memory for new rows, before their first repeat.

        Args:
            x: The new rows' inputs, rows along dimension 0.

        Returns:
            A tensor with a row per row of ``x``, or ``None`` for a rule without memory.
        """
        ...

    def __call__(
        self, previous: Tensor, current: Tensor, depth: Tensor, memory: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Say which rows stop after this repeat, and update their memory.

        Args:
            previous: Every row's state before the repeat.
            current: Every row's state after it.
            depth: A CPU int64 tensor of shape ``(rows,)``: how many repeats each row
                has had, this one included (``>= 1``).
            memory: The rows' memory, as :meth:`start` and the last call left it.

        Returns:
            A CPU bool tensor of shape ``(rows,)``, ``True`` for a row that stops,
                and the rows' new memory.
        """
        ...


def check_stop(stop: object, rows: int, rule: object) -> Tensor:
    """``stop`` as a CPU bool tensor of shape ``(rows,)``, or an error naming ``rule``."""
    return check_answers(stop, rows, "the halting rule", rule).cpu()


class RunToMax:
    """No rule: every row runs to its depth limit (``max_depth`` or its own depth)."""

    def start(self, x: Tensor) -> None:
        """No memory."""
        return

    def __call__(
        self, previous: Tensor, current: Tensor, depth: Tensor, memory: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """No row stops early."""
        return torch.zeros(depth.shape, dtype=torch.bool), memory

    def __repr__(self) -> str:
        return "RunToMax()"


class ConvergedRule:
    """:class:`~stochdepth.ExitWhenConverged` for rows at different depths.

    A row is asked from depth ``min_depth`` on and below ``max_depth``, as the block's
    early exit asks it. A criterion with ``reads_repeat = False`` (the built-in ones) is
    called once for every row; any other is called once per group of rows at the same
    depth, with that repeat's index, so that it sees what it would see alone.

    Args:
        policy: The early-exit policy.
    """

    def __init__(self, policy: ExitWhenConverged) -> None:
        self.policy = policy
        self.max_depth = policy.max_depth
        self._criterion = policy.exit_criterion
        self._one_call = not getattr(self._criterion, "reads_repeat", True)

    def start(self, x: Tensor) -> Tensor | None:
        """The head's output on the input (the criterion's first ``previous`` output)."""
        head = self.policy.head
        return None if head is None else head(x)

    def __call__(
        self, previous: Tensor, current: Tensor, depth: Tensor, memory: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The criterion's answer for the rows it may stop; the head's output on them."""
        head = self.policy.head
        output = None if head is None else head(current)
        asked = (depth >= self.policy.min_depth) & (depth < self.policy.max_depth)
        stop = torch.zeros(depth.shape, dtype=torch.bool)
        if not bool(asked.any()):
            return stop, output
        groups: list[tuple[int, Tensor | None]]
        if self._one_call:
            groups = [(int(depth[asked][0]), None)]
        else:
            groups = [
                (int(d), torch.nonzero(asked & (depth == d)).squeeze(1))
                for d in torch.unique(depth[asked]).tolist()
            ]
        for repeat_depth, rows in groups:
            outputs = None
            if rows is None:
                before, after = previous, current
                if output is not None and memory is not None:
                    outputs = (memory, output)
            else:
                index = rows.to(current.device)
                before, after = previous.index_select(0, index), current.index_select(0, index)
                if output is not None and memory is not None:
                    outputs = (memory.index_select(0, index), output.index_select(0, index))
            answer = self._criterion(before, after, repeat_depth - 1, outputs)
            answer = check_stop(answer, after.shape[0], self.policy.criterion)
            if rows is None:
                stop = answer
            else:
                stop[rows] = answer
        return stop & asked, output

    def __repr__(self) -> str:
        return f"ConvergedRule({self.policy!r})"


class PonderHalting:
    """Stop a row where its PonderNet halting probability first reaches ``threshold``.

    After repeat ``n`` the head gives ``lambda_n``, the probability of halting there
    given no earlier halt. The row keeps ``P(no halt so far)`` and its cumulative
    halting probability ``p_1 + ... + p_n`` (``p_n = lambda_n * P(no halt before n)``)
    and stops at the first ``n`` where the sum reaches ``threshold``: the depth that
    :func:`~stochdepth.halting_depths` gives with ``threshold=`` on
    :func:`~stochdepth.halting_distribution` of the same ``lambda``'s, computed one
    repeat at a time, so that the scheduler can use it.

    Args:
        head: Maps a batch of states to ``lambda``, one probability per row (a
            sigmoid at its end, as PonderNet's halting head).
        max_depth: The most repeats (PonderNet's ``N``): the scheduler's default
            ``max_depth``, where the last step takes what remains.
        threshold: The cumulative probability to reach, in ``(0, 1]`` (0.5: the
            median step).

    Raises:
        TypeError: ``head`` is not callable, or an argument has the wrong type.
        ValueError: ``max_depth`` is below 1 or ``threshold`` is not in ``(0, 1]``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import DepthScheduler, PonderHalting, RepeatedBlock
        >>> block = RepeatedBlock(nn.Identity())
        >>> rule = PonderHalting(lambda s: torch.sigmoid(s.sum(dim=1)), max_depth=6)
        >>> results = DepthScheduler(block, 2, halting=rule).run(torch.tensor([[2.0], [-3.0]]))
        >>> [r.depth for r in results]  # lambda = 0.88 halts at once; 0.047 needs 6 steps
        [1, 6]
    """

    def __init__(
        self, head: Callable[[Tensor], Tensor], *, max_depth: int, threshold: float = 0.5
    ) -> None:
        if not callable(head):
            raise TypeError(f"head must be a callable (an nn.Module, say), got {describe(head)}")
        self.head = head
        self.max_depth = check_int("max_depth", max_depth, minimum=1)
        self.threshold = check_probability("threshold", threshold, allow_zero=False)

    def start(self, x: Tensor) -> Tensor:
        """``(rows, 2)``: ``P(no halt so far) = 1`` and the cumulative probability 0."""
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        memory = torch.zeros(x.shape[0], 2, dtype=dtype, device=x.device)
        memory[:, 0] = 1.0
        return memory

    def __call__(
        self, previous: Tensor, current: Tensor, depth: Tensor, memory: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Add this repeat's halting probability; stop the rows that reach the threshold."""
        if memory is None:  # pragma: no cover - the scheduler always starts the memory
            memory = self.start(current)
        lambdas = self.head(current)
        rows = current.shape[0]
        if not isinstance(lambdas, Tensor) or lambdas.numel() != rows:
            raise TypeError(
                f"PonderHalting's head must return one probability per row ({rows}), got "
                f"{tuple(lambdas.shape) if isinstance(lambdas, Tensor) else describe(lambdas)}"
            )
        lambdas = lambdas.reshape(rows).to(memory.dtype)
        if rows:
            low, high = (float(v) for v in torch.aminmax(lambdas))
            if not (low >= 0.0 and high <= 1.0):
                raise ValueError(
                    f"PonderHalting's head must return probabilities in [0, 1], got values "
                    f"from {low} to {high}"
                )
        going, total = memory[:, 0], memory[:, 1]
        total = total + lambdas * going
        going = going * (1.0 - lambdas)
        stop = (total >= self.threshold - _TOLERANCE).cpu()
        return stop, torch.stack([going, total], dim=1)

    def __repr__(self) -> str:
        return f"PonderHalting(max_depth={self.max_depth}, threshold={self.threshold!r})"


def as_rule(halting: object) -> HaltingRule:
    """The halting rule for a scheduler's ``halting=`` argument.

    Raises:
        TypeError: ``halting`` is neither ``None``, an ``ExitWhenConverged`` nor a
            :class:`HaltingRule`.
    """
    if halting is None:
        return RunToMax()
    if isinstance(halting, ExitWhenConverged):
        return ConvergedRule(halting)
    if isinstance(halting, ACTHalting):
        return ACTRule(halting)
    if isinstance(halting, type):
        raise TypeError(
            f"halting must be a rule instance, got the class {halting.__name__}; did you mean "
            f"{halting.__name__}(...)?"
        )
    if not isinstance(halting, HaltingRule):
        raise TypeError(
            f"halting must be None, an ExitWhenConverged policy, or a halting rule (an "
            f"ACTHalting, a PonderHalting, or an object with start(x) and "
            f"__call__(previous, current, depth, memory)), got {describe(halting)}"
        )
    return halting
