"""One repeat of a block, applied from outside it: the one place a driver calls the layer.

A driver (the scheduler) applies the block's layer one repeat at a time, to rows that
may stand at different repeats, through :meth:`RepeatedBlock.step`: the extra
arguments, ``step_kwarg``, ``output=`` reading, the shape check and the repeat hooks,
exactly as the forward pass applies that repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from stochdepth._block import RepeatedBlock

Repeat = Callable[[Tensor, tuple[Any, ...], dict[str, Any], int], Tensor]
"""``repeat(state, args, kwargs, index)``: one repeat of a block, as its forward pass applies it."""


def repeat_of(block: RepeatedBlock) -> Repeat:
    """How a driver applies one repeat of ``block``: its ``step``, bound once."""
    step = block.step

    def apply(state: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> Tensor:
        return step(state, *args, repeat=index, **kwargs)

    return apply
