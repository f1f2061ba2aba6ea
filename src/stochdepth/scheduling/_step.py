"""One repeat of a block, applied from outside it: the one place a driver calls the layer.

A driver (the scheduler) applies the block's layer one repeat at a time, to rows that
may stand at different repeats. It goes through :meth:`RepeatedBlock.step` where the
block has it (the public seam of issue 19); on a block without it, it builds the layer
call that the block's forward pass builds (extra arguments, ``step_kwarg``, ``output=``
reading, shape check) from the block's public options.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from stochdepth._block import RepeatedBlock
from stochdepth._layer_call import LayerCall, RowArgs, summarize


def apply_repeat(
    block: RepeatedBlock, state: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], repeat: int
) -> Tensor:
    """Apply repeat ``repeat`` (0-based) of ``block`` to ``state``, as its forward pass would.

    Raises:
        TypeError: The layer returned something other than a tensor.
        ValueError: The layer changed the state's shape.
    """
    step = getattr(block, "step", None)
    if callable(step):
        out: Tensor = step(state, *args, repeat=repeat, **kwargs)
        return out
    call = LayerCall(
        block.layer, args, kwargs, RowArgs(None), block.step_kwarg, block.output, _shape_error
    )
    return call(state, repeat, repeat + 1)


def _shape_error(x: Tensor, out: object, repeat: int, depth: int) -> Exception:
    what = "RepeatedBlock's layer must give a next state of its input's shape"
    if not isinstance(out, Tensor):
        return TypeError(f"{what}, but it gave {summarize(out)} at repeat {repeat + 1}")
    return ValueError(
        f"{what}, but it turned an input of shape {tuple(x.shape)} into "
        f"{tuple(out.shape)} at repeat {repeat + 1}"
    )
