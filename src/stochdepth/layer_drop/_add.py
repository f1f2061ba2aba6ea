"""`add_layer_drop`: layer drop in a model that loops over its own layers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from stochdepth._validation import check_bool, describe

from ._list import LayerDropList
from ._rules import DropRule

__all__ = ["STACK_NAMES", "add_layer_drop"]

STACK_NAMES = ("layer", "layers", "h", "blocks", "block")
"""The attribute names under which common models hold their layer stack.

Hugging Face BERT and RoBERTa (``encoder.layer``), ViT (``layers`` in transformers 5),
Llama, Mistral and Qwen (``model.layers``), GPT-2 (``transformer.h``), wav2vec2
(``encoder.layers``) and Whisper (``encoder.layers`` and ``decoder.layers``),
``nn.TransformerEncoder`` (``layers``), timm's vision transformers (``blocks``) and T5
(``block``).
"""


def add_layer_drop(
    model: nn.Module,
    drop_rate: float | Sequence[float],
    *,
    path: str | None = None,
    per_sample: bool = False,
    row_args: Iterable[int | str] = (),
    seed: int | None = None,
    rule: str | DropRule = "bernoulli",
    eval_layers: Iterable[int] | None = None,
) -> LayerDropList:
    """Give a model that loops over its own layers LayerDrop, without touching its ``forward``.

    Finds the model's layer stack (an ``nn.ModuleList`` or ``nn.Sequential``; see
    ``path``) and replaces it, in place, by a :class:`~stochdepth.LayerDropList` over
    the same layers. The host's own loop (``for layer in self.layers:``, or Llama's
    ``self.layers[:n]``) then draws which layers run, once per forward pass in
    training mode (fairseq's LayerDrop, one draw for the batch; with
    ``per_sample=True`` one per layer and row, each layer run on its kept rows), and
    runs every layer (or ``eval_layers``) in evaluation mode, exactly as the original
    model. The ``state_dict`` keys do not change, so pretrained weights load as
    before; the list adds its generator state under ``<path>._extra_state``.

    A model that reaches its layers some other way (``for i in range(n):
    self.layers[i](h)``) would run every layer, and layer drop would do nothing, so
    that case is loud: the module holding the stack gets a forward hook that raises
    after a training-mode forward pass in which the list neither drew nor ran (a
    ``RuntimeError`` naming the path). Such a model needs its ``forward`` changed to
    call or iterate the list.

    Args:
        model: The model, changed in place.
        drop_rate: Each layer's drop rate: one float, or one per layer.
        path: The dotted attribute path of the stack (``"encoder.layer"``,
            ``"model.layers"``). ``None`` (default) looks for the one module list or
            sequential in the model held under a name of :data:`STACK_NAMES`; if there
            are several (an encoder-decoder) or none, the error lists what it found.
        per_sample: Draw for every row (dimension 0 of the hidden state) instead of
            once for the batch: each layer runs on its kept rows
            only. The layers must treat rows independently and return a tensor (Hugging
            Face 5 layers do), and every extra argument with a row per row (an
            attention mask) must be named in ``row_args``.
        row_args: With ``per_sample=True``, the extra arguments that the host passes
            to each layer with a row per row of the hidden state, by position among
            the extra positional arguments (BERT passes its attention mask first:
            ``0``) or by keyword (``"attention_mask"`` for Llama,
            ``"src_key_padding_mask"`` for ``nn.TransformerEncoder``); cut to the kept
            rows.
        seed: The list's seed (see :class:`~stochdepth.LayerDropList`).
        rule: The drop rule (see :class:`~stochdepth.LayerDropList`).
        eval_layers: The layers that evaluation runs, or ``None`` for all.

    Returns:
        The new :class:`~stochdepth.LayerDropList`, now held by the model.

    Raises:
        TypeError: ``model`` is not a module, ``path`` is not a str, or what it
            names is not an ``nn.ModuleList`` or ``nn.Sequential``.
        ValueError: ``path`` names no attribute, no stack or several stacks were
            found, the stack already is a ``LayerDropList``, or a ``LayerDropList``
            argument is wrong.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import stochdepth
        >>> layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        >>> encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        >>> stack = stochdepth.add_layer_drop(encoder, 0.5, seed=0)
        >>> encoder.layers is stack
        True
        >>> _ = encoder(torch.randn(2, 3, 8))
        >>> stack.last_keep.tolist()  # layer 2 was not run
        [True, True, False, True]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {describe(model)}")
    if path is None:
        path = _find_stack(model)
    elif not isinstance(path, str):
        raise TypeError(f"path must be None or a dotted attribute path, got {describe(path)}")
    parent, name = _resolve_parent(model, path)
    stack = getattr(parent, name)
    if isinstance(stack, LayerDropList):
        raise ValueError(f"model.{path} already is a LayerDropList: {stack.extra_repr()}")
    if not isinstance(stack, nn.ModuleList | nn.Sequential):
        raise TypeError(
            f"model.{path} must be an nn.ModuleList or nn.Sequential of layers, "
            f"got a {type(stack).__name__}"
        )
    dropped = LayerDropList(
        stack,
        drop_rate,
        per_sample=check_bool("per_sample", per_sample),
        seed=seed,
        rule=rule,
        eval_layers=eval_layers,
        row_args=row_args,
    )
    dropped.train(stack.training)
    setattr(parent, name, dropped)
    check = _DrawCheck(name, path)
    parent.register_forward_pre_hook(check.before)
    parent.register_forward_hook(check.after)
    return dropped


