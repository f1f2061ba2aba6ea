"""`RepeatedBlock`: one weight-shared layer applied a sampled number of times."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Literal, cast

from torch import Tensor, nn

from ._protocol import DepthSampler, check_sampler, has_state
from ._samplers import UniformDepth
from ._validation import check_int, describe

EvalDepth = int | Literal["max", "min", "sample"]
"""What depth a block uses in eval mode: a fixed int, or a policy name."""

_EVAL_POLICIES = ("max", "min", "sample")
DEFAULT_DEPTH_LIMIT = 10_000
"""The most times a block applies its layer in one forward pass, unless told otherwise."""
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
    eval mode).

    Args:
        layer: The module to repeat. It must return a tensor of its input's shape;
            this is checked on every application.
        sampler: Where training-mode depths come from (default:
            ``UniformDepth(0, 3)``, the article's ``random.randint(0, 3)``). It is
            checked against :class:`~stochdepth.DepthSampler` here, once.
        eval_depth: The eval-mode depth: an int >= 0, ``"max"`` (default),
            ``"min"`` or ``"sample"``.
        depth_limit: The most times one forward pass may apply the layer (default
            10 000), a guard against a depth such as ``10**9`` that would run for
            hours or exhaust memory. The sampler's ``max_depth`` and an int
            ``eval_depth`` must not exceed it; a deeper forward pass raises.

    Attributes:
        layer: The repeated module.
        sampler: The depth sampler. A sampler with ``state_dict()`` has its state
            saved in this block's ``state_dict`` (under ``_extra_state``), so a
            restored block continues the same sequence of depths.
        eval_depth: The eval-mode depth policy.
        depth_limit: The most times one forward pass applies the layer.
        last_depth: The depth the last forward pass used (``None`` before the first).
        depth_histogram: How many training-mode forward passes used each depth
            (telemetry, not saved in the ``state_dict``; see
            :meth:`reset_depth_histogram`).

    Raises:
        TypeError: ``layer`` is not an ``nn.Module``, ``sampler`` does not satisfy
            :class:`~stochdepth.DepthSampler`, or ``eval_depth`` is neither an int
            nor a policy name.
        ValueError: ``eval_depth`` is negative or an unknown policy name, the
            sampler's bounds are negative or reversed, or the sampler's
            ``max_depth`` or an int ``eval_depth`` is above ``depth_limit``.

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
    sampler: DepthSampler
    eval_depth: EvalDepth
    depth_limit: int
    last_depth: int | None
    _depth_counts: dict[int, int]

    def __init__(
        self,
        layer: nn.Module,
        sampler: DepthSampler | None = None,
        *,
        eval_depth: EvalDepth = "max",
        depth_limit: int = DEFAULT_DEPTH_LIMIT,
    ) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {describe(layer)}")
        self.layer = layer
        self.sampler = UniformDepth() if sampler is None else check_sampler(sampler)
        self.eval_depth = _check_eval_depth(eval_depth)
        self.depth_limit = check_int("depth_limit", depth_limit)
        check_within_limit(self.sampler, self.eval_depth, self.depth_limit)
        self.last_depth = None
        self._depth_counts = {}
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            _default_missing_sampler_state
        )

    def forward(self, x: Tensor, depth: int | None = None) -> Tensor:
        """Apply the layer ``depth`` times, drawing ``depth`` when it is not given.

        Args:
            x: The input; the layer must map it to a tensor of the same shape.
            depth: Apply the layer exactly this many times instead of drawing a depth
                (an int >= 0; it may exceed the sampler's ``max_depth``).

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
        given = depth is not None
        if depth is None:
            depth = self._draw() if self.training else self._eval_depth()
        else:
            depth = check_int("depth", depth)
        if depth > self.depth_limit:
            raise self._limit_error(depth, given)
        self.last_depth = depth
        if self.training:
            counts = self._depth_counts
            counts[depth] = counts.get(depth, 0) + 1
        for repeat in range(depth):
            out = self.layer(x)
            if not isinstance(out, Tensor) or out.shape != x.shape:
                raise self._shape_error(x, out, repeat, depth)
            x = out
        return x

    @property
    def depth_histogram(self) -> dict[int, int]:
        """How many training-mode forward passes used each depth, by depth.

        Every forward pass in training mode counts, whether its depth was drawn or
        given; eval mode does not count. Compare it with the sampler's law to check
        that the sampler does what you think.

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
        return dict(sorted(self._depth_counts.items()))

    def reset_depth_histogram(self) -> None:
        """Forget the counts of :attr:`depth_histogram`."""
        self._depth_counts = {}

    def _draw(self) -> int:
        sampler = self.sampler
        depth = sampler.sample()
        if type(depth) is not int or not sampler.min_depth <= depth <= sampler.max_depth:
            depth = _check_drawn(sampler, depth)
        return depth

    def _eval_depth(self) -> int:
        policy = _check_eval_depth(self.eval_depth)
        if policy == "sample":
            return self._draw()
        if policy == "max":
            return check_int("sampler.max_depth", self.sampler.max_depth)
        if policy == "min":
            return check_int("sampler.min_depth", self.sampler.min_depth)
        return policy

    def _limit_error(self, depth: int, given: bool) -> ValueError:
        source = "" if given else f" drawn by sampler {self.sampler!r}"
        return ValueError(
            f"depth must be <= the block's depth_limit={self.depth_limit}, got {depth}"
            f"{source}; pass depth_limit= to RepeatedBlock to allow deeper forward passes"
        )

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
        """Return the sampler's state, for ``state_dict`` (``{}`` when it has none).

        A sampler that is itself an ``nn.Module`` is saved through the module tree
        instead, as a child of this block.
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
        """Show the sampler and the eval-mode depth in ``print(block)``."""
        sampler = "" if isinstance(self.sampler, nn.Module) else f"sampler={self.sampler!r}, "
        limit = (
            "" if self.depth_limit == DEFAULT_DEPTH_LIMIT else f", depth_limit={self.depth_limit}"
        )
        return f"{sampler}eval_depth={self.eval_depth!r}{limit}"


def _check_eval_depth(value: object) -> EvalDepth:
    expected = f"an int >= 0 or one of {', '.join(map(repr, _EVAL_POLICIES))}"
    if isinstance(value, str):
        if value in _EVAL_POLICIES:
            return cast(EvalDepth, value)
        raise ValueError(f"eval_depth must be {expected}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"eval_depth must be {expected}, got {describe(value)}")
    return check_int("eval_depth", value)


def check_within_limit(sampler: DepthSampler, eval_depth: EvalDepth, limit: int) -> None:
    """Refuse, at construction, a sampler or an eval depth deeper than ``depth_limit``."""
    if sampler.max_depth > limit:
        raise ValueError(
            f"sampler.max_depth must be <= depth_limit={limit}, got {sampler.max_depth} "
            f"for {sampler!r}; pass depth_limit= to allow deeper forward passes"
        )
    if isinstance(eval_depth, int) and eval_depth > limit:
        raise ValueError(f"eval_depth must be <= depth_limit={limit}, got {eval_depth}")


def _check_drawn(sampler: DepthSampler, depth: object) -> int:
    """The slow path of a draw: accept other integer types, or say what is wrong."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise TypeError(
            f"sampler {sampler!r} returned {describe(depth)} from sample(); a depth must be an int"
        )
    value = int(depth)
    low, high = sampler.min_depth, sampler.max_depth
    if not low <= value <= high:
        raise ValueError(
            f"sampler {sampler!r} returned depth {value} from sample(), outside its "
            f"bounds [min_depth={low}, max_depth={high}]"
        )
    return value


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
