"""The extension point: what a depth sampler is, and the one check made of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from typing_extensions import Protocol, TypeIs, runtime_checkable

from stochdepth._validation import check_int, describe


@runtime_checkable
class DepthSampler(Protocol):
    """Draws how many times a :class:`~stochdepth.RepeatedBlock` applies its layer.

    Any object with these three members is a sampler; it need not inherit from
    anything. ``min_depth`` and ``max_depth`` are the inclusive bounds of what
    :meth:`sample` can return; the block checks every draw against them.

    Optional members extend it; a sampler without them still works:

    - ``state_dict()`` returning a dict, and ``load_state_dict(state)``: a sampler
      that keeps random state of its own (such as :class:`~stochdepth.SeededDepth`)
      has them, and a block saves that state in its own ``state_dict``.
    - ``set_step(step: int)``: :func:`~stochdepth.train` calls it with each training
      step's index before the step, so that a schedule (such as
      :class:`~stochdepth.ScheduledDepth`) can follow training.
    - ``sample_batch(n: int) -> torch.Tensor``: ``n`` depths at once, for a block
      with ``per_sample=True``; without it, the block calls ``sample()`` ``n`` times.
      Every built-in sampler has it. The contract, written here once: ``n`` is an
      int >= 0 (a ``TypeError`` for another type, a ``ValueError`` when negative);
      the result is an integer tensor of shape ``(n,)``, each value in
      ``[min_depth, max_depth]``, which the block checks and moves to the CPU as
      ``torch.int64`` (the built-ins return that already).

    Example:
        >>> import stochdepth
        >>> class EvenDepth:
        ...     min_depth = 0
        ...     max_depth = 4
        ...     def sample(self) -> int:
        ...         return 2
        >>> isinstance(EvenDepth(), stochdepth.DepthSampler)
        True
    """

    @property
    def min_depth(self) -> int:
        """The smallest depth :meth:`sample` can return."""
        ...

    @property
    def max_depth(self) -> int:
        """The largest depth :meth:`sample` can return."""
        ...

    def sample(self) -> int:
        """Draw one depth.

        Returns:
            An int in ``[min_depth, max_depth]``.
        """
        ...


@runtime_checkable
class _SupportsState(Protocol):
    """A sampler with random state of its own that can be saved and restored."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def has_state(sampler: object) -> TypeIs[_SupportsState]:
    """Whether ``sampler`` saves and restores state through ``state_dict``."""
    return isinstance(sampler, _SupportsState)


@runtime_checkable
class _SupportsStep(Protocol):
    """A sampler that follows the training step (a schedule)."""

    def set_step(self, step: int) -> None: ...


def has_set_step(sampler: object) -> TypeIs[_SupportsStep]:
    """Whether ``sampler`` wants to be told the training step through ``set_step``."""
    return isinstance(sampler, _SupportsStep)


def check_sampler(sampler: object, name: str = "sampler") -> DepthSampler:
    """Check once that ``sampler`` satisfies :class:`DepthSampler`.

    Args:
        sampler: The object to check.
        name: The argument's name, for error messages.

    Returns:
        ``sampler``, typed as a :class:`DepthSampler`.

    Raises:
        TypeError: ``sampler`` is a class rather than an instance, lacks a member
            of the protocol, or has bounds that are not ints.
        ValueError: Its bounds are negative or reversed.
    """
    if isinstance(sampler, type):
        raise TypeError(
            f"{name} must be a DepthSampler instance, got the class {sampler.__name__}; "
            f"did you mean {sampler.__name__}(...)?"
        )
    if not isinstance(sampler, DepthSampler) or not callable(sampler.sample):
        missing = [
            member
            for member in ("min_depth", "max_depth", "sample")
            if not hasattr(sampler, member)
        ]
        lacks = f"; it lacks {', '.join(missing)}" if missing else "; its sample is not callable"
        raise TypeError(
            f"{name} must satisfy the DepthSampler protocol (min_depth, max_depth and "
            f"sample()), got {describe(sampler)}{lacks}"
        )
    low = check_int(f"{name}.min_depth", sampler.min_depth)
    high = check_int(f"{name}.max_depth", sampler.max_depth)
    if high < low:
        raise ValueError(
            f"{name}.max_depth must be >= {name}.min_depth, got min_depth={low} and "
            f"max_depth={high} for {sampler!r}"
        )
    return sampler
