"""A registry of named factories for one kind of plugin: built in, registered, or installed.

One mechanism for the three kinds that have names (samplers, drop rules, exit
criteria): each kind's module makes a :class:`Registry` and wraps it in functions of a
line or two. Every kind raises and warns with the same classes
(:class:`~stochdepth.UnknownPluginError`, :class:`~stochdepth.PluginError`,
:class:`~stochdepth.PluginWarning`), whose messages name the kind.

Three sources, looked up in this order:

1. the built-ins, a static table given at construction;
2. factories registered in this process with :meth:`Registry.register`;
3. plugins that other installed packages declare under the registry's entry-point
   group. They are discovered on first use, loaded only when listed or asked for, and
   cached; :meth:`Registry.refresh` forgets the cache (after installing a package in a
   running process, say).

The samplers use one (:data:`stochdepth.samplers._registry.SAMPLERS`), the drop rules
another (:data:`stochdepth.layer_drop._registry.DROP_RULES`), the exit criteria a third
(:data:`stochdepth.exits._registry.EXIT_CRITERIA`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ._errors import PluginError, PluginWarning, UnknownPluginError
from ._validation import describe

T = TypeVar("T")
FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


@dataclass
class _Plugin(Generic[T]):
    """An entry point of the group, and what loading it gave (once it was loaded)."""

    entry_point: importlib.metadata.EntryPoint
    factory: T | None = None
    error: str | None = None
    warned: bool = False

    def describe(self) -> str:
        entry_point = self.entry_point
        dist = entry_point.dist
        where = f" from {dist.name} {dist.version}" if dist is not None else ""
        return f"entry point '{entry_point.name} = {entry_point.value}'{where}"

    def load(self, problem: Callable[[object], str | None], provides: str) -> T | None:
        """Import the plugin once; keep the factory, or why it is unusable."""
        if self.factory is None and self.error is None:
            try:
                loaded = self.entry_point.load()
            except Exception as error:  # a plugin's import may fail in any way
                self.error = f"it failed to load: {type(error).__name__}: {error}"
            else:
                why = problem(loaded)
                if why is None:
                    self.factory = loaded
                else:
                    self.error = f"it does not provide a {provides}: {why}"
        return self.factory


class Registry(Generic[T]):
    """Names for the factories of one plugin kind, from three sources (see the module).

    Args:
        kind: The kind's name in messages (``"sampler"``).
        kinds: Its plural, when not ``kind + "s"`` (``"exit criteria"``).
        provides: What a factory makes, in messages (``"DepthSampler"``).
        group: The entry-point group plugins declare themselves under.
        builtins: The built-in factories by name, the one place they are listed.
        problem: Says why an object cannot be a factory of this kind, or ``None``.
        fixed_builtins: Whether the built-ins can be neither replaced nor removed.
    """

    def __init__(
        self,
        *,
        kind: str,
        provides: str,
        group: str,
        builtins: Mapping[str, T],
        problem: Callable[[object], str | None],
        fixed_builtins: bool = False,
        kinds: str | None = None,
    ) -> None:
        self.kind = kind
        self.kinds = f"{kind}s" if kinds is None else kinds
        self.provides = provides
        self.group = group
        self.builtins: Mapping[str, T] = MappingProxyType(dict(builtins))
        self.fixed_builtins = fixed_builtins
        self._problem = problem
        self._lock = threading.RLock()
        self._registered: dict[str, T] = dict(builtins)
        self._plugins: dict[str, _Plugin[T]] | None = None  # None: not discovered yet

    def decorator(self, name: str, *, overwrite: bool = False) -> Callable[[FactoryT], FactoryT]:
        """What ``register_<kind>(name)`` returns: registers a factory and returns it unchanged.

        ``name`` is checked at once (:func:`check_name`), the factory when decorated.
        """
        name = check_name(name)

        def register(factory: FactoryT) -> FactoryT:
            self.register(name, factory, overwrite=overwrite)  # type: ignore[arg-type]
            return factory

        return register

    def register(self, name: str, factory: T, *, overwrite: bool = False) -> None:
        """Register ``factory`` under ``name``.

        Raises:
            TypeError: ``name`` is not a string, or ``factory`` cannot make this kind
                of object.
            ValueError: ``name`` is malformed, or taken and ``overwrite`` is false, or
                a fixed built-in.
        """
        name = check_name(name)
        why = self._problem(factory)
        if why is not None:
            function = f"register_{self.kind.replace(' ', '_')}"
            raise TypeError(f"{function}({name!r}) needs a {self.provides} factory: {why}")
        self._check_not_fixed(name, "replaced")
        with self._lock:
            if name in self._registered and not overwrite:
                raise ValueError(
                    f"a {self.kind} is already registered as {name!r} "
                    f"({self._registered[name]!r}); pass overwrite=True to replace it"
                )
            self._registered[name] = factory

    def unregister(self, name: str) -> None:
        """Remove a name registered in this process (built-ins included, unless fixed).

        Raises:
            UnknownPluginError: Nothing is registered in this process as ``name``.
            ValueError: ``name`` is a fixed built-in.
        """
        self._check_not_fixed(name, "removed")
        with self._lock:
            if self._registered.pop(name, None) is None:
                removable = sorted(
                    other
                    for other in self._registered
                    if not (self.fixed_builtins and other in self.builtins)
                )
                raise UnknownPluginError(
                    f"no {self.kind} is registered as {name!r}; the names registered "
                    f"in this process are: {', '.join(removable) or '(none)'}"
                )

    def names(self) -> list[str]:
        """Every usable name, sorted; a broken or shadowed plugin is left out with a warning."""
        with self._lock:
            names = set(self._registered)
            for name, plugin in self._discover().items():
                if name in self._registered:
                    self._warn_once(
                        plugin, f"it is shadowed by the {self.kind} registered as {name!r}"
                    )
                elif plugin.load(self._problem, self.provides) is None:
                    self._warn_once(plugin, f"{plugin.error}")
                else:
                    names.add(name)
            return sorted(names)

    def lookup(self, name: str) -> T:
        """Return the factory registered or plugged in as ``name``.

        Raises:
            UnknownPluginError: No source has this name; the message lists the names
                and suggests the closest one.
            PluginError: The name belongs to a plugin that failed to load.
        """
        with self._lock:
            factory = self._registered.get(name)
            if factory is not None:
                return factory
            plugin = self._discover().get(name)
            if plugin is None:
                known = sorted({*self._registered, *self._discover()})
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UnknownPluginError(
                    f"unknown {self.kind} {name!r}; the {self.kinds} are: {', '.join(known)}{hint}"
                )
            loaded = plugin.load(self._problem, self.provides)
            if loaded is None:
                raise PluginError(
                    f"{self.kind} {name!r} comes from the plugin {plugin.describe()}, "
                    f"but {plugin.error}"
                )
            return loaded

    def refresh(self) -> None:
        """Forget the discovered plugins; the next lookup searches the entry points again."""
        with self._lock:
            importlib.invalidate_caches()
            self._plugins = None

    def snapshot(self) -> dict[str, T]:
        """The registrations of this process, to give back to :meth:`restore`."""
        with self._lock:
            return dict(self._registered)

    def restore(self, snapshot: Mapping[str, T]) -> None:
        """Put back the registrations that :meth:`snapshot` returned."""
        with self._lock:
            self._registered = dict(snapshot)

    def _check_not_fixed(self, name: str, verb: str) -> None:
        if self.fixed_builtins and name in self.builtins:
            raise ValueError(f"name {name!r} is a built-in {self.kind} and cannot be {verb}")

    def _discover(self) -> dict[str, _Plugin[T]]:
        """Find the group's entry points once (until refreshed), without importing them."""
        if self._plugins is not None:
            return self._plugins
        found: dict[str, _Plugin[T]] = {}
        entry_points = sorted(
            importlib.metadata.entry_points(group=self.group),
            key=lambda ep: (_dist_name(ep), ep.name, ep.value),
        )
        for entry_point in entry_points:
            plugin: _Plugin[T] = _Plugin(entry_point)
            name = entry_point.name
            if _NAME.match(name) is None:
                self._warn_once(plugin, f"its name {name!r} cannot be used in a {self.kind} spec")
                continue
            if name in found:
                if found[name].entry_point.value != entry_point.value:
                    self._warn_once(
                        plugin,
                        f"the name {name!r} is taken by the plugin {found[name].describe()}, "
                        f"which is used instead",
                    )
                continue
            found[name] = plugin
        self._plugins = found
        return found

    def _warn_once(self, plugin: _Plugin[T], why: str) -> None:
        if not plugin.warned:
            plugin.warned = True
            warnings.warn(
                f"{self.kind} plugin {plugin.describe()} is left out: {why}",
                PluginWarning,
                stacklevel=4,
            )


def check_name(name: object) -> str:
    """Return ``name`` if it can name a plugin in a spec, or raise naming the argument."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {describe(name)}")
    if _NAME.match(name) is None:
        raise ValueError(
            f"name must be letters, digits, '_', '.' or '-', not starting with '.' or '-', "
            f"so that it fits in a spec such as 'name:key=value'; got {name!r}"
        )
    return name


def _dist_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return "" if dist is None else re.sub(r"[-_.]+", "-", dist.name).lower()