class _DrawCheck:
    """Raises after a training-mode pass of the stack's holder in which it never drew.

    A class, not a closure, so that the model still pickles (``ddp_spawn``).
    """

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.draws: int | None = None

    def _stack(self, holder: nn.Module) -> LayerDropList | None:
        stack = getattr(holder, self.name, None)
        return stack if isinstance(stack, LayerDropList) and stack.training else None

    # Python bookkeeping: under torch.compile it runs eagerly, outside the graph
    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def before(self, holder: nn.Module, args: object) -> None:
        stack = self._stack(holder)
        self.draws = None if stack is None else stack.draws

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def after(self, holder: nn.Module, args: object, output: object) -> None:
        stack, before = self._stack(holder), self.draws
        self.draws = None
        if stack is None or before is None or stack.draws != before:
            return
        raise RuntimeError(
            f"add_layer_drop: a training-mode forward pass of {type(holder).__name__} ran "
            f"without drawing from the LayerDropList at {self.path!r}: its forward reaches "
            f"the layers some other way than calling, iterating or slicing the list (by "
            f"index?), so every layer ran and nothing was dropped; call or iterate the "
            f"list in its forward instead"
        )


def _find_stack(model: nn.Module) -> str:
    found = [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in STACK_NAMES
        and isinstance(module, nn.ModuleList | nn.Sequential | LayerDropList)
    ]
    if len(found) == 1:
        return str(found[0])
    kind = type(model).__name__
    if not found:
        raise ValueError(
            f"found no layer stack in {kind}: no nn.ModuleList or nn.Sequential is held "
            f"under one of the names {', '.join(STACK_NAMES)}; pass path='...' (the "
            f"attribute path of the stack)"
        )
    raise ValueError(
        f"found several layer stacks in {kind}: {', '.join(found)}; pass path= to "
        f"choose one (call add_layer_drop once per stack to drop in several)"
    )


def _resolve_parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, name = path.split(".")
    parent = model
    for index, part in enumerate(parents):
        child = getattr(parent, part, None)
        if not isinstance(child, nn.Module):
            where = ".".join(parents[: index + 1])
            raise ValueError(f"path={path!r}: {type(model).__name__} has no module {where!r}")
        parent = child
    if not name or not hasattr(parent, name):
        raise ValueError(f"path={path!r}: {type(parent).__name__} has no attribute {name!r}")
    return parent, name
