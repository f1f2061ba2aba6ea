"""`SharedLayers`: the block of layers that a converted model repeats.

It applies its ``block_size`` layers in turn, as the original stack did, and knows
which repeat is running (:meth:`SharedLayers.select_repeat`, called by the
:class:`~stochdepth.RepeatedBlock` before every application). The repeat selects the
per-repeat deltas and sets each layer's ``layer_idx`` (the attribute through which
Hugging Face attention layers address their cache) to the index of the original
layer that this repeat replaces, so that a cache holds one slot per original layer,
as it did before the conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from stochdepth._layer_call import Output, summarize

from ._deltas import RepeatIndex

REPEAT_KWARG = "_recursify_repeat"
"""The keyword under which the block passes the repeat index to :class:`SharedLayers`."""

LayerSlots = list[list[dict[str, int]]]
"""``slots[r][j]``: for layer ``j`` of the block at repeat ``r``, the ``layer_idx`` of
each submodule that has one (by its path in the layer), as in the original layer."""


class SharedLayers(nn.Module):
    """``block_size`` shared layers applied in turn, at the repeat that :meth:`select_repeat` set.

    Args:
        layers: The shared layers (the block), applied in order.
        index: The running repeat, shared with the layers' deltas.
        slots: The original ``layer_idx`` values, per repeat and layer.
        output: How the next state is read from what a layer returns (as
            :class:`~stochdepth.RepeatedBlock`'s ``output``).
        step_kwarg: The keyword under which to pass the repeat index on to the layers,
            or ``None``.
    """

    layers: nn.ModuleList

    def __init__(
        self,
        layers: Sequence[nn.Module],
        index: RepeatIndex,
        slots: LayerSlots,
        output: Output,
        step_kwarg: str | None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._index = index
        self._slots = slots
        self._output = output
        self._step_kwarg = step_kwarg

    @property
    def repeats(self) -> int:
        """How many repeats have deltas (and cache slots) of their own."""
        return self._index.count

    @property
    def repeat(self) -> int:
        """The repeat that runs (0-based), as :meth:`select_repeat` last set it."""
        return self._index.value

    def select_repeat(self, repeat: int) -> None:
        """Make the next application repeat ``repeat`` (0-based).

        Selects the repeat's deltas (repeats past :attr:`repeats` use the last
        repeat's) and sets the layers' ``layer_idx`` to those of the original layers
        that this repeat replaces.
        """
        self._index.value = repeat
        slots = self._slots[self._index.current()]
        for layer, paths in zip(self.layers, slots, strict=True):
            for path, layer_idx in paths.items():
                setattr(layer.get_submodule(path), "layer_idx", layer_idx)  # noqa: B010

    def forward(self, x: Tensor, /, *args: Any, **kwargs: Any) -> Tensor:
        """Apply the shared layers in turn to ``x``, with the same extra arguments.

        Args:
            x: The state.
            *args: Extra positional arguments, passed to every layer.
            **kwargs: Extra keyword arguments, passed to every layer.

        Returns:
            The state after the last layer.

        Raises:
            ValueError: A cache (a keyword argument with ``get_seq_length``) is
                passed at a repeat past :attr:`repeats`: it has no slot for it.
            TypeError: A layer returned something ``output`` cannot read.
        """
        repeat = kwargs.pop(REPEAT_KWARG, None)
        if repeat is not None:
            self.select_repeat(repeat)
        if self._index.value >= self._index.count and _has_cache(kwargs):
            raise ValueError(
                f"the converted block replaces {self._index.count} repeats of original "
                f"layers, and a cache has a slot (layer_idx) for each of them only, but "
                f"this pass runs repeat {self._index.value + 1}: with a cache, run at a "
                f"depth of at most {self._index.count} (the block's eval_depth), or pass "
                f"no cache (use_cache=False)"
            )
        if self._step_kwarg is not None:
            kwargs[self._step_kwarg] = self._index.value
        for layer in self.layers:
            x = read_state(layer(x, *args, **kwargs), self._output, layer)
        return x

    def extra_repr(self) -> str:
        """Show the number of repeats with deltas of their own."""
        return f"repeats={self._index.count}"


def _has_cache(kwargs: dict[str, Any]) -> bool:
    return any(callable(getattr(value, "get_seq_length", None)) for value in kwargs.values())


def read_state(out: object, output: Output, layer: nn.Module) -> Tensor:
    """The next state in what ``layer`` returned, read as ``output`` says.

    Raises:
        TypeError: ``out`` holds no tensor where ``output`` points.
    """
    if output is None:
        state = out
    elif isinstance(output, int):
        if not isinstance(out, (tuple, list)) or not -len(out) <= output < len(out):
            raise TypeError(
                f"output={output} takes element {output} of a tuple or list that the layer "
                f"returns, but {type(layer).__name__} returned {summarize(out)}"
            )
        state = out[output]
    else:
        state = output(out)
    if not isinstance(state, Tensor):
        raise TypeError(
            f"the converted layers must return a tensor (or, with output=, something the "
            f"state is read from), but {type(layer).__name__} gave {summarize(state)}"
        )
    return state
