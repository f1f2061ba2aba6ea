"""`LayerDropList`: a stack of distinct layers, each dropped at random in training.

The list, its container protocol (iteration, indexing), its draws and its forward pass; its
settable options, their checks, the telemetry and the saved state are in ``_options.py``,
the residual update in ``_combine.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast, overload

import torch
from torch import Tensor, nn

from stochdepth._layer_call import (
    Output,
    check_output,
    check_row_aligned,
    cut_row_aligned,
    read_state,
    shape_error,
)
from stochdepth._row_draws import RowDraws, check_row_draws, draws_globally, global_layout
from stochdepth._tie import process_group_up
from stochdepth._validation import check_bool, check_int, describe
from stochdepth.samplers._generator import (
    new_generator,
)

from ._combine import Combine, combine, combine_eagerly
from ._host_loop import KeptRows, RowDraw
from ._options import (
    LegacyMode,
    ListOptions,
    Mode,
    Scale,
    check_eval_layers,
    check_mode,
    check_scale,
    get_rule,
)
from ._rules import DropRule, check_keep
from ._tie import tie


def _outside_graph(function: Any) -> Any:
    """Run ``function``'s own frame eagerly under ``torch.compile``; what it calls still compiles.

    The draws and the Python loop that decides which layers run happen on every call,
    never once at trace time; the layers themselves are compiled as separate graphs
    (one per kind of layer and input shape), however many keep patterns occur.
    """
    return torch.compiler.disable(function, recursive=False)  # type: ignore[no-untyped-call]


_tie = torch.compiler.disable(tie)  # type: ignore[no-untyped-call]


class LayerDropList(ListOptions):
    """Applies a stack of distinct layers in order, dropping each at random in training.

    Stochastic depth for residual networks and LayerDrop for transformers: the layers
    of a ViT, a ResNet or a transformer encoder run in order, and in training each
    layer is dropped with its own probability ``p`` (its drop rate). Unlike timm's
    ``DropPath`` and torchvision's ``stochastic_depth``, which compute a dropped branch
    and multiply it by zero, a dropped layer is not run at all, so the compute follows
    the keep rate, whichever way it draws (the words are
    :class:`~stochdepth.RepeatedBlock`'s):

    - ``per_sample=False`` (default; fairseq's LayerDrop, torchvision's
      ``mode="batch"``): one draw per layer per forward pass; a dropped layer is not
      called.
    - ``per_sample=True`` (torchvision's ``per_sample=True``, timm's ``DropPath``): one draw
      per layer and row (dimension 0); each layer runs only on its kept rows,
      gathered, then scattered back. The layer must treat rows independently (no
      ``BatchNorm``).

    What a layer means:

    - ``residual=False``: each layer holds its own residual connection (an
      ``nn.TransformerEncoderLayer``): a kept layer maps ``h`` to ``layer(h)``, a
      dropped one leaves ``h``. Evaluation runs every layer.
    - ``residual=True``: each layer is a residual branch: a kept branch gives
      ``h + branch(h) / (1 - p)`` in training and ``h + branch(h)`` in evaluation
      (``scale="train"``, as timm and torchvision scale), or ``h + branch(h)`` in
      training and ``h + (1 - p) * branch(h)`` in evaluation (``scale="eval"``, the
      stochastic depth paper's convention). A dropped branch leaves ``h``. A layer
      with ``p = 1`` is never drawn; kept anyway (by a ``keep=`` mask, or computed in
      masked mode), it is not scaled, so that no ``1 / 0`` reaches the gradients.

    The draws come from a CPU ``torch.Generator`` of the list's own, seeded by
    ``seed``, whose state is saved in the ``state_dict`` (with the telemetry): a
    restored list continues the same sequence of drops, and processes (DDP ranks)
    that build it with the same seed drop the same layers.

    A host model that loops over its own layers (``for layer in self.layers:``, as
    Hugging Face models and ``nn.TransformerEncoder`` do) drops layers too: iterating
    the list in training mode draws, as fairseq's ``LayerDropModuleList`` does (see
    the layer-drop guide and :func:`~stochdepth.add_layer_drop`). Every option reads
    back as an attribute and, but for ``seed``, can be assigned, with the
    constructor's checks.

    The layers are registered as children ``"0"``, ``"1"``, ..., as in
    ``nn.Sequential`` and ``nn.ModuleList``: replacing a model's ``blocks`` (a
    ``Sequential``) or ``layers`` (a ``ModuleList``) by a list over them keeps the
    ``state_dict`` keys, and a ``state_dict`` saved without the list's generator state
    (a pretrained model's) loads, strictly, keeping the current generator.

    Args:
        layers: The layers: an ``nn.Sequential``, an ``nn.ModuleList`` (such as
            ``nn.TransformerEncoder.layers``) or any iterable of modules, at least
            one. Each must map the hidden state to a tensor of its shape (see
            ``output``).
        drop_rate: Each layer's drop rate in ``[0, 1]``: one float for every layer,
            or one per layer (:func:`~stochdepth.linear_drop_rates` gives the usual
            linear rule).
        mode: ``"skip"`` (default): a dropped layer does not run. ``"masked"``: every
            layer runs on every row and its result is kept only where it was drawn
            (``torch.where``): no compute saved, but the graph is the same at every
            draw, so ``torch.compile(fullgraph=True)`` takes it with the mask passed
            as ``keep=`` (see :meth:`draw_keep`). Dropped layers then get zero
            gradients instead of none. The old spellings ``"batch"`` and ``"row"``
            still work, with a ``FutureWarning``: they mean ``per_sample=False`` and
            ``per_sample=True``.
        per_sample: Draw for every row (dimension 0) instead of once per forward
            pass, as above.
        residual: Whether each layer is a residual branch (see above).
        scale: With ``residual=True``: ``"train"`` (default; divide a kept branch by
            ``1 - p`` in training) or ``"eval"`` (multiply every branch by ``1 - p``
            in evaluation).
        seed: The generator's seed, an int in ``[0, 2**64 - 1]``. ``None`` draws one
            from torch's global generator, so ``torch.manual_seed`` before
            construction makes the list reproducible.
        rule: How the kept layers are drawn: a name from
            :func:`~stochdepth.available_drop_rules` (``"bernoulli"``, the default:
            independent draws) or a :class:`~stochdepth.DropRule`.
        masked: Deprecated (``FutureWarning``): ``masked=True`` is ``mode="masked"``.
        eval_layers: The indices of the layers that evaluation runs (fairseq's
            layers-to-keep, for a smaller network at inference), or ``None``
            (default) for every layer. Settable later.
        row_args: With ``per_sample=True``: which extra arguments of :meth:`forward` have
            a row per row of the input and are cut to the kept rows, by position
            among the extra positional arguments (0 is the first after ``h``) or by
            keyword. Each may be a tensor or a nested tuple, list or dict of tensors
            (``None`` passes through); every tensor in it is cut.
        output: How to read the next hidden state from a layer's return value:
            ``None`` (default) for a layer that returns a tensor; an int to take that
            element of a returned tuple or list (Hugging Face layers return
            ``(hidden_states, ...)``); or a callable mapping the return value to the
            state.
        row_draws: With ``per_sample=True``, whose rows a draw covers inside a
            ``torch.distributed`` process group (DDP, FSDP2): ``"global"``
            (default): every rank draws the keep mask of the global batch's rows (all
            ranks' rows, gathered as one ``all_gather`` of each rank's row count)
            and keeps its own contiguous chunk, rank ``r`` the rows after those of
            ranks ``0..r-1`` (as ``torch.chunk`` splits a batch), so that training
            equals one process on the global batch; every rank must build the list
            with the same ``seed``. A layer then runs on every rank when any row of
            the global batch keeps it (on no rows where this rank's rows drop it),
            and is skipped on every rank when none does, so that the ranks agree on
            the layers they run (FSDP2 unshards a layer it runs). ``"local"``: each
            rank draws its own rows only, with no communication (ranks with one seed
            then give row ``i`` of every rank the same drops). Outside a process
            group both draw this process's rows; ``per_sample=False`` ignores it.

    Attributes:
        last_keep: The keep mask of the last training-mode forward pass (``None``
            before the first), a bool CPU tensor of shape ``(layers,)`` or
            ``(layers, rows)`` (this rank's rows under ``row_draws="global"``).

    Raises:
        TypeError: An argument has the wrong type (the message names it).
        ValueError: An argument has a wrong value: no layers, a drop rate outside
            ``[0, 1]``, as many rates as layers not given, an unknown name, an
            ``eval_layers`` index out of range, ``scale="eval"`` without
            ``residual=True``, or ``row_args`` without ``per_sample=True``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import LayerDropList, linear_drop_rates
        >>> blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
        >>> stack = LayerDropList(blocks, linear_drop_rates(0.5, 4), residual=True, seed=2)
        >>> stack(torch.randn(2, 8)).shape
        torch.Size([2, 8])
        >>> stack.last_keep.tolist()  # layer 1 was dropped: not run
        [True, False, True, True]
    """

    last_keep: Tensor | None
    _drop_rates: tuple[float, ...]
    _rates_tensor: Tensor
    _eval_layers: tuple[int, ...] | None
    _generator: torch.Generator
    _seed: int
    _runs: Tensor
    _draws: int

    def __init__(
        self,
        layers: Iterable[nn.Module],
        drop_rate: float | Sequence[float],
        *,
        mode: Mode | LegacyMode = "skip",
        per_sample: bool = False,
        residual: bool = False,
        scale: Scale = "train",
        seed: int | None = None,
        rule: str | DropRule = "bernoulli",
        masked: bool | None = None,
        eval_layers: Iterable[int] | None = None,
        row_args: Iterable[int | str] = (),
        output: Output = None,
        row_draws: RowDraws = "global",
    ) -> None:
        super().__init__()
        for index, layer in enumerate(_check_layers(layers)):
            self.add_module(str(index), layer)
        self._mode, self._per_sample = check_mode(mode, per_sample, masked)
        self._masked = self._mode == "masked"
        self._residual = check_bool("residual", residual)
        self._scale = check_scale(scale, self._residual)
        self._set_rates(drop_rate)  # not self.drop_rates = ...: the docs would list it twice
        self._eval_layers = check_eval_layers(eval_layers, len(self))
        self._rule = get_rule(rule)
        self._set_row_args(row_args, self._per_sample)
        self._output = check_output(output)
        self._row_draws = check_row_draws(row_draws)
        self._kept_anywhere: list[int] | None = None
        self._seed, self._generator = new_generator(seed)
        self.last_keep = None
        self._runs = torch.zeros(len(self), dtype=torch.int64, device="cpu")
        self._draws = 0
        self.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
            _default_missing_state
        )

    # ----------------------------------------------------------------- the container

    def __iter__(self) -> Iterator[nn.Module]:
        """Iterate over the layers to run: in training, drawn; in evaluation, ``eval_layers``.

        A host model that loops over its own layers (``for layer in self.layers:``,
        as Hugging Face, torchvision and timm models do) gets layer drop from this,
        as from fairseq's ``LayerDropModuleList``. In training mode every iteration
        draws a keep mask from the list's generator, exactly as a forward pass of the
        list would (counted in :attr:`layer_runs`, saved in :attr:`last_keep`), and
        yields the kept layers in order. With ``per_sample=True`` it yields, for every
        layer, a callable that runs the layer on the rows the iteration's draw kept
        for it (drawn at the first call, once the rows are known; ``row_args`` cut to
        them) and leaves the other rows' state; its other attributes are the layer's.
        In evaluation mode it yields the layers of :attr:`eval_layers` (every layer by
        default). To visit every layer without a draw, use ``children()`` or indexing.

        Raises:
            TypeError: In training mode, the list is one that a host loop cannot
                apply: ``residual=True`` (the host would apply a branch as a
                layer), ``mode="masked"``, or with ``per_sample=True`` an
                ``output=`` (a layer returning a tuple, whose other elements could
                not be merged row by row). Call the list instead.
        """
        return iter(self._layers_to_run(range(len(self))))

    def _layers_to_run(self, indices: range) -> list[nn.Module]:
        """The layers among ``indices`` that a host loop runs now (drawing, in training)."""
        layers = list(cast(dict[str, nn.Module], self._modules).values())
        if not self.training:
            chosen = indices if self._eval_layers is None else self._eval_layers
            return [layers[index] for index in chosen if index in indices]
        masked = self._mode == "masked"
        if self._residual or masked or (self._per_sample and self._output is not None):
            options = ", ".join(
                f"{name}={value!r}"
                for name, value, default in (
                    ("residual", self._residual, False),
                    ("mode", self._mode, "skip"),
                    ("output", self._output if self._per_sample else None, None),
                )
                if value != default
            )
            raise TypeError(
                f"iterating a LayerDropList in training mode gives the layers that a host "
                f"loop runs, which needs residual=False and mode='skip' (and, with "
                f"per_sample=True, layers that return a tensor: output=None); this list "
                f"has {options}: call it (stack(h, ...)) instead of looping over it"
            )
        if self._per_sample:
            draw = RowDraw(self.draw_keep)
            return [KeptRows(layers[index], index, draw, self._cut) for index in indices]
        compiling = torch.compiler.is_compiling()
        keep = (self._draw_outside_graph(None) if compiling else self._draw(None)).tolist()
        return [layers[index] for index in indices if keep[index]]

    @overload
    def __getitem__(self, index: int) -> nn.Module: ...

    @overload
    def __getitem__(self, index: slice) -> list[nn.Module]: ...

    def __getitem__(self, index: int | slice) -> nn.Module | list[nn.Module]:
        """The layer at ``index``; a slice gives the layers to run among those it selects.

        ``stack[:n]`` (Llama's ``self.layers[: config.num_hidden_layers]``) is a list
        of the sliced layers that a host loop runs now, as iteration gives them: in
        training mode drawn (one draw for the whole list, then cut), in evaluation
        mode those of :attr:`eval_layers`.
        """
        count = len(self)
        if isinstance(index, slice):
            return self._layers_to_run(range(count)[index])
        position = check_int("index", index, minimum=-count)
        if position >= count:
            raise IndexError(f"index must be in [-{count}, {count - 1}], got {position}")
        return cast(nn.Module, self._modules[str(position % count)])

    # ----------------------------------------------------------------- drawing

    def draw_keep(self, rows: int | None = None) -> Tensor:
        """Draw a keep mask from the list's generator, as a training forward pass would.

        For ``masked=True`` under ``torch.compile(fullgraph=True)``: draw outside the
        compiled function and pass the mask as ``keep=``. The draw advances the
        generator and is counted in :attr:`layer_runs`. In row mode with
        ``row_draws="global"`` inside a process group it is this rank's rows of the
        global batch's draw (a collective: every rank draws together).

        Args:
            rows: In row mode, the number of rows (dimension 0 of the input; this
                rank's rows); ``None`` in batch mode.

        Returns:
            A bool CPU tensor, ``True`` where a layer runs: ``(layers,)`` in batch
            mode, ``(layers, rows)`` in row mode.

        Raises:
            TypeError: ``rows`` is given in batch mode or missing in row mode.
        """
        if not self._per_sample:
            if rows is not None:
                raise TypeError(
                    f"rows must be None with per_sample=False (mode='batch' before), got "
                    f"{describe(rows)}"
                )
            return self._draw(None)
        if rows is None:
            raise TypeError(
                "rows must be an int >= 0 with per_sample=True (the input's rows), got None"
            )
        return self._draw(check_int("rows", rows))

    def _draw(self, rows: int | None) -> Tensor:
        self._kept_anywhere = None
        if rows is not None and draws_globally(self._row_draws):
            return self._draw_global(rows)
        shape = (len(self),) if rows is None else (len(self), rows)
        keep = check_keep(
            self._rule, self._rule.draw(self._rates_tensor, rows, self._generator), shape
        )
        self._count(keep)
        return keep

    def _draw_global(self, rows: int) -> Tensor:
        """Row mode in a process group: the global batch's mask, this rank's rows of it.

        The telemetry counts the global batch's rows, as one process on it would, so
        that it is the same on every rank; ``last_keep`` holds this rank's rows.
        """
        start, total = global_layout(rows)
        everywhere = check_keep(
            self._rule,
            self._rule.draw(self._rates_tensor, total, self._generator),
            (len(self), total),
        )
        self._count(everywhere)
        self._kept_anywhere = everywhere.sum(dim=1).tolist()
        keep = everywhere[:, start : start + rows]
        self.last_keep = keep
        return keep

    _draw_outside_graph = torch.compiler.disable(_draw)  # type: ignore[no-untyped-call]

    def _count(self, keep: Tensor) -> None:
        if keep.ndim == 1:
            self._runs += keep
            self._draws += 1
        else:
            self._runs += keep.sum(dim=1)
            self._draws += keep.shape[1]
        self.last_keep = keep

    def _given_keep(self, keep: object, h: Tensor) -> Tensor:
        shape = (len(self),) if not self._per_sample else (len(self), _rows(h))
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != shape:
            got = (
                f"a tensor of dtype {keep.dtype} and shape {tuple(keep.shape)}"
                if isinstance(keep, Tensor)
                else describe(keep)
            )
            raise TypeError(
                f"keep must be a bool tensor of shape {shape} (layers"
                f"{'' if not self._per_sample else ', rows'}) with per_sample={self._per_sample}, "
                f"got {got}"
            )
        if not torch.compiler.is_compiling():
            self._count(keep.cpu())
        self._kept_anywhere = None
        return keep

    # ----------------------------------------------------------------- forward

    def forward(self, h: Tensor, *args: Any, keep: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Apply the layers in order, each kept or dropped as drawn.

        Args:
            h: The hidden state; with ``per_sample=True``, dimension 0 holds the rows.
            *args: Passed to every layer after the (cut) hidden state, unchanged;
                those named by ``row_args`` are cut to the kept rows in row mode.
            keep: Use this keep mask instead of drawing one (training mode only): a
                bool tensor of shape ``(layers,)`` in batch mode or ``(layers, rows)``
                in row mode, as :meth:`draw_keep` returns.
            **kwargs: Passed to every layer, as ``args``.

        Returns:
            The last hidden state, of ``h``'s shape.

        Raises:
            TypeError: ``h`` is not a tensor, ``keep`` has the wrong type, dtype or
                shape, a layer returned something other than a tensor (after
                ``output``), or a row argument holds something other than tensors.
            ValueError: ``keep`` is given in evaluation mode, a layer changed the
                hidden state's shape, or a row argument's rows do not match ``h``'s.
        """
        if not isinstance(h, Tensor):
            raise TypeError(f"h must be a torch.Tensor, got {describe(h)}")
        if not self.training:
            if keep is not None:
                raise ValueError(
                    "keep= applies in training mode only; evaluation runs eval_layers "
                    "(every layer by default)"
                )
            return self._evaluate(h, args, kwargs)
        if self._masked:
            if keep is None:
                rows = None if not self._per_sample else _rows(h)
                compiling = torch.compiler.is_compiling()
                keep = self._draw_outside_graph(rows) if compiling else self._draw(rows)
            else:
                keep = self._given_keep(keep, h)
            return self._masked_forward(h, keep, args, kwargs)
        if keep is not None:
            keep = self._given_keep(keep, h).cpu()
        if torch.compiler.is_compiling():
            if keep is None:
                keep = self._draw_outside_graph(None if not self._per_sample else _rows(h))
            return self._train_outside_graph(  # type: ignore[no-any-return]
                h, keep, args, kwargs, combine_eagerly
            )
        return self._train(h, keep, args, kwargs)

    def _train(
        self,
        h: Tensor,
        keep: Tensor | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        combine: Combine = combine,
    ) -> Tensor:
        """Training, skipping: the draw, then only the kept layers (or rows) run.

        Under ``torch.compile`` this frame runs eagerly (the keep mask is drawn before
        it), and every Python function it calls would be compiled as a frame of its
        own: so the only ones it calls are ``_call`` (a layer, the unit that compiles)
        and helpers disabled for Dynamo (``combine``, the residual update, is
        ``combine_eagerly`` there).
        """
        layers = cast(dict[str, nn.Module], self._modules).values()
        rates = self._drop_rates
        residual, scale = self._residual, self._scale
        call = self._call
        dropped: list[nn.Module] = []
        used: list[nn.Module] = []
        if not self._per_sample:
            if keep is None:
                keep = self._draw(None)
            for index, (layer, kept) in enumerate(zip(layers, keep.tolist(), strict=True)):
                if not kept:
                    dropped.append(layer)
                    continue
                used.append(layer)
                out = call(index, layer, h, args, kwargs)
                h = combine(h, out, residual, rates[index], scale, True)
        else:
            rows = h.shape[0] if h.ndim else _rows(h)
            if keep is None:
                keep = self._draw(rows)
            counts = keep.sum(dim=1).tolist()
            # With a global draw, a layer that some rank's rows keep runs on every
            # rank (here maybe on no rows), so that every rank calls the same layers.
            anywhere = counts if self._kept_anywhere is None else self._kept_anywhere
            for index, layer in enumerate(layers):
                count = counts[index]
                if anywhere[index] == 0:
                    dropped.append(layer)
                    continue
                used.append(layer)
                if count == rows:
                    part, part_args, part_kwargs = h, args, kwargs
                else:
                    kept_rows = keep[index].nonzero().squeeze(1).to(h.device)
                    part = h.index_select(0, kept_rows)
                    if self._rows.positions or self._rows.names:  # no __bool__ call here
                        part_args, part_kwargs = self._cut(args, kwargs, kept_rows, rows)
                    else:
                        part_args, part_kwargs = args, kwargs
                out = call(index, layer, part, part_args, part_kwargs)
                new = combine(part, out, residual, rates[index], scale, True)
                h = new if count == rows else h.index_copy(0, kept_rows, new)
        if dropped and torch.is_grad_enabled() and process_group_up():
            h = _tie(h, dropped, used)
        return h

    _train_outside_graph = _outside_graph(_train)

    def _masked_forward(
        self, h: Tensor, keep: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Tensor:
        """Every layer runs on every row; ``torch.where`` keeps the drawn results."""
        keep = keep.to(h.device)
        residual, rates, scale = self._residual, self._drop_rates, self._scale
        for index, layer in enumerate(cast(dict[str, nn.Module], self._modules).values()):
            out = self._call(index, layer, h, args, kwargs)
            new = combine(h, out, residual, rates[index], scale, True)
            kept = keep[index]
            if kept.ndim:  # row mode: one flag per row, broadcast over the other dims
                kept = kept.reshape(kept.shape + (1,) * (h.ndim - 1))
            h = torch.where(kept, new, h)
        return h

    def _evaluate(self, h: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        layers = list(cast(dict[str, nn.Module], self._modules).values())
        indices = range(len(layers)) if self._eval_layers is None else self._eval_layers
        for index in indices:
            out = self._call(index, layers[index], h, args, kwargs)
            h = combine(h, out, self._residual, self._drop_rates[index], self._scale, False)
        return h

    def _call(
        self,
        index: int,
        layer: nn.Module,
        h: Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Tensor:
        result = layer(h, *args, **kwargs)
        output = self._output
        if output is None:
            state = result
        else:
            state = read_state(result, output, f"layer {index} ({type(layer).__name__})")
        if not isinstance(state, Tensor) or state.shape != h.shape:
            raise shape_error(
                "LayerDropList",
                "LayerDropList's layers must return a tensor of their input's shape",
                f"layer {index} ({type(layer).__name__})",
                h,
                state,
                "",
                output,
            )
        return state

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _cut(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], kept_rows: Tensor, rows: int
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The extra arguments with those named by ``row_args`` cut to ``kept_rows``."""
        if not self._rows:
            return args, kwargs
        check_row_aligned(self._rows, args, kwargs, rows, "h")
        return cut_row_aligned(
            self._rows,
            args,
            kwargs,
            lambda tensor: tensor.index_select(0, kept_rows.to(tensor.device)),
        )


def _check_layers(layers: object) -> list[nn.Module]:
    expected = "an nn.Sequential, an nn.ModuleList or an iterable of nn.Module"
    if isinstance(layers, nn.Module) and not isinstance(
        layers, nn.Sequential | nn.ModuleList | LayerDropList
    ):
        raise TypeError(f"layers must be {expected}, got one {type(layers).__name__} module")
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be {expected}, got {describe(layers)}")
    # a module's children, not its iteration: a LayerDropList's would draw
    found = list(layers.children()) if isinstance(layers, nn.Module) else list(layers)
    for index, layer in enumerate(found):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layers[{index}] must be an nn.Module, got {describe(layer)}")
    if not found:
        raise ValueError(f"layers must hold at least one module, got {describe(layers)}")
    return found


def _rows(h: Tensor) -> int:
    if h.ndim == 0:
        raise ValueError(
            "per_sample=True draws for every row (dimension 0) of h, but h is a 0-d tensor"
        )
    return h.shape[0]


def _default_missing_state(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Let a ``state_dict`` without the list's state (plain ``Sequential`` weights) load."""
    key = prefix + "_extra_state"
    if key not in state_dict and isinstance(module, LayerDropList):
        state_dict[key] = {}
