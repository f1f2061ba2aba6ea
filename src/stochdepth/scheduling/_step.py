"""One repeat of a block, applied from outside it: the one place a driver calls the layer.

A driver (the scheduler) applies the block's layer one repeat at a time, to rows that
may stand at different repeats. It goes through :meth:`RepeatedBlock.step` where the
block has it (the public seam of issue 19); on a block without it, it calls
``block.layer`` itself, which is right only for a layer called as ``layer(state,
*args, **kwargs)`` that returns the next state, the case :func:`check_drivable` lets
through.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from stochdepth._block import RepeatedBlock
from stochdepth._layer_call import summarize


def has_step(block: RepeatedBlock) -> bool:
    """Whether ``block`` has the public ``step`` method (issue 19's seam)."""
    return callable(getattr(block, "step", None))


def check_drivable(block: RepeatedBlock, who: str) -> None:
    """Refuse a block whose repeats this package version cannot apply one at a time.

    Raises:
        ValueError: The block has no ``step`` method and reads its state through
            ``output=`` or passes the repeat index under ``step_kwarg``.
    """
    if has_step(block):
        return
    options = [
        f"{name}={value!r}"
        for name, value in (("step_kwarg", block.step_kwarg), ("output", block.output))
        if value is not None
    ]
    if options:
        raise ValueError(
            f"{who} applies the block's layer one repeat at a time, which for a block "
            f"built with {', '.join(options)} needs RepeatedBlock.step (not in this "
            f"version); build the block without them"
        )


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
    result = block.layer(state, *args, **kwargs)
    if not isinstance(result, Tensor):
        raise TypeError(
            f"RepeatedBlock's layer must return a tensor of its input's shape, but "
            f"{type(block.layer).__name__} returned {summarize(result)} at repeat {repeat + 1}"
        )
    if result.shape != state.shape:
        raise ValueError(
            f"RepeatedBlock's layer must return a tensor of its input's shape, but "
            f"{type(block.layer).__name__} turned an input of shape {tuple(state.shape)} into "
            f"{tuple(result.shape)} at repeat {repeat + 1}"
        )
    return result
