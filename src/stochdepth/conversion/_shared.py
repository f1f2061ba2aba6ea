"""`SharedLayers`: the block of layers that a converted model repeats.

It applies its ``block_size`` layers in turn, as the original stack did, and knows
which repeat is running (:meth:`SharedLayers.select_repeat`, called by the
:class:`~stochdepth.RepeatedBlock` before every application), which selects the
per-repeat deltas.

``layer_idx`` (the attribute through which Hugging Face attention layers address their
cache): each shared layer keeps that of the first original layer it replaces, an index
no other layer of the model has, which a cache with a slot per repeat
(:class:`~stochdepth.DepthCache`, which says so with ``tracks_block``) reads. With an
ordinary cache (``DynamicCache``, one slot per ``layer_idx``) the layer writes, at each
repeat, under the ``layer_idx`` of the original layer that this repeat replaces, so that
the cache holds one slot per original layer, as it did before the conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from stochdepth._layer_call import Output, read_state, summarize

from ._deltas import DenseDelta, LowRankDelta, RepeatIndex

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
    """

    layers: nn.ModuleList
    # An ordinary cache reaching the block is right here (a slot per original layer, see
    # the module docstring): the block lets it through (stochdepth._cache_guard).
    addresses_cache_per_repeat = True

    def __init__(
        self,
        layers: Sequence[nn.Module],
        index: RepeatIndex,
        slots: LayerSlots,
        output: Output,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._index = index
        self._slots = slots
        self._output = output
        self._held = 0  # positions in the cache slot of repeat 1, this pass
        self._relaxed = any(
            isinstance(module, (LowRankDelta, DenseDelta)) for module in self.modules()
        )
        for position in range(len(self.layers)):
            self._set_layer_idx(position, 0)

    @property
    def repeats(self) -> int:
        """How many repeats have deltas (and cache slots) of their own."""
        return self._index.count

    @property
    def repeat(self) -> int:
        """The repeat that runs (0-based), as :meth:`select_repeat` last set it."""
        return self._index.value

    def select_repeat(self, repeat: int) -> None:
        """Make the next application repeat ``repeat`` (0-based): select its deltas.

        Repeats past :attr:`repeats` use the last repeat's deltas.
        """
        self._index.value = repeat

    def _set_layer_idx(self, position: int, repeat: int) -> None:
        """Give layer ``position`` the ``layer_idx`` values of repeat ``repeat``'s original."""
        layer = self.layers[position]
        for path, layer_idx in self._slots[repeat][position].items():
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
                passed at a repeat past :attr:`repeats` (it has no slot for it), or
                its slot for this repeat missed an earlier step (a different depth); or a
                layer with deltas checkpoints itself (Hugging Face's gradient
                checkpointing), which would recompute it with another repeat's deltas;
                or a layer changed the state's shape.
            TypeError: A layer returned something ``output`` cannot read.
        """
        cache = _cache_in(kwargs)
        recording = torch.is_grad_enabled()
        for position, layer in enumerate(self.layers):
            if recording and self._relaxed and _checkpoints_itself(layer):
                raise ValueError(
                    f"{type(layer).__name__} has gradient checkpointing on (Hugging Face's "
                    f"activation_checkpointing_enable(), formerly "
                    f"gradient_checkpointing_enable()): it would recompute the shared layer "
                    f"in the backward pass with the last repeat's deltas selected, and the "
                    f"gradients would be wrong. Turn it off (model."
                    f"activation_checkpointing_disable()) and pass checkpoint=True to "
                    f"recursify: the block's own checkpointing selects each repeat's deltas "
                    f"again when it recomputes"
                )
            if cache is None or callable(getattr(cache, "tracks_block", None)):
                # No cache, or one that keeps a slot per repeat itself (DepthCache): the
                # layer keeps the layer_idx of the first original layer it replaces.
                out = layer(x, *args, **kwargs)
            else:
                out = self._through_ordinary_cache(cache, position, x, args, kwargs)
            state = next_state(out, self._output, layer)
            if state.shape != x.shape:
                raise ValueError(
                    f"the converted layers must keep the state's shape, but layer "
                    f"{position} of the shared block ({type(layer).__name__}) turned "
                    f"{tuple(x.shape)} into {tuple(state.shape)} (read with "
                    f"output={self._output!r})"
                )
            x = state
        return x

    def _through_ordinary_cache(
        self,
        cache: Any,
        position: int,
        x: Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Apply layer ``position`` writing to the slot of the original layer it replaces.

        An ordinary cache (``DynamicCache``) has a slot per ``layer_idx``: the layer
        writes under the original layer's ``layer_idx`` for this repeat, and gets its
        own back afterwards.
        """
        self._check_cache(cache, position)
        self._set_layer_idx(position, self._index.value)
        try:
            return self.layers[position](x, *args, **kwargs)
        finally:
            self._set_layer_idx(position, 0)

    def _check_cache(self, cache: Any, position: int) -> None:
        """Refuse a cache slot that this repeat cannot extend as the original layer would.

        Every slot a pass writes to must hold the positions of the earlier steps: as
        many as the slot of the pass's first repeat held. A repeat past
        :attr:`repeats` has no slot; a repeat that an earlier step did not run (at a
        smaller depth) holds fewer positions, and attention would silently read a
        shorter past.
        """
        repeat = self._index.value
        if repeat >= self._index.count:
            raise ValueError(
                f"the converted block replaces {self._index.count} repeats of original "
                f"layers, and a cache has a slot (layer_idx) for each of them only, but "
                f"this pass runs repeat {repeat + 1}: with a cache, run at a depth of at "
                f"most {self._index.count} (the block's eval_depth), or pass no cache "
                f"(use_cache=False)"
            )
        slots = self._slots[repeat][position]
        if not slots:
            return
        held = cache.get_seq_length(next(iter(slots.values())))
        if repeat == 0 and position == 0:
            self._held = held
        elif held != self._held:
            raise ValueError(
                f"the cache's slot for repeat {repeat + 1} of the converted block holds "
                f"{held} positions where repeat 1's held {self._held}: an earlier step "
                f"ran at another depth, so this repeat would attend to a shorter past. "
                f"With a cache, keep the depth the same at every step (eval mode with an "
                f"int eval_depth), or pass no cache (use_cache=False)"
            )

    def extra_repr(self) -> str:
        """Show the number of repeats with deltas of their own."""
        return f"repeats={self._index.count}"


def _checkpoints_itself(layer: nn.Module) -> bool:
    """Whether ``layer`` checkpoints its own forward pass (a Hugging Face layer, in training)."""
    return layer.training and getattr(layer, "gradient_checkpointing", False) is True


def _cache_in(kwargs: dict[str, Any]) -> Any:
    """The key/value cache among the keyword arguments (what has ``get_seq_length``)."""
    for value in kwargs.values():
        if callable(getattr(value, "get_seq_length", None)):
            return value
    return None


def next_state(out: object, output: Output, layer: nn.Module) -> Tensor:
    """The next state in what ``layer`` returned, read as ``output`` says.

    Raises:
        TypeError: ``out`` holds no tensor where ``output`` points.
    """
    state = read_state(out, output, type(layer).__name__)
    if not isinstance(state, Tensor):
        raise TypeError(
            f"the converted layers must return a tensor (or, with output=, something the "
            f"state is read from), but {type(layer).__name__} gave {summarize(state)}"
        )
    return state
