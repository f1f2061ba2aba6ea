"""One repeat of a block, applied from outside it: the one place a driver calls the layer.

A driver (the scheduler) applies the block's layer one repeat at a time, to rows that
may stand at different repeats. It goes through :meth:`RepeatedBlock.step` where the
block has it (the public seam of issue 19); on a block without it, it builds the layer
call that the block's forward pass builds (extra arguments, ``step_kwarg``, ``output=``
reading, shape check) from the block's public options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from stochdepth._block import RepeatedBlock
from stochdepth._layer_call import LayerCall, RowArgs, summarize

Repeat = Callable[[Tensor, tuple[Any, ...], dict[str, Any], int], Tensor]
"""``repeat(state, args, kwargs, index)``: one repeat of a block, as its forward pass applies it."""


def repeat_of(block: RepeatedBlock) -> Repeat:
    """How a driver applies one repeat of ``block``, looked up once (not at every repeat).

    Through :meth:`RepeatedBlock.step` where the block has it; otherwise through the
    layer call the block's forward pass builds, from its public options.
    """
    step = getattr(block, "step", None)
    if callable(step):

        def seam(
            state: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], index: int
        ) -> Tensor:
            out: Tensor = step(state, *args, repeat=index, **kwargs)
            return out

        return seam
    layer, step_kwarg, output = block.layer, block.step_kwarg, block.output

    def call(state: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> Tensor:
        apply = LayerCall(layer, args, kwargs, RowArgs(None), step_kwarg, output, _shape_error)
        return apply(state, index, index + 1)

    return call


def _shape_error(x: Tensor, out: object, repeat: int, depth: int) -> Exception:
    what = "RepeatedBlock's layer must give a next state of its input's shape"
    if not isinstance(out, Tensor):
        return TypeError(f"{what}, but it gave {summarize(out)} at repeat {repeat + 1}")
    return ValueError(
        f"{what}, but it turned an input of shape {tuple(x.shape)} into "
        f"{tuple(out.shape)} at repeat {repeat + 1}"
    )
