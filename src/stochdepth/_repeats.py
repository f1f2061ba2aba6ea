"""The ways a :class:`~stochdepth.RepeatedBlock` applies its layer: the repeat strategies.

A block picks one strategy at construction (:func:`strategy_for`) and calls it on every
forward pass: :class:`Skip` (the default, with or without checkpoints), :class:`Masked`
(one depth or one per row) or :class:`PerRow`. Each is handed the input and
a :class:`Pass` (the block's :class:`~stochdepth._depth.DepthChoice`, ``grad_depth``,
the layer call and the pass's options), asks for the depth in the form it needs and
runs one of the loops below.

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
* :func:`repeats`: the first ``depth - k`` repeats without autograd (``grad_depth``),
  the rest with it, checkpointed or not.

Every repeat goes through a :class:`~stochdepth._layer_call.LayerCall`, which passes
the extra arguments and checks the next state's shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._depth import DepthChoice, row_count
from ._grad_depth import GradDepth
from ._layer_call import LayerCall
from ._tie import tie_cut_input

_F = TypeVar("_F", bound=Callable[..., Any])


def outside_graph(function: _F) -> _F:
    """``torch.compiler.disable(function)``: Dynamo runs it eagerly, with a graph break.

    Used for what must happen on every call at run time, never once at trace time:
    drawing the depth, recording it, and the data-dependent per-row loop.
    """
    return cast(_F, torch.compiler.disable(function))  # type: ignore[no-untyped-call]


def skip(call: LayerCall, x: Tensor, start: int, stop: int, depth: int) -> Tensor:
    """Apply repeats ``start..stop-1`` (of ``depth``) through ``call``.

    Args:
        call: Applies one repeat to the state and checks the next state's shape.
        x: The input of repeat ``start``.
        start: The first repeat's index.
        stop: One past the last repeat's index.
        depth: The total depth, for error messages.

    Returns:
        The output of repeat ``stop - 1``; ``x`` itself when ``start >= stop``.
    """
    for repeat in range(start, stop):
        x = call(x, repeat, depth)
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
    call: LayerCall, x: Tensor, start: int, depth: int, checkpoint_every: int | None
) -> Tensor:
    """Apply repeats ``start..depth-1`` through ``call`` in checkpointed segments.

    During the forward pass each segment keeps only its input; the backward pass
    recomputes one segment at a time. The recomputation runs the same kernels on the
    same values, so the gradients are bitwise those of :func:`skip`.

    Args:
        call: Applies one repeat.
        x: The input of repeat ``start``.
        start: The first repeat's index.
        depth: The total depth.
        checkpoint_every: Repeats per segment, or ``None`` for the square root of the
            number of repeats.

    Returns:
        The output of the last repeat; ``x`` itself when ``start >= depth``.
    """
    length = segment_length(depth - start, checkpoint_every)
    for first in range(start, depth, length):
        stop = min(first + length, depth)
        x = cast(Tensor, run_checkpointed(call.layer, skip, call, x, first, stop, depth))
    return x


def repeats(
    call: LayerCall,
    x: Tensor,
    depth: int,
    frozen: int,
    checkpointed: bool,
    checkpoint_every: int | None,
) -> Tensor:
    """Apply ``depth`` repeats, the first ``frozen`` of them without autograd.

    Args:
        call: Applies one repeat.
        x: The input.
        depth: The number of repeats.
        frozen: How many leading repeats run under ``torch.no_grad()`` (``grad_depth``).
        checkpointed: Whether to checkpoint the recorded repeats in segments.
        checkpoint_every: Repeats per segment, or ``None`` for the square root.

    Returns:
        The output of the last repeat; ``x`` itself at depth 0.
    """
    if frozen:
        with torch.no_grad():
            x = skip(call, x, 0, frozen, depth)
    if checkpointed and torch.is_grad_enabled():
        return segments(call, x, frozen, depth, checkpoint_every)
    return skip(call, x, frozen, depth, depth)


def masked(
    call: LayerCall,
    x: Tensor,
    depth: Tensor,
    max_depth: int,
    *,
    checkpointed: bool = False,
    checkpoint_every: int | None = None,
) -> Tensor:
    """Apply the layer ``max_depth`` times, keeping repeat ``i`` only where ``i < depth``.

    Args:
        call: Applies one repeat; it runs ``max_depth`` times on every row.
        x: The input.
        depth: A 0-d integer tensor (one depth for the batch) or a 1-d one of
            ``x.shape[0]`` values (one depth per row), on ``x``'s device.
        max_depth: How many repeats the graph holds.
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
            x = torch.where(depth > repeat, call(x, repeat, max_depth), x)
        return x

    if not checkpointed or not torch.is_grad_enabled():
        return run(x, 0, max_depth)
    length = segment_length(max_depth, checkpoint_every)
    for start in range(0, max_depth, length):
        stop = min(start + length, max_depth)
        x = cast(Tensor, run_checkpointed(call.layer, run, x, start, stop))
    return x


