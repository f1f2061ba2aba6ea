"""Drawing depths from a sampler, one or a batch, with the checks every draw gets.

A draw is checked against the sampler's bounds every time, since a sampler is user
code: a depth outside ``[min_depth, max_depth]`` would silently build the wrong
network. The check is kept cheap: one type test and two comparisons for a scalar
draw, one ``aminmax`` for a batch.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor
from typing_extensions import Protocol, TypeIs, runtime_checkable

from stochdepth._validation import describe

from ._builtin import FixedDepth, UniformDepth
from ._protocol import DepthSampler

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
# The built-in samplers (these exact types, not subclasses) whose sample() returns an int
# within [min_depth, max_depth] by construction: their draws skip the bounds check.
_IN_BOUNDS = frozenset({UniformDepth, FixedDepth})


@runtime_checkable
class _SupportsBatch(Protocol):
    """A sampler with a batched draw (the optional ``sample_batch`` member)."""

    def sample_batch(self, n: int) -> Tensor: ...


def has_sample_batch(sampler: object) -> TypeIs[_SupportsBatch]:
    """Whether ``sampler`` has the optional batched draw ``sample_batch(n)``."""
    return isinstance(sampler, _SupportsBatch)


def draw_one(sampler: DepthSampler) -> int:
    """Draw one depth from ``sampler`` and check it against its bounds.

    Args:
        sampler: The sampler to draw from.

    Returns:
        The depth, a Python int in ``[min_depth, max_depth]``.

    Raises:
        TypeError: The sampler returned something other than an integer.
        ValueError: The depth is outside the sampler's bounds.
    """
    depth = sampler.sample()
    if type(sampler) in _IN_BOUNDS:  # their sample() is an int in bounds by construction
        return depth
    if type(depth) is not int or not sampler.min_depth <= depth <= sampler.max_depth:
        depth = check_drawn(sampler, depth)
    return depth


def check_drawn(sampler: DepthSampler, depth: object) -> int:
    """The slow path of a draw: accept other integer types, or say what is wrong."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise TypeError(
            f"sampler {sampler!r} returned {describe(depth)} from sample(); a depth must be an int"
        )
    value = int(depth)
    low, high = sampler.min_depth, sampler.max_depth
    if not low <= value <= high:
        raise ValueError(
            f"sampler {sampler!r} returned depth {value} from sample(), outside its "
            f"bounds [min_depth={low}, max_depth={high}]"
        )
    return value


def draw_batch(sampler: DepthSampler, n: int) -> Tensor:
    """Draw ``n`` depths, one per row of a batch, and check them against the bounds.

    A sampler with ``sample_batch(n)`` draws them at once; any other sampler is asked
    ``n`` times with ``sample()``.

    Args:
        sampler: The sampler to draw from.
        n: How many depths, an int >= 0.

    Returns:
        A CPU tensor of dtype ``torch.int64`` and shape ``(n,)``.

    Raises:
        TypeError: ``sample_batch`` returned something other than a 1-d integer
            tensor of ``n`` values, or ``sample()`` something other than an int.
        ValueError: A depth is outside the sampler's bounds.
    """
    if not has_sample_batch(sampler):
        return torch.tensor([draw_one(sampler) for _ in range(n)], dtype=torch.int64)
    depths = sampler.sample_batch(n)
    if (
        not isinstance(depths, Tensor)
        or depths.dtype not in _INTEGER_DTYPES
        or tuple(depths.shape) != (n,)
    ):
        got = (
            f"a tensor of dtype {depths.dtype} and shape {tuple(depths.shape)}"
            if isinstance(depths, Tensor)
            else describe(depths)
        )
        raise TypeError(
            f"sampler {sampler!r} returned {got} from sample_batch({n}); it must return "
            f"an integer tensor of shape ({n},)"
        )
    depths = depths.to(device="cpu", dtype=torch.int64)
    if n:
        low, high = (int(v) for v in torch.aminmax(depths))
        if low < sampler.min_depth or high > sampler.max_depth:
            bad = low if low < sampler.min_depth else high
            raise ValueError(
                f"sampler {sampler!r} returned depth {bad} from sample_batch({n}), outside "
                f"its bounds [min_depth={sampler.min_depth}, max_depth={sampler.max_depth}]"
            )
    return depths
