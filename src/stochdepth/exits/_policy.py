"""`ExitWhenConverged`: the eval-depth policy that repeats until a criterion says stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import cast

from torch import Tensor

from stochdepth._validation import check_int, check_real, describe

from ._protocol import ExitCriterion, check_criterion, needs_head
from ._registry import get_exit_criterion


@dataclass(frozen=True)
class ExitWhenConverged:
    """An ``eval_depth`` policy: repeat until the state has converged, or ``max_depth``.

    Given as ``RepeatedBlock(..., eval_depth=ExitWhenConverged(...))``, it makes every
    eval-mode forward pass that is not given a ``depth`` repeat the layer until
    ``criterion`` says stop (at the earliest after ``min_depth`` repeats), or until
    ``max_depth`` repeats. With the default criterion, ``"latent_change"``, a row stops
    when its relative change ``||s_i - s_{i-1}|| <= tol * ||s_i||`` (Euclidean norms
    over the row's elements; see :class:`~stochdepth.LatentChange`).

    Without ``per_sample``, the whole batch stops at the first repeat after which every
    row may stop. With ``per_sample=True`` each row stops on its own and the layer runs,
    at each repeat, only on the rows still going. ``last_depth`` then reports the
    depths used (an int, or a tensor of the rows' depths). Training mode draws from the
    sampler as before, and a ``depth`` given to the forward pass is used as given.

    The repeats go through the block's layer call: extra arguments reach the layer at
    every repeat, and with ``per_sample=True`` the row-aligned ones (``row_args``) are cut
    to the rows still going. ``grad_depth`` does not apply (the depth is known only at
    the end): run eval passes under ``torch.no_grad()``. Under ``torch.compile`` the
    loop runs eagerly (a graph break), since its depth depends on the values.
    ``block.iterate`` in eval mode runs ``max_depth`` repeats.

    A value object: frozen, it holds no state between calls and compares by its fields
    (``criterion`` holds the built criterion; the built-in ones compare by their
    parameters).

    Args:
        tol: The criterion's tolerance, a real >= 0, when ``criterion`` is a name;
            ``None`` when ``criterion`` is an object that holds its own.
        max_depth: The most repeats, an int >= 1.
        criterion: A registered exit criterion's name (``"latent_change"``,
            ``"output_kl"``, see :func:`~stochdepth.available_exit_criteria`), built
            with ``tol``; or an :class:`~stochdepth.ExitCriterion` object.
        head: A callable (an ``nn.Module``, say) applied to the state before and after
            each repeat, whose outputs the criterion compares; ``"output_kl"`` needs
            one. It is not part of the block: move it to the block's device yourself.
        min_depth: The fewest repeats before the criterion is asked, an int in
            ``[1, max_depth]``.

    Raises:
        TypeError: An argument has the wrong type, or ``tol`` was given with a
            criterion object (or not given with a name).
        ValueError: ``tol`` is negative, ``max_depth`` is below 1, ``min_depth`` is
            outside ``[1, max_depth]``, or the criterion needs a head and has none.
        UnknownPluginError: ``criterion`` is an unknown name.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import ExitWhenConverged, RepeatedBlock
        >>> layer = nn.Linear(4, 4)
        >>> with torch.no_grad():  # x -> x / 2 + 1: a contraction, fixed point 2
        ...     _ = layer.weight.copy_(0.5 * torch.eye(4))
        ...     _ = layer.bias.fill_(1.0)
        >>> block = RepeatedBlock(layer, eval_depth=ExitWhenConverged(1e-4, max_depth=50)).eval()
        >>> with torch.no_grad():
        ...     out = block(torch.zeros(3, 4))
        >>> out[0]  # 2 - 2 ** (1 - n) after n repeats
        tensor([1.9999, 1.9999, 1.9999, 1.9999])
        >>> block.last_depth  # the first n with a relative change 2 ** -n <= 1e-4
        14
    """

    tol: float | None
    max_depth: int
    _: KW_ONLY
    criterion: ExitCriterion | str = "latent_change"
    head: Callable[[Tensor], Tensor] | None = None
    min_depth: int = 1

    def __post_init__(self) -> None:
        max_depth = check_int("max_depth", self.max_depth, minimum=1)
        min_depth = check_int("min_depth", self.min_depth, minimum=1)
        if min_depth > max_depth:
            raise ValueError(
                f"min_depth must be <= max_depth={max_depth}, got min_depth={min_depth}"
            )
        head, tol, criterion = self.head, self.tol, self.criterion
        if head is not None and not callable(head):
            raise TypeError(f"head must be a callable (an nn.Module, say), got {describe(head)}")
        if isinstance(criterion, str):
            if tol is None:
                raise TypeError(
                    f"tol must be a real >= 0 for the criterion {criterion!r}, got None"
                )
            tol = check_real("tol", tol, minimum=0.0)
            built = get_exit_criterion(criterion, tol)
        else:
            built = check_criterion(criterion)  # first: a bad criterion is the problem
            if tol is not None:
                raise TypeError(
                    f"tol must be None with a criterion object, which holds its own "
                    f"tolerance; got tol={tol!r} and criterion={criterion!r}"
                )
        if needs_head(built) and head is None:
            raise ValueError(
                f"the criterion {built!r} compares a head's outputs: give head= (a module "
                f"mapping the state to logits)"
            )
        for name, value in (
            ("tol", tol),
            ("max_depth", max_depth),
            ("criterion", built),
            ("min_depth", min_depth),
        ):
            object.__setattr__(self, name, value)

    @property
    def exit_criterion(self) -> ExitCriterion:
        """The criterion, built (``criterion`` holds it once the policy is made)."""
        return cast(ExitCriterion, self.criterion)