def per_row(
    call: LayerCall,
    x: Tensor,
    depths: Tensor,
    *,
    grad_depth: int | None = None,
    checkpointed: bool = False,
    checkpoint_every: int | None = None,
    everywhere: Tensor | None = None,
) -> Tensor:
    """Apply the layer to each row of ``x`` its own number of times, only where needed.

    The rows are sorted by depth, deepest first (one gather); repeat ``i`` then runs
    the layer on the prefix of rows whose depth exceeds ``i``, and the rows that stop
    there are set aside. One concatenation and one gather put the rows back in order.
    The layer runs on ``sum(depths)`` rows in all. Row-aligned arguments are sorted
    and cut with the rows.

    With ``grad_depth = k`` each row's first ``depth - k`` repeats run without
    autograd: at repeat ``i`` the rows whose depth exceeds ``i + k`` (a prefix of the
    active rows) run under ``torch.no_grad()``, the others with autograd.

    Args:
        call: Applies one repeat; the layer must treat rows (dimension 0)
            independently.
        x: The input, rows along dimension 0.
        depths: A CPU ``torch.int64`` tensor of ``x.shape[0]`` depths >= 0.
        grad_depth: How many of each row's last repeats autograd records (``None``:
            all of them).
        checkpointed: Whether to checkpoint the repeats in segments.
        checkpoint_every: Repeats per checkpointed segment, or ``None`` for
            ``ceil(sqrt(max(depths)))``.
        everywhere: The depths of the global batch's rows when ``depths`` are this
            rank's chunk of them (``row_draws="global"``), else ``None``. Then every
            rank makes the same layer calls, in the same order, whatever its own rows
            (a call may have no rows): the global batch's deepest row sets the number
            of repeats, and whether a repeat runs with autograd, without, or both
            (two calls) is the global batch's choice. FSDP2 needs it when the layer
            is sharded on its own: each call unshards it, a collective.

    Returns:
        Each row of ``x`` after its depth's repeats; ``x`` itself when every depth is 0.
    """
    rows = x.shape[0]
    if everywhere is None:
        everywhere = depths
    total = everywhere.shape[0]
    if total == 0:
        return x
    overall = torch.bincount(everywhere)
    deepest = overall.numel() - 1
    # active[i]: how many rows have depth > i, for i in 0..deepest (this rank's rows);
    # reach[i]: the same for the global batch's rows (this rank's when not sharded).
    reach: list[int] = (total - torch.cumsum(overall, 0)).tolist()
    counts = torch.bincount(depths, minlength=deepest + 1)
    active: list[int] = (rows - torch.cumsum(counts, 0)).tolist()
    checkpointed = checkpointed and torch.is_grad_enabled()
    if grad_depth is not None and not torch.is_grad_enabled():
        grad_depth = None
    if deepest == 0 or reach[deepest - 1] == total:  # every row has the same depth
        frozen = max(deepest - grad_depth, 0) if grad_depth is not None else 0
        return repeats(call, x, deepest, frozen, checkpointed, checkpoint_every)
    order = torch.argsort(depths, descending=True, stable=True).to(x.device)
    call = call.take(order)

    def frozen_rows(rows_above: list[int], repeat: int) -> int:
        """How many of the active rows run repeat ``repeat`` without autograd."""
        if grad_depth is None or repeat + grad_depth > deepest:
            return 0
        return rows_above[repeat + grad_depth]

    def run(h: Tensor, start: int, stop: int) -> tuple[Tensor, ...]:
        """Repeats ``start..stop-1``: the rows still active after them, and those done."""
        done = []
        for repeat in range(start, stop):
            live = active[repeat]
            frozen = frozen_rows(active, repeat)
            # Decided on the global batch's rows, so that every rank calls alike.
            frozen_anywhere = frozen_rows(reach, repeat)
            if frozen_anywhere == 0:
                out = call.narrow(0, live)(h, repeat, deepest)
            elif frozen_anywhere == reach[repeat]:
                with torch.no_grad():
                    out = call.narrow(0, live)(h, repeat, deepest)
            else:
                with torch.no_grad():
                    still = call.narrow(0, frozen)(h[:frozen], repeat, deepest)
                out = torch.cat([still, call.narrow(frozen, live)(h[frozen:], repeat, deepest)])
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
            outputs = run_checkpointed(call.layer, run, h, start, stop)
        else:
            outputs = run(h, start, stop)
        h, *finished = cast(tuple[Tensor, ...], outputs)
        pieces.extend(finished)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows, device=order.device)
    return torch.cat(pieces[::-1]).index_select(0, inverse)


DepthZero = Callable[[Tensor], Tensor]
"""The block's depth-0 path: what a pass that left the layer unused returns for ``x``."""


