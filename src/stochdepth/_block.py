"""`RepeatedBlock`: one weight-shared layer applied a sampled number of times."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from . import _repeats
from ._tie import tie_skipped_layer
from ._validation import check_int, describe
from .samplers._builtin import UniformDepth
from .samplers._draws import check_drawn, draw_batch, draw_one
from .samplers._protocol import DepthSampler, check_sampler, has_state

EvalDepth = int | Literal["max", "min", "sample"]
"""What depth a block uses in eval mode: a fixed int, or a policy name."""

Mode = Literal["skip", "masked"]
"""How a block applies its repeats: only those used, or all of them, masked."""

_EVAL_POLICIES = ("max", "min", "sample")
_MODES = ("skip", "masked")
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
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
        sampler: The depth sampler. A sampler with ``state_dict()`` has its state
            saved in this block's ``state_dict`` (under ``_extra_state``), so a
            restored block continues the same sequence of depths.
        eval_depth: The eval-mode depth policy.
        depth_limit: The most times one forward pass applies the layer.
        last_depth: The depth the last forward pass used (``None`` before the first):
            an int, or with ``per_sample=True`` a tensor of the rows' depths; in
            masked mode, the depth tensor when one was given.
        depth_histogram: How many training-mode forward passes used each depth
            (with ``per_sample=True``, how many rows; telemetry, not saved in the
            ``state_dict``; see :meth:`reset_depth_histogram`).

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
    sampler: DepthSampler
    eval_depth: EvalDepth
    depth_limit: int
    last_depth: int | Tensor | None
    _depth_counts: dict[int, int]
    _plain: bool

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
        self.sampler = UniformDepth() if sampler is None else check_sampler(sampler)
        self.eval_depth = _check_eval_depth(eval_depth)
        self.depth_limit = check_int("depth_limit", depth_limit)
        check_within_limit(self.sampler, self.eval_depth, self.depth_limit)
        self.last_depth = None
        self._depth_counts = {}
        self._mode = _check_mode(mode)
        if self._mode == "masked" and (stats := _running_statistics(layer)):
            raise ValueError(
                f"mode='masked' runs the layer max_depth times and discards the repeats "
                f"beyond the depth, but {stats} of the layer would count those repeats in "
                f"its running statistics: use mode='skip' with this layer"
            )
        if (
            self._mode == "masked"
            and isinstance(self.eval_depth, int)
            and self.eval_depth > self.sampler.max_depth
        ):
            raise ValueError(
                f"eval_depth must be <= sampler.max_depth={self.sampler.max_depth} in "
                f"mode='masked', which runs max_depth repeats; got {self.eval_depth}"
            )
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be a bool, got {describe(per_sample)}")
        self._per_sample = per_sample
        self._checkpoint = _check_checkpoint(checkpoint)
        # The default: one depth for the batch, exactly the repeats used, no checkpoints.
        self._plain = self._mode == "skip" and not per_sample and self._checkpoint is False
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
        if not self._plain:
            return self._forward_mode(x, depth)
        if torch.compiler.is_compiling():
            depth = self._choose_depth_outside_graph(depth)
            if depth == 0:
                # One op, so that Dynamo compiles this depth's (empty) graph: a frame
                # without ops would make it skip this code, at every depth, for good.
                return x.view_as(x)
        else:
            depth = self._choose_depth(depth)
        if not depth and self.training:  # DDP must see the skipped layer's parameters
            return tie_skipped_layer(self.layer, x)
        layer = self.layer
        shape = x.shape  # every accepted output has it, so one Size object serves all repeats
        for repeat in range(depth):
            out = layer(x)
            if not isinstance(out, Tensor) or out.shape != shape:
                raise self._shape_error(x, out, repeat, depth)
            x = out
        return x

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

    def _choose_depth(self, depth: object) -> int:
        """Draw, or take the eval policy's, or check the given depth; record it."""
        given = depth is not None
        if depth is None:
            if self.training:  # draw_one, inlined: this is the hot path
                sampler = self.sampler
                depth = sampler.sample()
                if type(depth) is not int or not sampler.min_depth <= depth <= sampler.max_depth:
                    depth = check_drawn(sampler, depth)
            else:
                depth = self._eval_depth()
        elif type(depth) is not int or depth < 0:
            depth = check_int("depth", depth)
        if depth > self.depth_limit:
            raise self._limit_error(depth, given)
        # Not through nn.Module.__setattr__: a plain attribute, and this is the hot path.
        self.__dict__["last_depth"] = depth
        if self.training:
            counts = self._depth_counts
            counts[depth] = counts.get(depth, 0) + 1
        return depth

    # Under torch.compile the depth is drawn outside the compiled graph: a graph break
    # here, so that every call draws anew (Dynamo would otherwise bake one draw into
    # the graph) and the repeats after it compile to one graph per distinct depth.
    _choose_depth_outside_graph = _repeats.outside_graph(_choose_depth)

    def _forward_mode(self, x: Tensor, depth: object) -> Tensor:
        """The forward pass of every mode but the default one."""
        if self._per_sample:
            if self._mode == "skip":
                if torch.compiler.is_compiling():
                    return self._per_row_outside_graph(x, depth)
                return self._per_row(x, depth)
            return self._masked(x, self._row_depths_on(x, depth))
        if self._mode == "masked":
            return self._masked(x, self._batch_depth_on(x, depth))
        if torch.compiler.is_compiling():
            used = self._choose_depth_outside_graph(depth)
            if used == 0:
                return x.view_as(x)  # as in forward: a frame without ops is skipped for good
        else:
            used = self._choose_depth(depth)
        if not used and self.training:  # DDP must see the skipped layer's parameters
            return tie_skipped_layer(self.layer, x)
        if not torch.is_grad_enabled():
            return _repeats.skip(self.layer, x, 0, used, used, self._shape_error)
        every = None if self._checkpoint is True else int(self._checkpoint)
        return _repeats.segments(self.layer, x, used, every, self._shape_error)

    def _masked(self, x: Tensor, depth: Tensor) -> Tensor:
        every = None if self._checkpoint is True else int(self._checkpoint)
        return _repeats.masked(
            self.layer,
            x,
            depth,
            self._max_depth(),
            self._shape_error,
            checkpointed=self._checkpoint is not False,
            checkpoint_every=every,
        )

    def _max_depth(self) -> int:
        high = check_int("sampler.max_depth", self.sampler.max_depth)
        if high > self.depth_limit:  # masked mode applies the layer max_depth times
            raise self._limit_error(high, False)
        return high

    def _batch_depth_on(self, x: Tensor, depth: object) -> Tensor:
        """Masked mode, one depth: the depth as a 0-d int64 tensor on ``x``'s device."""
        if isinstance(depth, Tensor):
            return self._given_depth_tensor(x, depth, ())
        if torch.compiler.is_compiling():
            return self._batch_depth_tensor_outside_graph(x, depth)
        return self._batch_depth_tensor(x, depth)

    def _batch_depth_tensor(self, x: Tensor, depth: object) -> Tensor:
        if isinstance(depth, int):  # refused before the telemetry records it
            self._check_within_max(depth)
        value = self._choose_depth(depth)
        self._check_within_max(value)
        return torch.tensor(value, dtype=torch.int64, device=x.device)

    _batch_depth_tensor_outside_graph = _repeats.outside_graph(_batch_depth_tensor)

    def _row_depths_on(self, x: Tensor, depth: object) -> Tensor:
        """Masked mode, per row: the rows' depths as an int64 tensor on ``x``'s device."""
        if isinstance(depth, Tensor):
            return self._given_depth_tensor(x, depth, (_rows(x),))
        if torch.compiler.is_compiling():
            return self._row_depth_tensor_outside_graph(x, depth)
        return self._row_depth_tensor(x, depth)

    def _row_depth_tensor(self, x: Tensor, depth: object) -> Tensor:
        if isinstance(depth, int):  # refused before the telemetry records it
            self._check_within_max(depth)
        depths = self._choose_row_depths(_rows(x), depth)
        if depths.numel():
            self._check_within_max(int(depths.max()))
        return depths.to(x.device)

    _row_depth_tensor_outside_graph = _repeats.outside_graph(_row_depth_tensor)

    def _check_within_max(self, value: int) -> None:
        high = self._max_depth()
        if value > high:
            raise ValueError(
                f"depth must be <= sampler.max_depth={high} in mode='masked' (the graph "
                f"holds max_depth repeats), got {value}"
            )

    def _given_depth_tensor(self, x: Tensor, depth: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Check a depth tensor given to masked mode; checked by value in eager mode only."""
        if depth.dtype not in _INTEGER_DTYPES or tuple(depth.shape) != shape:
            raise TypeError(
                f"depth must be an int or an integer tensor of shape {shape} in this mode, "
                f"got a tensor of dtype {depth.dtype} and shape {tuple(depth.shape)}"
            )
        if not torch.compiler.is_compiling() and depth.numel():
            low, high = (int(v) for v in torch.aminmax(depth))
            if low < 0:
                raise ValueError(f"depth must be >= 0, got a tensor holding {low}")
            self._check_within_max(high)
        if not _repeats.exporting():  # an exported program has no attributes to set
            self.last_depth = depth
        return depth.to(device=x.device, dtype=torch.int64)

    def _per_row(self, x: Tensor, depth: object) -> Tensor:
        """Per-row depths in skip mode: each repeat runs on the active rows only."""
        depths = self._choose_row_depths(_rows(x), depth)
        every = None if self._checkpoint is True else int(self._checkpoint)
        out = _repeats.per_row(
            self.layer,
            x,
            depths,
            self._shape_error,
            checkpointed=self._checkpoint is not False,
            checkpoint_every=every,
        )
        # every row skipped the layer: DDP must see its parameters
        return tie_skipped_layer(self.layer, x) if out is x and self.training else out

    # Data-dependent row counts: run eagerly inside a compiled model (one graph break).
    _per_row_outside_graph = _repeats.outside_graph(_per_row)

    def _choose_row_depths(self, rows: int, depth: object) -> Tensor:
        """The rows' depths (a CPU int64 tensor): drawn, the eval policy's, or given."""
        if isinstance(depth, Tensor):
            if depth.dtype not in _INTEGER_DTYPES or tuple(depth.shape) != (rows,):
                raise TypeError(
                    f"depth must be an int or an integer tensor of shape ({rows},) with "
                    f"per_sample=True, got a tensor of dtype {depth.dtype} and shape "
                    f"{tuple(depth.shape)}"
                )
            depths = depth.to(device="cpu", dtype=torch.int64)
            low = int(depths.min()) if rows else 0
            if low < 0:
                raise ValueError(f"depth must be >= 0, got a tensor holding {low}")
        elif depth is None and (self.training or self.eval_depth == "sample"):
            depths = draw_batch(self.sampler, rows)
        else:
            value = check_int("depth", depth) if depth is not None else self._eval_depth()
            depths = torch.full((rows,), value, dtype=torch.int64)
        deepest = int(depths.max()) if rows else 0
        if deepest > self.depth_limit:
            raise self._limit_error(deepest, depth is not None)
        self.last_depth = depths
        if self.training and rows:
            counts = self._depth_counts
            for value, count in enumerate(torch.bincount(depths).tolist()):
                if count:
                    counts[value] = counts.get(value, 0) + count
        return depths

    @property
    def depth_histogram(self) -> dict[int, int]:
        """How many training-mode forward passes used each depth, by depth.

        Every training-mode forward pass counts, whether its depth was drawn or given
        as an int (with ``per_sample=True``, every row counts); a depth tensor given
        in masked mode is not counted, and eval mode does not count. Compare it with
        the sampler's law to check that the sampler does what you think.

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
        return draw_one(self.sampler)

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


def _rows(x: Tensor) -> int:
    if x.ndim == 0:
        raise ValueError(
            "per_sample=True draws a depth for every row (dimension 0) of x, but x is a 0-d tensor"
        )
    return x.shape[0]


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
