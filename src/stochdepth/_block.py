"""`RepeatedBlock`: one weight-shared layer applied a sampled number of times.

The block, its forward pass and its public seam (the methods a driver calls); its settable
options, their checks and its saved state are in ``_block_options.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import _repeats
from ._block_options import (
    PER_TOKEN_AND_PER_SAMPLE,
    BlockOptions,
    Mode,
    check_checkpoint,
    check_grad_depth,
    check_masked_layer,
    check_mode,
)
from ._cache_guard import check_caches
from ._cache_writes import depth_zero_for_caches, freeze_for_caches
from ._depth import DEFAULT_DEPTH_LIMIT, DepthChoice, EvalDepth, check_within_limit, row_count
from ._extra_state import decode_state
from ._layer_call import (
    LayerCall,
    Output,
    PlainCall,
    RepeatHook,
    RowArgs,
    check_kwargs,
    check_output,
    check_step_kwarg,
)
from ._per_token import PerToken, deepest_possible, positions, token_depths
from ._repeats import outside_graph
from ._row_draws import RowDraws, check_row_draws
from ._tie import tie_skipped_layer
from ._validation import check_bool, check_int, describe
from .exits._loop import token_by_token, until_converged
from .exits._policy import ExitWhenConverged
from .samplers._protocol import DepthSampler

__all__ = ["DEFAULT_DEPTH_LIMIT", "EvalDepth", "Mode", "RepeatedBlock", "check_within_limit"]


class RepeatedBlock(BlockOptions):
    """Applies one shape-preserving ``layer`` a sampled number of times.

    The same ``layer``, with the same weights, runs ``d`` times in a row (``d = 0``
    returns the input). In training mode ``d`` is drawn from ``sampler`` on every
    forward pass, as in the article's ``DynamicNet``; in eval mode it follows
    ``eval_depth``. The parameter count is the layer's, whatever the depth. Why each
    option exists and what it costs: the [performance](../performance.md),
    [test-time depth](../test-time-depth.md) and [recipes](../recipes.md) pages. A
    driver that runs the block itself (CUDA graphs, a cache, a scheduler) uses the
    seam: :meth:`draw_depth`, :meth:`run`, :meth:`step`, :meth:`record_depth` and
    :meth:`register_repeat_hook`.

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
            ``per_sample`` and ``grad_depth``. Cached generation with it: the
            [generation](../generation.md#a-depth-per-token) page.
        row_draws: With ``per_sample=True``, whose rows a training-mode draw covers
            inside a ``torch.distributed`` process group (DDP, FSDP2): ``"global"``
            (default) draws the global batch's rows and keeps this rank's contiguous
            chunk, so that training equals one process on the global batch (every rank
            needs the same sampler state); ``"local"`` draws this rank's rows only, with
            no communication. Outside a process group, and in eval mode, both draw this
            process's rows. The layout and its rules: the
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
        self._mode = check_mode(mode)
        if self._mode == "masked":
            check_masked_layer(layer)
            self._choice.use_masked()
        self._per_sample = check_bool("per_sample", per_sample)
        self._per_token = check_bool("per_token", per_token)
        if per_token and per_sample:
            raise ValueError(PER_TOKEN_AND_PER_SAMPLE)
        self._checkpoint = check_checkpoint(checkpoint)
        self._rows = RowArgs(row_args)
        self._step_kwarg = check_step_kwarg(step_kwarg)
        self._output = check_output(output)
        self._grad = check_grad_depth(grad_depth, self._mode, self._per_token)
        self._repeat_hooks: dict[int, RepeatHook] = OrderedDict()  # weakly referable
        self._repeats: _repeats.Strategy | PerToken
        self._plain_call: PlainCall | None = None
        self._fast_call: PlainCall | None = None
        self._configure()
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            _default_missing_sampler_state
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
        training = self.training
        plain = self._plain_call
        if plain is not None and plain.layer is not self._modules["layer"]:
            # The layer was replaced through _modules (torch.ao's quantize_dynamic does
            # that), past __setattr__: call the new one.
            self._configure()
        fast = self._fast_call
        if (
            fast is not None
            and not (args or kwargs or self._repeat_hooks or torch.compiler.is_compiling())
            and (training or self._choice.early_exit(depth) is None)
        ):  # Skip's loop, inline: the common pass, with the fewest Python frames
            used = self._choice.one(depth, training)
            if used == 0:
                return self._depth_zero(x)
            layer, error = fast.layer, fast.error
            for repeat in range(used):
                out = layer(x)
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    raise error(x, out, repeat, used)
                x = out
            return x
        call = self._call(x, args, kwargs)
        if not training and (policy := self._choice.early_exit(depth)) is not None:
            return self._exit_early(policy, call, x)
        return self._run_pass(x, call, depth, training, True)

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
        return self._run_pass(x, call, depth, self.training, False)

    def _run_pass(
        self, x: Tensor, call: LayerCall, depth: object, training: bool, record: bool
    ) -> Tensor:
        """Run the pass through the block's strategy."""
        repeats = self._repeats
        zero = self._zero_for(call, x)
        run = _repeats.Pass(self._choice, self._grad, call, depth, training, zero, record)
        return repeats(x, run)

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
        if self._per_token:
            positions(x)
            out, depths, ran = token_by_token(call, x, policy)
            self._choice.last = depths
            freeze_for_caches(call, out, ran, deepest_possible(self._choice, False, False))
            return out
        if self._per_sample:
            row_count(x)
        out, used = until_converged(call, x, policy, self._per_sample)
        self._choice.last = used
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


def _extra_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The extra arguments of a forward pass, each with how an error names it."""
    for position, value in enumerate(args):
        yield f"positional argument {position} after x", value
    for name, value in kwargs.items():
        yield f"keyword argument {name!r}", value


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
    key = prefix + "_extra_state"
    if (
        key not in state_dict
        and isinstance(module, RepeatedBlock)
        and not decode_state(module.get_extra_state())
    ):
        state_dict[key] = {}  # nothing to lose
