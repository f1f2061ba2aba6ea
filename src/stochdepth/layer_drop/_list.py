"""`LayerDropList`: a stack of distinct layers, each dropped at random in training."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, cast, overload

import torch
from torch import Tensor, nn

from stochdepth._extra_state import encode_state, read_extra_state
from stochdepth._layer_call import (
    Output,
    RowArgs,
    check_output,
    check_row_aligned,
    cut_row_aligned,
    read_state,
    shape_error,
)
from stochdepth._row_draws import RowDraws, check_row_draws, draws_globally, global_layout
from stochdepth._tie import process_group_up
from stochdepth._validation import check_bool, check_int, check_probability, describe
from stochdepth.samplers._generator import (
    check_seed,
    generator_from_bytes,
    generator_to_bytes,
    new_generator,
    restore_generator,
)

from ._host_loop import KeptRows, RowDraw
from ._registry import get_drop_rule
from ._rules import DropRule, check_keep, check_rule
from ._tie import tie

Mode = Literal["skip", "masked"]
"""How a list applies a dropped layer: not at all (``"skip"``), or run and masked out."""

LegacyMode = Literal["batch", "row"]
"""The spellings of ``mode`` before 0.2, deprecated: ``per_sample`` says it now."""

Scale = Literal["train", "eval"]
"""Where a residual branch's ``1 - p`` factor goes: training (timm) or evaluation (the paper)."""


_MODES = ("skip", "masked")
_LEGACY_MODES = ("batch", "row")
# The options whose assignment goes to their property, even for a value that is a Module
_OPTIONS = frozenset(
    {
        "mode",
        "per_sample",
        "residual",
        "scale",
        "rule",
        "row_args",
        "output",
        "seed",
        "row_draws",
        "drop_rate",
        "drop_rates",
        "eval_layers",
    }
)
_SCALES = ("train", "eval")
_EXTRA_STATE_KEY = "_extra_state"


def _outside_graph(function: Any) -> Any:
    """Run ``function``'s own frame eagerly under ``torch.compile``; what it calls still compiles.

    The draws and the Python loop that decides which layers run happen on every call,
    never once at trace time; the layers themselves are compiled as separate graphs
    (one per kind of layer and input shape), however many keep patterns occur.
    """
    return torch.compiler.disable(function, recursive=False)  # type: ignore[no-untyped-call]


_tie = torch.compiler.disable(tie)  # type: ignore[no-untyped-call]


def _combine(
    h: Tensor, out: Tensor, residual: bool, rate: float, scale: str, training: bool
) -> Tensor:
    """A kept layer's new state: ``out``, or with ``residual`` ``h`` plus the scaled branch.

    The one residual update of every path. In training, ``scale="train"`` divides a
    branch of drop rate ``0 < rate < 1`` by ``1 - rate``; in evaluation,
    ``scale="eval"`` multiplies a branch of ``rate > 0`` by ``1 - rate``.
    """
    if not residual:
        return out
    if training:
        if scale == "train" and 0.0 < rate < 1.0:
            return h + out / (1.0 - rate)
    elif scale == "eval" and rate:
        return h + out * (1.0 - rate)
    return h + out


Combine = Callable[[Tensor, Tensor, bool, float, str, bool], Tensor]

# For the skipping path's eager frame under torch.compile, where a plain call would be
# compiled as a frame of its own (one graph per drop rate); elsewhere it is traced inline.
_combine_eagerly: Combine = torch.compiler.disable(_combine)  # type: ignore[no-untyped-call]


