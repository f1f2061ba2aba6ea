"""The early-exit loop: repeat until the criterion says stop, for the batch or row by row."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import Protocol, Self

from ._policy import ExitWhenConverged
from ._protocol import check_answers


class Repeat(Protocol):
    """One repeat of the layer, as the block applies it (its extra arguments bound)."""

    def __call__(self, x: Tensor, repeat: int, depth: int) -> Tensor:
        """Apply repeat ``repeat`` (0-based, of at most ``depth``) to the state ``x``."""
        ...

    def take(self, index: Tensor) -> Self:
        """The same repeat for the rows ``index`` of the batch (row-aligned arguments cut)."""
        ...


def until_converged(
    apply: Repeat, x: Tensor, policy: ExitWhenConverged, per_row: bool
) -> tuple[Tensor, int | Tensor]:
    """Repeat ``apply`` on ``x`` until ``policy``'s criterion stops it, or ``max_depth``.

    A depth per position (``per_token=True``) is :func:`token_by_token`'s.

    Args:
        apply: One repeat.
        x: The input, rows along dimension 0.
        policy: The criterion, the head and the depth bounds.
        per_row: Stop each row on its own, running later repeats only on the rows
            still going; otherwise the batch stops when every row may.

    Returns:
        The output and the depth used: an int, or with ``per_row`` a CPU int64 tensor
        of the rows' depths.
    """
    if per_row:
        return _row_by_row(apply, x, policy)
    return _whole_batch(apply, x, policy)


def _whole_batch(apply: Repeat, x: Tensor, policy: ExitWhenConverged) -> tuple[Tensor, int]:
    previous, previous_output = x, None
    for repeat in range(policy.max_depth):
        current = apply(previous, repeat, policy.max_depth)
        if policy.min_depth <= repeat + 1 < policy.max_depth:
            stop, previous_output = _ask(policy, previous, current, repeat, previous_output)
            if bool(stop.all()):
                return current, repeat + 1
        previous = current
    return previous, policy.max_depth


def _row_by_row(apply: Repeat, x: Tensor, policy: ExitWhenConverged) -> tuple[Tensor, Tensor]:
    rows = x.shape[0]
    depths = torch.full((rows,), policy.max_depth, dtype=torch.int64)
    if rows == 0:
        return x, depths
    index = torch.arange(rows, device=x.device)
    pieces: list[Tensor] = []
    places: list[Tensor] = []
    previous, previous_output = x, None
    running = apply  # the repeat for the rows still going
    for repeat in range(policy.max_depth):
        current = running(previous, repeat, policy.max_depth)
        if policy.min_depth <= repeat + 1 < policy.max_depth:
            stop, output = _ask(policy, previous, current, repeat, previous_output)
            if bool(stop.any()):
                going = ~stop
                pieces.append(current[stop])
                places.append(index[stop])
                depths[index[stop].cpu()] = repeat + 1
                current, index = current[going], index[going]
                output = None if output is None else output[going]
                if index.numel() == 0:
                    break
                running = apply.take(index)
            previous_output = output
        previous = current
    else:
        pieces.append(previous)
        places.append(index)
    order = torch.cat(places)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows, device=order.device)
    return torch.cat(pieces).index_select(0, inverse), depths


def token_by_token(
    apply: Repeat, x: Tensor, policy: ExitWhenConverged
) -> tuple[Tensor, Tensor, int]:
    """Each position of a ``(batch, seq, ...)`` state stops on its own, its state then frozen.

    The layer keeps running on every position until all have stopped; a stopped
    position's state stays as it was. Per repeat asked: the criterion on the positions
    as rows (the state after the previous repeat flattened once), and one host read of
    how many stop; the depths tensor is written only when some positions stop and others
    go on, the ``where`` that freezes them runs only from then on.

    Args:
        apply: One repeat.
        x: The input, of shape ``(batch, seq, ...)``.
        policy: The criterion, the head and the depth bounds.

    Returns:
        The output; the positions' depths, a CPU int64 tensor of shape ``(batch, seq)``;
        and the repeats run, the deepest depth (``0`` for a state without elements).
    """
    batch, seq = x.shape[0], x.shape[1]
    depths: Tensor | None = None  # made when the first positions stop
    going: Tensor | None = None  # None while every position is going (no mask needed)
    going_rows: Tensor | None = None  # going, one entry per position
    running = batch * seq if x.numel() else 0
    shape = (batch, seq, *([1] * (x.ndim - 2)))
    previous, previous_output = x, None
    previous_rows: Tensor | None = None  # previous, flattened to positions as rows
    for repeat in range(policy.max_depth):
        current = apply(previous, repeat, policy.max_depth)
        if going is not None:
            current = torch.where(going.view(shape), current, previous)
        current_rows = None
        if policy.min_depth <= repeat + 1 < policy.max_depth and running:
            if previous_rows is None:
                previous_rows = previous.flatten(0, 1)
            current_rows = current.flatten(0, 1)
            stop, output = _ask(policy, previous_rows, current_rows, repeat, previous_output)
            if going_rows is not None:
                stop = stop & going_rows
            stopped = _count(stop)
            if stopped == running:  # the last positions going stop here
                if depths is None:
                    depths = torch.full((batch, seq), repeat + 1, dtype=torch.int64)
                else:
                    depths[stop.view(batch, seq).cpu()] = repeat + 1
                return current, depths, repeat + 1
            if stopped:
                grid = stop.view(batch, seq)
                if depths is None:
                    depths = torch.full((batch, seq), policy.max_depth, dtype=torch.int64)
                depths[grid.cpu()] = repeat + 1
                going = ~grid if going is None else going & ~grid
                going_rows = going.view(-1)
                running -= stopped
            previous_output = output
        previous, previous_rows = current, current_rows
    if depths is None:
        depths = torch.full((batch, seq), policy.max_depth, dtype=torch.int64)
    return previous, depths, policy.max_depth if running else 0


_FEW = 64  # a list is a cheaper host read than a reduction for a few answers, not many


def _count(stop: Tensor) -> int:
    """How many of the criterion's (checked, bool) answers are ``True``: one host read."""
    if stop.numel() <= _FEW:
        return sum(stop.tolist())
    return int(stop.count_nonzero())


def _ask(
    policy: ExitWhenConverged,
    previous: Tensor,
    current: Tensor,
    repeat: int,
    previous_output: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """The criterion's answer for the rows of ``current``, and the head's output on it."""
    head = policy.head
    outputs = None
    output = None
    if head is not None:
        if previous_output is None:
            previous_output = head(previous)
        output = head(current)
        outputs = (previous_output, output)
    stop = policy.exit_criterion(previous, current, repeat, outputs)
    stop = check_answers(stop, current.shape[0], "the exit criterion", policy.criterion, repeat + 1)
    return stop, output
