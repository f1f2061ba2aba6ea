"""`DepthCache`: a Hugging Face key/value cache with a slot per repeat of each repeated layer.

This module imports ``transformers`` (an optional dependency); ``stochdepth`` imports it
only when ``stochdepth.DepthCache`` is first used.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from stochdepth._cache_guard import FrozenKeysStored
from stochdepth._cache_writes import FrozenApplication

from ._policy import CachePolicy, PolicyName
from ._tracker import RepeatTracker


@dataclass
class Pass:
    """The positions one forward pass added, and which repeats wrote them.

    Attributes:
        start: The first position.
        stop: One past the last.
        last: The deepest repeat whose slot holds their keys and values (``-1``: none).
        frozen: Whether their keys and values from repeat ``last + 1`` on are those of
            the frozen states: the block applied the layer once more to the frozen states
            (``per_token=True``), or left that application for later (``pending``), so
            that a later, deeper pass can read them.
        frozen_keys: With ``policy="exact"``, those keys, stored once, outside the
            slots (``None`` when they are in slot ``last``, the pass is not frozen, or
            they are not computed yet).
        frozen_values: The matching values.
        pending: With ``policy="exact"``, the block's application to the frozen states,
            kept for later: it computes ``frozen_keys`` and ``frozen_values`` when a
            deeper repeat first reads them (``None`` once run, or when there is none).
    """

    start: int
    stop: int
    last: int = -1
    frozen: bool = False
    frozen_keys: Tensor | None = None
    frozen_values: Tensor | None = None
    pending: FrozenApplication | None = None

    def frozen_tensors(self) -> tuple[Tensor, Tensor] | None:
        """The frozen keys and values stored outside the slots, or ``None``."""
        if self.frozen_keys is None or self.frozen_values is None:
            return None
        return self.frozen_keys, self.frozen_values

    def map_frozen(self, function: Callable[[Tensor], Tensor]) -> None:
        """Replace the frozen keys and values by ``function`` of them (rows, devices)."""
        held = self.frozen_tensors()
        if held is not None:
            self.frozen_keys, self.frozen_values = function(held[0]), function(held[1])


class RepeatSlots(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """The cache of one layer index inside a block: a :class:`DynamicLayer` per slot.

    Every slot holds the same positions once it is read: a slot that lacks the
    positions of a pass that stopped before reaching it gets them, when the pass was
    frozen, from the keys and values of its frozen states (with ``policy="exact"``
    stored once, on the pass, until a deeper repeat first reads them; otherwise in the
    pass's deepest slot); with ``policy="exact"`` an unfrozen pass is refused there.

    With ``policy="exact"``, a block whose layer writes one layer index and no repeat
    hooks but the caches', the block's application to a pass's frozen states waits on the
    pass (``Pass.pending``) until a
    deeper repeat first reads them: decoding whose later tokens stop no deeper never
    runs it. Cropping those positions, moving rows (beam search) or devices, and copying
    the cache run it first: it holds the pass's own arguments, which only the layer can
    read.

    Args:
        layer_idx: The layer index, for error messages.
        tracker: Tells the 0-based repeat running now.
        policy: Which slot each repeat uses.
    """

    is_compileable = False
    is_croppable = True
    is_sliding = False

    def __init__(self, layer_idx: int, tracker: RepeatTracker, policy: CachePolicy) -> None:
        self.is_initialized = True
        self.layer_idx = layer_idx
        self.tracker = tracker
        self._policy = policy
        self.slots: list[DynamicLayer] = []
        self.passes: list[Pass] = []
        self._target: Pass | None = None  # the pass whose pending application runs

    @property
    def keys(self) -> Tensor | None:  # type: ignore[override]
        """The first slot's keys (what code reading ``layer.keys`` expects)."""
        return self.slots[0].keys if self.slots else None

    @property
    def values(self) -> Tensor | None:  # type: ignore[override]
        """The first slot's values."""
        return self.slots[0].values if self.slots else None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """Nothing to do: each slot initializes itself on its first update."""

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Store the running repeat's keys and values; return what it attends to.

        Inside the block's application to the frozen states, the keys and values are
        those of the frozen states; once every layer of the block has written them the
        cache raises ``FrozenKeysStored`` (nothing is returned: the block ends the
        application there). With ``policy="exact"`` the last of them is stored once, on
        the pass, rather than in a slot.

        Raises:
            ValueError: With ``policy="exact"``, the running repeat's slot lacks the
                positions of an earlier pass that stopped before it and was not frozen
                (the depth changed between forward passes).
        """
        if not self.tracker.freezing(self.layer_idx):
            return self._store(key_states, value_states)
        done = self.tracker.stored(self.layer_idx)  # every layer of the block has them
        if self._policy.exact and not self.tracker.holds(self.layer_idx):
            # A depth-0 pass of a block without per_token: its positions are recorded,
            # without entries (a later, deeper pass reading them is refused).
            current = self._pass(self._repeat(), key_states.shape[-2])
            if done:
                raise FrozenKeysStored
            # Another layer of the block runs on this one's output, for the positions
            # only: zeros for the earlier keys and values keep the shapes.
            past = list(key_states.shape)
            past[-2] = current.start
            keys = torch.cat([key_states.new_zeros(past), key_states], dim=-2)
            past[-1] = value_states.shape[-1]
            values = torch.cat([value_states.new_zeros(past), value_states], dim=-2)
            return keys, values
        if done and self._policy.exact:
            # Nothing attends to them now: keep them aside, no slot grows.
            current = self._pass(self._repeat(), key_states.shape[-2])
            current.frozen_keys = _own(key_states)
            current.frozen_values = _own(value_states)
            current.frozen = True
            raise FrozenKeysStored
        # Another layer of the block still needs this one's output (or a shared slot
        # keeps the deepest entries): attend to them as a repeat does.
        keys, values = self._store(key_states, value_states)
        if self.tracker.holds(self.layer_idx):
            self.freeze()
        if done:
            raise FrozenKeysStored
        return keys, values

    def _repeat(self) -> int:
        return self.tracker.repeat_of(self.layer_idx) or 0

    def _pass(self, repeat: int, new: int) -> Pass:
        """The running pass (a new one at repeat 0: every pass starts there).

        Inside a pending application to an earlier pass's frozen states, that pass.
        """
        if self._target is not None:
            return self._target
        if repeat == 0:  # a frozen application at depth 0 starts its pass too
            start = self.get_seq_length()
            self.passes.append(Pass(start, start + new))
        return self.passes[-1]

    def _store(self, key_states: Tensor, value_states: Tensor) -> tuple[Tensor, Tensor]:
        repeat = self._repeat()
        current = self._pass(repeat, key_states.shape[-2])
        past = current.start
        index = self._policy.slot(repeat)
        self._fill(index, past, repeat)
        slot = self.slots[index]
        have = _length(slot)
        current.last = max(current.last, repeat)
        if have == past:
            if self._policy.writes(repeat):
                return slot.update(key_states, value_states)
            if past == 0:
                return key_states, value_states
        # The earlier positions only: an earlier repeat of this pass may have written the
        # new positions (shared slots).
        keys = cast(Tensor, slot.keys)[..., :past, :]
        values = cast(Tensor, slot.values)[..., :past, :]
        keys = torch.cat([keys, key_states], dim=-2)
        values = torch.cat([values, value_states], dim=-2)
        if self._policy.writes(repeat):
            slot.keys, slot.values = keys, values
        return keys, values

    def _fill(self, index: int, past: int, repeat: int) -> None:
        """Give slot ``index`` the positions before ``past`` that it lacks (one copy)."""
        while len(self.slots) <= index:
            self.slots.append(_dynamic_layer())
        slot = self.slots[index]
        have = _length(slot)
        if have >= past:
            return
        first = len(self.passes) - 1  # the running pass; the ones before it, backwards
        while first > 0 and self.passes[first - 1].stop > have:
            first -= 1
        keys: list[Tensor] = []
        values: list[Tensor] = []
        for earlier in self.passes[first:-1]:
            lower = max(earlier.start, have)
            if earlier.pending is not None and earlier.last < index:
                self._settle(earlier)
            held = earlier.frozen_tensors()
            if held is not None and earlier.last < index:
                offset = lower - earlier.start
                keys.append(held[0][..., offset:, :])
                values.append(held[1][..., offset:, :])
                continue
            source = self._policy.slot(earlier.last) if earlier.last >= 0 else -1
            if source >= index or source < 0 or (self._policy.exact and not earlier.frozen):
                raise ValueError(
                    f"repeat {repeat + 1} of the RepeatedBlock with layer_idx="
                    f"{self.layer_idx} has no keys and values for positions "
                    f"{lower}..{earlier.stop - 1}, which an earlier "
                    f"forward pass ran to depth {earlier.last + 1} only: with "
                    f"policy='exact' every pass needs the same depth (a fixed eval_depth), "
                    f"or per_token=True, whose passes leave the keys and values of the "
                    f"frozen states for the later repeats; policy='last' or 'first' shares "
                    f"one slot across depths"
                )
            keys.append(cast(Tensor, self.slots[source].keys)[..., lower : earlier.stop, :])
            values.append(cast(Tensor, self.slots[source].values)[..., lower : earlier.stop, :])
        if keys:
            slot.update(_joined(keys), _joined(values))

    def freeze(self) -> None:
        """Mark the running pass's deepest entries as valid for every later repeat."""
        if self.passes:
            self.passes[-1].frozen = True

    def defer(self, application: FrozenApplication) -> bool:
        """Keep the running pass's application to its frozen states for later.

        Args:
            application: The application; it ran ``application.repeat`` repeats.

        Returns:
            Whether the pass keeps it (``False``: the block runs it now). Only
            ``policy="exact"`` keeps one, on a pass that wrote its repeats here.
        """
        current = self.passes[-1] if self.passes else None
        if (
            not self._policy.exact
            or current is None
            or current.frozen
            or current.last != application.repeat - 1
        ):
            return False
        current.pending = application
        current.frozen = True
        return True

    def settle(self) -> None:
        """Run every pass's pending application: their frozen keys and values are stored."""
        for held in self.passes:
            if held.pending is not None:
                self._settle(held)

    def _settle(self, held: Pass) -> None:
        application = held.pending
        if application is None:
            return
        held.pending = None  # no second run from inside this one
        block = application.block
        running = self.tracker.running(block)  # the repeat hook fires inside
        self._target = held
        try:
            application()
        except BaseException:
            held.pending = application  # still waiting: a later read tries again
            raise
        finally:
            self._target = None
            self.tracker.set_repeat(block, running)
        if held.frozen_tensors() is None:
            held.frozen = False  # a later, deeper read is refused, not served stale keys
            raise RuntimeError(
                f"the layer of the RepeatedBlock with layer_idx={self.layer_idx} did not "
                f"write the keys and values of positions {held.start}..{held.stop - 1} "
                f"when applied to their frozen states (does it call cache.update?)"
            )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The key length and offset for the attention mask, as a ``DynamicLayer``'s."""
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        """The positions cached."""
        return self.passes[-1].stop if self.passes else 0

    def get_max_length(self) -> int:
        """``-1``: the slots grow without bound."""
        return -1

    def reset(self) -> None:
        """Forget every slot."""
        self.slots = []
        self.passes = []

    def offload(self) -> None:
        """Move every slot, and the frozen entries, to the CPU."""
        self.settle()
        for slot in self.slots:
            slot.offload()  # type: ignore[no-untyped-call]
        for held in self.passes:
            held.map_frozen(lambda tensor: tensor.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        """Move every slot, and the frozen entries, back to their device."""
        for slot in self.slots:
            slot.prefetch()  # type: ignore[no-untyped-call]
        device = next((slot.keys.device for slot in self.slots if slot.keys is not None), None)
        if device is not None:
            for held in self.passes:
                held.map_frozen(lambda tensor: tensor.to(device, non_blocking=True))

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` positions from every slot.

        Raises:
            ValueError: ``tokens_to_remove`` is positive (the legacy form, refused as
                ``DynamicLayer`` refuses it).
        """
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop takes minus the number of positions to remove, got {tokens_to_remove}"
            )
        keep = max(self.get_seq_length() + tokens_to_remove, 0)
        for held in self.passes:
            if held.start < keep < held.stop:
                self._settle(held)  # its arguments cannot be cut: store its entries first
        for slot in self.slots:
            if _length(slot) > keep:
                slot.keys = cast(Tensor, slot.keys)[..., :keep, :]
                slot.values = cast(Tensor, slot.values)[..., :keep, :]
        self.passes = [p for p in self.passes if p.start < keep]
        if self.passes and self.passes[-1].stop > keep:
            last = self.passes[-1]
            last.map_frozen(lambda tensor: tensor[..., : keep - last.start, :])
            last.stop = keep

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder every slot's rows (beam search), and the frozen entries'."""
        self.settle()  # a pending application's arguments keep their rows
        for slot in self.slots:
            slot.reorder_cache(beam_idx)
        self._map_rows(lambda tensor: tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every slot's rows ``repeats`` times, and the frozen entries'."""
        self.settle()  # a pending application's arguments keep their rows
        for slot in self.slots:
            slot.batch_repeat_interleave(repeats)
        self._map_rows(lambda tensor: tensor.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep the rows ``indices`` of every slot, and of the frozen entries."""
        self.settle()  # a pending application's arguments keep their rows
        for slot in self.slots:
            slot.batch_select_indices(indices)
        self._map_rows(lambda tensor: tensor[indices, ...])

    def _map_rows(self, function: Callable[[Tensor], Tensor]) -> None:
        for held in self.passes:
            held.map_frozen(function)

    def tensors(self) -> Iterator[Tensor]:
        """Every tensor the layer holds: slots, frozen entries, waiting applications' tensors.

        A waiting application holds a copy of the frozen states and its call's tensors.
        """
        for slot in self.slots:
            for tensor in (slot.keys, slot.values):
                if isinstance(tensor, Tensor):
                    yield tensor
        for held in self.passes:
            frozen = held.frozen_tensors()
            if frozen is not None:
                yield from frozen
            if held.pending is not None:
                yield from held.pending.tensors()


def _length(slot: DynamicLayer) -> int:
    return slot.get_seq_length()


def _dynamic_layer() -> DynamicLayer:
    return DynamicLayer()  # type: ignore[no-untyped-call]


def _joined(pieces: list[Tensor]) -> Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)


def _own(tensor: Tensor) -> Tensor:
    """``tensor``, copied when it is a view of a larger buffer (which it would keep alive)."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


class DepthCache(Cache):
    """A ``transformers`` cache that keeps a slot per repeat of every repeated layer.

    Pass it to a model's ``forward`` or to ``generate()`` the way you pass a
    ``DynamicCache`` (``cache=DepthCache(model)``). A Hugging Face attention layer
    writes its keys and values under its ``layer_idx``; inside a
    :class:`~stochdepth.RepeatedBlock` every repeat has the same ``layer_idx``, so an
    ordinary cache would let the repeats overwrite each other (the block refuses one,
    naming this class). A ``DepthCache`` is told by each block which repeat is running
    and keeps the entries of ``(layer_idx, repeat)`` apart; layers outside a block get
    an ordinary ``DynamicLayer``. With ``policy="exact"`` cached generation computes what
    generation without a cache computes, and what an unrolled model (its repeats
    distinct layers with the same weights) computes with a ``DynamicCache``.

    The cache finds the blocks of ``model`` and the layer indices of their layers (the
    int ``layer_idx`` attribute of Hugging Face attention modules) when it is made, and
    registers a hook on each block; :meth:`close` removes them (so does the cache's
    garbage collection). ``crop``, ``reorder_cache`` (beam search) and
    ``batch_select_indices`` work on every slot.

    With ``policy="exact"`` every forward pass must run the same depth (an int
    ``eval_depth``, or ``FixedDepth``): a repeat without entries for earlier positions
    raises. The cheaper policies trade exactness for memory (see the docs page
    "Generating with a repeated layer" for their drift):

    * ``"first"``: one slot per layer, written by the first repeat and read by all
      (Mixture-of-Recursions' KV sharing);
    * ``"last"``: one slot per layer, holding the deepest repeat's entries (Ouro);
    * ``"window"``: ``window`` slots; repeat ``r`` uses slot ``min(r, window - 1)``.

    Args:
        model: The model whose :class:`~stochdepth.RepeatedBlock` modules to follow.
        policy: ``"exact"`` (default), ``"first"``, ``"last"`` or ``"window"``.
        window: The number of slots of ``policy="window"``, an int >= 1.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``policy`` or ``window`` has
            the wrong type.
        ValueError: ``model`` holds no ``RepeatedBlock``, holds nested ones, or two
            with layers of the same ``layer_idx``; ``policy`` is unknown; ``window`` is
            missing or below 1.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from stochdepth import DepthCache, RepeatedBlock
        >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                      num_hidden_layers=3, num_attention_heads=4)
        >>> model = LlamaForCausalLM(config)
        >>> model.model.layers[1] = RepeatedBlock(model.model.layers[1], eval_depth=4)
        >>> model = model.eval()  # the block too: eval mode runs eval_depth repeats
        >>> prompt = torch.tensor([[5, 9, 2, 7]])
        >>> cache = DepthCache(model)
        >>> with torch.no_grad():
        ...     out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
        ...                          max_new_tokens=3, do_sample=False, cache=cache,
        ...                          pad_token_id=0)
        >>> out.shape
        torch.Size([1, 7])
        >>> cache.slot_count(1)  # layer 1, the repeated one: a slot per repeat
        4
    """

    def __init__(
        self, model: nn.Module, *, policy: PolicyName = "exact", window: int | None = None
    ) -> None:
        self._policy = CachePolicy(policy, window)
        self._tracker = RepeatTracker(model)
        self._owned = set(self._tracker.owned())
        super().__init__(layers=[])

    @property
    def policy(self) -> PolicyName:
        """The cache policy (set at construction)."""
        return self._policy.name

    @property
    def window(self) -> int | None:
        """The number of slots of ``policy="window"``; ``None`` otherwise."""
        return self._policy.window

    def tracks_block(self, block: object) -> bool:
        """Whether ``block`` is one of the :class:`~stochdepth.RepeatedBlock` s this cache follows.

        A block refuses a cache that does not track it.

        Args:
            block: A module.

        Returns:
            ``True`` for a block of the model the cache was made for.
        """
        return self._tracker.tracks(block)

    def update(
        self,
        key_states: Tensor,
        value_states: Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """Store the keys and values of ``layer_idx`` (in the running repeat's slot).

        Args:
            key_states: The new keys, ``(batch, heads, positions, head_dim)``.
            value_states: The new values, of the same shape.
            layer_idx: The attention layer's index.
            *args: Passed on to the layer's cache, as ``transformers`` does.
            **kwargs: Passed on likewise (``cache_kwargs``).

        Returns:
            The keys and values to attend to: the earlier positions' and the new ones.
        """
        while len(self.layers) <= layer_idx:
            index = len(self.layers)
            if index in self._owned:
                self.layers.append(RepeatSlots(index, self._tracker, self._policy))
            else:
                self.layers.append(_dynamic_layer())
        layer = cast(CacheLayerMixin, self.layers[layer_idx])
        keys, values = layer.update(key_states, value_states, *args, **kwargs)
        return keys, values

    @contextlib.contextmanager
    def frozen_application(self, block: object, *, holds: bool = True) -> Iterator[None]:
        """The block's extra application to the frozen states of a pass that stopped early.

        A block with ``per_token=True`` applies its layer once more, inside this context,
        after a pass that stopped before the deepest depth a later pass may reach, or
        that ran no repeat: the keys and values its layers write hold for every later
        repeat of this pass's positions (they are those of the frozen states). With
        ``policy="exact"`` they are stored once, outside the slots, and copied into a
        deeper repeat's slot when a later pass first reads it. Once every layer of the
        block has written them, the cache raises ``FrozenKeysStored`` from ``update``,
        which the block catches: the rest of the application (attention, MLP) is
        skipped.

        A block without ``per_token`` does the same after a pass at depth 0, with
        ``holds=False``, so that the cache knows the pass's positions: with
        ``policy="exact"`` a later, deeper pass that would read them is refused (the
        depth changed between passes), the shared slots of the other policies keep the
        keys and values of the pass's input.

        Args:
            block: The :class:`~stochdepth.RepeatedBlock` whose pass stopped.
            holds: Whether the entries hold for every later repeat (``per_token=True``).

        Yields:
            Nothing; the application runs inside.
        """
        self._tracker.begin_freeze(block, holds)
        try:
            yield
        finally:
            self._tracker.end_freeze(block)

    def defer_frozen(self, block: object, application: FrozenApplication) -> bool:
        """Keep a per-token pass's application to its frozen states until it is needed.

        The block calls this after a ``per_token=True`` pass that ran at least one
        repeat and stopped before the deepest a later pass may run, instead of applying
        its layer to the frozen states at once (only when the block has no repeat hooks
        but the caches'). With ``policy="exact"`` and a block whose layer writes one
        layer index, the cache keeps ``application`` on the pass
        and runs it when a later, deeper repeat first reads these positions (or before
        cropping them, moving the cache's rows or devices, or copying it): a decode
        whose later tokens stop no deeper never runs it. The keys and values are those
        the application would have written at once.

        Args:
            block: The :class:`~stochdepth.RepeatedBlock` whose pass it is.
            application: The application (the frozen states, the pass's layer call).

        Returns:
            Whether the cache keeps it; ``False``: the block runs it now.
        """
        if not self._policy.exact:
            return False
        indices = [index for index, owner in self._tracker.owned().items() if owner is block]
        if len(indices) != 1 or indices[0] >= len(self.layers):
            return False
        layer = self.layers[indices[0]]
        return isinstance(layer, RepeatSlots) and layer.defer(application)

    def slot_count(self, layer_idx: int) -> int:
        """How many slots the layer index holds: a repeated layer's, or 1 for another.

        Args:
            layer_idx: The layer index.

        Returns:
            The number of key/value slots (0 before the layer first writes).
        """
        if layer_idx >= len(self.layers):
            return 0
        layer = self.layers[layer_idx]
        return len(layer.slots) if isinstance(layer, RepeatSlots) else 1

    def memory_bytes(self) -> int:
        """The bytes that the cached keys and values take, every slot of every layer.

        Returns:
            The sum of the keys' and values' sizes in bytes.
        """
        total = 0
        for layer in self.layers:
            if isinstance(layer, RepeatSlots):
                tensors: list[object] = list(layer.tensors())
            else:
                plain = cast(CacheLayerMixin, layer)
                tensors = [plain.keys, plain.values]
            for tensor in tensors:
                if isinstance(tensor, Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def close(self) -> None:
        """Remove the hooks this cache put on the model's blocks.

        The cache then no longer knows which repeat runs: a block refuses it. Waiting
        applications to frozen states run first, while the cache still follows the
        blocks.
        """
        for layer in self.layers:
            if isinstance(layer, RepeatSlots):
                layer.settle()
        self._tracker.close()
        self._tracker = _Closed()

    def __deepcopy__(self, memo: dict[int, Any]) -> DepthCache:
        """A copy of the cached entries that follows the same blocks, with hooks of its own.

        The model's blocks are shared, not copied (``copy.deepcopy`` of the tracker would
        copy them, and its hooks would stay on the originals).
        """
        for layer in self.layers:  # a pending application holds the model's layer
            if isinstance(layer, RepeatSlots):
                layer.settle()
        twin = DepthCache.__new__(DepthCache)
        memo[id(self)] = twin
        tracker = self._tracker.clone() if self._tracker.following() else _Closed()
        memo[id(self._tracker)] = tracker
        for key, value in self.__dict__.items():
            twin.__dict__[key] = copy.deepcopy(value, memo)
        return twin

    def __repr__(self) -> str:
        window = f", window={self.window}" if self.window is not None else ""
        return f"DepthCache(policy={self.policy!r}{window}, layers={len(self.layers)})"


class _Closed(RepeatTracker):
    """A closed cache's tracker: it follows no block."""

    def __init__(self) -> None:
        self._list = []
        self._owner = {}
        self._blocks = set()
        self._repeat = {}
        self._freezing = {}
        self._recording = set()

    def following(self) -> bool:
        """``False``: a closed cache follows nothing."""
        return False

    def close(self) -> None:
        """Nothing to remove."""
