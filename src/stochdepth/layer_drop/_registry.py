"""Names for drop rules: built in, registered in this process, or from plugins.

Looked up in this order: the built-ins (a static table), rules registered with
:func:`register_drop_rule`, and plugins that installed packages declare under the
entry-point group ``stochdepth.drop_rules`` (discovered on first use, loaded when
asked for, cached). A plugin that fails to load is left out of
:func:`available_drop_rules` with a warning, and asking for it by name raises.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from stochdepth._errors import SamplerPluginWarning
from stochdepth._validation import describe

from ._rules import BernoulliDrop, DropRule, NestedDrop, check_rule

ENTRY_POINT_GROUP = "stochdepth.drop_rules"
"""The entry-point group that drop-rule plugins declare themselves under."""

RuleFactory = Callable[..., DropRule]
"""A rule class, or any callable that returns a rule."""

BUILTIN_DROP_RULES: Mapping[str, RuleFactory] = {
    "bernoulli": BernoulliDrop,
    "nested": NestedDrop,
}

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_lock = threading.RLock()
_registered: dict[str, RuleFactory] = {}
_plugins: dict[str, importlib.metadata.EntryPoint] | None = None


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The group's entry points by name (the first of a duplicated name wins, with a warning)."""
    global _plugins
    with _lock:
        if _plugins is None:
            found: dict[str, importlib.metadata.EntryPoint] = {}
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if entry_point.name in found:
                    warnings.warn(
                        f"two drop-rule plugins are named {entry_point.name!r}: "
                        f"'{found[entry_point.name].value}' and '{entry_point.value}'; "
                        f"using the first",
                        SamplerPluginWarning,
                        stacklevel=3,
                    )
                    continue
                found[entry_point.name] = entry_point
            _plugins = found
        return _plugins


def _load(entry_point: importlib.metadata.EntryPoint) -> RuleFactory:
    try:
        factory = entry_point.load()
    except Exception as error:
        raise LookupError(
            f"drop-rule plugin '{entry_point.name} = {entry_point.value}' failed to "
            f"load: {type(error).__name__}: {error}"
        ) from error
    if not callable(factory):
        raise LookupError(
            f"drop-rule plugin '{entry_point.name} = {entry_point.value}' is not "
            f"callable: got {describe(factory)}"
        )
    return factory  # type: ignore[no-any-return]


def register_drop_rule(name: str, factory: RuleFactory, *, replace: bool = False) -> None:
    """Give a drop rule a name, so that ``LayerDropList(..., rule=name)`` finds it.

    Args:
        name: Letters, digits, ``_``, ``.`` and ``-``, not starting with ``.`` or ``-``.
        factory: A rule class, or a callable returning a rule, called with no
            arguments (or the keyword arguments given to :func:`get_drop_rule`).
        replace: Allow replacing a name already registered in this process. A
            built-in name can never be replaced.

    Raises:
        TypeError: ``name`` is not a string or ``factory`` not callable.
        ValueError: ``name`` is malformed, built in, or already registered and
            ``replace`` is false.

    Example:
        >>> from stochdepth import NestedDrop, get_drop_rule, register_drop_rule
        >>> register_drop_rule("my-nested", NestedDrop)
        >>> get_drop_rule("my-nested")
        NestedDrop()
        >>> from stochdepth import unregister_drop_rule
        >>> unregister_drop_rule("my-nested")
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    if not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '_', '.' or '-' (not first), got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable (a rule class), got {describe(factory)}")
    with _lock:
        if name in BUILTIN_DROP_RULES:
            raise ValueError(f"name {name!r} is a built-in drop rule and cannot be replaced")
        if name in _registered and not replace:
            raise ValueError(
                f"name {name!r} is already registered (to {_registered[name]!r}); "
                f"pass replace=True to replace it"
            )
        _registered[name] = factory


def unregister_drop_rule(name: str) -> None:
    """Remove a name given by :func:`register_drop_rule` in this process.

    Args:
        name: A name registered with :func:`register_drop_rule`.

    Raises:
        ValueError: ``name`` is built in, or not registered in this process.
    """
    with _lock:
        if name in BUILTIN_DROP_RULES:
            raise ValueError(f"name {name!r} is a built-in drop rule and cannot be removed")
        if name not in _registered:
            raise ValueError(
                f"name must be a drop rule registered in this process "
                f"({', '.join(map(repr, sorted(_registered))) or 'none is'}), got {name!r}"
            )
        del _registered[name]


def available_drop_rules() -> list[str]:
    """The names :func:`get_drop_rule` knows, sorted: built in, registered and plugins.

    A plugin whose entry point fails to load is left out, with a warning naming it.

    Returns:
        The sorted names.

    Example:
        >>> from stochdepth import available_drop_rules
        >>> {"bernoulli", "nested"} <= set(available_drop_rules())
        True
    """
    with _lock:
        names = set(BUILTIN_DROP_RULES) | set(_registered)
        for name, entry_point in _entry_points().items():
            if name in names:
                continue
            try:
                _load(entry_point)
            except LookupError as error:
                warnings.warn(str(error), SamplerPluginWarning, stacklevel=2)
                continue
            names.add(name)
    return sorted(names)


def get_drop_rule(name: str, **kwargs: Any) -> DropRule:
    """Make the drop rule registered under ``name``.

    Args:
        name: A name from :func:`available_drop_rules`.
        **kwargs: Passed to the rule's factory.

    Returns:
        The rule.

    Raises:
        TypeError: ``name`` is not a string, or the factory returned something
            without a ``draw`` method.
        ValueError: No rule has this name; the message lists the names known and
            the closest one.
        LookupError: The plugin that declares ``name`` failed to load.

    Example:
        >>> from stochdepth import get_drop_rule
        >>> get_drop_rule("bernoulli")
        BernoulliDrop()
    """
    if not isinstance(name, str):
        raise TypeError(f"rule name must be a str, got {describe(name)}")
    with _lock:
        factory = BUILTIN_DROP_RULES.get(name) or _registered.get(name)
        if factory is None:
            entry_point = _entry_points().get(name)
            if entry_point is None:
                known = sorted(set(BUILTIN_DROP_RULES) | set(_registered) | set(_entry_points()))
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"rule must be one of {', '.join(map(repr, known))} or a DropRule, "
                    f"got {name!r}{hint}"
                )
            factory = _load(entry_point)
    return check_rule(factory(**kwargs))


def refresh_drop_rules() -> None:
    """Forget the discovered plugins, so that the next lookup reads the entry points again."""
    global _plugins
    with _lock:
        _plugins = None
