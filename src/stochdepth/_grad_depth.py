"""Truncated backpropagation: how many of a pass's last repeats autograd records.

A :class:`~stochdepth.RepeatedBlock` built with ``grad_depth=k`` runs the first
``depth - k`` repeats of a forward pass under ``torch.no_grad()`` and records only the
last ``k``, as recurrent-depth models train their core block. ``k`` is an int, or a
depth sampler drawn on every forward pass with autograd enabled.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from ._validation import check_int, describe
from .samplers._draws import draw_one
from .samplers._protocol import DepthSampler, check_sampler, has_state


class GradDepth:
    """The ``grad_depth`` option: ``None``, an int ``k >= 0``, or a depth sampler.

    Args:
        value: ``None`` (autograd records every repeat), an int >= 0, or a
            :class:`~stochdepth.DepthSampler`.

    Raises:
        TypeError: ``value`` is neither ``None``, an int nor a depth sampler.
        ValueError: ``value`` is a negative int.
    """

    __slots__ = ("last", "value")

    def __init__(self, value: object) -> None:
        self.last: int | None = None  # the k of the last pass with autograd (telemetry)
        self.value: int | DepthSampler | None
        if value is None:
            self.value = None
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            self.value = check_int("grad_depth", value)
        elif isinstance(value, (bool, str, float)):
            raise TypeError(
                f"grad_depth must be None, an int >= 0 or a depth sampler, got {describe(value)}"
            )
        else:
            self.value = check_sampler(value, "grad_depth")

    def draw(self) -> int | None:
        """How many last repeats autograd records on this pass (``None``: all).

        A sampler is drawn only while autograd is enabled, where ``k`` matters.
        """
        value = self.value
        if value is None:
            return None
        if not torch.is_grad_enabled():
            return value if isinstance(value, int) else None
        k = value if isinstance(value, int) else draw_one(value)
        self.last = k
        return k

    def state(self) -> dict[str, Any] | None:
        """The sampler's state, for the block's ``state_dict``, or ``None``."""
        value = self.value
        if value is None or isinstance(value, int) or not has_state(value):
            return None
        return value.state_dict()

    def load(self, state: Any) -> None:
        """Restore the sampler's state saved by :meth:`state`."""
        value = self.value
        if value is None or isinstance(value, int) or not has_state(value):
            raise ValueError(
                f"the state_dict holds a grad_depth sampler state, but this block's "
                f"grad_depth {value!r} keeps none: build the block with the grad_depth it "
                f"was saved with"
            )
        value.load_state_dict(state)
