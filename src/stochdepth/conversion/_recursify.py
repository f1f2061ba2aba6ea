"""`recursify`: a stack of distinct pretrained layers into one shared `RepeatedBlock`.

The layers of ``core`` are cut into ``repeats`` groups of ``block_size`` consecutive
layers; layer ``j`` of every group is replaced by layer ``j`` of one shared block
(cycle sharing, as in Relaxed Recursive Transformers and Mixture-of-Recursions), which
a :class:`~stochdepth.RepeatedBlock` applies ``repeats`` times. With ``lora_rank``
each repeat adds its own delta to the shared linear weights (the truncated SVD of
what sharing lost), so that at full rank the converted layers compute what the
original ones did.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from stochdepth._block import RepeatedBlock
from stochdepth._depth import EvalDepth
from stochdepth._layer_call import Output, check_output, check_step_kwarg
from stochdepth._validation import describe
from stochdepth.samplers._builtin import FixedDepth
from stochdepth.samplers._protocol import DepthSampler

from ._deltas import DenseDelta, LowRankDelta, RepeatIndex, low_rank_factors
from ._report import RecursifyReport
from ._shared import LayerSlots, SharedLayers, next_state

Init = Literal["average", "first"] | int
"""How the shared weights start: the average, the first group's, or group ``k``'s."""

LoraRank = int | Literal["full"] | None
"""The rank of the per-repeat deltas of the linear weights, ``"full"``, or none."""

_BLOCK_OPTIONS = ("mode", "per_sample", "checkpoint", "depth_limit", "row_args", "grad_depth")
_PRIMITIVES = (bool, int, float, str, type(None))


def recursify(
    layers: nn.ModuleList | Sequence[nn.Module],
    *,
    core: slice,
    block_size: int = 1,
    init: Init = "average",
    lora_rank: LoraRank = None,
    per_repeat_copies: bool | None = None,
    sampler: DepthSampler | None = None,
    eval_depth: EvalDepth | None = None,
    output: Output = None,
    step_kwarg: str | None = None,
    check: Tensor | tuple[Any, ...] | None = None,
    check_kwargs: Mapping[str, Any] | None = None,
    **block_options: Any,
) -> nn.ModuleList:
    """Turn the layers in ``core`` into one :class:`~stochdepth.RepeatedBlock`.

    The ``len(core)`` layers of ``core`` are cut into ``repeats = len(core) /
    block_size`` consecutive groups; one shared block of ``block_size`` layers takes
    their place and is applied ``repeats`` times, so that at its eval depth the
    converted list runs as many layers, in the same order, as the original. The layers
    before and after ``core`` are kept as they are (the same objects). The input list
    and its layers are not modified: the shared layers are copies.

    Every layer must read its weights from its parameters (``nn.Linear`` and norms do);
    low-rank deltas go on the weight of every ``nn.Linear``, and with
    ``per_repeat_copies`` every other parameter gets a per-repeat copy (a dense
    delta). What cannot be shared is refused: layers of different types or parameter
    shapes, buffers whose values differ between the layers, and plain attributes that
    differ (a sliding-window size, an attention type) other than ``layer_idx``, which
    the block sets at every repeat to the original layer's value, so that a Hugging
    Face cache keeps one slot per original layer. With such a cache the block refuses
    a depth above ``repeats`` and a depth that changed since an earlier step (their
    slots would be missing or short); see the docs page "Converting a pretrained
    model".

    Args:
        layers: The stack: an ``nn.ModuleList`` (a Hugging Face model's
            ``model.layers``, a ``nn.TransformerEncoder``'s ``layers``, a ViT's
            blocks) or a sequence of modules, each called as
            ``layer(state, *args, **kwargs)``.
        core: The layers to share, a slice of ``layers`` with step 1 (negative
            bounds count from the end).
        block_size: Layers in the shared block; it must divide ``len(core)``.
        init: How the shared weights start: ``"average"`` (default) of the
            corresponding layers of the groups, ``"first"``, the first group's, or an
            int ``k``, group ``k``'s (``0 <= k < repeats``; group ``k`` holds layers
            ``core[k * block_size:(k + 1) * block_size]``).
        lora_rank: Per-repeat deltas on the weight of every shared ``nn.Linear``:
            ``None`` (default), none; an int ``r >= 1``, ``up[repeat] @
            down[repeat]`` of rank ``min(r, out, in)``, initialised from the truncated
            SVD of the original weight minus the shared weight; ``"full"``, a dense
            per-repeat delta, the residual itself (the rank ``min(out, in)`` delta,
            stored with fewer parameters than its factors).
        per_repeat_copies: Give every shared parameter that is not a linear weight
            (biases, norm weights, what a low-rank delta cannot hold) a per-repeat
            copy, initialised to the original layer's values. Default: only with
            ``lora_rank="full"``, which then reproduces the original layers up to
            rounding.
        sampler: The converted block's training-mode depths (default:
            ``FixedDepth(repeats)``, the original depth). Repeats past ``repeats``
            use the last repeat's deltas.
        eval_depth: The eval-mode depth (default: ``repeats``).
        output: How the next state is read from what a layer returns (as
            :class:`~stochdepth.RepeatedBlock`'s ``output``); the converted block
            returns the state itself, a tensor.
        step_kwarg: Pass the 0-based repeat index to the layers under this keyword
            (as :class:`~stochdepth.RepeatedBlock`'s ``step_kwarg``).
        check: Inputs on which to run the original and the converted layers (in
            eval mode, without autograd) and report the largest absolute
            difference of their outputs in ``report.max_difference``: the first
            state, a tensor, or a tuple ``(state, *args)``.
        check_kwargs: Keyword arguments for ``check``'s runs (an attention mask,
            position embeddings).
        **block_options: Passed to :class:`~stochdepth.RepeatedBlock`: ``mode``,
            ``per_sample``, ``checkpoint``, ``depth_limit``, ``row_args``,
            ``grad_depth``.

    Returns:
        An ``nn.ModuleList``: the layers before ``core``, the
            :class:`~stochdepth.RepeatedBlock` (its ``layer`` holds the shared
            layers), and the layers after. Its ``report`` attribute is a
            :class:`~stochdepth.RecursifyReport`.

    Raises:
        TypeError: ``layers`` holds something other than modules, ``core`` is not a
            slice, ``block_size``, ``init``, ``lora_rank``, ``per_repeat_copies``,
            ``check`` or ``check_kwargs`` has the wrong type, or ``block_options``
            holds an unknown option.
        ValueError: ``core`` is empty, out of range or has a step; ``block_size``
            does not divide ``len(core)``; ``init`` or ``lora_rank`` is out of range;
            the layers to share differ in type, parameter shapes, buffer values or
            attributes; ``check_kwargs`` is given without ``check``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import recursify
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> stack = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(6))
        >>> x = torch.randn(4, 8)
        >>> converted = recursify(stack, core=slice(1, 5), lora_rank="full", check=x)
        >>> len(converted), converted.report.repeats
        (3, 4)
        >>> converted.report.max_difference < 1e-5
        True
    """
    stack = _check_layers(layers)
    start, stop = _check_core(core, len(stack))
    size = _check_block_size(block_size, stop - start, core)
    repeats = (stop - start) // size
    groups = [list(stack[start + r * size : start + (r + 1) * size]) for r in range(repeats)]
    init_value = _check_init(init, repeats)
    rank = _check_lora_rank(lora_rank)
    copies = _check_copies(per_repeat_copies, rank)
    output = check_output(output)
    step_kwarg = check_step_kwarg(step_kwarg)
    if check_kwargs is not None and not isinstance(check_kwargs, Mapping):
        raise TypeError(f"check_kwargs must be a mapping or None, got {describe(check_kwargs)}")
    if check_kwargs is not None and check is None:
        raise ValueError("check_kwargs is given without check: pass the inputs as check=")
    unknown = sorted(set(block_options) - set(_BLOCK_OPTIONS))
    if unknown:
        raise TypeError(
            f"recursify passes {', '.join(_BLOCK_OPTIONS)} on to RepeatedBlock, got "
            f"unknown keyword argument(s) {', '.join(map(repr, unknown))}"
        )
    for position in range(size):
        _check_alike([group[position] for group in groups], start, size, position)

    index = RepeatIndex(repeats)
    shared: list[nn.Module] = []
    relaxed = _Relaxed()
    for position in range(size):
        originals = [group[position] for group in groups]
        layer = _shared_layer(originals, init_value)
        relaxed.shared += _count(layer)
        relaxed.add(layer, originals, f"layers.{position}.", rank, copies, index)
        shared.append(layer)

    block = _repeated(
        SharedLayers(shared, index, _slots(groups), output),
        repeats,
        sampler,
        eval_depth,
        step_kwarg,
        block_options,
    )
    block.train(groups[0][0].training)  # a model converted in eval mode stays in it
    converted = nn.ModuleList([*stack[:start], block, *stack[stop:]])
    report = RecursifyReport(
        core=(start, stop),
        block_size=size,
        repeats=repeats,
        init=init if isinstance(init, str) else init_value,
        lora_rank=rank,
        per_repeat_copies=copies,
        total_before=_count(*stack),
        total_after=_count(converted),
        core_before=_count(*stack[start:stop]),
        shared=relaxed.shared,
        deltas=relaxed.deltas,
        copies=relaxed.copies,
        ranks=relaxed.ranks,
        unrelaxed=tuple(relaxed.unrelaxed),
        max_difference=None
        if check is None
        else _max_difference(stack, converted, block, check, check_kwargs or {}, output),
    )
    converted.__dict__["report"] = report
    return converted


class _Relaxed:
    """The deltas added to the shared layers, and what they cost, for the report."""

    def __init__(self) -> None:
        self.shared = 0
        self.deltas = 0
        self.copies = 0
        self.ranks: dict[str, int] = {}
        self.unrelaxed: list[str] = []

    def add(
        self,
        layer: nn.Module,
        originals: list[nn.Module],
        prefix: str,
        rank: int | Literal["full"] | None,
        copies: bool,
        index: RepeatIndex,
    ) -> None:
        """Give every parameter of the shared ``layer`` its per-repeat delta, if it gets one.

        A linear weight gets a low-rank (or, at ``"full"`` rank, dense) delta when
        ``rank`` is set; any other parameter a dense one, its per-repeat copy, when
        ``copies`` is. Each delta starts as what the repeat's original layer holds
        minus the shared value (its truncated SVD for a low-rank delta).
        """
        for name, param, owner, attr in _parameters(layer):
            where = prefix + name
            residuals = torch.stack(
                [original.get_parameter(name).detach() for original in originals]
            ) - param.detach().unsqueeze(0)
            linear_weight = isinstance(owner, nn.Linear) and attr == "weight"
            delta: nn.Module
            if linear_weight and rank is not None:
                used = min(rank if rank != "full" else param.shape[0], *param.shape)
                if rank == "full":
                    delta = DenseDelta(residuals, index)
                else:
                    delta = LowRankDelta(*low_rank_factors(residuals, used), index)
                self.ranks[where] = used
                self.deltas += _count(delta)
            elif copies and not linear_weight:
                delta = DenseDelta(residuals, index)
                self.copies += _count(delta)
            else:
                self.unrelaxed.append(where)
                continue
            parametrize.register_parametrization(owner, attr, delta)


def _repeat_hook(block: RepeatedBlock, repeat: int) -> None:
    """Tell the shared layers which repeat runs: a ``register_repeat_hook`` hook.

    The block calls it before every application of its layer, in every path and again
    in a checkpoint's recomputation, so each application reads its own repeat's deltas.
    """
    layers = block.layer
    assert isinstance(layers, SharedLayers)
    layers.select_repeat(repeat)


def _repeated(
    layers: SharedLayers,
    repeats: int,
    sampler: DepthSampler | None,
    eval_depth: EvalDepth | None,
    step_kwarg: str | None,
    options: dict[str, Any],
) -> RepeatedBlock:
    """The block over the shared layers, which tells them the repeat of every application."""
    block = RepeatedBlock(
        layers,
        FixedDepth(repeats) if sampler is None else sampler,
        eval_depth=repeats if eval_depth is None else eval_depth,
        step_kwarg=step_kwarg,
        **options,
    )
    block.register_repeat_hook(_repeat_hook)
    return block


def _check_layers(layers: object) -> list[nn.Module]:
    if isinstance(layers, nn.Module) and not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise TypeError(
            f"layers must be an nn.ModuleList or a sequence of modules (a model's "
            f"layers), got a single {type(layers).__name__}"
        )
    if not isinstance(layers, (nn.ModuleList, nn.Sequential, Sequence)):
        raise TypeError(
            f"layers must be an nn.ModuleList or a sequence of modules, got {describe(layers)}"
        )
    stack = list(layers)
    for i, layer in enumerate(stack):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layers must hold modules only, but layers[{i}] is {describe(layer)}")
    return stack


def _check_core(core: object, length: int) -> tuple[int, int]:
    if not isinstance(core, slice):
        raise TypeError(f"core must be a slice of layers (core=slice(1, 5)), got {describe(core)}")
    if core.step not in (None, 1):
        raise ValueError(f"core must be a slice of consecutive layers (step 1), got {core!r}")
    for bound in (core.start, core.stop):
        integral = isinstance(bound, numbers.Integral) and not isinstance(bound, bool)
        if bound is not None and not integral:
            raise TypeError(f"core's bounds must be ints or None, got {core!r}")
    start, stop, _ = core.indices(length)
    if stop - start < 1:
        raise ValueError(
            f"core must select at least one of the {length} layers, got {core!r}, which "
            f"selects none"
        )
    return start, stop


def _check_block_size(block_size: object, count: int, core: slice) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise TypeError(f"block_size must be an int >= 1, got {describe(block_size)}")
    size = int(block_size)
    if size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {size}")
    if count % size:
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        raise ValueError(
            f"block_size must divide the number of core layers: core={core!r} holds "
            f"{count} layers, which block_size={size} does not divide (it may be "
            f"{', '.join(map(str, divisors))})"
        )
    return size


def _check_init(init: object, repeats: int) -> str | int:
    if isinstance(init, str):
        if init not in ("average", "first"):
            raise ValueError(f"init must be 'average', 'first' or an int, got {init!r}")
        return 0 if init == "first" else init
    if isinstance(init, bool) or not isinstance(init, numbers.Integral):
        raise TypeError(
            f"init must be 'average', 'first' or an int (the group of layers to copy), "
            f"got {describe(init)}"
        )
    if not 0 <= int(init) < repeats:
        raise ValueError(
            f"init must be an int in [0, {repeats}) (the core holds {repeats} groups of "
            f"layers), got {int(init)}"
        )
    return int(init)


def _check_lora_rank(lora_rank: object) -> int | Literal["full"] | None:
    if lora_rank is None or lora_rank == "full":
        return lora_rank
    if isinstance(lora_rank, str):
        raise ValueError(f"lora_rank must be an int >= 1, 'full' or None, got {lora_rank!r}")
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, numbers.Integral):
        raise TypeError(f"lora_rank must be an int >= 1, 'full' or None, got {describe(lora_rank)}")
    if int(lora_rank) < 1:
        raise ValueError(f"lora_rank must be an int >= 1, 'full' or None, got {int(lora_rank)}")
    return int(lora_rank)


def _check_copies(value: object, rank: int | str | None) -> bool:
    if value is None:
        return rank == "full"
    if not isinstance(value, bool):
        raise TypeError(f"per_repeat_copies must be a bool or None, got {describe(value)}")
    return value


def _check_alike(layers: list[nn.Module], start: int, size: int, position: int) -> None:
    """Refuse layers that one shared layer cannot stand for, naming what differs."""
    first = layers[0]
    names = [f"layers[{start + r * size + position}]" for r in range(len(layers))]
    for name, layer in zip(names[1:], layers[1:], strict=True):
        what = f"recursify shares {names[0]} and {name} (block_size={size}), so they"
        if type(layer) is not type(first):
            raise ValueError(
                f"{what} must be of one type, got {type(first).__name__} and {type(layer).__name__}"
            )
        for kind, ours, theirs in (
            ("parameters", dict(first.named_parameters()), dict(layer.named_parameters())),
            ("buffers", dict(first.named_buffers()), dict(layer.named_buffers())),
        ):
            if ours.keys() != theirs.keys():
                extra = sorted(set(ours) ^ set(theirs))
                raise ValueError(f"{what} must have the same {kind}, but only one has {extra}")
            for key, tensor in ours.items():
                if tensor.shape != theirs[key].shape:
                    raise ValueError(
                        f"{what} must have parameters of the same shapes, but {key!r} has "
                        f"shape {tuple(tensor.shape)} in one and {tuple(theirs[key].shape)} "
                        f"in the other"
                    )
                if kind == "buffers" and not torch.equal(tensor, theirs[key]):
                    raise ValueError(
                        f"{what} must have equal buffers (one buffer serves every repeat), "
                        f"but {key!r} differs: recursify cannot share this module"
                    )
        for path, module in first.named_modules():
            other = layer.get_submodule(path)
            for attr, value in _plain_attributes(module).items():
                if attr != "layer_idx" and _plain_attributes(other).get(attr) != value:
                    where = f"{path}.{attr}" if path else attr
                    raise ValueError(
                        f"{what} must agree on {where!r}, but it is {value!r} in one and "
                        f"{_plain_attributes(other).get(attr)!r} in the other: recursify "
                        f"cannot share layers that compute differently"
                    )


def _plain_attributes(module: nn.Module) -> dict[str, object]:
    return {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and key != "training" and isinstance(value, _PRIMITIVES)
    }


def _shared_layer(originals: list[nn.Module], init: str | int) -> nn.Module:
    """A copy of one original layer, its parameters averaged for ``init="average"``.

    Objects the layer only refers to (a Hugging Face config) stay shared with the
    original, not copied.
    """
    source = originals[0 if init == "average" else int(init)]
    memo: dict[int, Any] = {}
    for module in source.modules():
        for value in vars(module).values():
            if not isinstance(value, (Tensor, nn.Module, dict, list, tuple, *_PRIMITIVES)):
                memo[id(value)] = value
    layer = copy.deepcopy(source, memo)
    if init == "average":
        with torch.no_grad():
            for name, param in layer.named_parameters():
                stacked = torch.stack([o.get_parameter(name).double() for o in originals])
                param.copy_(stacked.mean(0))
    return layer


def _parameters(layer: nn.Module) -> list[tuple[str, nn.Parameter, nn.Module, str]]:
    """Every parameter of ``layer``: its name, itself, the module holding it, its attribute."""
    found = []
    for path, module in layer.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            found.append((f"{path}.{attr}" if path else attr, param, module, attr))
    return found


def _slots(groups: list[list[nn.Module]]) -> LayerSlots:
    """The ``layer_idx`` of every submodule that has one, per repeat and layer."""
    return [
        [
            {
                path: module.layer_idx
                for path, module in layer.named_modules()
                if isinstance(getattr(module, "layer_idx", None), int)
            }
            for layer in group
        ]
        for group in groups
    ]


def _count(*modules: nn.Module) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        for param in module.parameters():
            seen[id(param)] = param.numel()
    return sum(seen.values())


def _max_difference(
    original: list[nn.Module],
    converted: nn.ModuleList,
    block: RepeatedBlock,
    check: object,
    kwargs: Mapping[str, Any],
    output: Output,
) -> float:
    """Run both stacks on ``check`` in eval mode without autograd; the largest difference."""
    if isinstance(check, Tensor):
        x, args = check, ()
    elif isinstance(check, tuple) and check and isinstance(check[0], Tensor):
        x, args = check[0], tuple(check[1:])
    else:
        raise TypeError(
            f"check must be a tensor (the first state) or a tuple (state, *args), got "
            f"{describe(check)}"
        )
    modules = {m for layer in [*original, *converted] for m in layer.modules()}
    modes = {module: module.training for module in modules}
    try:
        for module in modules:
            module.train(False)
        with torch.no_grad():
            expected = _run(original, x, args, kwargs, output, None)
            got = _run(list(converted), x, args, kwargs, output, block)
    finally:
        for module, mode in modes.items():
            module.train(mode)
    return float((expected.double() - got.double()).abs().max())


def _run(
    layers: list[nn.Module],
    x: Tensor,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    output: Output,
    block: RepeatedBlock | None,
) -> Tensor:
    for layer in layers:
        out = layer(x, *args, **kwargs)
        x = out if layer is block else next_state(out, output, layer)
    return x