class LayerDropList(nn.Module):
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
        self._mode, self._per_sample = _check_mode(mode, per_sample, masked)
        self._masked = self._mode == "masked"
        self._residual = check_bool("residual", residual)
        self._scale = _check_scale(scale, self._residual)
        self.drop_rates = drop_rate
        self.eval_layers = eval_layers
        self._rule = _get_rule(rule)
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

    def __len__(self) -> int:
        return len(self._modules)

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

    # ----------------------------------------------------------------- options

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OPTIONS:  # the property's setter, even for a value that is a Module
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def mode(self) -> Mode:
        """``"skip"`` or ``"masked"``; settable (the deprecated spellings are not)."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = cast(Mode, _check_choice("mode", value, _MODES))
        self._masked = self._mode == "masked"

    @property
    def per_sample(self) -> bool:
        """Whether every row draws its own keep mask; settable (``False`` refuses ``row_args``)."""
        return self._per_sample

    @per_sample.setter
    def per_sample(self, value: bool) -> None:
        per_sample = check_bool("per_sample", value)
        self._set_row_args(self._rows.spec(), per_sample)
        self._per_sample = per_sample

    @property
    def row_draws(self) -> RowDraws:
        """Whose rows a per-row draw covers in a process group: ``"global"`` or ``"local"``."""
        return self._row_draws

    @row_draws.setter
    def row_draws(self, value: RowDraws) -> None:
        self._row_draws = check_row_draws(value)

    @property
    def residual(self) -> bool:
        """Whether each layer is a residual branch; settable (``scale="eval"`` needs it)."""
        return self._residual

    @residual.setter
    def residual(self, value: bool) -> None:
        residual = check_bool("residual", value)
        _check_scale(self._scale, residual)
        self._residual = residual

    @property
    def scale(self) -> Scale:
        """Where a residual branch's ``1 - p`` factor goes: ``"train"`` or ``"eval"``; settable."""
        return self._scale

    @scale.setter
    def scale(self, value: Scale) -> None:
        self._scale = _check_scale(value, self._residual)

    @property
    def masked(self) -> bool:
        """Deprecated (``FutureWarning``): ``mode == "masked"``."""
        warnings.warn(
            "LayerDropList.masked is deprecated and goes in the next release: read "
            "mode == 'masked' instead",
            FutureWarning,
            stacklevel=2,
        )
        return self._masked

    @property
    def rule(self) -> DropRule:
        """The drop rule the list draws with; settable (a name or a ``DropRule``)."""
        return self._rule

    @rule.setter
    def rule(self, value: str | DropRule) -> None:
        self._rule = _get_rule(value)

    @property
    def row_args(self) -> tuple[int | str, ...]:
        """The extra arguments cut to the kept rows with ``per_sample=True``; settable."""
        return self._rows.spec()

    @row_args.setter
    def row_args(self, value: Iterable[int | str]) -> None:
        self._set_row_args(value, self._per_sample)

    def _set_row_args(self, value: object, per_sample: bool) -> None:
        rows = RowArgs(value, reserved="keep")
        row_args = rows.spec()
        if row_args and not per_sample:
            raise ValueError(
                f"row_args names arguments cut to the kept rows, which only "
                f"per_sample=True does; got row_args={row_args!r} with per_sample=False"
            )
        self._rows = rows

    @property
    def output(self) -> Output:
        """How the next hidden state is read from a layer's return value; settable."""
        return self._output

    @output.setter
    def output(self, value: Output) -> None:
        self._output = check_output(value)

    @property
    def seed(self) -> int:
        """The seed the generator started from (restored by ``load_state_dict``).

        Not assignable (an ``AttributeError``): to restart the draws, call
        ``stack.generator.manual_seed(seed)`` or build a new list.
        """
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        raise AttributeError(
            f"LayerDropList.seed is the seed the generator started from, not a setting; got "
            f"an assignment of {value!r}: call stack.generator.manual_seed(seed) to restart "
            f"the draws, or build a new LayerDropList(..., seed=...)"
        )

    @property
    def generator(self) -> torch.Generator:
        """The CPU ``torch.Generator`` the list draws from."""
        return self._generator

    @property
    def drop_rate(self) -> tuple[float, ...]:
        """The constructor's ``drop_rate``: each layer's rate, as :attr:`drop_rates`; settable."""
        return self._drop_rates

    @drop_rate.setter
    def drop_rate(self, value: float | Sequence[float]) -> None:
        self.drop_rates = value

    @property
    def drop_rates(self) -> tuple[float, ...]:
        """Each layer's drop rate; settable (one float or one per layer), as ``drop_rate``."""
        return self._drop_rates

    @drop_rates.setter
    def drop_rates(self, value: float | Sequence[float]) -> None:
        self._drop_rates = _check_rates(value, len(self))
        self._rates_tensor = torch.tensor(self._drop_rates, dtype=torch.float64, device="cpu")

    @property
    def eval_layers(self) -> tuple[int, ...] | None:
        """The layers evaluation runs, in order, or ``None`` for all; settable."""
        return self._eval_layers

    @eval_layers.setter
    def eval_layers(self, value: Iterable[int] | None) -> None:
        self._eval_layers = _check_eval_layers(value, len(self))

    # ----------------------------------------------------------------- telemetry

    @property
    def layer_runs(self) -> list[int]:
        """How many times each layer ran in training: forward passes, or rows in row mode.

        With ``masked=True``, how many times each layer's result was kept. Counted for
        every training-mode forward pass in eager mode and for the draws the list makes
        itself under ``torch.compile`` (a ``keep=`` mask given to a compiled list is not
        counted). Saved in the ``state_dict``. With ``row_draws="global"`` in a process
        group, the rows of the global batch: the same counts on every rank.
        """
        return [int(count) for count in self._runs]

    @property
    def draws(self) -> int:
        """How many draws :attr:`layer_runs` counts over: forward passes, or rows in row mode."""
        return self._draws

    @property
    def keep_frequencies(self) -> list[float]:
        """Each layer's share of draws in which it ran (``1 - p`` on average); 0 before any."""
        return [runs / self._draws if self._draws else 0.0 for runs in self.layer_runs]

    def reset_layer_runs(self) -> None:
        """Forget the counts of :attr:`layer_runs` and :attr:`draws`."""
        self._runs = torch.zeros(len(self), dtype=torch.int64, device="cpu")
        self._draws = 0

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
                h, keep, args, kwargs, _combine_eagerly
            )
        return self._train(h, keep, args, kwargs)

    def _train(
        self,
        h: Tensor,
        keep: Tensor | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        combine: Combine = _combine,
    ) -> Tensor:
        """Training, skipping: the draw, then only the kept layers (or rows) run.

        Under ``torch.compile`` this frame runs eagerly (the keep mask is drawn before
        it), and every Python function it calls would be compiled as a frame of its
        own: so the only ones it calls are ``_call`` (a layer, the unit that compiles)
        and helpers disabled for Dynamo (``combine``, the residual update, is
        ``_combine_eagerly`` there).
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
                    if self._rows:
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
            new = _combine(h, out, residual, rates[index], scale, True)
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
            h = _combine(h, out, self._residual, self._drop_rates[index], self._scale, False)
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

    # ----------------------------------------------------------------- state

    def get_extra_state(self) -> Tensor:
        """Return the generator's state and the telemetry, for ``state_dict``, as a tensor.

        One CPU ``uint8`` tensor (an encoding of the mapping below), so that
        safetensors (``save_pretrained``), ``torch.load(weights_only=True)`` and
        ``torch.distributed.checkpoint`` all take it.

        Returns:
            The encoding of the generator's seed and state, ``layer_runs`` and
                ``draws``.
        """
        return encode_state(self._state_mapping())

    def _state_mapping(self) -> dict[str, Any]:
        """The state that :meth:`get_extra_state` encodes, as a mapping.

        Returns:
            ``{"seed": int, "generator_state": ByteTensor, "layer_runs": LongTensor,
            "draws": int}``.
        """
        return {
            "seed": self._seed,
            "generator_state": self._generator.get_state(),
            "layer_runs": self._runs.clone(),
            "draws": self._draws,
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` returned; later draws continue from it.

        An empty mapping (a ``state_dict`` saved without the list's state) changes
        nothing.

        Args:
            state: The tensor :meth:`get_extra_state` returned, the mapping that
                earlier versions saved (the same keys), or ``{}``.

        Raises:
            TypeError: ``state`` or one of its values has the wrong type.
            ValueError: ``state`` is not an encoded state, a key is missing, the
                telemetry is for another number of layers, ``generator_state`` is not
                of dtype ``torch.uint8``, or the generator rejects the state.
        """
        state = read_extra_state(state, "LayerDropList")
        if not state:
            return
        missing = sorted({"seed", "generator_state", "layer_runs", "draws"} - set(state))
        if missing:
            raise ValueError(
                f"LayerDropList extra state lacks {', '.join(map(repr, missing))}; "
                f"got keys {sorted(map(str, state))}"
            )
        seed = check_seed(state["seed"], name="state['seed']")
        runs = state["layer_runs"]
        if not isinstance(runs, Tensor) or tuple(runs.shape) != (len(self),):
            raise ValueError(
                f"state['layer_runs'] must be a tensor of shape ({len(self)},), one count "
                f"per layer, got {describe(runs)}"
            )
        draws = check_int("state['draws']", state["draws"])
        generator = torch.Generator(device="cpu")
        restore_generator(generator, state["generator_state"])
        self._generator, self._seed = generator, seed
        self._runs = runs.detach().to(device="cpu", dtype=torch.int64).clone()
        self._draws = draws

    def __getstate__(self) -> dict[str, Any]:
        # The generator as bytes: torch.multiprocessing (spawn, Lightning's ddp_spawn)
        # pickles a generator's state tensor into shared memory, which it does not
        # survive (pytorch issue 146828).
        state = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_generator"] = generator_to_bytes(self._generator)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state["_generator"]
        if isinstance(saved, bytes):
            state["_generator"] = generator_from_bytes(saved)
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        # the counts are this process's own, not a tensor shared with the parent
        self._runs = self._runs.clone()

    def extra_repr(self) -> str:
        """Show the rates and the options that differ from the defaults in ``print(list)``."""
        rates = self._drop_rates
        shown = f"drop_rate={rates[0]!r}" if len(set(rates)) == 1 else f"drop_rates={list(rates)!r}"
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("mode", self._mode, "skip"),
                ("per_sample", self._per_sample, False),
                ("residual", self._residual, False),
                ("scale", self._scale, "train"),
                ("eval_layers", self._eval_layers, None),
                ("row_draws", self._row_draws, "global"),
            )
            if value != default
        )
        return f"{shown}{options}, rule={self._rule!r}, seed={self._seed}"


