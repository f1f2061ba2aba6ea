"""`RepeatedBlock`'s options: the settable properties, their checks, and the saved state.

:class:`BlockOptions` is the private base of :class:`~stochdepth.RepeatedBlock`: every
constructor option reads back as a property, and assigning one runs the constructor's
checks and rebuilds what the forward pass reuses (:meth:`BlockOptions._configure`). The
sampler's state for ``state_dict`` (``get_extra_state``) and ``print(block)``
(``extra_repr``) are here too, since they read the options. The block itself, its
forward pass and its public seam are in ``_block.py``.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, cast

from torch import Tensor, nn

from . import _repeats
from ._depth import DEFAULT_DEPTH_LIMIT, DepthChoice, EvalDepth
from ._extra_state import encode_state, read_extra_state
from ._grad_depth import GradDepth
from ._layer_call import (
    Output,
    PlainCall,
    RepeatHook,
    RowArgs,
    check_output,
    check_step_kwarg,
    shape_error,
)
from ._per_token import PerToken
from ._row_draws import RowDraws, check_row_draws
from ._validation import check_bool, check_int, describe
from .samplers._protocol import DepthSampler, has_state

Mode = Literal["skip", "masked"]
"""How a block applies its repeats: only those used, or all of them, masked."""

_MODES = ("skip", "masked")
# The options whose assignment goes to their property, even for a value that is a Module
_OPTIONS = frozenset(
    {
        "sampler",
        "eval_depth",
        "depth_limit",
        "mode",
        "per_sample",
        "per_token",
        "checkpoint",
        "row_args",
        "step_kwarg",
        "output",
        "grad_depth",
        "row_draws",
        "last_depth",
    }
)
PER_TOKEN_AND_PER_SAMPLE = (
    "per_token=True gives every position of a (batch, seq, ...) state its own "
    "depth and per_sample=True every row: choose one"
)


class BlockOptions(nn.Module):
    """The options of a :class:`~stochdepth.RepeatedBlock`, as settable properties.

    The block's constructor sets the attributes below, then calls :meth:`_configure`.
    """

    layer: nn.Module
    _choice: DepthChoice
    _mode: Mode
    _per_sample: bool
    _per_token: bool
    _checkpoint: bool | int
    _rows: RowArgs
    _step_kwarg: str | None
    _output: Output
    _grad: GradDepth
    _repeat_hooks: dict[int, RepeatHook]
    _repeats: _repeats.Strategy | PerToken
    _plain_call: PlainCall | None
    _fast_call: PlainCall | None

    def _configure(self) -> None:
        """Build what the forward pass reuses from the options: the strategy and the calls.

        Every option setter that changes the path of a pass calls it, so that the
        strategy, the reusable layer call and the fast path always match the options.
        """
        masked = self._mode == "masked"
        if self._per_token:
            self._repeats = PerToken(masked, self._checkpoint)
        else:
            self._repeats = _repeats.strategy_for(masked, self._per_sample, self._checkpoint)
        plain = self._step_kwarg is None and self._output is None
        self._plain_call = (
            PlainCall(self.layer, self._shape_error, self._repeat_hooks, self) if plain else None
        )
        # The common pass (one depth, skip mode, no checkpoint, no grad_depth, no extra
        # arguments) runs inline in forward(): the same calls as Skip's loop, fewer frames.
        fast = type(self._repeats) is _repeats.Skip and not self._checkpoint
        self._fast_call = self._plain_call if fast and self._grad.value is None else None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OPTIONS:  # the property's setter, even for a value that is a Module
            object.__setattr__(self, name, value)
            return
        if name == "layer" and "_plain_call" in self.__dict__:  # after construction
            if not isinstance(value, nn.Module):
                raise TypeError(f"layer must be a torch.nn.Module, got {describe(value)}")
            if self._mode == "masked":
                check_masked_layer(value)
        super().__setattr__(name, value)
        if name == "layer" and "_plain_call" in self.__dict__:
            self._configure()

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
        """The most times one forward pass applies the layer; fixed at construction."""
        return self._choice.depth_limit

    @depth_limit.setter
    def depth_limit(self, value: int) -> None:
        raise _fixed("depth_limit", value)

    @property
    def last_depth(self) -> int | Tensor | None:
        """The depth the last forward pass used (``None`` before the first).

        An int, or with ``per_sample=True`` a tensor of the rows' depths (with
        ``per_token=True``, of shape ``(batch, seq)``); in masked mode, the depth
        tensor when one was given.
        """
        return self._choice.last

    @last_depth.setter
    def last_depth(self, value: int | Tensor | None) -> None:
        self._choice.last = value

    @property
    def last_global_depth(self) -> Tensor | None:
        """The depths of the global batch's rows that the last pass drew, or ``None``.

        Set by a training-mode pass with ``per_sample=True`` and ``row_draws="global"``
        inside a process group: every rank's rows, in rank order (``last_depth`` holds
        this rank's chunk of them); ``None`` after any other pass.
        """
        return self._choice.everywhere

    @property
    def mode(self) -> Mode:
        """How the repeats run: ``"skip"`` or ``"masked"``; fixed at construction.

        Assigning raises an ``AttributeError``: masked mode bounds the depths and checks
        the layer and the eval policy when the block is built.
        """
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        raise _fixed("mode", value)

    @property
    def per_sample(self) -> bool:
        """Whether every row draws its own depth; settable (a bool)."""
        return self._per_sample

    @per_sample.setter
    def per_sample(self, value: bool) -> None:
        per_sample = check_bool("per_sample", value)
        if per_sample and self._per_token:
            raise ValueError(PER_TOKEN_AND_PER_SAMPLE)
        self._per_sample = per_sample
        self._configure()

    @property
    def row_draws(self) -> RowDraws:
        """Whose rows a per-row draw covers in a process group: ``"global"`` or ``"local"``."""
        return self._choice.row_draws

    @row_draws.setter
    def row_draws(self, value: RowDraws) -> None:
        self._choice.row_draws = check_row_draws(value)

    @property
    def per_token(self) -> bool:
        """Whether every position of a ``(batch, seq, ...)`` state has its own depth."""
        return self._per_token

    @property
    def checkpoint(self) -> bool | int:
        """The activation checkpointing: ``False``, ``True`` or ``k``; settable."""
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, value: bool | int) -> None:
        self._checkpoint = check_checkpoint(value)
        self._configure()

    @property
    def row_args(self) -> tuple[int | str, ...]:
        """The row-aligned extra arguments (positions and keyword names); settable."""
        return self._rows.spec()

    @row_args.setter
    def row_args(self, value: int | str | tuple[int | str, ...] | list[int | str] | None) -> None:
        self._rows = RowArgs(value)

    @property
    def step_kwarg(self) -> str | None:
        """The keyword that passes the repeat index to the layer, or ``None``; settable."""
        return self._step_kwarg

    @step_kwarg.setter
    def step_kwarg(self, value: str | None) -> None:
        self._step_kwarg = check_step_kwarg(value)
        self._configure()

    @property
    def output(self) -> Output:
        """How the next state is read from the layer's return value; settable."""
        return self._output

    @output.setter
    def output(self, value: Output) -> None:
        self._output = check_output(value)
        self._configure()

    @property
    def grad_depth(self) -> int | DepthSampler | None:
        """Truncated backprop: ``None``, an int ``k`` or a depth sampler; settable.

        Assigning runs the constructor's checks (refused in masked mode).
        """
        return self._grad.value

    @grad_depth.setter
    def grad_depth(self, value: int | DepthSampler | None) -> None:
        self._grad = check_grad_depth(value, self._mode, self._per_token)
        self._configure()

    @property
    def depth_histogram(self) -> dict[int, int]:
        """How many training-mode forward passes used each depth, by depth.

        Every training-mode forward pass counts, whether its depth was drawn or given
        as an int (with ``per_sample=True``, every row counts: after a global row draw,
        every row of the global batch, the same counts on every rank); a depth tensor given
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
        return shape_error(
            "RepeatedBlock",
            "RepeatedBlock's layer must return a tensor of its input's shape",
            type(self.layer).__name__,
            x,
            out,
            f" at repeat {repeat + 1} of {depth}",
            self._output,
        )

    def get_extra_state(self) -> Tensor:
        """Return the sampler's state, for ``state_dict``, as one ``uint8`` tensor.

        A sampler that is itself an ``nn.Module`` is saved through the module tree
        instead, as a child of this block. The state is encoded as one CPU tensor so
        that safetensors (``save_pretrained``), ``torch.load(weights_only=True)`` and
        ``torch.distributed.checkpoint`` all take it.

        Returns:
            The encoding of the state: the sampler's ``state_dict()`` under
                ``"sampler"`` (none when the sampler keeps none) and a stateful
                ``grad_depth`` sampler's under ``"grad_depth"``.
        """
        return encode_state(self._state_mapping())

    def _state_mapping(self) -> dict[str, Any]:
        """The state that :meth:`get_extra_state` encodes, as a mapping.

        Returns:
            ``{"sampler": sampler.state_dict()}``, or ``{}`` when the sampler keeps no
                state of its own (or is an ``nn.Module``, saved as a child); with a
                ``grad_depth`` sampler that keeps state, its state under
                ``"grad_depth"`` too.
        """
        state: dict[str, Any] = {}
        sampler = self.sampler
        if not isinstance(sampler, nn.Module) and has_state(sampler):
            state["sampler"] = sampler.state_dict()
        grad_state = self._grad.state()
        if grad_state is not None:
            state["grad_depth"] = grad_state
        return state

    def set_extra_state(self, state: Any) -> None:
        """Restore the sampler's state saved by :meth:`get_extra_state`.

        Args:
            state: The tensor :meth:`get_extra_state` returned, or the mapping that
                earlier versions saved (the same keys).

        Raises:
            TypeError: ``state`` is neither a tensor nor a mapping.
            ValueError: ``state`` is not an encoded state, holds a sampler state but
                this block's sampler keeps none, or the sampler rejects it.
        """
        state = read_extra_state(state, "RepeatedBlock")
        if state.get("grad_depth") is not None:
            self._grad.load(state["grad_depth"])
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
                ("per_token", self._per_token, False),
                ("checkpoint", self._checkpoint, False),
                ("row_args", self._rows.spec(), ()),
                ("step_kwarg", self._step_kwarg, None),
                ("output", self._output, None),
                ("grad_depth", self._grad.value, None),
                ("row_draws", self._choice.row_draws, "global"),
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


def check_masked_layer(layer: nn.Module) -> None:
    if stats := _running_statistics(layer):
        raise ValueError(
            f"mode='masked' runs the layer max_depth times and discards the repeats "
            f"beyond the depth, but {stats} of the layer would count those repeats "
            f"in its running statistics: use mode='skip' with this layer"
        )


def check_grad_depth(value: object, mode: Mode, per_token: bool) -> GradDepth:
    grad = GradDepth(value)
    if grad.value is not None and per_token:
        raise ValueError(
            "grad_depth is not supported with per_token=True: the positions interact "
            "through the layer (attention), so cutting one position's gradient after "
            "its own last k repeats would cut the others' too; use grad_depth with "
            "per_sample=True or one depth for the batch"
        )
    if grad.value is not None and mode == "masked":
        raise ValueError(
            "grad_depth is not supported with mode='masked': which repeats would run "
            "without autograd depends on the depth, a tensor in masked mode, and the one "
            "fixed graph of max_depth repeats (what torch.export and fullgraph "
            "compilation need) cannot switch autograd off by value; use mode='skip' "
            "(with or without per_sample) for truncated backprop"
        )
    return grad


def _fixed(name: str, value: object) -> AttributeError:
    """The error of assigning an option that only the constructor sets."""
    return AttributeError(
        f"RepeatedBlock.{name} is fixed at construction (what it changes is built once, "
        f"then); got an assignment of {value!r}: build a new RepeatedBlock(layer, sampler, "
        f"{name}=...) around the same layer instead"
    )


def check_mode(value: object) -> Mode:
    if not isinstance(value, str):
        raise TypeError(
            f"mode must be one of {', '.join(map(repr, _MODES))}, got {describe(value)}"
        )
    if value not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {value!r}")
    return cast(Mode, value)


def check_checkpoint(value: object) -> bool | int:
    if isinstance(value, bool):
        return value
    if not isinstance(value, numbers.Integral):
        raise TypeError(
            f"checkpoint must be a bool or an int >= 1 (repeats per segment), got {describe(value)}"
        )
    return check_int("checkpoint", value, minimum=1)
