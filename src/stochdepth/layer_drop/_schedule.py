"""The linear rule for per-layer drop rates, from the stochastic depth paper and timm."""

from __future__ import annotations

from stochdepth._validation import check_int, check_probability


def linear_drop_rates(max_rate: float, layers: int) -> list[float]:
    """Drop rates growing linearly from 0 at the first layer to ``max_rate`` at the last.

    The rule of the stochastic depth paper (Huang et al. 2016, "linear decay" of the
    survival probability) and of timm's ``drop_path_rate``
    (``torch.linspace(0, drop_path_rate, depth)``): layer ``i`` of ``n`` gets
    ``max_rate * i / (n - 1)``. One layer gets ``[0.0]``, as timm's ``linspace``
    gives.

    Args:
        max_rate: The last layer's drop rate, in ``[0, 1]``.
        layers: How many layers, an int >= 1.

    Returns:
        ``layers`` floats, to pass as ``drop_rate`` to :class:`~stochdepth.LayerDropList`.

    Raises:
        TypeError: ``max_rate`` is not a real number or ``layers`` not an int.
        ValueError: ``max_rate`` is outside ``[0, 1]`` or ``layers`` is below 1.

    Example:
        >>> from stochdepth import linear_drop_rates
        >>> linear_drop_rates(0.3, 4)
        [0.0, 0.1, 0.2, 0.3]
    """
    rate = check_probability("max_rate", max_rate)
    count = check_int("layers", layers, minimum=1)
    if count == 1:
        return [0.0]
    # round() keeps 0.1 as 0.1 instead of 0.30000000000000004 / 3
    return [round(rate * i / (count - 1), 15) for i in range(count)]