class Pass(NamedTuple):
    """What a strategy is handed for one forward pass, besides the input: built once a pass.

    Every strategy is called as ``strategy(x, run)``.

    Attributes:
        choice: The block's depth choice (the sampler, the eval policy, the limits).
        grad: The block's ``grad_depth``.
        call: Applies one repeat of the layer (a :class:`~stochdepth._layer_call.LayerCall`).
        depth: The depth given to the pass, or ``None`` to choose one.
        training: The block's mode.
        zero: The block's depth-0 path.
        record: Whether the depth goes into ``last_depth`` and the histogram.
    """

    choice: DepthChoice
    grad: GradDepth
    call: LayerCall
    depth: object
    training: bool
    zero: DepthZero
    record: bool = True


def _choose(
    choice: DepthChoice, grad: GradDepth, depth: object, training: bool, record: bool
) -> tuple[int, int | None]:
    return choice.one(depth, training, record), grad.draw()


# Under torch.compile the depth is chosen outside the compiled graph: a graph break
# here, so that every call draws anew (Dynamo would otherwise bake one draw into the
# graph) and the repeats after it compile to one graph per distinct depth.
_choose_outside_graph = outside_graph(_choose)


class Skip:
    """One depth for the batch; the layer runs exactly ``depth`` times.

    Every strategy is called as ``strategy(x, run)``, ``run`` a :class:`Pass`.

    Args:
        checkpoint: ``False``, or checkpointed segments: ``True`` for
            ``ceil(sqrt(depth))`` repeats each, an int for that many.
    """

    def __init__(self, checkpoint: bool | int) -> None:
        self.checkpointed = checkpoint is not False
        self.every = None if checkpoint is True else int(checkpoint)

    def __call__(self, x: Tensor, run: Pass) -> Tensor:
        """Choose the depth and apply the layer that many times."""
        choice, grad, call, depth, training, zero, record = run
        if torch.compiler.is_compiling():
            used, k = _choose_outside_graph(choice, grad, depth, training, record)
        else:
            used, k = choice.one(depth, training, record), grad.draw()
        if used == 0:
            return zero(x)
        frozen = frozen_repeats(used, k)
        if frozen == 0 and not self.checkpointed:
            for repeat in range(used):
                x = call(x, repeat, used)
            return x
        out = repeats(call, x, used, frozen, self.checkpointed, self.every)
        if frozen:  # the state no longer depends on x: DDP must still reach what made x
            out = tie_cut_input(out, x)
        # Every repeat ran without autograd: the layer got no gradient, as at depth 0.
        return zero(out) if frozen == used else out


def frozen_repeats(depth: int, grad_depth: int | None) -> int:
    """How many leading repeats of ``depth`` run without autograd (``grad_depth``)."""
    if grad_depth is None or not torch.is_grad_enabled():
        return 0
    return max(depth - grad_depth, 0)


def _masked_depth(
    choice: DepthChoice, x: Tensor, depth: object, training: bool, per_row: bool, record: bool
) -> Tensor:
    return choice.masked_depth(x, depth, training, per_row, record)


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

    def __call__(self, x: Tensor, run: Pass) -> Tensor:
        """Choose the depth as a tensor and apply the masked repeats."""
        choice, _, call, depth, training, _, record = run
        if isinstance(depth, Tensor):
            used = choice.given_tensor(x, depth, self.per_row, record)
        elif torch.compiler.is_compiling():
            used = _masked_depth_outside_graph(choice, x, depth, training, self.per_row, record)
        else:
            used = choice.masked_depth(x, depth, training, self.per_row, record)
        return masked(
            call,
            x,
            used,
            choice.max_depth(),
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

    def __call__(self, x: Tensor, run: Pass) -> Tensor:
        """Choose the rows' depths and apply the layer to each row that many times."""
        if torch.compiler.is_compiling():
            return self._outside_graph(x, run)
        return self._run(x, run)

    def _run(self, x: Tensor, run: Pass) -> Tensor:
        choice, grad, call, depth, training, zero, record = run
        depths = choice.rows(row_count(x), depth, training, record)
        k = grad.draw()
        out = per_row(
            call,
            x,
            depths,
            grad_depth=k,
            checkpointed=self.checkpointed,
            checkpoint_every=self.every,
            everywhere=choice.everywhere,
        )
        if k is not None and torch.is_grad_enabled() and bool((depths > k).any()):
            out = tie_cut_input(out, x)  # some rows' states no longer depend on x: as in Skip
        if out is x or (k == 0 and torch.is_grad_enabled()):
            # Every row at depth 0, or every repeat without autograd: the layer got no
            # gradient, a depth-0 pass of the whole batch (tied under DDP, say).
            return zero(out)
        return out

    # Data-dependent row counts: run eagerly inside a compiled model (one graph break).
    _outside_graph = outside_graph(_run)


Strategy = Skip | Masked | PerRow
"""A repeat strategy, called as ``strategy(x, run)`` with ``run`` a :class:`Pass`."""


def strategy_for(masked_mode: bool, per_sample: bool, checkpoint: bool | int) -> Strategy:
    """The strategy for a block's options, chosen once, at construction."""
    if masked_mode:
        return Masked(checkpoint, per_row=per_sample)
    if per_sample:
        return PerRow(checkpoint)
    return Skip(checkpoint)