# --------------------------------------------------------------------- checks


def _check_mode(mode: object, per_sample: object, masked: object) -> tuple[Mode, bool]:
    """``(mode, per_sample)`` from the arguments, the deprecated spellings translated."""
    rows = check_bool("per_sample", per_sample)
    if isinstance(mode, str) and mode in _LEGACY_MODES:
        new = "per_sample=True" if mode == "row" else "per_sample=False (the default)"
        warnings.warn(
            f"LayerDropList(mode={mode!r}) is deprecated and goes in the next release: "
            f"pass {new}; mode now takes 'skip' or 'masked', as RepeatedBlock's does",
            FutureWarning,
            stacklevel=3,
        )
        if mode == "batch" and rows:
            raise ValueError("mode='batch' draws once per forward pass, but per_sample=True")
        rows, mode = mode == "row", "skip"
    checked = cast(Mode, _check_choice("mode", mode, _MODES))
    if masked is not None:
        flag = check_bool("masked", masked)
        warnings.warn(
            f"LayerDropList(masked={flag}) is deprecated and goes in the next release: "
            f"pass mode={'masked' if flag else 'skip'!r}",
            FutureWarning,
            stacklevel=3,
        )
        if flag:
            checked = "masked"
        elif checked == "masked":
            raise ValueError("masked=False contradicts mode='masked': pass mode alone")
    return checked, rows


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


