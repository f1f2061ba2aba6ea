"""`RepeatedBlock`: one weight-shared layer applied a sampled number of times."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from . import _repeats
from ._depth import DEFAULT_DEPTH_LIMIT, DepthChoice, EvalDepth, check_within_limit, row_count
from ._repeats import outside_graph
from ._validation import check_bool, check_int, describe
from .exits._loop import PlainRepeat, until_converged
from .exits._policy import ExitWhenConverged
from .samplers._protocol import DepthSampler, has_state

__all__ = ["DEFAULT_DEPTH_LIMIT", "EvalDepth", "Mode", "RepeatedBlock", "check_within_limit"]

Mode = Literal["skip", "masked"]
"""How a block applies its repeats: only those used, or all of them, masked."""

_MODES = ("skip", "masked")
_EXTRA_STATE_KEY = "_extra_state"


class RepeatedBlock(nn.Module):
    """Applies one shape-preserving ``layer`` a sampled number of times.

    The same ``layer``, with the same weights, is applied ``d`` times in a row;
    ``d = 0`` returns the input unchanged. In training mode ``d`` is drawn from
    ``sampler`` on every forward pass, so the graph that autograd records changes
    from one call to the next, as in the article's ``DynamicNet``. The number of
    parameters is the layer's, whatever the depth.

    In eval mode the depth is deterministic by default: ``eval_depth="max"`` uses the
    sampler's ``max_depth``, the whole network, as stochastic depth and LayerDrop do
    at test time. ``eval_depth`` may instead be an int, ``"min"``, or ``"sample"`` to
    keep drawing as in training (what the article's model does, since it has no
    eval mode), or :class:`~stochdepth.ExitWhenConverged` to spend depth where the
    input needs it: repeat until the state stops changing.

    Args:
        layer: The module to repeat. It must return a tensor of its input's shape;
            this is checked on every application.
        sampler: Where training-mode depths come from (default:
            ``UniformDepth(0, 3)``, the article's ``random.randint(0, 3)``). It is
            checked against :class:`~stochdepth.DepthSampler` here, once.
        eval_depth: The eval-mode depth: an int >= 0, ``"max"`` (default),
            ``"min"``, ``"sample"``, or ``ExitWhenConverged(tol, max_depth, ...)``:
            repeat until the criterion says stop (with ``per_sample=True`` each row
            stops on its own, and ``last_depth`` holds the rows' depths). Early exit
            needs ``mode="skip"``.
        mode: ``"skip"`` (default): the layer runs exactly ``depth`` times, so the
            graph changes with the depth, and at depth 0 the layer is unused (its
            parameters get no gradient, ``.grad`` stays ``None``). ``"masked"``: the
            layer runs ``sampler.max_depth`` times and repeat ``i`` is kept only
            where ``i < depth`` (``torch.where``), so the graph is the same at every
            depth: ``torch.compile(fullgraph=True)`` and ``torch.export`` take it,
            with the depth as a tensor argument. Outputs and gradients equal skip
            mode's, except that unused repeats give zero gradients instead of none,
            and that a repeat the depth discards still runs: a layer that overflows
            there (``exp`` in float16, say) gives NaN gradients through
            ``torch.where``, and dropout in it draws random numbers. A layer with
            running statistics (``BatchNorm``) is refused. See the performance page
            of the docs.
        per_sample: Draw a depth for every row (dimension 0) of the input instead
            of one for the batch. In skip mode the layer then runs, at each repeat,
            only on the rows still active, so the work follows the mean depth. The
            layer must treat rows independently (no ``BatchNorm``). Samplers with
            ``sample_batch(n)`` draw the rows' depths at once; others are asked
            ``n`` times.
        checkpoint: Recompute the repeats in the backward pass instead of keeping
            their activations (``torch.utils.checkpoint``, non-reentrant):
            ``True`` checkpoints segments of ``ceil(sqrt(depth))`` repeats, so the
            activations kept grow as ``sqrt(depth)``; an int ``k >= 1`` checkpoints
            segments of ``k`` repeats. Gradients are bitwise those of
            ``checkpoint=False``, and buffers that the layer updates (BatchNorm's
            running statistics) are updated once, as without checkpoints (in eager
            mode; under ``torch.compile`` the recomputation updates them again).
        depth_limit: The most times one forward pass may apply the layer (default
            10 000), a guard against a depth such as ``10**9`` that would run for
            hours or exhaust memory. The sampler's ``max_depth`` and an int
            ``eval_depth`` must not exceed it; a deeper forward pass raises.

    Attributes:
        layer: The repeated module.

    Raises:
        TypeError: ``layer`` is not an ``nn.Module``, ``sampler`` does not satisfy
            :class:`~stochdepth.DepthSampler`, ``eval_depth`` is neither an int
            nor a policy name, or ``mode``, ``per_sample`` or ``checkpoint`` has the
            wrong type.
        ValueError: ``eval_depth`` is negative or an unknown policy name, the
            sampler's bounds are negative or reversed, the sampler's ``max_depth``
            or an int ``eval_depth`` is above ``depth_limit``, ``mode`` is unknown,
            ``checkpoint`` is an int below 1, or ``mode="masked"`` is asked for with
            an int ``eval_depth`` above the sampler's ``max_depth`` or a layer that
            keeps running statistics.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import FixedDepth, RepeatedBlock
        >>> block = RepeatedBlock(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), FixedDepth(3))
        >>> block(torch.randn(4, 8)).shape
        torch.Size([4, 8])
        >>> block.last_depth
        3
    """

    layer: nn.Module
    _choice: DepthChoice
    _repeats: _repeats.Strategy

    def __init__(
        self,
        layer: nn.Module,
        sampler: DepthSampler | None = None,
        *,
        eval_depth: EvalDepth = "max",
        depth_limit: int = DEFAULT_DEPTH_LIMIT,
        mode: Mode = "skip",
        per_sample: bool = False,
        checkpoint: bool | int = False,
    ) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {describe(layer)}")
        self.layer = layer
        self._choice = DepthChoice(sampler, eval_depth, depth_limit)
        self._adopt(self._choice.sampler)
        self._mode = _check_mode(mode)
        if self._mode == "masked":
            if stats := _running_statistics(layer):
                raise ValueError(
                    f"mode='masked' runs the layer max_depth times and discards the repeats "
                    f"beyond the depth, but {stats} of the layer would count those repeats "
                    f"in its running statistics: use mode='skip' with this layer"
                )
            self._choice.use_masked()
        self._per_sample = check_bool("per_sample", per_sample)
        self._checkpoint = _check_checkpoint(checkpoint)
        self._repeats = _repeats.strategy_for(self._mode == "masked", per_sample, self._checkpoint)
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            _default_missing_sampler_state
        )

    def forward(self, x: Tensor, depth: int | Tensor | None = None) -> Tensor:
        """Apply the layer ``depth`` times, drawing ``depth`` when it is not given.

        Args:
            x: The input; the layer must map it to a tensor of the same shape.
            depth: Use this depth instead of drawing one: an int >= 0 (at most
                ``depth_limit``; in masked mode at most ``sampler.max_depth``), or, in
                masked mode or with ``per_sample=True``, an integer tensor (0-d, or one
                depth per row).

        Returns:
            The layer applied ``depth`` times to ``x``; ``x`` itself at depth 0.

        Raises:
            TypeError: ``x`` is not a tensor, ``depth`` is not an int, the sampler
                returned something other than an int, or the layer returned something
                other than a tensor.
            ValueError: ``depth`` is negative or above ``depth_limit``, the
                sampler returned a depth outside its bounds, or the layer changed the
                shape of its input.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {describe(x)}")
        if (policy := self._choice.early_exit(depth, self.training)) is not None:
            return self._exit_early(policy, x)
        return self._repeats(self, x, depth)

    @outside_graph  # the depth depends on the values: run eagerly under compile
    def _exit_early(self, policy: ExitWhenConverged, x: Tensor) -> Tensor:
        """Eval mode with ``eval_depth=ExitWhenConverged(...)``: repeat until converged."""
        if self._per_sample:
            row_count(x)
        apply = PlainRepeat(self.layer, self._shape_error)
        out, used = until_converged(apply, x, policy, self._per_sample)
        self._choice.last = used
        return out

    def _depth_zero(self, x: Tensor) -> Tensor:
        """The output of a pass whose depth is 0 for the whole batch: ``x`` itself.

        The one place that every depth-0 pass of skip mode goes through (the layer
        does not run, so its parameters get no gradient this step).
        """
        if torch.compiler.is_compiling():
            # One op, so that Dynamo compiles this depth's (empty) graph: a frame
            # without ops would make it skip this code, at every depth, for good.
            return x.view_as(x)
        return x

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "sampler":  # the property's setter, even for a sampler that is a Module
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _adopt(self, sampler: DepthSampler) -> None:
        """Hold a sampler that is an ``nn.Module`` as a child, so the module tree has it."""
        if isinstance(sampler, nn.Module):
            self._modules["sampler"] = sampler
        else:
            self._modules.pop("sampler", None)

    @property
    def sampler(self) -> DepthSampler:
        """The depth sampler; assigning one runs the constructor's checks.

        A sampler with ``state_dict()`` has its state saved in this block's
        ``state_dict`` (under ``_extra_state``), so a restored block continues the same
        sequence of depths.
        """
        return self._choice.sampler

    @sampler.setter
    def sampler(self, sampler: DepthSampler) -> None:
        self._choice.sampler = sampler
        self._adopt(self._choice.sampler)

    @property
    def eval_depth(self) -> EvalDepth:
        """The eval-mode depth policy (an int, ``"max"``, ``"min"`` or ``"sample"``).

        A value assigned after construction is checked at the next eval-mode pass.
        """
        return self._choice.eval_depth

    @eval_depth.setter
    def eval_depth(self, value: EvalDepth) -> None:
        self._choice.eval_depth = value

    @property
    def depth_limit(self) -> int:
        """The most times one forward pass applies the layer (set at construction)."""
        return self._choice.depth_limit

    @property
    def last_depth(self) -> int | Tensor | None:
        """The depth the last forward pass used (``None`` before the first).

        An int, or with ``per_sample=True`` a tensor of the rows' depths; in masked
        mode, the depth tensor when one was given.
        """
        return self._choice.last

    @last_depth.setter
    def last_depth(self, value: int | Tensor | None) -> None:
        self._choice.last = value

    @property
    def mode(self) -> Mode:
        """How the repeats run: ``"skip"`` or ``"masked"`` (set at construction)."""
        return self._mode

    @property
    def per_sample(self) -> bool:
        """Whether every row draws its own depth (set at construction)."""
        return self._per_sample

    @property
    def checkpoint(self) -> bool | int:
        """The checkpointing option given at construction: ``False``, ``True`` or ``k``."""
        return self._checkpoint

    @property
    def depth_histogram(self) -> dict[int, int]:
        """How many training-mode forward passes used each depth, by depth.

        Every training-mode forward pass counts, whether its depth was drawn or given
        as an int (with ``per_sample=True``, every row counts); a depth tensor given
        in masked mode is not counted, and eval mode does not count. Compare it with
        the sampler's law to check that the sampler does what you think. Telemetry:
        not saved in the ``state_dict``.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from stochdepth import RepeatedBlock, SeededDepth
            >>> block = RepeatedBlock(nn.Linear(4, 4), SeededDepth(0, 3, seed=0))
            >>> for _ in range(100):
            ...     _ = block(torch.randn(2, 4))
            >>> sorted(block.depth_histogram) == [0, 1, 2, 3]
            True
            >>> sum(block.depth_histogram.values())
            100
        """
        return dict(sorted(self._choice.counts.items()))

    def reset_depth_histogram(self) -> None:
        """Forget the counts of :attr:`depth_histogram`."""
        self._choice.counts = {}

    def _shape_error(self, x: Tensor, out: object, repeat: int, depth: int) -> Exception:
        layer = type(self.layer).__name__
        where = f"at repeat {repeat + 1} of {depth}"
        if not isinstance(out, Tensor):
            return TypeError(
                f"RepeatedBlock's layer must return a tensor of its input's shape, but "
                f"{layer} returned {describe(out)} {where}"
            )
        return ValueError(
            f"RepeatedBlock's layer must return a tensor of its input's shape, but "
            f"{layer} turned an input of shape {tuple(x.shape)} into {tuple(out.shape)} "
            f"{where}"
        )

    def get_extra_state(self) -> dict[str, Any]:
        """Return the sampler's state, for ``state_dict``.

        A sampler that is itself an ``nn.Module`` is saved through the module tree
        instead, as a child of this block.

        Returns:
            ``{"sampler": sampler.state_dict()}``, or ``{}`` when the sampler keeps no
            state of its own.
        """
        sampler = self.sampler
        if isinstance(sampler, nn.Module) or not has_state(sampler):
            return {}
        return {"sampler": sampler.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        """Restore the sampler's state saved by :meth:`get_extra_state`.

        Args:
            state: The mapping :meth:`get_extra_state` returned.

        Raises:
            TypeError: ``state`` is not a mapping.
            ValueError: ``state`` holds a sampler state but this block's sampler keeps
                none, or the sampler rejects it.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"RepeatedBlock extra state must be a mapping, got {describe(state)}")
        sampler_state = state.get("sampler")
        if sampler_state is None:
            return
        sampler = self.sampler
        if isinstance(sampler, nn.Module) or not has_state(sampler):
            raise ValueError(
                f"the state_dict holds a sampler state, but this block's sampler "
                f"{sampler!r} keeps none: build the block with the kind of sampler it "
                f"was saved with"
            )
        sampler.load_state_dict(sampler_state)

    def extra_repr(self) -> str:
        """Show the sampler, the eval-mode depth and any non-default mode in ``print(block)``.

        Returns:
            The text between the parentheses of the block's first line.
        """
        sampler = "" if isinstance(self.sampler, nn.Module) else f"sampler={self.sampler!r}, "
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("depth_limit", self.depth_limit, DEFAULT_DEPTH_LIMIT),
                ("mode", self._mode, "skip"),
                ("per_sample", self._per_sample, False),
                ("checkpoint", self._checkpoint, False),
            )
            if value != default
        )
        return f"{sampler}eval_depth={self.eval_depth!r}{options}"


def _running_statistics(layer: nn.Module) -> str:
    """Name the submodules of ``layer`` that keep running statistics, or ``""``."""
    names = [
        name or type(module).__name__
        for name, module in layer.named_modules()
        if getattr(module, "track_running_stats", False)
        and getattr(module, "running_mean", None) is not None
    ]
    return ", ".join(repr(name) for name in names)


def _check_mode(value: object) -> Mode:
    if not isinstance(value, str):
        raise TypeError(
            f"mode must be one of {', '.join(map(repr, _MODES))}, got {describe(value)}"
        )
    if value not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {value!r}")
    return cast(Mode, value)


def _check_checkpoint(value: object) -> bool | int:
    if isinstance(value, bool):
        return value
    if not isinstance(value, numbers.Integral):
        raise TypeError(
            f"checkpoint must be a bool or an int >= 1 (repeats per segment), got {describe(value)}"
        )
    return check_int("checkpoint", value, minimum=1)


def _default_missing_sampler_state(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    *_: Any,
) -> None:
    """Let a ``state_dict`` without sampler state load when the sampler keeps none.

    Weights saved by plain PyTorch code (the article's own ``DynamicNet``, say) have
    no ``_extra_state`` entry. A stateless sampler loses nothing by its absence, so
    strict loading should not fail on it; a stateful sampler's state stays missing,
    and strict loading reports it.
    """
    key = prefix + _EXTRA_STATE_KEY
    if key not in state_dict and isinstance(module, RepeatedBlock):
        sampler = module.sampler
        if isinstance(sampler, nn.Module) or not has_state(sampler):
            state_dict[key] = {}
