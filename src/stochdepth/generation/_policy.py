"""Which slot of a :class:`~stochdepth.DepthCache` each repeat reads and writes.

* ``"exact"``: a slot per repeat; what generation without a cache computes.
* ``"first"``: one slot, written by the first repeat; every later repeat attends to the
  first repeat's keys and values of the earlier positions (Mixture-of-Recursions' KV
  sharing).
* ``"last"``: one slot, holding the deepest repeat's keys and values of each position
  (each repeat overwrites what the one before wrote for the new positions: Ouro's
  decode reuse).
* ``"window"``: ``window`` slots: repeat ``r`` uses slot ``min(r, window - 1)``, so the
  first ``window - 1`` repeats are exact and the deeper ones share the last slot, which
  keeps the deepest one's entries.

Whatever the policy, a repeat attends to its own keys and values for the positions of
the current forward pass; only the earlier positions' entries come from the slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from stochdepth._validation import check_int, describe

PolicyName = Literal["exact", "first", "last", "window"]
"""The cache policies of :class:`~stochdepth.DepthCache`."""

POLICIES = ("exact", "first", "last", "window")


@dataclass(frozen=True)
class CachePolicy:
    """A checked cache policy: its name and, for ``"window"``, the number of slots.

    Args:
        name: One of ``"exact"``, ``"first"``, ``"last"``, ``"window"``.
        window: The number of slots, an int >= 1, with ``"window"`` only.

    Raises:
        TypeError: ``name`` is not a str, or ``window`` is given with another policy.
        ValueError: ``name`` is unknown, or ``window`` is missing or below 1.
    """

    name: PolicyName
    window: int | None = None

    def __post_init__(self) -> None:
        expected = ", ".join(map(repr, POLICIES))
        if not isinstance(self.name, str):
            raise TypeError(f"policy must be one of {expected}, got {describe(self.name)}")
        if self.name not in POLICIES:
            raise ValueError(f"policy must be one of {expected}, got {self.name!r}")
        if self.name == "window":
            if self.window is None:
                raise ValueError("policy='window' needs window=, the number of slots (an int >= 1)")
            object.__setattr__(self, "window", check_int("window", self.window, minimum=1))
        elif self.window is not None:
            raise TypeError(
                f"window= is the number of slots of policy='window', but policy is "
                f"{self.name!r}; got window={self.window!r}"
            )

    @property
    def exact(self) -> bool:
        """Whether every repeat has a slot of its own."""
        return self.name == "exact"

    def slot(self, repeat: int) -> int:
        """The slot that repeat ``repeat`` (0-based) reads its earlier positions from."""
        if self.name == "exact":
            return repeat
        if self.name == "window":
            return min(repeat, cast(int, self.window) - 1)
        return 0

    def writes(self, repeat: int) -> bool:
        """Whether repeat ``repeat`` stores its keys and values for the new positions."""
        return self.name != "first" or repeat == 0
