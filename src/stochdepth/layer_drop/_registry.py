"""Names for drop rules: built in, registered in this process, or from plugins.

Looked up in this order: the built-ins (:data:`BUILTIN_DROP_RULES`, which cannot be
replaced or removed), rules registered with :func:`register_drop_rule`, and plugins
that installed packages declare under the entry-point group ``stochdepth.drop_rules``
(discovered on first use, loaded when asked for, cached). A plugin that fails to load
is left out of :func:`available_drop_rules` with a warning, and asking for it by name
raises. :class:`~stochdepth._registry.Registry` holds the state and the lookup rules
(:data:`DROP_RULES`); this module gives it the drop rules' names and checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, overload

from stochdepth._registry import FactoryT, Registry
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
"""The built-in drop rules by name: the one place they are listed."""


def _factory_problem(factory: object) -> str | None:
    """Why ``factory`` cannot make drop rules, or ``None`` when it may."""
    if not callable(factory):
        return f"got {describe(factory)}, which is not callable (a rule class, say)"
    return None


DROP_RULES: Registry[RuleFactory] = Registry(
    kind="drop rule",
    provides="DropRule",
    group=ENTRY_POINT_GROUP,
    builtins=BUILTIN_DROP_RULES,
    problem=_factory_problem,
    fixed_builtins=True,
)
"""The drop rules' registry: every name :func:`get_drop_rule` knows."""


@overload
def register_drop_rule(
    name: str, factory: None = None, *, overwrite: bool = False, replace: bool | None = None
) -> Callable[[FactoryT], FactoryT]: ...


@overload
def register_drop_rule(
    name: str, factory: RuleFactory, *, overwrite: bool = False, replace: bool | None = None
) -> None: ...


def register_drop_rule(
    name: str,
    factory: RuleFactory | None = None,
    *,
    overwrite: bool = False,
    replace: bool | None = None,
) -> Callable[[FactoryT], FactoryT] | None:
    """Register a drop-rule class or factory under ``name``: a decorator, as for samplers.

    After registration, ``LayerDropList(..., rule=name)`` and ``get_drop_rule(name)``
    build it. A name registered in this process takes precedence over a plugin of the
    same name; the built-in names can be neither replaced nor removed.

    Args:
        name: Letters, digits, ``_``, ``.`` and ``-``, not starting with ``.`` or ``-``.
        factory: Deprecated: register ``factory`` at once instead of returning a
            decorator (``register_drop_rule(name)(factory)`` does the same).
        overwrite: Replace a rule already registered under ``name`` instead of raising.
        replace: Deprecated spelling of ``overwrite``.

    Returns:
        A decorator that registers a rule class or callable (called with no arguments,
        or the keyword arguments given to :func:`get_drop_rule`) and returns it; ``None``
        when ``factory`` is given.

    Raises:
        TypeError: ``name`` is not a string or the factory not callable.
        ValueError: ``name`` is malformed, built in, or already registered and
            ``overwrite`` is false.

    Example:
        >>> from stochdepth import NestedDrop, get_drop_rule, register_drop_rule
        >>> _ = register_drop_rule("my-nested")(NestedDrop)
        >>> get_drop_rule("my-nested")
        NestedDrop()
        >>> from stochdepth import unregister_drop_rule
        >>> unregister_drop_rule("my-nested")
    """
    if replace is not None:
        warnings.warn(
            "register_drop_rule(replace=...) is deprecated; pass overwrite=... as to "
            "register_sampler and register_exit_criterion",
            FutureWarning,
            stacklevel=2,
        )
        overwrite = overwrite or replace
    register = DROP_RULES.decorator(name, overwrite=overwrite)
    if factory is None:
        return register
    warnings.warn(
        "register_drop_rule(name, factory) is deprecated; register_drop_rule(name) is a "
        "decorator, as register_sampler: write register_drop_rule(name)(factory)",
        FutureWarning,
        stacklevel=2,
    )
    register(factory)
    return None


def unregister_drop_rule(name: str) -> None:
    """Remove a name given by :func:`register_drop_rule` in this process.

    Plugins cannot be removed this way: uninstall their package.

    Args:
        name: A name registered with :func:`register_drop_rule`.

    Raises:
        ValueError: ``name`` is built in.
        UnknownPluginError: ``name`` is not registered in this process (a
            ``ValueError`` too).
    """
    DROP_RULES.unregister(name)


def available_drop_rules() -> list[str]:
    """The names :func:`get_drop_rule` knows, sorted: built in, registered and plugins.

    Plugins are imported here. One that fails to import, does not provide a rule
    factory, or is shadowed by another of the same name, is left out with a
    :class:`~stochdepth.PluginWarning` naming its entry point (once per
    discovery); listing never fails because of a plugin.

    Returns:
        The sorted names.

    Example:
        >>> from stochdepth import available_drop_rules
        >>> {"bernoulli", "nested"} <= set(available_drop_rules())
        True
    """
    return DROP_RULES.names()


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
        UnknownPluginError: No rule has this name; the message lists the names
            known and the closest one. A ``ValueError`` (and a ``LookupError``).
        PluginError: The plugin that declares ``name`` failed to load; a
            ``LookupError`` too.

    Example:
        >>> from stochdepth import get_drop_rule
        >>> get_drop_rule("bernoulli")
        BernoulliDrop()
    """
    if not isinstance(name, str):
        raise TypeError(f"rule name must be a str, got {describe(name)}")
    return check_rule(DROP_RULES.lookup(name)(**kwargs))


def refresh_drop_rules() -> None:
    """Forget the discovered plugins, so that the next lookup reads the entry points again."""
    DROP_RULES.refresh()
