"""Per-repeat deltas: what each repeat of a shared layer adds to the shared weights.

A delta is a parametrization (``torch.nn.utils.parametrize``) of one parameter of the
shared layer: reading the parameter gives the shared tensor plus the delta of the
repeat that is running, which a :class:`RepeatIndex` shared by all the deltas of one
block says. The layer's own code is untouched, so any layer whose computation reads
its parameters (``nn.Linear``, a norm's ``weight``) takes them.

* :class:`LowRankDelta`: ``up[r] @ down[r]`` on a linear layer's weight, the
  depth-wise LoRA of Relaxed Recursive Transformers, initialised from the truncated
  SVD of the residual (original weight minus shared weight).
* :class:`DenseDelta`: a full tensor per repeat, for what a low-rank delta cannot
  hold (biases, norm weights) and for ``lora_rank="full"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RepeatIndex:
    """Which repeat of a shared block runs: set before every application of the layer.

    Args:
        count: How many repeats have deltas of their own; later repeats use the last
            one's.
    """

    __slots__ = ("count", "value")

    def __init__(self, count: int) -> None:
        self.count = count
        self.value = 0

    def current(self) -> int:
        """The delta to use: the running repeat's, or the last one past ``count``."""
        return min(self.value, self.count - 1)


class LowRankDelta(nn.Module):
    """Adds ``up[r] @ down[r]`` to a 2-d weight, ``r`` the running repeat.

    Args:
        up: ``(repeats, out, rank)``.
        down: ``(repeats, rank, in)``.
        index: The running repeat.
    """

    up: nn.Parameter
    down: nn.Parameter

    def __init__(self, up: Tensor, down: Tensor, index: RepeatIndex) -> None:
        super().__init__()
        self.up = nn.Parameter(up)
        self.down = nn.Parameter(down)
        self.index = index

    def forward(self, weight: Tensor) -> Tensor:
        """The shared ``weight`` plus the running repeat's low-rank delta."""
        r = self.index.current()
        return weight + self.up[r] @ self.down[r]

    def extra_repr(self) -> str:
        """Show the repeats and the rank."""
        return f"repeats={self.up.shape[0]}, rank={self.up.shape[2]}"


class DenseDelta(nn.Module):
    """Adds ``delta[r]``, a full tensor of the parameter's shape, ``r`` the running repeat.

    Args:
        delta: ``(repeats, *shape)``.
        index: The running repeat.
    """

    delta: nn.Parameter

    def __init__(self, delta: Tensor, index: RepeatIndex) -> None:
        super().__init__()
        self.delta = nn.Parameter(delta)
        self.index = index

    def forward(self, value: Tensor) -> Tensor:
        """The shared ``value`` plus the running repeat's delta."""
        return value + self.delta[self.index.current()]

    def extra_repr(self) -> str:
        """Show the repeats."""
        return f"repeats={self.delta.shape[0]}"


def low_rank_factors(residuals: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The rank-``rank`` truncated SVD of each residual, as ``(up, down)`` factors.

    The SVD runs in float64 whatever the residuals' dtype. ``up = U_r S_r`` and
    ``down = V_r^T`` (as in Relaxed Recursive Transformers): ``down`` has orthonormal
    rows even where the residual is zero (``init`` took that repeat's layer), so
    ``up`` still gets a gradient and the delta can train.

    Args:
        residuals: ``(repeats, out, in)``: original weight minus shared weight.
        rank: At most ``min(out, in)``.

    Returns:
        ``up`` of shape ``(repeats, out, rank)`` and ``down`` of ``(repeats, rank,
            in)``, in the residuals' dtype.
    """
    u, s, vh = torch.linalg.svd(residuals.double(), full_matrices=False)
    up = u[..., :rank] * s[..., None, :rank]
    down = vh[..., :rank, :]
    return up.to(residuals.dtype).contiguous(), down.to(residuals.dtype).contiguous()
