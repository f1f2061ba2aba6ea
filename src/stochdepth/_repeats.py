"""The ways a :class:`~stochdepth.RepeatedBlock` applies its layer: the repeat strategies.

A block picks one strategy at construction (:func:`strategy_for`) and calls it on every
forward pass: :class:`Skip` (the default, with or without checkpoints), :class:`Masked`
(one depth or one per row) or :class:`PerRow`. Each asks the block's
:class:`~stochdepth._depth.DepthChoice` for the depth in the form it needs and runs one
of the loops below.

* :func:`skip`: apply the layer ``depth`` times (``depth`` a Python int); the graph
  has exactly the repeats used. The default.
* :func:`masked`: apply the layer ``max_depth`` times and keep, at each repeat, the
  new value only where the repeat is within the depth (``torch.where``); the graph
  does not depend on the depth, which enters as a tensor (one per batch, or one per
  row).
* :func:`per_row`: each row of the batch has its own depth; at each repeat the layer
  runs only on the rows still active (a prefix of the rows sorted by depth), so the
  work follows the mean depth, not the maximum.
* :func:`segments`: split ``depth`` repeats into checkpointed segments
  (``torch.utils.checkpoint``, non-reentrant), so that only each segment's input is
  kept for the backward pass.

Every application checks that the layer returned a tensor of its input's shape; the
check raises through ``error(x, out, repeat, depth)``, which builds the message.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from typing_extensions import Protocol

from ._depth import DepthChoice, row_count

ShapeError = Callable[[Tensor, object, int, int], Exception]
"""Builds the error for a layer that changed its input's shape: ``(x, out, repeat, depth)``."""

_F = TypeVar("_F", bound=Callable[..., Any])


def outside_graph(function: _F) -> _F:
    """``torch.compiler.disable(function)``: Dynamo runs it eagerly, with a graph break.

    Used for what must happen on every call at run time, never once at trace time:
    drawing the depth, recording it, and the data-dependent per-row loop.
    """
    return cast(_F, torch.compiler.disable(function))  # type: ignore[no-untyped-call]


def skip(
    layer: nn.Module, x: Tensor, start: int, stop: int, depth: int, error: ShapeError
) -> Tensor:
    """Apply ``layer`` for repeats ``start..stop-1`` (of ``depth``); checks every output.

    Args:
        layer: The repeated module.
        x: The input of repeat ``start``.
        start: The first repeat's index.
        stop: One past the last repeat's index.
        depth: The total depth, for error messages.
        error: Builds the error raised when the layer changes the shape.

    Returns:
        The output of repeat ``stop - 1``; ``x`` itself when ``start >= stop``.
    """
    shape = x.shape
    for repeat in range(start, stop):
        out = layer(x)
        if not isinstance(out, Tensor) or out.shape != shape:
            raise error(x, out, repeat, depth)
        x = out
    return x


def run_checkpointed(layer: nn.Module, function: Callable[..., Any], *args: Any) -> Any:
    """``torch.utils.checkpoint`` of ``function(*args)``, with ``layer``'s buffers kept.

    The backward pass runs the segment's repeats again. A layer with buffers that its
    forward pass updates (BatchNorm's running statistics) would update them a second
    time there; in eager mode the recomputation restores them afterwards, so that
    checkpointing changes nothing but memory.
    """
    if torch.compiler.is_compiling() or next(layer.buffers(), None) is None:
        return checkpoint(function, *args, use_reentrant=False)
    return checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _buffers_restored(layer)),
    )


