"""The sampler registry: names for samplers, built in, registered, or from plugins.

Three sources, looked up in this order:

1. the built-in samplers, in a static table;
2. samplers registered in this process with :func:`register_sampler`;
3. plugins that other installed packages declare under the entry-point group
   ``stochdepth.samplers``. They are discovered on first use, loaded only when
   listed or asked for, and cached; :func:`refresh_samplers` forgets the cache (after
   installing a package in a running process, say).

stochdepth declares its own built-ins under that group too; those entry points point
at the same classes as the table and are not counted twice.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from stochdepth._errors import SamplerPluginError, SamplerPluginWarning, UnknownSamplerError
from stochdepth._validation import describe

from ._builtin import (
    BernoulliDepth,
    FixedDepth,
    GeometricDepth,
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

FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])

BUILTIN_SAMPLERS: Mapping[str, SamplerFactory] = {
    "uniform": UniformDepth,
    "fixed": FixedDepth,
    "seeded": SeededDepth,
    "bernoulli": BernoulliDepth,
    "geometric": GeometricDepth,
    "scheduled": ScheduledDepth,
}

_OWN_DISTRIBUTION = "stochdepth"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")

_lock = threading.RLock()
_registered: dict[str, SamplerFactory] = dict(BUILTIN_SAMPLERS)
_plugins: dict[str, _Plugin] | None = None  # None: not discovered since the last refresh


@dataclass
class _Plugin:
    """An entry point of the group, and what loading it gave (once it was loaded)."""

    entry_point: importlib.metadata.EntryPoint
    factory: SamplerFactory | None = None
    error: str | None = None
    warned: bool = False

    def describe(self) -> str:
        entry_point = self.entry_point
        dist = entry_point.dist
        where = f" from {dist.name} {dist.version}" if dist is not None else ""
        return f"entry point '{entry_point.name} = {entry_point.value}'{where}"

    def load(self) -> SamplerFactory | None:
        """Import the plugin once; keep the factory, or why it is unusable."""
        if self.factory is None and self.error is None:
            try:
                loaded = self.entry_point.load()
            except Exception as error:  # a plugin's import may fail in any way
                self.error = f"it failed to load: {type(error).__name__}: {error}"
            else:
                problem = _factory_problem(loaded)
                if problem is None:
                    self.factory = loaded
                else:
                    self.error = f"it does not provide a DepthSampler: {problem}"
        return self.factory


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
    name = _check_name(name)

    def register(factory: FactoryT) -> FactoryT:
        problem = _factory_problem(factory)
        if problem is not None:
            raise TypeError(f"register_sampler({name!r}) needs a DepthSampler factory: {problem}")
        with _lock:
            if name in _registered and not overwrite:
                raise ValueError(
                    f"a sampler is already registered as {name!r} ({_registered[name]!r}); "
                    f"pass overwrite=True to replace it"
                )
            _registered[name] = factory
        return factory

    return register


def unregister_sampler(name: str) -> None:
    """Remove a sampler registered in this process (built-ins included).

    Plugins cannot be removed this way: uninstall their package.

    Args:
        name: The registered name.

    Raises:
        UnknownSamplerError: No sampler is registered in this process as ``name``.
    """
    with _lock:
        if _registered.pop(name, None) is None:
            raise UnknownSamplerError(
                f"no sampler is registered as {name!r}; the registered samplers are: "
                f"{', '.join(sorted(_registered)) or '(none)'}"
            )


def available_samplers() -> list[str]:
    """Return the names of every usable sampler, built-in, registered or plugin, sorted.

    Plugins are imported here. One that fails to import, does not provide a
    sampler, or is shadowed by another of the same name, is left out with a
    :class:`~stochdepth.SamplerPluginWarning` naming its entry point (once per
    discovery); listing never fails because of a plugin.

    Returns:
        The sorted names.

    Example:
        >>> import stochdepth
        >>> {"uniform", "fixed", "seeded"} <= set(stochdepth.available_samplers())
        True
    """
    with _lock:
        names = set(_registered)
        for name, plugin in _discover().items():
            if name in _registered:
                _warn_once(plugin, f"it is shadowed by the sampler registered as {name!r}")
            elif plugin.load() is None:
                _warn_once(plugin, f"{plugin.error}")
            else:
                names.add(name)
        return sorted(names)


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
        UnknownSamplerError: No sampler has this name (the message lists those that
            do); a ``LookupError``.
        SamplerPluginError: The name belongs to a plugin that failed to load.
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
    except (TypeError, ValueError) as error:
        raise type(error)(f"sampler {name!r}: {error}") from None
    return check_sampler(sampler, name=f"sampler {name!r}")


def refresh_samplers() -> None:
    """Forget the discovered plugins; the next lookup searches the entry points again.

    Call it after installing or removing a plugin package in a running process.
    """
    global _plugins
    with _lock:
        importlib.invalidate_caches()
        _plugins = None


def lookup_sampler(name: str) -> SamplerFactory:
    """Return the factory registered or plugged in as ``name``.

    Raises:
        UnknownSamplerError: No sampler has this name.
        SamplerPluginError: The name belongs to a plugin that failed to load.
    """
    with _lock:
        factory = _registered.get(name)
        if factory is not None:
            return factory
        plugin = _discover().get(name)
        if plugin is None:
            known = sorted({*_registered, *_discover()})
            raise UnknownSamplerError(
                f"unknown sampler {name!r}; the samplers are: {', '.join(known)}"
            )
        loaded = plugin.load()
        if loaded is None:
            raise SamplerPluginError(
                f"sampler {name!r} comes from the plugin {plugin.describe()}, but {plugin.error}"
            )
        return loaded


def _discover() -> dict[str, _Plugin]:
    """Find the group's entry points once (until refreshed), without importing them."""
    global _plugins
    if _plugins is not None:
        return _plugins
    found: dict[str, _Plugin] = {}
    entry_points = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (_dist_name(ep), ep.name, ep.value),
    )
    for entry_point in entry_points:
        plugin = _Plugin(entry_point)
        name = entry_point.name
        if _dist_name(entry_point) == _OWN_DISTRIBUTION and name in BUILTIN_SAMPLERS:
            continue  # stochdepth's own declaration of a built-in: the table has it
        if _NAME.match(name) is None:
            _warn_once(plugin, f"its name {name!r} cannot be used in a sampler spec")
            continue
        if name in found:
            if found[name].entry_point.value != entry_point.value:
                _warn_once(
                    plugin,
                    f"the name {name!r} is taken by the plugin {found[name].describe()}, "
                    f"which is used instead",
                )
            continue
        found[name] = plugin
    _plugins = found
    return found


def _warn_once(plugin: _Plugin, why: str) -> None:
    if not plugin.warned:
        plugin.warned = True
        warnings.warn(
            f"sampler plugin {plugin.describe()} is left out: {why}",
            SamplerPluginWarning,
            stacklevel=3,
        )


def _dist_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return "" if dist is None else re.sub(r"[-_.]+", "-", dist.name).lower()


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {describe(name)}")
    if _NAME.match(name) is None:
        raise ValueError(
            f"name must be letters, digits, '_', '.' or '-', not starting with '.' or '-', "
            f"so that it fits in a spec such as 'name:key=value'; got {name!r}"
        )
    return name


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
