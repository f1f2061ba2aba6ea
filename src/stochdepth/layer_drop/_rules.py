"""Drop rules: how a :class:`~stochdepth.LayerDropList` draws which layers run.

A rule is any object with ``draw(drop_rates, rows, generator)`` (the
:class:`DropRule` protocol). Two are built in: :class:`BernoulliDrop`, independent
draws per layer (the default, as in timm, torchvision and fairseq), and
:class:`NestedDrop`, one shared uniform per draw, so that the dropped layers are
nested (a layer with a higher rate is dropped whenever one with a lower rate is).
Both keep layer ``i`` with probability ``1 - drop_rates[i]``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import Protocol, runtime_checkable

from stochdepth._validation import describe


@runtime_checkable
class DropRule(Protocol):
    """Draws which layers of a :class:`~stochdepth.LayerDropList` run.

    Any object with this one method is a rule; it need not inherit from anything.
    The list draws from its own seeded ``generator`` and passes it in, so a rule
    keeps no random state: every draw must come from ``generator`` (a rule that used
    torch's global generator would break the list's seeded, resumable sequence).

    Example:
        >>> import torch
        >>> import stochdepth
        >>> class DropTheLastLayer:
        ...     def draw(self, drop_rates, rows, generator):
        ...         keep = torch.ones(len(drop_rates), dtype=torch.bool)
        ...         keep[-1] = False
        ...         return keep if rows is None else keep[:, None].expand(-1, rows)
        >>> isinstance(DropTheLastLayer(), stochdepth.DropRule)
        True
    """

    def draw(self, drop_rates: Tensor, rows: int | None, generator: torch.Generator) -> Tensor:
        """Draw which layers run.

        Args:
            drop_rates: Each layer's drop rate, a float64 CPU tensor of shape
                ``(layers,)``.
            rows: ``None`` for one draw per layer (``mode="batch"``), or the
                number of rows for one draw per layer and row (``mode="row"``).
            generator: The CPU generator to draw from.

        Returns:
            A bool tensor, ``True`` where a layer runs: of shape ``(layers,)`` when
            ``rows`` is ``None``, else ``(layers, rows)``.
        """
        ...


class BernoulliDrop:
    """Each layer (and, in row mode, each row) is dropped independently.

    Layer ``i`` runs with probability ``1 - drop_rates[i]``, whatever happens to the
    others: what timm's ``DropPath``, torchvision's ``stochastic_depth`` and
    fairseq's ``LayerDropModuleList`` draw. Registered as ``"bernoulli"``; the
    default rule.

    Example:
        >>> import torch
        >>> from stochdepth import BernoulliDrop
        >>> generator = torch.Generator().manual_seed(0)
        >>> rates = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> BernoulliDrop().draw(rates, None, generator).tolist()
        [True, False]
    """

    def draw(self, drop_rates: Tensor, rows: int | None, generator: torch.Generator) -> Tensor:
        """Keep layer ``i`` where a uniform draw is at least ``drop_rates[i]``.

        Args:
            drop_rates: Each layer's drop rate, shape ``(layers,)``.
            rows: ``None``, or the number of rows to draw for.
            generator: The CPU generator to draw from.

        Returns:
            The bool keep mask, of shape ``(layers,)`` or ``(layers, rows)``.
        """
        if rows is None:
            return torch.rand(drop_rates.shape, generator=generator, dtype=torch.float64) >= (
                drop_rates
            )
        uniform = torch.rand((len(drop_rates), rows), generator=generator, dtype=torch.float64)
        return uniform >= drop_rates[:, None]

    def __repr__(self) -> str:
        return "BernoulliDrop()"


class NestedDrop:
    """One uniform draw ``u`` for all layers: layer ``i`` runs where ``u >= drop_rates[i]``.

    Each layer still runs with probability ``1 - drop_rates[i]``, but the drops are
    as correlated as they can be: the dropped set is always the layers whose rate
    exceeds ``u``. With the linear rule (:func:`~stochdepth.linear_drop_rates`) a
    draw drops a tail of the deepest layers, like a randomly truncated network. In
    row mode every row draws its own ``u``. Registered as ``"nested"``.

    Example:
        >>> import torch
        >>> from stochdepth import NestedDrop
        >>> generator = torch.Generator().manual_seed(4)
        >>> rates = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
        >>> NestedDrop().draw(rates, None, generator).tolist()
        [True, True, True, False, False]
    """

    def draw(self, drop_rates: Tensor, rows: int | None, generator: torch.Generator) -> Tensor:
        """Keep the layers whose rate is at most one shared uniform draw.

        Args:
            drop_rates: Each layer's drop rate, shape ``(layers,)``.
            rows: ``None``, or the number of rows to draw for.
            generator: The CPU generator to draw from.

        Returns:
            The bool keep mask, of shape ``(layers,)`` or ``(layers, rows)``.
        """
        if rows is None:
            uniform = torch.rand((), generator=generator, dtype=torch.float64)
            return uniform >= drop_rates
        uniform = torch.rand((rows,), generator=generator, dtype=torch.float64)
        return uniform[None, :] >= drop_rates[:, None]

    def __repr__(self) -> str:
        return "NestedDrop()"


def check_rule(rule: object) -> DropRule:
    """Return ``rule`` if it has a callable ``draw``, or raise a ``TypeError`` saying so."""
    if not callable(getattr(rule, "draw", None)):
        raise TypeError(
            f"rule must be a rule name or a DropRule (an object with a "
            f"draw(drop_rates, rows, generator) method), got {describe(rule)}"
        )
    return rule  # type: ignore[return-value]


def check_keep(rule: DropRule, keep: object, shape: tuple[int, ...]) -> Tensor:
    """Check what ``rule.draw`` returned: a bool tensor of ``shape``; return it on the CPU."""
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != shape:
        got = (
            f"a tensor of dtype {keep.dtype} and shape {tuple(keep.shape)}"
            if isinstance(keep, Tensor)
            else describe(keep)
        )
        raise TypeError(
            f"drop rule {rule!r} must return a bool tensor of shape {shape} from draw(), got {got}"
        )
    return keep.cpu()
