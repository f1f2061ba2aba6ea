"""Sampler specs, ``NAME`` or ``NAME:key=value,...``, as the command line takes them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from ._protocol import DepthSampler, check_sampler
from ._samplers import FixedDepth, SeededDepth, UniformDepth
from ._validation import describe

SpecValue = int | float | bool | str

BUILTIN_SAMPLERS: Mapping[str, Callable[..., DepthSampler]] = {
    "uniform": UniformDepth,
    "fixed": FixedDepth,
    "seeded": SeededDepth,
}


class UnknownSamplerError(LookupError):
    """A sampler spec names no known sampler."""


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


def sampler_from_spec(spec: str) -> DepthSampler:
    """Build a built-in sampler from a spec such as ``fixed:depth=2``.

    Args:
        spec: ``NAME`` or ``NAME:key=value,...``; ``NAME`` is one of ``uniform``,
            ``fixed`` or ``seeded``.

    Returns:
        The sampler.

    Raises:
        UnknownSamplerError: The name is not a known sampler (the message lists them).
        TypeError: A parameter is unknown, missing, or of the wrong type (the message
            names the sampler and the parameter).
        ValueError: The spec is malformed, or a parameter's value is out of range.
    """
    name, kwargs = parse_sampler_spec(spec)
    factory = BUILTIN_SAMPLERS.get(name)
    if factory is None:
        known = ", ".join(sorted(BUILTIN_SAMPLERS))
        raise UnknownSamplerError(f"unknown sampler {name!r}; the samplers are: {known}")
    _check_parameters(name, factory, kwargs)
    try:
        sampler = factory(**kwargs)
    except (TypeError, ValueError) as error:
        raise type(error)(f"sampler {name!r}: {error}") from None
    return check_sampler(sampler, name=f"sampler {name!r}")


def _check_parameters(
    name: str, factory: Callable[..., DepthSampler], kwargs: Mapping[str, SpecValue]
) -> None:
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [
        p.name
        for p in parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        raise TypeError(
            f"sampler {name!r} has no parameter {unknown[0]!r}; "
            f"its parameters are: {', '.join(accepted) or '(none)'}"
        )
    missing = [
        p.name
        for p in parameters.values()
        if p.default is inspect.Parameter.empty and p.name in accepted and p.name not in kwargs
    ]
    if missing:
        raise TypeError(
            f"sampler {name!r} needs parameter {missing[0]!r}, as in "
            f"'{name}:{','.join(f'{key}=...' for key in missing)}'"
        )


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