@contextlib.contextmanager
def _buffers_restored(layer: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``layer`` to its value on entry, on exit."""
    saved = [(buffer, buffer.detach().clone()) for buffer in layer.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def segment_length(depth: int, checkpoint_every: int | None) -> int:
    """How many repeats one checkpointed segment holds.

    Args:
        depth: The number of repeats.
        checkpoint_every: The segment length asked for, or ``None`` for
            ``ceil(sqrt(depth))``, which keeps ``O(sqrt(depth))`` activations alive.

    Returns:
        The segment length, at least 1.
    """
    if checkpoint_every is None:
        return max(1, math.isqrt(depth - 1) + 1) if depth > 0 else 1
    return checkpoint_every


def segments(
    layer: nn.Module,
    x: Tensor,
    depth: int,
    checkpoint_every: int | None,
    error: ShapeError,
) -> Tensor:
    """Apply ``layer`` ``depth`` times in checkpointed segments.

    During the forward pass each segment keeps only its input; the backward pass
    recomputes one segment at a time. The recomputation runs the same kernels on the
    same values, so the gradients are bitwise those of :func:`skip`.

    Args:
        layer: The repeated module.
        x: The input.
        depth: The number of repeats.
        checkpoint_every: Repeats per segment, or ``None`` for ``ceil(sqrt(depth))``.
        error: Builds the error raised when the layer changes the shape.

    Returns:
        The layer applied ``depth`` times; ``x`` itself at depth 0.
    """
    length = segment_length(depth, checkpoint_every)
    for start in range(0, depth, length):
        stop = min(start + length, depth)
        x = cast(Tensor, run_checkpointed(layer, skip, layer, x, start, stop, depth, error))
    return x


def masked(
    layer: nn.Module,
    x: Tensor,
    depth: Tensor,
    max_depth: int,
    error: ShapeError,
    *,
    checkpointed: bool = False,
    checkpoint_every: int | None = None,
) -> Tensor:
    """Apply ``layer`` ``max_depth`` times, keeping repeat ``i`` only where ``i < depth``.

    Args:
        layer: The repeated module; it runs ``max_depth`` times on every row.
        x: The input.
        depth: A 0-d integer tensor (one depth for the batch) or a 1-d one of
            ``x.shape[0]`` values (one depth per row), on ``x``'s device.
        max_depth: How many repeats the graph holds.
        error: Builds the error raised when the layer changes the shape.
        checkpointed: Whether to checkpoint the repeats in segments.
        checkpoint_every: Repeats per checkpointed segment, or ``None`` for
            ``ceil(sqrt(max_depth))``.

    Returns:
        Each row of ``x`` after its depth's repeats. The unused repeats contribute
            exact zeros to the gradients (not ``None``).
    """
    if depth.ndim == 1:
        depth = depth.view(-1, *([1] * (x.ndim - 1)))

    def run(x: Tensor, start: int, stop: int) -> Tensor:
        for repeat in range(start, stop):
            out = layer(x)
            if not isinstance(out, Tensor) or out.shape != x.shape:
                raise error(x, out, repeat, max_depth)
            x = torch.where(depth > repeat, out, x)
        return x

    if not checkpointed or not torch.is_grad_enabled():
        return run(x, 0, max_depth)
    length = segment_length(max_depth, checkpoint_every)
    for start in range(0, max_depth, length):
        stop = min(start + length, max_depth)
        x = cast(Tensor, run_checkpointed(layer, run, x, start, stop))
    return x


def per_row(
    layer: nn.Module,
    x: Tensor,
    depths: Tensor,
    error: ShapeError,
    *,
    checkpointed: bool = False,
    checkpoint_every: int | None = None,
) -> Tensor:
    """Apply ``layer`` to each row of ``x`` its own number of times, only where needed.

    The rows are sorted by depth, deepest first (one gather); repeat ``i`` then runs
    the layer on the prefix of rows whose depth exceeds ``i``, and the rows that stop
    there are set aside. One concatenation and one gather put the rows back in order.
    The layer runs on ``sum(depths)`` rows in all.

    Args:
        layer: The repeated module; it must treat rows (dimension 0) independently.
        x: The input, rows along dimension 0.
        depths: A CPU ``torch.int64`` tensor of ``x.shape[0]`` depths >= 0.
        error: Builds the error raised when the layer changes the shape.
        checkpointed: Whether to checkpoint the repeats in segments.
        checkpoint_every: Repeats per checkpointed segment, or ``None`` for
            ``ceil(sqrt(max(depths)))``.

    Returns:
        Each row of ``x`` after its depth's repeats; ``x`` itself when every depth is 0.
    """
    rows = x.shape[0]
    if rows == 0:
        return x
    counts = torch.bincount(depths)
    deepest = counts.numel() - 1
    # active[i]: how many rows have depth > i, for i in 0..deepest.
    active: list[int] = (rows - torch.cumsum(counts, 0)).tolist()
    checkpointed = checkpointed and torch.is_grad_enabled()
    if deepest == 0 or active[deepest - 1] == rows:  # every row has the same depth
        if checkpointed:
            return segments(layer, x, deepest, checkpoint_every, error)
        return skip(layer, x, 0, deepest, deepest, error)
    order = torch.argsort(depths, descending=True, stable=True).to(x.device)

    def run(h: Tensor, start: int, stop: int) -> tuple[Tensor, ...]:
        """Repeats ``start..stop-1``: the rows still active after them, and those done."""
        done = []
        for repeat in range(start, stop):
            out = layer(h)
            if not isinstance(out, Tensor) or out.shape != h.shape:
                raise error(h, out, repeat, deepest)
            keep = active[repeat + 1]
            h, finished = torch.split(out, [keep, out.shape[0] - keep])
            done.append(finished)
        return (h, *done)

    # split, not two slices: its backward is one concatenation, where each slice's
    # backward would fill a zero tensor of the whole input's size.
    h, done = torch.split(x.index_select(0, order), [active[0], rows - active[0]])
    pieces = [done]  # depth 0: the input rows themselves
    length = segment_length(deepest, checkpoint_every) if checkpointed else deepest
    for start in range(0, deepest, length):
        stop = min(start + length, deepest)
        if checkpointed:
            outputs = run_checkpointed(layer, run, h, start, stop)
        else:
            outputs = run(h, start, stop)
        h, *finished = cast(tuple[Tensor, ...], outputs)
        pieces.extend(finished)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows, device=order.device)
    return torch.cat(pieces[::-1]).index_select(0, inverse)


class Host(Protocol):
    """What a repeat strategy uses of its block."""

    @property
    def layer(self) -> nn.Module:
        """The repeated module."""
        ...

    @property
    def training(self) -> bool:
        """Whether the block is in training mode."""
        ...

    @property
    def _choice(self) -> DepthChoice: ...

    def _shape_error(self, x: Tensor, out: object, repeat: int, depth: int) -> Exception: ...

    def _depth_zero(self, x: Tensor) -> Tensor: ...


def _one_depth(choice: DepthChoice, depth: object, training: bool) -> int:
    return choice.one(depth, training)


# Under torch.compile the depth is chosen outside the compiled graph: a graph break
# here, so that every call draws anew (Dynamo would otherwise bake one draw into the
# graph) and the repeats after it compile to one graph per distinct depth.
_one_depth_outside_graph = outside_graph(_one_depth)


class Skip:
    """One depth for the batch; the layer runs exactly ``depth`` times.

    Args:
        checkpoint: ``False``, or checkpointed segments: ``True`` for
            ``ceil(sqrt(depth))`` repeats each, an int for that many.
    """

    def __init__(self, checkpoint: bool | int) -> None:
        self.checkpointed = checkpoint is not False
        self.every = None if checkpoint is True else int(checkpoint)

    def __call__(self, block: Host, x: Tensor, depth: object) -> Tensor:
        """Choose the depth and apply the layer that many times."""
        if torch.compiler.is_compiling():
            used = _one_depth_outside_graph(block._choice, depth, block.training)
        else:
            used = block._choice.one(depth, block.training)
        if used == 0:
            return block._depth_zero(x)
        if self.checkpointed and torch.is_grad_enabled():
            return segments(block.layer, x, used, self.every, block._shape_error)
        return skip(block.layer, x, 0, used, used, block._shape_error)


def _masked_depth(
    choice: DepthChoice, x: Tensor, depth: object, training: bool, per_row: bool
) -> Tensor:
    return choice.masked_depth(x, depth, training, per_row)


_masked_depth_outside_graph = outside_graph(_masked_depth)


class Masked:
    """The layer runs ``max_depth`` times; repeats beyond the depth are masked out.

    Args:
        checkpoint: As for :class:`Skip`.
        per_row: One depth per row (``per_sample=True``) instead of one for the batch.
    """

    def __init__(self, checkpoint: bool | int, per_row: bool) -> None:
        self.checkpointed = checkpoint is not False
        self.every = None if checkpoint is True else int(checkpoint)
        self.per_row = per_row

    def __call__(self, block: Host, x: Tensor, depth: object) -> Tensor:
        """Choose the depth as a tensor and apply the masked repeats."""
        choice = block._choice
        if isinstance(depth, Tensor):
            used = choice.given_tensor(x, depth, self.per_row)
        elif torch.compiler.is_compiling():
            used = _masked_depth_outside_graph(choice, x, depth, block.training, self.per_row)
        else:
            used = choice.masked_depth(x, depth, block.training, self.per_row)
        return masked(
            block.layer,
            x,
            used,
            choice.max_depth(),
            block._shape_error,
            checkpointed=self.checkpointed,
            checkpoint_every=self.every,
        )


class PerRow:
    """Skip mode with a depth per row: each repeat runs on the rows still active.

    Args:
        checkpoint: As for :class:`Skip`.
    """

    def __init__(self, checkpoint: bool | int) -> None:
        self.checkpointed = checkpoint is not False
        self.every = None if checkpoint is True else int(checkpoint)

    def __call__(self, block: Host, x: Tensor, depth: object) -> Tensor:
        """Choose the rows' depths and apply the layer to each row that many times."""
        if torch.compiler.is_compiling():
            return self._outside_graph(block, x, depth)
        return self._run(block, x, depth)

    def _run(self, block: Host, x: Tensor, depth: object) -> Tensor:
        depths = block._choice.rows(row_count(x), depth, block.training)
        out = per_row(
            block.layer,
            x,
            depths,
            block._shape_error,
            checkpointed=self.checkpointed,
            checkpoint_every=self.every,
        )
        # Every row at depth 0: a depth-0 pass of the whole batch (under DDP, say).
        return block._depth_zero(x) if out is x else out

    # Data-dependent row counts: run eagerly inside a compiled model (one graph break).
    _outside_graph = outside_graph(_run)


Strategy = Skip | Masked | PerRow
"""A repeat strategy: called as ``strategy(block, x, depth)``."""


def strategy_for(masked_mode: bool, per_sample: bool, checkpoint: bool | int) -> Strategy:
    """The strategy for a block's options, chosen once, at construction."""
    if masked_mode:
        return Masked(checkpoint, per_row=per_sample)
    if per_sample:
        return PerRow(checkpoint)
    return Skip(checkpoint)
