"""Per-token depth: a depth for every position of a ``(batch, seq, ...)`` state.

With ``RepeatedBlock(..., per_token=True)`` every position ``(b, t)`` has its own depth.
A position's state is frozen once its depth is reached, while the layer keeps seeing
every position (attention reads the frozen states of the positions that stopped), as
Universal Transformers copy halted states forward. A forward pass is the hand loop::

    for r in range(max(depth)):
        h = torch.where(r < depth, layer(h), h)

so the layer runs ``max(depth)`` times on the whole sequence (``sampler.max_depth`` times
in masked mode, whose graph does not depend on the depth).

A key/value cache that follows the block's repeats (:class:`~stochdepth.DepthCache`)
needs, for a later token, the keys and values of a stopped position at the repeats it
did not run: under these semantics they are those computed from its frozen state, the
same at every later repeat. So when a pass stops before the deepest repeat a later pass
may run, or runs no repeat at all, the block applies the layer once more to the frozen
states for the cache (:func:`~stochdepth._cache_writes.freeze_for_caches`), or, after a
pass that ran a repeat, hands that application to the cache, which runs it when a later,
deeper repeat first reads those positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._cache_writes import freeze_for_caches
from ._depth import DepthChoice
from ._repeats import Pass, masked, outside_graph
from ._validation import check_int
from .exits._policy import ExitWhenConverged
from .samplers._draws import draw_batch

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def positions(x: Tensor) -> tuple[int, int]:
    """The ``(batch, seq)`` of a per-token state; refuses one with fewer than 2 dimensions."""
    if x.ndim < 2:
        raise ValueError(
            f"per_token=True gives every position of a (batch, seq, ...) state its own "
            f"depth, but x has shape {tuple(x.shape)}"
        )
    return x.shape[0], x.shape[1]


def token_depths(
    choice: DepthChoice, x: Tensor, depth: object, training: bool, record: bool = True
) -> Tensor:
    """The positions' depths, a ``(batch, seq)`` int64 tensor on ``x``'s device.

    Drawn from the sampler in training mode (``sampler.sample_batch``, one draw per
    position) or with ``eval_depth="sample"``, the eval policy's otherwise, or ``depth``
    (an int, or an integer tensor of shape ``(batch, seq)``) checked. With ``record``,
    recorded in ``last_depth``, and in training mode in the histogram.
    """
    shape = positions(x)
    if isinstance(depth, Tensor):
        if depth.dtype not in _INTEGER_DTYPES or tuple(depth.shape) != shape:
            raise TypeError(
                f"depth must be an int or an integer tensor of shape {shape} (batch, seq) "
                f"with per_token=True, got a tensor of dtype {depth.dtype} and shape "
                f"{tuple(depth.shape)}"
            )
        depths = depth.to(dtype=torch.int64)
    elif depth is None and (training or choice.eval_depth == "sample"):
        depths = draw_batch(choice.sampler, shape[0] * shape[1]).view(shape)
    else:
        value = check_int("depth", depth) if depth is not None else choice.eval_value()
        depths = torch.full(shape, value, dtype=torch.int64)
    if depths.numel() and not torch.compiler.is_compiling():
        low, high = (int(value) for value in torch.aminmax(depths))
        if low < 0:
            raise ValueError(f"depth must be >= 0, got a tensor holding {low}")
        if high > choice.depth_limit:
            raise choice.limit_error(high, depth is not None)
        if choice.masked:
            choice.check_within_max(high)
    if record:
        if torch.compiler.is_compiling():  # a given tensor in masked mode: no counts
            choice.last = depths
        else:
            choice.record(depths, training)
    return depths.to(x.device)


_token_depths_outside_graph = outside_graph(token_depths)


def broadcastable(depths: Tensor, x: Tensor) -> Tensor:
    """``depths`` ``(batch, seq)`` viewed as ``(batch, seq, 1, ...)`` to broadcast with ``x``."""
    return depths.view(*depths.shape, *([1] * (x.ndim - 2)))


def deepest_possible(choice: DepthChoice, training: bool, given: bool) -> int:
    """The deepest repeat count a pass of this kind could run (for a cache's later reads)."""
    policy = choice.eval_depth
    if training or given or policy in ("max", "sample"):
        return int(choice.sampler.max_depth)
    if policy == "min":
        return int(choice.sampler.min_depth)
    if isinstance(policy, int):
        return policy
    if isinstance(policy, ExitWhenConverged):
        return policy.max_depth
    return int(choice.sampler.max_depth)


class PerToken:
    """A depth per position; the layer sees every position at every repeat (``where``).

    Args:
        masked_mode: Run ``sampler.max_depth`` repeats whatever the depths (one graph),
            instead of ``max(depth)``.
        checkpoint: As for :class:`~stochdepth._repeats.Skip`.
    """

    def __init__(self, masked_mode: bool, checkpoint: bool | int) -> None:
        self.masked_mode = masked_mode
        self.checkpointed = checkpoint is not False
        self.every = None if checkpoint is True else int(checkpoint)

    def __call__(self, x: Tensor, run: Pass) -> Tensor:
        """Choose the positions' depths and apply the frozen-state repeats.

        Called as the block's other strategies are (see
        :class:`~stochdepth._repeats.Pass`); ``run.grad`` is unused (``grad_depth`` is
        refused with ``per_token=True``).
        """
        choice, call, depth, training, zero, record = (
            run.choice,
            run.call,
            run.depth,
            run.training,
            run.zero,
            run.record,
        )
        if torch.compiler.is_compiling() and not (self.masked_mode and isinstance(depth, Tensor)):
            depths = _token_depths_outside_graph(choice, x, depth, training, record)
        else:
            depths = token_depths(choice, x, depth, training, record)
        repeats = choice.max_depth() if self.masked_mode else _deepest(depths)
        if repeats == 0:
            out = zero(x)
        else:
            out = masked(
                call,
                x,
                broadcastable(depths, x),
                repeats,
                checkpointed=self.checkpointed,
                checkpoint_every=self.every,
            )
        if not torch.compiler.is_compiling() and (not training or repeats == 0):
            # A depth-0 pass tells a cache its positions in training mode too.
            deepest = 0 if training else deepest_possible(choice, False, depth is not None)
            freeze_for_caches(call, out, repeats, deepest)
        return out


@outside_graph
def _deepest(depths: Tensor) -> int:
    return int(depths.max()) if depths.numel() else 0
