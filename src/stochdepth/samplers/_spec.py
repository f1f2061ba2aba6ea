"""Sampler specs, ``NAME`` or ``NAME:key=value,...``, as the command line takes them."""

from __future__ import annotations

from stochdepth._validation import describe

SpecValue = int | float | bool | str


def parse_sampler_spec(spec: str) -> tuple[str, dict[str, SpecValue]]:
    """Split ``NAME:key=value,...`` into the name and its keyword arguments.

    Values that look like an int, a float or a bool (``true``/``false``) become one;
    anything else stays a string.

    Args:
        spec: The spec, for example ``"seeded:low=0,high=3,seed=7"``.

    Returns:
        ``(name, kwargs)``.

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: The name is empty, or a parameter is not ``key=value`` or is given
            twice.
    """
    if not isinstance(spec, str):
        raise TypeError(f"sampler spec must be a string, got {describe(spec)}")
    name, colon, params = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(
            f"sampler spec must start with a name, as in 'uniform:low=0,high=3', got {spec!r}"
        )
    kwargs: dict[str, SpecValue] = {}
    if colon:
        for item in params.split(","):
            key, equals, value = (part.strip() for part in item.partition("="))
            if not equals or not key or not key.isidentifier():
                raise ValueError(
                    f"sampler spec {spec!r}: parameters must be written key=value, "
                    f"separated by commas, got {item.strip()!r}"
                )
            if key in kwargs:
                raise ValueError(f"sampler spec {spec!r}: parameter {key!r} is given twice")
            kwargs[key] = _parse_value(value)
    return name, kwargs


def _parse_value(text: str) -> SpecValue:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