def _check_scale(value: object, residual: bool) -> Scale:
    scale = cast(Scale, _check_choice("scale", value, _SCALES))
    if scale == "eval" and not residual:
        raise ValueError(
            "scale='eval' multiplies residual branches by 1 - p in evaluation and "
            "needs residual=True; got residual=False"
        )
    return scale


def _get_rule(value: str | DropRule) -> DropRule:
    return get_drop_rule(value) if isinstance(value, str) else check_rule(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    expected = f"one of {', '.join(map(repr, choices))}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _check_rates(value: object, count: int) -> tuple[float, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (check_probability("drop_rate", value),) * count
    if isinstance(value, Tensor):
        value = value.tolist() if value.ndim == 1 else value
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(
            f"drop_rate must be a probability or a sequence of {count} probabilities "
            f"(one per layer), got {describe(value)}"
        )
    if len(value) != count:
        raise ValueError(
            f"drop_rate must hold one probability per layer ({count}), got {len(value)}: "
            f"{list(value)!r}"
        )
    return tuple(check_probability(f"drop_rate[{i}]", rate) for i, rate in enumerate(value))


def _check_eval_layers(value: object, count: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"eval_layers must be None or layer indices in [0, {count - 1}], got {describe(value)}"
        )
    indices = [check_int(f"eval_layers[{i}]", v) for i, v in enumerate(value)]
    wrong = [index for index in indices if index >= count]
    if wrong:
        raise ValueError(f"eval_layers must hold layer indices in [0, {count - 1}], got {wrong[0]}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"eval_layers must not repeat an index, got {indices}")
    return tuple(sorted(indices))


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
    key = prefix + _EXTRA_STATE_KEY
    if key not in state_dict and isinstance(module, LayerDropList):
        state_dict[key] = {}
