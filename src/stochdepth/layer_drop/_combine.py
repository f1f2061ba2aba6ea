"""The residual update of a kept layer, written once for every path of `LayerDropList`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def combine(
    h: Tensor, out: Tensor, residual: bool, rate: float, scale: str, training: bool
) -> Tensor:
    """A kept layer's new state: ``out``, or with ``residual`` ``h`` plus the scaled branch.

    The one residual update of every path. In training, ``scale="train"`` divides a
    branch of drop rate ``0 < rate < 1`` by ``1 - rate``; in evaluation,
    ``scale="eval"`` multiplies a branch of ``rate > 0`` by ``1 - rate``.
    """
    if not residual:
        return out
    if training:
        if scale == "train" and 0.0 < rate < 1.0:
            return h + out / (1.0 - rate)
    elif scale == "eval" and rate:
        return h + out * (1.0 - rate)
    return h + out


Combine = Callable[[Tensor, Tensor, bool, float, str, bool], Tensor]

# For the skipping path's eager frame under torch.compile, where a plain call would be
# compiled as a frame of its own (one graph per drop rate); elsewhere it is traced inline.
combine_eagerly: Combine = torch.compiler.disable(combine)  # type: ignore[no-untyped-call]
