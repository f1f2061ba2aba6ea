"""`RepeatedBlock`: one weight-shared layer applied a sampled number of times."""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import _repeats
from ._cache_guard import check_caches
from ._cache_writes import depth_zero_for_caches, freeze_for_caches
from ._depth import DEFAULT_DEPTH_LIMIT, DepthChoice, EvalDepth, check_within_limit, row_count
from ._extra_state import decode_state, encode_state, read_extra_state
from ._grad_depth import GradDepth
from ._layer_call import (
    LayerCall,
    Output,
    PlainCall,
    RepeatHook,
    RowArgs,
    check_kwargs,
    check_output,
    check_step_kwarg,
    summarize,
)
from ._per_token import PerToken, deepest_possible, positions, token_depths
from ._repeats import outside_graph
from ._row_draws import RowDraws, check_row_draws
from ._tie import tie_skipped_layer
from ._validation import check_bool, check_int, describe
from .exits._loop import until_converged
from .exits._policy import ExitWhenConverged
from .samplers._protocol import DepthSampler, has_state

__all__ = ["DEFAULT_DEPTH_LIMIT", "EvalDepth", "Mode", "RepeatedBlock", "check_within_limit"]

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
_EXTRA_STATE_KEY = "_extra_state"


class RepeatedBlock(nn.Module):
    """Applies one shape-preserving ``layer`` a sampled number of times.

    The same ``layer``, with the same weights, runs ``d`` times in a row (``d = 0``
    returns the input). In training mode ``d`` is drawn from ``sampler`` on every
    forward pass, as in the article's ``DynamicNet``; in eval mode it follows
    ``eval_depth``. The parameter count is the layer's, whatever the depth. Why each
    option exists and what it costs: the [performance](../performance.md),
    [test-time depth](../test-time-depth.md) and [recipes](../recipes.md) pages.

    Args:
        layer: The module to repeat, called as ``layer(state, *args, **kwargs)`` with
            the block's extra arguments; it must return a tensor of the state's shape
            (or, with ``output``, something the state is read from), checked at every
            repeat.
        sampler: Training-mode depths (default ``UniformDepth(0, 3)``, the article's
            ``random.randint(0, 3)``), checked against
            :class:`~stochdepth.DepthSampler` once, here.
        eval_depth: The eval-mode depth: an int >= 0, ``"max"`` (default), ``"min"``,
            ``"sample"`` (draw as in training), or
            :class:`~stochdepth.ExitWhenConverged` (repeat until the state stops
            changing; skip mode only).
        depth_limit: The most repeats one forward pass may run (default 10 000).
        mode: ``"skip"`` (default): the layer runs exactly ``depth`` times, and at
            depth 0 its parameters get no gradient. ``"masked"``: it runs
            ``sampler.max_depth`` times and repeat ``i`` is kept where ``i < depth``
            (``torch.where``): one graph for every depth, for ``torch.export`` and
            ``fullgraph=True``; unused repeats give zero gradients. Refuses layers with
            running statistics and ``grad_depth``.
        per_sample: A depth for every row (dimension 0) instead of one per batch; the
            layer must treat rows independently. Drawn with the sampler's
            ``sample_batch``.
        per_token: A depth for every position of a ``(batch, seq, ...)`` state
            (``depth=`` and ``last_depth`` of shape ``(batch, seq)``; drawn per
            position in training, ``ExitWhenConverged`` per position in eval). A
            position's state is frozen once its depth is reached while the layer keeps
            seeing every position: the pass is ``h = where(r < depth, layer(h), h)``
            over ``r < max(depth)`` (``sampler.max_depth`` in masked mode). Refuses
            ``per_sample`` and ``grad_depth``. See the page "Generating with a
            repeated layer" for cached generation with it.
        row_draws: With ``per_sample=True``, whose rows a training-mode draw covers
            inside a ``torch.distributed`` process group (DDP, FSDP2): ``"global"``
            (default) draws the global batch's rows (the ranks' row counts gathered in
            one ``all_gather``) and keeps this rank's contiguous chunk, rank ``r`` the
            rows after those of ranks ``0..r-1``, so that training equals one process
            on the global batch; every rank needs the same sampler state (one seed),
            and every rank then calls the layer alike (a call possibly on no rows).
            ``"local"`` draws this rank's rows only, with no communication. Outside a
            process group, and in eval mode, both draw this process's rows. See the
            [distributed](../distributed.md#row-draws-of-the-global-batch) page.
        checkpoint: Activation checkpointing of the repeats (``torch.utils.checkpoint``,
            not the run files of :func:`~stochdepth.train`): ``True`` for segments of
            ``ceil(sqrt(depth))`` repeats, an int ``k >= 1`` for segments of ``k``.
            Gradients are bitwise those without it.
        row_args: Which extra arguments have a row per row of ``x`` (positions among
            the extra positional arguments, or keyword names); checked on every call,
            cut with the rows under ``per_sample=True``.
        step_kwarg: Pass the 0-based repeat index to the layer under this keyword.
        output: How the next state is read from what the layer returns: ``None`` (the
            value itself), an int (that element of a tuple or list), or a callable.
        grad_depth: Truncated backprop: autograd records only the last ``k`` repeats
            (an int ``k >= 0``, or a sampler drawn per pass); skip mode only.

    Attributes:
        layer: The repeated module.

    Raises:
        TypeError: An argument has the wrong type (the message names it).
        ValueError: An argument has a wrong value: a negative or unknown
            ``eval_depth``, sampler bounds that are negative, reversed or above
            ``depth_limit``, an unknown ``mode``, ``checkpoint < 1``, a masked-mode
            conflict (see ``mode``), a repeated or negative ``row_args`` entry, a
            ``step_kwarg`` that is not a keyword name, a negative ``grad_depth``, or
            ``per_token=True`` with ``per_sample=True`` or ``grad_depth``.

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

    def __init__(
        self,
        layer: nn.Module,
        sampler: DepthSampler | None = None,
        *,
        eval_depth: EvalDepth = "max",
        depth_limit: int = DEFAULT_DEPTH_LIMIT,
        mode: Mode = "skip",
        per_sample: bool = False,
        per_token: bool = False,
        checkpoint: bool | int = False,
        row_args: int | str | tuple[int | str, ...] | list[int | str] | None = None,
        step_kwarg: str | None = None,
        output: Output = None,
        grad_depth: int | DepthSampler | None = None,
        row_draws: RowDraws = "global",
    ) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {describe(layer)}")
        self.layer = layer
        self._choice = DepthChoice(sampler, eval_depth, depth_limit)
        self._choice.row_draws = check_row_draws(row_draws)
        self._adopt(self._choice.sampler)
        self._mode = _check_mode(mode)
        if self._mode == "masked":
            _check_masked_layer(layer)
            self._choice.use_masked()
        self._per_sample = check_bool("per_sample", per_sample)
        self._per_token = check_bool("per_token", per_token)
        if per_token and per_sample:
            raise ValueError(
                "per_token=True gives every position of a (batch, seq, ...) state its own "
                "depth and per_sample=True every row: choose one"
            )
        self._checkpoint = _check_checkpoint(checkpoint)
        self._repeats: _repeats.Strategy | PerToken
        if per_token:
            self._repeats = PerToken(self._mode == "masked", self._checkpoint)
        else:
            self._repeats = _repeats.strategy_for(
                self._mode == "masked", per_sample, self._checkpoint
            )
        self._rows = RowArgs(row_args)
        self._step_kwarg = check_step_kwarg(step_kwarg)
        self._output = check_output(output)
        self._grad = GradDepth(grad_depth)
        if self._grad.value is not None and per_token:
            raise ValueError(
                "grad_depth is not supported with per_token=True: the positions interact "
                "through the layer (attention), so cutting one position's gradient after "
                "its own last k repeats would cut the others' too; use grad_depth with "
                "per_sample=True or one depth for the batch"
            )
        if self._grad.value is not None and self._mode == "masked":
            raise ValueError(
                "grad_depth is not supported with mode='masked': which repeats would run "
                "without autograd depends on the depth, a tensor in masked mode, and the one "
                "fixed graph of max_depth repeats (what torch.export and fullgraph "
                "compilation need) cannot switch autograd off by value; use mode='skip' "
                "(with or without per_sample) for truncated backprop"
            )
        self._grad = _check_grad_depth(grad_depth, self._mode)
        self._repeat_hooks: dict[int, RepeatHook] = OrderedDict()  # weakly referable
        self._plain_call: PlainCall | None = None
        self._set_plain_call()
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            _default_missing_sampler_state
        )

    def _set_plain_call(self) -> None:
        """Build the call that every pass without extra arguments reuses, if it may."""
        plain = self._step_kwarg is None and self._output is None
        self._plain_call = (
            PlainCall(self.layer, self._shape_error, self._repeat_hooks, self) if plain else None
        )

    def forward(
        self, x: Tensor, /, *args: Any, depth: int | Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """Apply the layer ``depth`` times, drawing ``depth`` when it is not given.

        Each repeat calls ``layer(state, *args, **kwargs)``, with the same extra
        arguments every time (and the repeat index under ``step_kwarg``).

        Args:
            x: The input, the first state; the layer (through ``output``) must map a
                state to a tensor of the same shape.
            *args: Extra positional arguments, passed to the layer at every repeat.
            depth: Keyword-only. Use this depth instead of drawing one: an int >= 0
                (at most ``depth_limit``; in masked mode at most
                ``sampler.max_depth``), or, in masked mode or with
                ``per_sample=True``, an integer tensor (0-d, or one depth per row);
                with ``per_token=True`` an int or a ``(batch, seq)`` integer tensor.
            **kwargs: Extra keyword arguments, passed to the layer at every repeat.

        Returns:
            The layer applied ``depth`` times to ``x``; ``x`` itself at depth 0.

        Raises:
            TypeError: ``x`` is not a tensor, ``depth`` is not an int, the sampler
                returned something other than an int, the layer returned something
                other than a tensor, or an extra argument is a key/value cache without a
                slot per repeat of this block (a ``DynamicCache``: pass a
                :class:`~stochdepth.DepthCache`).
            ValueError: ``depth`` is negative or above ``depth_limit``, the
                sampler returned a depth outside its bounds, the layer changed the
                shape of its input, or a row-aligned argument has the wrong number
                of rows.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {describe(x)}")
        call = self._call(x, args, kwargs)
        training = self.training
        if not training and (policy := self._choice.early_exit(depth)) is not None:
            return self._exit_early(policy, call, x)
        zero = self._zero_for(call, x)
        return self._repeats(self._choice, self._grad, x, call, depth, training, zero)

    def draw_depth(self, x: Tensor) -> int | Tensor:
        """Draw the depth that the next forward pass on ``x`` would use, without running it.

        Drawn exactly as :meth:`forward` draws it (advancing the sampler): in training
        mode from the sampler, in eval mode the eval policy's depth (for
        ``ExitWhenConverged``, its ``max_depth``). Nothing is recorded; pass the depth
        to :meth:`run` (or to :meth:`forward`, which records it) and, to count it,
        to :meth:`record_depth`.

        Args:
            x: The input the pass would run on (its rows count with ``per_sample``).

        Returns:
            An int, or with ``per_sample=True`` a CPU int64 tensor of the rows' depths
            (with ``per_token=True``, an int64 tensor of shape ``(batch, seq)`` on ``x``'s
            device).

        Raises:
            TypeError: ``x`` is not a tensor, or the sampler drew a non-int.
            ValueError: The depth is out of the sampler's bounds, above
                ``depth_limit``, or (masked mode) above ``max_depth``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {describe(x)}")
        choice, training = self._choice, self.training
        if self._per_token:
            return token_depths(choice, x, None, training, record=False)
        if self._mode == "masked":
            return choice.masked_draw(x, None, training, self._per_sample, record=False)
        if self._per_sample:
            return choice.rows(row_count(x), None, training, record=False)
        return choice.one(None, training, record=False)

    def record_depth(self, depth: int | Tensor) -> None:
        """Record ``depth`` in :attr:`last_depth` and the histogram, as a forward pass does.

        For a driver that draws with :meth:`draw_depth` and runs with :meth:`run`
        (CUDA graphs); the histogram counts only in training mode.
        """
        self._choice.record(depth, self.training)

    def run(self, x: Tensor, /, *args: Any, depth: int | Tensor, **kwargs: Any) -> Tensor:
        """Run at ``depth`` as ``forward(x, *args, depth=depth, **kwargs)``, recording nothing.

        ``last_depth`` and :attr:`depth_histogram` are left as they are (a
        ``grad_depth`` sampler is drawn, as in :meth:`forward`).

        Raises:
            TypeError: ``depth`` is ``None``; otherwise as :meth:`forward`.
            ValueError: As :meth:`forward`.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {describe(x)}")
        if depth is None:
            raise TypeError("run() needs a depth (an int or a depth tensor), got None")
        call = self._call(x, args, kwargs)
        return self._repeats(
            self._choice, self._grad, x, call, depth, self.training, self._zero_for(call, x), False
        )

    def step(self, state: Tensor, /, *args: Any, repeat: int, **kwargs: Any) -> Tensor:
        """Apply the layer once, exactly as the forward pass applies repeat ``repeat``.

        The extra arguments, ``step_kwarg``, ``output=`` and the shape check, and the
        repeat hooks, as in :meth:`forward`; no depth is drawn or recorded. For a
        driver that runs the repeats itself (a scheduler, a KV cache).

        Args:
            state: The state before the repeat.
            *args: Extra positional arguments, as for :meth:`forward`.
            repeat: Keyword-only: the 0-based repeat index.
            **kwargs: Extra keyword arguments, as for :meth:`forward`.

        Returns:
            The state after the repeat.

        Raises:
            TypeError: ``state`` is not a tensor or ``repeat`` not an int.
            ValueError: ``repeat`` is negative, or as :meth:`forward` for the layer's
                result and the row-aligned arguments.
        """
        if not isinstance(state, Tensor):
            raise TypeError(f"state must be a torch.Tensor, got {describe(state)}")
        if type(repeat) is not int or repeat < 0:
            repeat = check_int("repeat", repeat)
        return self._call(state, args, kwargs)(state, repeat, repeat + 1)

    def register_repeat_hook(self, hook: RepeatHook) -> RemovableHandle:
        """Call ``hook(block, repeat)`` right before every application of the layer.

        In every path (skip, masked, per row, :meth:`iterate`, early exit,
        :meth:`step`) with the 0-based repeat index, and again, with the same index,
        when activation checkpointing recomputes a repeat in the backward pass.

        Returns:
            A handle whose ``remove()`` unregisters the hook.
        """
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {describe(hook)}")
        handle = RemovableHandle(self._repeat_hooks)
        self._repeat_hooks[handle.id] = hook
        return handle

    @property
    def has_repeat_hooks(self) -> bool:
        """Whether a repeat hook is registered: the layer's result may depend on the repeat.

        A driver that applies rows at different repeats in one call (a scheduler) asks
        this to know whether it must call the layer once per repeat index instead.
        """
        return bool(self._repeat_hooks)

    def check_sampler(self, sampler: object) -> DepthSampler:
        """Run the checks of ``block.sampler = sampler`` without binding it.

        Returns:
            ``sampler``, checked.

        Raises:
            TypeError: ``sampler`` does not satisfy :class:`~stochdepth.DepthSampler`.
            ValueError: Its bounds exceed ``depth_limit``, or (masked mode) its
                ``max_depth`` is below an int ``eval_depth``.
        """
        return self._choice.check_fits(sampler)

    @property
    def last_grad_depth(self) -> int | None:
        """The truncated-backprop depth ``k`` the last pass with autograd drew, or ``None``.

        ``None`` without ``grad_depth`` or before the first such pass.
        """
        return self._grad.last

    def iterate(
        self, x: Tensor, /, *args: Any, depth: int | None = None, **kwargs: Any
    ) -> Iterator[Tensor]:
        """Yield the state after each repeat, 1 to ``depth``, for a loss at several depths.

        The states are those a forward pass computes on the way (progressive loss,
        convergence plots, stopping early: break out of the loop). One depth serves
        the whole batch, whatever ``per_sample`` and ``mode`` say, and the repeats run
        one by one, without checkpoints: the depth is drawn as ``sampler.sample()``
        in training mode, the eval policy's in eval mode, or ``depth`` when given,
        and it is chosen (and recorded in ``last_depth``) when the first state is
        asked for. With ``grad_depth=k`` the first ``depth - k`` states come from
        repeats run without autograd. Depth 0 yields nothing.

        Args:
            x: The input, the first state.
            *args: Extra positional arguments, passed at every repeat.
            depth: Keyword-only. An int >= 0 instead of drawing one.
            **kwargs: Extra keyword arguments, passed at every repeat.

        Yields:
            The state after repeat 1, 2, ..., ``depth``.

        Raises:
            TypeError: As :meth:`forward`; ``depth`` is a tensor.
            ValueError: As :meth:`forward`.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from stochdepth import FixedDepth, RepeatedBlock
            >>> block = RepeatedBlock(nn.Linear(4, 4), FixedDepth(3))
            >>> [state.shape for state in block.iterate(torch.randn(2, 4))]
            [torch.Size([2, 4]), torch.Size([2, 4]), torch.Size([2, 4])]
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {describe(x)}")
        if isinstance(depth, Tensor):
            raise TypeError(
                "depth must be an int in iterate(), which runs one depth for the whole "
                f"batch; got a tensor of shape {tuple(depth.shape)}"
            )
        call = self._call(x, args, kwargs)
        return self._states(call, x, depth)

    def _states(self, call: LayerCall, x: Tensor, depth: int | None) -> Iterator[Tensor]:
        used = self._choice.one(depth, self.training)
        if self._mode == "masked":
            self._choice.check_within_max(used)
        frozen = _repeats.frozen_repeats(used, self._grad.draw())
        for repeat in range(used):
            if repeat < frozen:
                with torch.no_grad():
                    x = call(x, repeat, used)
            else:
                x = call(x, repeat, used)
            yield x

    def _call(self, x: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        """The layer call of one forward pass, its row-aligned arguments checked."""
        plain = self._plain_call
        if plain is not None and not args and not kwargs:
            return plain
        if kwargs:
            check_kwargs(kwargs, self._step_kwarg)
        check_caches(self, _extra_arguments(args, kwargs))
        call = LayerCall(
            self.layer,
            args,
            kwargs,
            self._rows,
            self._step_kwarg,
            self._output,
            self._shape_error,
            self._repeat_hooks,
            self,
        )
        if self._rows:
            call.check_rows(x)
        return call

    @outside_graph  # the depth depends on the values: run eagerly under compile
    def _exit_early(self, policy: ExitWhenConverged, call: LayerCall, x: Tensor) -> Tensor:
        """Eval mode with ``eval_depth=ExitWhenConverged(...)``: repeat until converged."""
        if self._per_sample:
            row_count(x)
        if self._per_token:
            positions(x)
        out, used = until_converged(call, x, policy, self._per_sample, self._per_token)
        self._choice.last = used
        if self._per_token:
            ran = int(cast(Tensor, used).max()) if x.numel() else 0
            freeze_for_caches(call, out, ran, deepest_possible(self._choice, False, False))
        return out

    def _zero_for(self, call: LayerCall, x: Tensor) -> _repeats.DepthZero:
        """The depth-0 path of a pass on ``x``: with extra arguments, one that tells caches."""
        if call is self._plain_call or self._per_token or torch.compiler.is_compiling():
            return self._depth_zero  # per_token=True tells caches itself
        return depth_zero_for_caches(call, x, self._depth_zero)

    def _depth_zero(self, x: Tensor) -> Tensor:
        """The output of a pass whose depth is 0 for the whole batch: ``x`` itself.

        The one place that every depth-0 pass of skip mode goes through, in training
        and eval mode alike (``self.training`` tells them apart): the layer does not
        run, so its parameters get no gradient this step. What such a step needs
        beyond the output (under DDP, say) belongs here. A pass whose ``grad_depth``
        leaves no repeat recorded by autograd (``k = 0`` with autograd enabled) comes
        here too, with ``x`` the repeats' result: its parameters get no gradient
        either.
        """
        if torch.compiler.is_compiling():
            # One op, so that Dynamo compiles this depth's (empty) graph: a frame
            # without ops would make it skip this code, at every depth, for good.
            return x.view_as(x)
        if self.training:  # DDP must see the skipped layer's parameters
            return tie_skipped_layer(self.layer, x)
        return x

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OPTIONS:  # the property's setter, even for a value that is a Module
            object.__setattr__(self, name, value)
            return
        if name == "layer" and "_plain_call" in self.__dict__:  # after construction
            if not isinstance(value, nn.Module):
                raise TypeError(f"layer must be a torch.nn.Module, got {describe(value)}")
            if self._mode == "masked":
                _check_masked_layer(value)
        super().__setattr__(name, value)
        if name == "layer" and "_plain_call" in self.__dict__:
            self._set_plain_call()

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
        self._repeats = _repeats.strategy_for(self._mode == "masked", per_sample, self._checkpoint)
        self._per_sample = per_sample

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
        checkpoint = _check_checkpoint(value)
        self._repeats = _repeats.strategy_for(self._mode == "masked", self._per_sample, checkpoint)
        self._checkpoint = checkpoint

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
        self._set_plain_call()

    @property
    def output(self) -> Output:
        """How the next state is read from the layer's return value; settable."""
        return self._output

    @output.setter
    def output(self, value: Output) -> None:
        self._output = check_output(value)
        self._set_plain_call()

    @property
    def grad_depth(self) -> int | DepthSampler | None:
        """Truncated backprop: ``None``, an int ``k`` or a depth sampler; settable.

        Assigning runs the constructor's checks (refused in masked mode).
        """
        return self._grad.value

    @grad_depth.setter
    def grad_depth(self, value: int | DepthSampler | None) -> None:
        self._grad = _check_grad_depth(value, self._mode)

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
        layer = type(self.layer).__name__
        where = f"at repeat {repeat + 1} of {depth}"
        if self._output is None:
            what = "RepeatedBlock's layer must return a tensor of its input's shape"
            returned, turned = f"{layer} returned", f"{layer} turned"
        else:
            what = (
                f"the state that output={self._output!r} reads must be a tensor of the "
                f"input's shape"
            )
            returned = f"it read {summarize(out)} from what {layer} returned"
            turned = f"from {layer}'s return value it read, for"
        if not isinstance(out, Tensor):
            if self._output is not None:
                return TypeError(f"{what}, but {returned} {where}")
            hint = ""
            if isinstance(out, (tuple, list)):
                hint = (
                    "; pass output=0 (or the state's index) to RepeatedBlock to take the "
                    "state from it"
                )
            return TypeError(f"{what}, but {returned} {summarize(out)} {where}{hint}")
        if self._output is not None:
            return ValueError(
                f"{what}, but {turned} an input of shape {tuple(x.shape)}, a tensor of "
                f"shape {tuple(out.shape)} {where}"
            )
        return ValueError(
            f"{what}, but {turned} an input of shape {tuple(x.shape)} into "
            f"{tuple(out.shape)} {where}"
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


def _extra_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The extra arguments of a forward pass, each with how an error names it."""
    for position, value in enumerate(args):
        yield f"positional argument {position} after x", value
    for name, value in kwargs.items():
        yield f"keyword argument {name!r}", value


def _running_statistics(layer: nn.Module) -> str:
    """Name the submodules of ``layer`` that keep running statistics, or ``""``."""
    names = [
        name or type(module).__name__
        for name, module in layer.named_modules()
        if getattr(module, "track_running_stats", False)
        and getattr(module, "running_mean", None) is not None
    ]
    return ", ".join(repr(name) for name in names)


def _check_masked_layer(layer: nn.Module) -> None:
    if stats := _running_statistics(layer):
        raise ValueError(
            f"mode='masked' runs the layer max_depth times and discards the repeats "
            f"beyond the depth, but {stats} of the layer would count those repeats "
            f"in its running statistics: use mode='skip' with this layer"
        )


def _check_grad_depth(value: object, mode: Mode) -> GradDepth:
    grad = GradDepth(value)
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
    if (
        key not in state_dict
        and isinstance(module, RepeatedBlock)
        and not decode_state(module.get_extra_state())
    ):
        state_dict[key] = {}  # nothing to lose
