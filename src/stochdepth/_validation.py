"""Argument checks shared by the samplers, the block, the model and the trainer.

Every check names the argument, says what was expected and shows what was given, so
that a bad value fails where it is passed instead of producing a wrong tensor later.
"""

from __future__ import annotations

import math
import numbers

MAX_SAMPLER_DEPTH = 2**53
"""The largest bound a sampler takes: every draw up to it is exact, even in float64."""


def describe(value: object) -> str:
    """Return ``repr(value)`` and its type, for error messages."""
    return f"{value!r} of type {type(value).__name__}"


def check_int(name: str, value: object, *, minimum: int | None = 0) -> int:
    """Return ``value`` as an ``int``, or raise an error naming ``name``.

    Integers of any integral type (``numpy.int64`` included) are accepted; ``bool``,
    floats and strings are not, even when they hold a whole number.

    Args:
        name: The argument's name, as the caller would write it.
        value: The value to check.
        minimum: The smallest value allowed, or ``None`` for no lower bound.

    Returns:
        ``value`` converted to a Python ``int``.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    result = int(value)
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {result}")
    return result


def check_depth(name: str, value: object) -> int:
    """Return a sampler's depth bound as an int in ``[0, 2**53]``, or raise naming ``name``.

    Larger bounds could not be drawn exactly (a float64 holds every int up to
    ``2**53``, and ``torch.randint`` none beyond ``2**63 - 1``).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is negative or above ``2**53``.
    """
    result = check_int(name, value)
    if result > MAX_SAMPLER_DEPTH:
        raise ValueError(f"{name} must be an int in [0, 2**53], got {result}")
    return result


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, or raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return value


def check_stream(name: str, value: object) -> None:
    """Check that ``value`` is ``None`` or has a ``write`` method, naming ``name``."""
    if value is not None and not callable(getattr(value, "write", None)):
        raise TypeError(
            f"{name} must be a text stream (with a write() method) or None, got {describe(value)}"
        )


def check_bounds(low: object, high: object) -> tuple[int, int]:
    """Check an inclusive depth range ``[low, high]``.

    Args:
        low: The smallest depth, a non-negative int.
        high: The largest depth, an int >= ``low``.

    Returns:
        ``(low, high)`` as Python ints.

    Raises:
        TypeError: A bound is not an int.
        ValueError: A bound is negative or above ``2**53``, or ``high < low``.
    """
    low_int = check_depth("low", low)
    high_int = check_depth("high", high)
    if high_int < low_int:
        raise ValueError(f"high must be >= low, got low={low_int} and high={high_int}")
    return low_int, high_int


def check_real(
    name: str,
    value: object,
    *,
    minimum: float,
    inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite ``float``, or raise an error naming ``name``.

    Args:
        name: The argument's name, as the caller would write it.
        value: The value to check: an int or a float (not a bool).
        minimum: The lower bound.
        inclusive: Whether ``minimum`` itself is allowed.

    Returns:
        ``value`` converted to a Python ``float``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is not finite, or is below (or at, when not
            ``inclusive``) ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result}")
    if result < minimum or (not inclusive and result == minimum):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be {bound} {minimum}, got {result}")
    return result


def check_probability(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float in ``[0, 1]`` (``(0, 1]`` unless ``allow_zero``).

    Args:
        name: The argument's name, as the caller would write it.
        value: The value to check: an int or a float (not a bool).
        allow_zero: Whether 0 itself is allowed.

    Returns:
        ``value`` converted to a Python ``float``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is NaN or outside the allowed interval.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a probability (a real number), got {describe(value)}")
    result = float(value)
    low_ok = result >= 0.0 if allow_zero else result > 0.0
    if not (low_ok and result <= 1.0):  # NaN fails both comparisons
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a probability in {interval}, got {value!r}")
    return result
