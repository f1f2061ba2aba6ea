"""Row-mode layer drop inside a host model's own loop: each layer run on its kept rows.

Iterating a ``LayerDropList(per_sample=True)`` in training mode yields one :class:`KeptRows`
per layer, in order, instead of the layers themselves. The host calls it as it would
call the layer (``h = layer(h, mask, ...)``); the first call of the iteration draws the
keep mask for every layer and row (exactly the draw a call of the list makes), and each
layer then runs on its kept rows only, with the row-aligned arguments (``row_args``) cut
to them, its result scattered back; a dropped row keeps its state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from stochdepth._validation import describe

__all__ = ["KeptRows", "RowDraw"]

Cut = Callable[
    [tuple[Any, ...], dict[str, Any], Tensor, int], tuple[tuple[Any, ...], dict[str, Any]]
]
"""Cuts the row-aligned extra arguments to the kept rows: ``(args, kwargs, kept, rows)``."""


class RowDraw:
    """The keep mask of one iteration, drawn at its first layer call, once the rows are known.

    Args:
        draw: Draws a ``(layers, rows)`` bool mask for ``rows`` rows (the list's
            ``draw_keep``).
    """

    def __init__(self, draw: Callable[[int], Tensor]) -> None:
        self._draw = draw
        self.keep: Tensor | None = None

    def kept(self, index: int, h: Tensor) -> Tensor:
        """Layer ``index``'s keep flags, one per row of ``h`` (drawing on the first call)."""
        if h.ndim == 0:
            raise ValueError(
                "per_sample=True draws for every row (dimension 0) of h, but h is a 0-d tensor"
            )
        rows = h.shape[0]
        if self.keep is None:
            self.keep = self._draw(rows)
        elif self.keep.shape[1] != rows:
            raise ValueError(
                f"the layers of one iteration over a per_sample=True LayerDropList must see the "
                f"same rows: the draw was for {self.keep.shape[1]} rows, but layer {index} got "
                f"a hidden state of shape {tuple(h.shape)}"
            )
        return self.keep[index]


class KeptRows(nn.Module):
    """One layer of a ``LayerDropList(per_sample=True)``, as a host loop calls it in training.

    Calling it runs the layer on the rows the iteration's draw kept for it. Other
    attributes are the layer's (a host may read ``layer.attention_type``). It is made
    for one iteration and registered nowhere: the ``state_dict`` does not see it.

    Args:
        layer: The layer.
        index: Its position in the list.
        draw: The iteration's draw, shared by its layers.
        cut: Cuts the row-aligned extra arguments (the list's ``row_args``).
    """

    layer: nn.Module

    def __init__(self, layer: nn.Module, index: int, draw: RowDraw, cut: Cut) -> None:
        super().__init__()
        self.layer, self.index, self._row_draw, self._cut_args = layer, index, draw, cut
        self.train(layer.training)

    # Under torch.compile this frame runs eagerly (the draw and the row counts are
    # Python values); the layer it calls still compiles.
    @torch.compiler.disable(recursive=False)  # type: ignore[untyped-decorator,no-untyped-call]
    def forward(self, h: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Run the layer on the rows of ``h`` that the draw kept for it; keep the others."""
        if not isinstance(h, Tensor):
            raise TypeError(f"h must be a torch.Tensor, got {describe(h)}")
        kept = self._row_draw.kept(self.index, h)
        rows, count = h.shape[0], int(kept.sum())
        if count == 0:
            return h
        if count == rows:
            return self._checked(self.layer(h, *args, **kwargs), h)
        kept_rows = kept.nonzero().squeeze(1).to(h.device)
        part = h.index_select(0, kept_rows)
        part_args, part_kwargs = self._cut_args(args, kwargs, kept_rows, rows)
        out = self._checked(self.layer(part, *part_args, **part_kwargs), part)
        return h.index_copy(0, kept_rows, out)

    def _checked(self, out: object, h: Tensor) -> Tensor:
        if isinstance(out, Tensor) and out.shape == h.shape:
            return out
        name = f"layer {self.index} ({type(self.layer).__name__})"
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else describe(out)
        raise TypeError(
            f"a per_sample=True LayerDropList in a host loop runs each layer on its kept rows, "
            f"which needs layers that return a tensor of their input's shape, but {name} turned "
            f"{tuple(h.shape)} into {got}; call the list instead (with output=) or use "
            f"per_sample=False"
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self.__dict__.get("_modules", {}).get("layer")
            if layer is None:
                raise
            return getattr(layer, name)

    def extra_repr(self) -> str:
        """Show the layer's index in the list."""
        return f"index={self.index}"
