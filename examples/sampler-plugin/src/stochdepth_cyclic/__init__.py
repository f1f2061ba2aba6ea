"""stochdepth-cyclic: an example stochdepth sampler plugin.

The sampler is a plain class: stochdepth's ``DepthSampler`` protocol asks only for
``min_depth``, ``max_depth`` and ``sample()``. The optional ``state_dict`` and
``load_state_dict`` let a ``RepeatedBlock`` save where the cycle is, so a restored
model continues it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CyclicDepth"]


class CyclicDepth:
    """Depths ``low, low + 1, ..., high``, then ``low`` again.

    Args:
        low: The smallest depth, an int >= 0.
        high: The largest depth, an int >= ``low``.

    Raises:
        TypeError: A bound is not an int.
        ValueError: A bound is negative, or ``high < low``.
    """

    def __init__(self, low: int = 0, high: int = 3) -> None:
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value}")
        if high < low:
            raise ValueError(f"high must be >= low, got low={low} and high={high}")
        self.min_depth = low
        self.max_depth = high
        self._position = 0

    def sample(self) -> int:
        """Return the next depth of the cycle."""
        depth = self.min_depth + self._position
        self._position = (self._position + 1) % (self.max_depth - self.min_depth + 1)
        return depth

    def state_dict(self) -> dict[str, Any]:
        """Return where the cycle is."""
        return {"position": self._position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the cycle from a :meth:`state_dict`."""
        position = state["position"]
        cycle = self.max_depth - self.min_depth
        if not isinstance(position, int) or not 0 <= position <= cycle:
            raise ValueError(
                f"state['position'] must be an int in the cycle, got {position!r}",
            )
        self._position = position

    def __repr__(self) -> str:
        return f"CyclicDepth(low={self.min_depth}, high={self.max_depth})"
