"""The sampler registry: names for samplers, built in, registered, or from plugins.

The built-in samplers are listed once, in :data:`BUILTIN_SAMPLERS`; samplers
registered in this process and plugins declared under the entry-point group
``stochdepth.samplers`` join them. :class:`~stochdepth._registry.Registry` holds the
state and the lookup rules; this module gives it the samplers' names and checks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from stochdepth._registry import FactoryT, Registry
from stochdepth._validation import describe

from ._builtin import (
    BernoulliDepth,
    FixedDepth,
    GeometricDepth,
    LogNormalPoissonDepth,
    ScheduledDepth,
    SeededDepth,
    UniformDepth,
)
from ._protocol import DepthSampler, check_sampler
from ._spec import SpecValue, parse_sampler_spec

ENTRY_POINT_GROUP = "stochdepth.samplers"
"""The entry-point group that sampler plugins declare themselves under."""

SamplerFactory = Callable[..., DepthSampler]
"""A sampler class, or any callable that returns a sampler."""

BUILTIN_SAMPLERS: Mapping[str, SamplerFactory] = {
    "uniform": UniformDepth,
    "fixed": FixedDepth,
    "seeded": SeededDepth,
    "bernoulli": BernoulliDepth,
    "geometric": GeometricDepth,
    "scheduled": ScheduledDepth,
    "lognormal_poisson": LogNormalPoissonDepth,
}
"""The built-in samplers by name: the one place they are listed."""


def _factory_problem(factory: object) -> str | None:
    """Why ``factory`` cannot make samplers, or ``None`` when it may."""
    if isinstance(factory, type):
        if not callable(getattr(factory, "sample", None)):
            return f"the class {factory.__qualname__} has no sample() method"
        return None
    if isinstance(factory, DepthSampler):
        return f"got the sampler instance {factory!r}; register its class or a factory"
    if not callable(factory):
        return f"got {describe(factory)}, which is not callable"
    return None


SAMPLERS: Registry[SamplerFactory] = Registry(
    kind="sampler",
    provides="DepthSampler",
    group=ENTRY_POINT_GROUP,
    builtins=BUILTIN_SAMPLERS,
    problem=_factory_problem,
)
"""The samplers' registry: every name :func:`get_sampler` knows."""


def register_sampler(name: str, *, overwrite: bool = False) -> Callable[[FactoryT], FactoryT]:
    """Register a sampler class or factory under ``name``: a decorator.

    After registration, ``get_sampler(name)`` and ``--sampler name`` on the command
    line build it. The decorated object is returned unchanged. A name registered in
    this process takes precedence over a plugin of the same name.

    Args:
        name: The name: letters, digits, ``_``, ``.`` and ``-``, not starting with
            ``.`` or ``-`` (it must fit in a spec such as ``name:key=value``).
        overwrite: Replace a sampler already registered under ``name`` instead of
            raising.

    Returns:
        A decorator that registers a class or callable and returns it.

    Raises:
        TypeError: ``name`` is not a string, or the decorated object is not callable
            or is a class without ``sample``.
        ValueError: ``name`` is not a valid name, or is taken and ``overwrite`` is
            false.

    Example:
        >>> import stochdepth
        >>> @stochdepth.register_sampler("two")
        ... class TwoDepth:
        ...     min_depth = max_depth = 2
        ...     def sample(self) -> int:
        ...         return 2
        >>> stochdepth.get_sampler("two").sample()
        2
        >>> stochdepth.unregister_sampler("two")
    """
    return SAMPLERS.decorator(name, overwrite=overwrite)


def unregister_sampler(name: str) -> None:
    """Remove a sampler registered in this process (built-ins included).

    Plugins cannot be removed this way: uninstall their package.

    Args:
        name: The registered name.

    Raises:
        UnknownPluginError: No sampler is registered in this process as ``name``.
    """
    SAMPLERS.unregister(name)


def available_samplers() -> list[str]:
    """Return the names of every usable sampler, built-in, registered or plugin, sorted.

    Plugins are imported here. One that fails to import, does not provide a
    sampler, or is shadowed by another of the same name, is left out with a
    :class:`~stochdepth.PluginWarning` naming its entry point (once per
    discovery); listing never fails because of a plugin.

    Returns:
        The sorted names.

    Example:
        >>> import stochdepth
        >>> {"uniform", "fixed", "seeded"} <= set(stochdepth.available_samplers())
        True
    """
    return SAMPLERS.names()


def get_sampler(spec: str, **kwargs: Any) -> DepthSampler:
    """Build a sampler from its name and parameters.

    Args:
        spec: ``NAME`` or ``NAME:key=value,...``, as ``--sampler`` takes it (for
            example ``"bernoulli:max_depth=6,p=0.8,seed=0"``). Values that look like
            an int, a float or a bool (``true``/``false``) become one.
        **kwargs: More parameters, merged with the spec's (a ``generator``, say).

    Returns:
        The sampler, checked against :class:`~stochdepth.DepthSampler`.

    Raises:
        UnknownPluginError: No sampler has this name (the message lists those that
            do); a ``LookupError``.
        PluginError: The name belongs to a plugin that failed to load.
        TypeError: A parameter is unknown, missing, given twice, or of the wrong type
            (the message names the sampler and the parameter), or ``spec`` is not a
            string.
        ValueError: The spec is malformed, or a parameter's value is out of range.

    Example:
        >>> import stochdepth
        >>> stochdepth.get_sampler("fixed:depth=2")
        FixedDepth(depth=2)
        >>> stochdepth.get_sampler("seeded:high=5", seed=0)
        SeededDepth(low=0, high=5, seed=0)
    """
    name, params = parse_sampler_spec(spec)
    for key, value in kwargs.items():
        if key in params:
            raise TypeError(
                f"sampler {name!r}: parameter {key!r} is given both in the spec {spec!r} "
                f"and as a keyword argument"
            )
        params[key] = value
    factory = lookup_sampler(name)
    _check_parameters(name, factory, params)
    try:
        sampler = factory(**params)
    except Exception as error:
        # A parameter's check: the name as a prefix, the same type, chained. Any other
        # error (a plugin's own class) reaches the user as it is, with a note.
        if type(error) is TypeError:
            raise TypeError(f"sampler {name!r}: {error}") from error
        if type(error) is ValueError:
            raise ValueError(f"sampler {name!r}: {error}") from error
        _add_note(error, f"raised by sampler {name!r}")
        raise
    return check_sampler(sampler, name=f"sampler {name!r}")


def refresh_samplers() -> None:
    """Forget the discovered plugins; the next lookup searches the entry points again.

    Call it after installing or removing a plugin package in a running process.
    """
    SAMPLERS.refresh()


def lookup_sampler(name: str) -> SamplerFactory:
    """Return the factory registered or plugged in as ``name``.

    Raises:
        UnknownPluginError: No sampler has this name.
        PluginError: The name belongs to a plugin that failed to load.
    """
    return SAMPLERS.lookup(name)


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``, also on Python 3.10 (which keeps but does not show it)."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]  # type: ignore[attr-defined]


def _check_parameters(name: str, factory: SamplerFactory, kwargs: Mapping[str, SpecValue]) -> None:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return
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
