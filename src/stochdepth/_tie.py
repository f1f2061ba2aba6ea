"""Depth 0 under DDP: the identity that keeps a skipped layer's parameters in the graph.

Why DDP needs it and what it changes: the docs' Distributed training page, "Depth 0 under
DDP" (the one place the story is told). :class:`ZeroGradTie` is an identity that lists
the skipped layer's parameters as inputs and gives them no gradient, so that DDP's hooks
fire for them; the block calls :func:`tie_skipped_layer` on its depth-0 training path,
and it ties only inside a DDP forward pass (a single process, FSDP and eval mode are
untouched).
This module imports nothing of stochdepth's: the block imports it, and so does
``stochdepth._distributed`` (``SkippedLayerTie``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


class ZeroGradTie(torch.autograd.Function):
    """Identity on ``x`` that makes ``params`` part of the graph with no gradient.

    Its backward returns ``None`` for the parameters: autograd still runs their
    gradient accumulators, so DDP's hooks fire and their bucket is reduced, but
    nothing is accumulated (outside DDP their ``.grad`` stays ``None``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, *params: Tensor) -> Tensor:
        ctx.parameter_count = len(params)
        # A copy, not a view: an in-place op after the block (ReLU(inplace=True))
        # may not modify a view returned by a custom Function.
        return x.clone()

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        return (grad_outputs[0], *([None] * ctx.parameter_count))


class ZeroGradSource(torch.autograd.Function):
    """Identity on ``x`` that sends a zero gradient to ``source``, which ``x`` came from.

    A pass whose first repeats ran without autograd (``grad_depth`` below the depth)
    returns a state that no longer depends on the block's input, so the layers before
    the block get no gradient through it; inside DDP, their buckets would never be
    reduced. Zeros sent back to ``source`` make autograd reach them, so DDP's hooks fire
    (zeros, not ``x * 0``, so that a non-finite input cannot poison the gradient).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, source: Tensor) -> Tensor:
        ctx.source_like = (source.shape, source.dtype, source.device)
        return x.clone()  # a copy, as in ZeroGradTie

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor, Tensor]:
        shape, dtype, device = ctx.source_like
        return grad_outputs[0], torch.zeros(shape, dtype=dtype, device=device)


def tie(x: Tensor, params: list[nn.Parameter]) -> Tensor:
    """``x``, tied to ``params`` through :class:`ZeroGradTie` (``x`` itself without params)."""
    if not params:
        return x
    return ZeroGradTie.apply(x, *params)  # type: ignore[no-untyped-call,no-any-return]


def process_group_up() -> bool:
    """Whether a default ``torch.distributed`` process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def in_ddp_forward() -> bool:
    """Whether a ``DistributedDataParallel`` forward pass is running, with gradients on."""
    active = getattr(DistributedDataParallel, "_active_ddp_module", None)
    return active is not None and torch.is_grad_enabled()


def tie_skipped_layer(layer: nn.Module, x: Tensor) -> Tensor:
    """What a training block that skipped ``layer`` returns: ``x``, tied inside DDP.

    Inside a DDP forward pass with gradients enabled, ``x`` goes through
    :class:`ZeroGradTie` with the layer's trainable parameters (one copy of ``x``);
    anywhere else it is ``x`` itself.
    """
    if not in_ddp_forward():
        return x
    return tie(x, [p for p in layer.parameters() if p.requires_grad])


def tie_cut_input(out: Tensor, source: Tensor) -> Tensor:
    """``out``, whose repeats started without autograd, tied to the block's input inside DDP.

    Inside a DDP forward pass with gradients enabled, and ``source`` needing a
    gradient, ``out`` goes through :class:`ZeroGradSource` (one copy of ``out``), so
    that the layers before the block are reduced; anywhere else it is ``out`` itself.
    """
    if not (in_ddp_forward() and source.requires_grad):
        return out
    return ZeroGradSource.apply(out, source)  # type: ignore[no-untyped-call,no-any-return]
