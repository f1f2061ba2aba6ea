"""The exit criteria's registry: names for criteria, built in, registered, or from plugins.

The built-in criteria are listed once, in :data:`BUILTIN_EXIT_CRITERIA`; criteria
registered in this process and plugins declared under the entry-point group
``stochdepth.exit_criteria`` join them, as for the samplers. A registered factory is
called with the tolerance first: ``factory(tol, **params)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stochdepth._registry import FactoryT, Registry
from stochdepth._validation import describe

from ._builtin import LatentChange, OutputKL
from ._protocol import ExitCriterion, check_criterion

ENTRY_POINT_GROUP = "stochdepth.exit_criteria"
"""The entry-point group that exit-criterion plugins declare themselves under."""

CriterionFactory = Callable[..., ExitCriterion]
"""A criterion class, or any callable ``factory(tol, **params)`` that returns a criterion."""

BUILTIN_EXIT_CRITERIA: Mapping[str, CriterionFactory] = {
    "latent_change": LatentChange,
    "output_kl": OutputKL,
}
"""The built-in exit criteria by name: the one place they are listed."""


def _factory_problem(factory: object) -> str | None:
    """Why ``factory`` cannot make exit criteria, or ``None`` when it may."""
    if isinstance(factory, type):
        if not any("__call__" in vars(klass) for klass in factory.__mro__[:-1]):
            return f"the class {factory.__qualname__} has no __call__() method"
        return None
    if not callable(factory):
        return f"got {describe(factory)}, which is not callable"
    return None


EXIT_CRITERIA: Registry[CriterionFactory] = Registry(
    kind="exit criterion",
    kinds="exit criteria",
    provides="ExitCriterion",
    group=ENTRY_POINT_GROUP,
    builtins=BUILTIN_EXIT_CRITERIA,
    problem=_factory_problem,
)
"""The exit criteria's registry: every name :func:`get_exit_criterion` knows."""


def register_exit_criterion(
    name: str, *, overwrite: bool = False
) -> Callable[[FactoryT], FactoryT]:
    """Register an exit-criterion class or factory under ``name``: a decorator.

    After registration, ``ExitWhenConverged(tol, max_depth, criterion=name)`` and
    ``get_exit_criterion(name, tol)`` build it, calling ``factory(tol, **params)``. The
    decorated object is returned unchanged. A name registered in this process takes
    precedence over a plugin of the same name.

    Args:
        name: The name: letters, digits, ``_``, ``.`` and ``-``, not starting with
            ``.`` or ``-``.
        overwrite: Replace a criterion already registered under ``name`` instead of
            raising.

    Returns:
        A decorator that registers a class or callable and returns it.

    Raises:
        TypeError: ``name`` is not a string, or the decorated object is not callable.
        ValueError: ``name`` is not a valid name, or is taken and ``overwrite`` is
            false.

    Example:
        >>> import torch
        >>> import stochdepth
        >>> @stochdepth.register_exit_criterion("small")
        ... class Small:
        ...     def __init__(self, tol):
        ...         self.tol = tol
        ...     def __call__(self, previous, current, repeat, outputs=None):
        ...         return current.flatten(1).abs().amax(dim=1) <= self.tol
        >>> stochdepth.get_exit_criterion("small", 0.5)(torch.zeros(2, 1), torch.ones(2, 1), 0)
        tensor([False, False])
        >>> stochdepth.unregister_exit_criterion("small")
    """
    return EXIT_CRITERIA.decorator(name, overwrite=overwrite)


def unregister_exit_criterion(name: str) -> None:
    """Remove an exit criterion registered in this process (built-ins included).

    Args:
        name: The registered name.

    Raises:
        UnknownPluginError: No criterion is registered in this process as
            ``name``.
    """
    EXIT_CRITERIA.unregister(name)


def available_exit_criteria() -> list[str]:
    """Return the names of every usable exit criterion, built-in, registered or plugin.

    Plugins are imported here; one that fails to load is left out with an
    :class:`~stochdepth.PluginWarning`.

    Returns:
        The sorted names.

    Example:
        >>> import stochdepth
        >>> {"latent_change", "output_kl"} <= set(stochdepth.available_exit_criteria())
        True
    """
    return EXIT_CRITERIA.names()


def get_exit_criterion(name: str, tol: float, **params: Any) -> ExitCriterion:
    """Build an exit criterion from its name, its tolerance and its other parameters.

    Args:
        name: A registered name (``"latent_change"``, ``"output_kl"``, or one
            registered or plugged in).
        tol: The tolerance, the criterion's first argument.
        **params: Its other parameters (``ord=math.inf`` for ``"latent_change"``, say).

    Returns:
        The criterion, checked to be callable.

    Raises:
        UnknownPluginError: No criterion has this name (the message lists those
            that do); a ``LookupError``.
        PluginError: The name belongs to a plugin that failed to load.
        TypeError: ``name`` is not a string, or a parameter has the wrong type (the
            message names the criterion).
        ValueError: A parameter's value is out of range.

    Example:
        >>> import stochdepth
        >>> stochdepth.get_exit_criterion("latent_change", 1e-3)
        LatentChange(tol=0.001)
    """
    if not isinstance(name, str):
        raise TypeError(f"criterion must be a registered name or a criterion, got {describe(name)}")
    factory = EXIT_CRITERIA.lookup(name)
    try:
        criterion = factory(tol, **params)
    except (TypeError, ValueError) as error:
        raise type(error)(f"exit criterion {name!r}: {error}") from error
    return check_criterion(criterion, name=f"exit criterion {name!r}")


def refresh_exit_criteria() -> None:
    """Forget the discovered plugins; the next lookup searches the entry points again."""
    EXIT_CRITERIA.refresh()
