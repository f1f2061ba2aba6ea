"""Stopping a run whose loss or state stops being finite: the error and the checks.

The trainer does not read the loss back from the device on every step (that would
synchronise with it); it keeps the losses as detached tensors and reads them in
batches. The checks here run on each batch as it is read, and on the state about to
be saved in a checkpoint, so a NaN or an infinity is caught at the next read and is
never written to a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from stochdepth._errors import NonFiniteError as NonFiniteError


def check_fits(model: torch.nn.Module, **values: float) -> None:
    """Check that each value fits in the dtype of the model's floating-point parameters.

    An ``lr`` of ``1e39`` is a finite float, but not a finite float32: SGD would fail
    inside its update with a message that names neither the argument nor the dtype.

    Raises:
        ValueError: Naming the value that is too large for a parameter's dtype.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for dtype in sorted(dtypes, key=lambda d: torch.finfo(d).max):
        largest = torch.finfo(dtype).max
        for name, value in values.items():
            if value > largest:
                raise ValueError(
                    f"{name} must be <= {largest:g}, the largest {dtype} (a dtype of the "
                    f"model's parameters), got {value:g}"
                )


def check_losses(losses: list[float], start: int) -> None:
    """Raise :class:`NonFiniteError` if a loss from index ``start`` on is not finite.

    Args:
        losses: Every step's loss so far; the index is the step.
        start: The first index not checked before.

    Raises:
        NonFiniteError: Naming the first step whose loss is NaN or infinite.
    """
    for step in range(start, len(losses)):
        loss = losses[step]
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"the loss became {loss} at step {step}; training stopped there and kept "
                f"the last checkpoint, if any, as it was (a smaller lr may help)",
                step=step,
                loss=loss,
            )


def check_state(step: int | None, loss: float, named: Iterable[tuple[str, Tensor]]) -> None:
    """Raise :class:`NonFiniteError` if a floating-point tensor of ``named`` is not finite.

    One device synchronisation for all tensors; the names are looked at only on
    failure.

    Args:
        step: The index of the last step run (whose update produced this state), or
            ``None`` before the first step.
        loss: That step's loss (NaN before the first step).
        named: ``(name, tensor)`` pairs: the parameters, buffers and optimizer state.

    Raises:
        NonFiniteError: Naming the first tensor that holds a NaN or an infinity.
    """
    pairs = [(name, t) for name, t in named if t.is_floating_point() or t.is_complex()]
    if not pairs:
        return
    finite = torch.stack([torch.isfinite(t).all().cpu() for _, t in pairs])
    if bool(finite.all()):
        return
    name = pairs[int((~finite).nonzero()[0])][0]
    if step is None:
        raise NonFiniteError(
            f"{name} is NaN or infinite before the first step; training did not start",
            step=0,
            loss=loss,
        )
    raise NonFiniteError(
        f"{name} became NaN or infinite in the update of step {step} (whose loss was "
        f"{loss}); training stopped there and kept the last checkpoint, if any, as it was",
        step=step,
        loss=loss,
    )
