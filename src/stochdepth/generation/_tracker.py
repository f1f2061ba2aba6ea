"""Which repeat of which block is running: what a :class:`~stochdepth.DepthCache` asks.

A :class:`RepeatTracker` finds the :class:`~stochdepth.RepeatedBlock` modules of a model
and the layer indices their layers write to the cache under (the ``layer_idx``
attribute of Hugging Face attention modules, and of any attention module that follows
the protocol on the docs page "Generating with a repeated layer"). It registers a repeat hook on
each block that records the 0-based repeat about to run, so that a cache can put the
keys and values of ``(layer_idx, repeat)`` in a slot of their own.

The hooks hold the tracker weakly and are removed when it is closed or collected, so a
cache that is dropped leaves nothing behind on the model.
"""

from __future__ import annotations

import weakref

from torch import nn
from torch.utils.hooks import RemovableHandle

from stochdepth._block import RepeatedBlock
from stochdepth._validation import describe


def layer_indices(module: nn.Module) -> set[int]:
    """The ``layer_idx`` values (ints) of ``module`` and its submodules."""
    found = set()
    for child in module.modules():
        index = getattr(child, "layer_idx", None)
        if isinstance(index, int) and not isinstance(index, bool):
            found.add(index)
    return found


class RepeatTracker:
    """Follows the repeats of every :class:`~stochdepth.RepeatedBlock` in ``model``.

    Args:
        model: The module whose blocks to follow (a ``LlamaForCausalLM``, say).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` holds no ``RepeatedBlock``; a block is nested in another;
            or two blocks hold layers with the same ``layer_idx``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
        blocks = [module for module in model.modules() if isinstance(module, RepeatedBlock)]
        if not blocks:
            raise ValueError(
                f"model must hold a RepeatedBlock for a DepthCache to follow, but "
                f"{type(model).__name__} holds none: use an ordinary cache (DynamicCache)"
            )
        self._model = model
        self._follow(blocks)

    def _follow(self, blocks: list[RepeatedBlock]) -> None:
        for block in blocks:
            if block.per_sample and block.mode == "skip":
                raise ValueError(
                    "DepthCache cannot follow a RepeatedBlock with per_sample=True in "
                    "mode='skip': its repeats run on the rows still going only, so a repeat "
                    "would write keys and values for some rows of the batch; use "
                    "per_token=True (a depth per position, every row at every repeat) or "
                    "mode='masked'"
                )
        self._list = blocks
        self._owner: dict[int, RepeatedBlock] = {}
        self._blocks: set[int] = set()
        for block in blocks:
            inner = [m for m in block.layer.modules() if isinstance(m, RepeatedBlock)]
            if inner:
                raise ValueError(
                    "DepthCache does not follow a RepeatedBlock nested in another one's "
                    f"layer (found one inside {type(block.layer).__name__}): a repeat of the "
                    "inner block has no single index in the outer block's repeats"
                )
            self._blocks.add(id(block))
            for index in layer_indices(block.layer):
                other = self._owner.get(index)
                if other is not None:
                    raise ValueError(
                        f"two RepeatedBlocks hold layers with layer_idx={index}: each layer "
                        f"writing to the cache needs its own layer index"
                    )
                self._owner[index] = block
        self._repeat: dict[int, int] = {id(block): -1 for block in blocks}
        # For a block inside its frozen application: its layer indices not yet written.
        self._freezing: dict[int, set[int]] = {}
        # The blocks whose frozen application only records positions (depth 0).
        self._recording: set[int] = set()
        self._handles: list[RemovableHandle] = []
        reference = weakref.ref(self)
        for block in blocks:
            self._handles.extend(_hook(block, reference))
        self._finalizer = weakref.finalize(self, _remove, self._handles)

    def clone(self) -> RepeatTracker:
        """A new tracker following the same blocks, with hooks of its own."""
        twin = RepeatTracker(self._model)
        twin.adopt(self._repeat, self._freezing, self._recording)
        return twin

    def adopt(
        self,
        repeats: dict[int, int],
        freezing: dict[int, set[int]],
        recording: set[int] | None = None,
    ) -> None:
        """Take over another tracker's state (the running repeats, the frozen applications)."""
        self._repeat.update(repeats)
        self._freezing = {key: set(value) for key, value in freezing.items()}
        self._recording = set(recording or ())

    def following(self) -> bool:
        """Whether the tracker still follows its blocks (it was not closed)."""
        return True

    def tracks(self, block: object) -> bool:
        """Whether ``block`` is one of the blocks this tracker follows."""
        return id(block) in self._blocks

    def owned(self) -> dict[int, RepeatedBlock]:
        """The layer indices written from inside a block, and the block of each."""
        return dict(self._owner)

    def repeat_of(self, layer_idx: int) -> int | None:
        """The repeat running in the block that holds ``layer_idx``; ``None`` outside one.

        Raises:
            RuntimeError: The layer wrote to the cache before its block ran a repeat
                (its hook did not fire: the tracker was closed, say).
        """
        block = self._owner.get(layer_idx)
        if block is None:
            return None
        repeat = self._repeat[id(block)]
        if repeat < 0:
            raise RuntimeError(
                f"the layer with layer_idx={layer_idx} wrote to the DepthCache, but its "
                f"RepeatedBlock has not told the cache which repeat is running (was the "
                f"cache closed, or is the layer called outside its block?)"
            )
        return repeat

    def begin_freeze(self, block: object, holds: bool = True) -> None:
        """``block`` starts its application to the frozen states.

        Args:
            block: The block.
            holds: Whether the keys and values it writes hold for every later repeat
                (``per_token=True``), or only record the positions (a depth-0 pass
                of a block without ``per_token``).
        """
        owned = {index for index, owner in self._owner.items() if owner is block}
        if owned:
            self._freezing[id(block)] = owned
            if not holds:
                self._recording.add(id(block))

    def end_freeze(self, block: object) -> None:
        """``block``'s application to the frozen states is over."""
        self._freezing.pop(id(block), None)
        self._recording.discard(id(block))

    def holds(self, layer_idx: int) -> bool:
        """Whether the running frozen application's entries hold for later repeats."""
        block = self._owner.get(layer_idx)
        return block is not None and id(block) not in self._recording

    def freezing(self, layer_idx: int) -> bool:
        """Whether the block holding ``layer_idx`` is in its frozen application."""
        block = self._owner.get(layer_idx)
        return block is not None and id(block) in self._freezing

    def stored(self, layer_idx: int) -> bool:
        """Record that ``layer_idx`` wrote the frozen entries; whether all of its block did."""
        block = self._owner[layer_idx]
        remaining = self._freezing[id(block)]
        remaining.discard(layer_idx)
        return not remaining

    def running(self, block: object) -> int:
        """The repeat ``block`` last said it runs (``-1``: none yet)."""
        return self._repeat.get(id(block), -1)

    def set_repeat(self, block: object, repeat: int) -> None:
        """Record that ``block`` is about to run repeat ``repeat`` (0-based)."""
        self._repeat[id(block)] = repeat

    def close(self) -> None:
        """Remove the hooks from the model's blocks."""
        self._finalizer()


def _hook(block: RepeatedBlock, tracker: weakref.ref[RepeatTracker]) -> list[RemovableHandle]:
    """Register the repeat hook that tells ``tracker`` the repeat ``block`` is about to run."""

    def on_repeat(module: RepeatedBlock, repeat: int) -> None:
        target = tracker()
        if target is not None:
            target.set_repeat(module, repeat)

    on_repeat.follows_repeats = True  # type: ignore[attr-defined]  # see follows_repeats

    return [block.register_repeat_hook(on_repeat)]


def _remove(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()
