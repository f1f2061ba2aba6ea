"""What a block does so that a key/value cache following it holds every position it saw.

A cache that follows a :class:`~stochdepth.RepeatedBlock`'s repeats
(:class:`~stochdepth.DepthCache`) learns of a forward pass's positions from the
``cache.update`` calls of the block's layer. Two kinds of pass leave it short:

* a per-token pass (``per_token=True``) whose positions stopped before the deepest
  repeat a later pass may run: a later token needs their keys and values at the
  repeats they did not run, those of their frozen states (:func:`freeze_for_caches`);
* a pass at depth 0, which never calls the layer: without more, the cache would not
  know that the positions exist, and a later pass would put its own at the wrong
  places (:func:`depth_zero_for_caches`).

For both the block applies the layer once more (output discarded, without autograd)
inside ``cache.frozen_application(block, holds=...)``, and the cache ends the
application once every layer of the block wrote (it raises
:class:`~stochdepth._cache_guard.FrozenKeysStored`, caught here): the attention and the
MLP after the last ``cache.update`` do not run.

After a per-token pass that ran at least one repeat, a cache may keep that application
for later instead (``cache.defer_frozen(block, application)``, a
:class:`FrozenApplication`: the frozen states and the pass's layer call): it runs it
when a later, deeper repeat first reads these positions, and never when no later pass
goes deeper, so that the repeats the positions skipped cost nothing.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ._cache_guard import FrozenKeysStored, is_kv_cache
from ._layer_call import LayerCall, tensor_leaves
from ._repeats import DepthZero


def tracking_caches(block: nn.Module, call: LayerCall) -> list[Any]:
    """The key/value caches among the pass's extra arguments that follow ``block``."""
    values: Iterable[Any] = (*call.args, *call.kwargs.values())
    found = []
    for value in values:
        if value is not None and is_kv_cache(value):
            tracks = getattr(value, "tracks_block", None)
            if callable(tracks) and tracks(block):
                found.append(value)
    return found


class FrozenApplication:
    """A per-token pass's application to its frozen states, kept for later by a cache.

    Calling it applies repeat ``repeat`` of the pass's layer call to ``state`` inside the
    caches' frozen application, as :func:`freeze_for_caches` does at once: the same
    extra arguments (the positions' rotary embeddings, say), so the same keys and values.
    It holds the caches weakly (the cache holds it: no reference cycle keeps a dropped
    cache, and the hooks it put on the blocks, alive); once one is gone it does nothing.

    Args:
        call: The pass's layer call (its extra arguments bound).
        caches: The caches to write to, among the call's extra arguments.
        state: The pass's frozen states (detached).
        repeat: The repeats the pass ran: the application is repeat ``repeat``.
        deepest: The deepest repeat count a later pass may run.
    """

    def __init__(
        self, call: LayerCall, caches: list[Any], state: Tensor, repeat: int, deepest: int
    ) -> None:
        held = {id(cache): _Held(cache) for cache in caches}
        self._caches = list(held.values())
        self._call = call.with_arguments(
            tuple(held.get(id(value), value) for value in call.args),
            {key: held.get(id(value), value) for key, value in call.kwargs.items()},
        )
        self.state = state
        self.repeat = repeat
        self.deepest = deepest

    def tensors(self) -> Iterator[Tensor]:
        """Every tensor it holds, once each: the frozen states, the call's arguments."""
        seen: set[int] = set()
        for value in (self.state, *self._call.args, *self._call.kwargs.values()):
            for leaf in tensor_leaves(value):
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    yield leaf

    @property
    def block(self) -> nn.Module:
        """The block whose pass this is."""
        return self._call.owner

    def __call__(self) -> None:
        """Run the application: each cache stores the frozen keys and values."""
        caches = [held.get() for held in self._caches]
        if any(cache is None for cache in caches):
            return

        def back(value: Any) -> Any:
            return value.get() if isinstance(value, _Held) else value

        call = self._call.with_arguments(
            tuple(back(value) for value in self._call.args),
            {key: back(value) for key, value in self._call.kwargs.items()},
        )
        _apply_for_caches(call, caches, self.state, self.repeat, self.deepest, holds=True)


class _Held:
    """A cache held weakly where it can be (strongly otherwise)."""

    def __init__(self, cache: Any) -> None:
        try:
            self._reference: Callable[[], Any] = weakref.ref(cache)
        except TypeError:  # a cache class without __weakref__
            self._reference = lambda: cache

    def get(self) -> Any:
        """The cache, or ``None`` once it is gone."""
        return self._reference()


def _apply_for_caches(
    call: LayerCall, caches: list[Any], state: Tensor, repeat: int, deepest: int, holds: bool
) -> None:
    """Repeat ``repeat`` on ``state`` inside each cache's frozen application, cut short."""
    block = call.owner
    with contextlib.ExitStack() as stack, torch.no_grad():
        for cache in caches:
            frozen = getattr(cache, "frozen_application", None)
            if callable(frozen):
                stack.enter_context(frozen(block, holds=holds))
        # A cache that holds the keys and values raises: the rest of the layer is moot.
        with contextlib.suppress(FrozenKeysStored):
            call(state, repeat, max(deepest, repeat + 1))


def freeze_for_caches(call: LayerCall, state: Tensor, used: int, deepest: int) -> None:
    """Give the caches following the block (``call.owner``) the frozen states' keys and values.

    After a per-token pass that ran ``used`` repeats, a later pass may run up to
    ``deepest``: the positions of this pass then need keys and values at repeats
    ``used`` and on, those of their frozen states. One more application of the layer
    (repeat ``used``) writes them, and tells each cache that they hold for every later
    repeat. A pass at depth 0 always does it (even when ``deepest`` is 0), so that the
    cache knows its positions. After a pass that ran a repeat, a single cache may keep
    the application for later (its ``defer_frozen(block, application)`` returns
    ``True``), to run it if and when a deeper repeat reads these positions.

    Raises:
        ValueError: The block has ``step_kwarg``: the frozen keys and values would
            differ at each later repeat.
    """
    if used >= deepest and used > 0:
        return
    caches = tracking_caches(call.owner, call)
    if not caches:
        return
    if call.step_kwarg is not None:
        raise ValueError(
            f"a DepthCache cannot hold the keys and values of the frozen positions of a "
            f"per_token=True block with step_kwarg={call.step_kwarg!r}: the layer sees the "
            f"repeat index, so a stopped position's keys and values differ at each later "
            f"repeat and one stored copy would be wrong; use a fixed eval_depth (every "
            f"position at the same depth) or drop step_kwarg"
        )
    if used > 0 and len(caches) == 1 and all(follows_repeats(h) for h in call.hooks.values()):
        # A copy of the states: the model may change the block's output in place.
        application = FrozenApplication(call, caches, state.detach().clone(), used, deepest)
        defer = getattr(caches[0], "defer_frozen", None)
        if callable(defer) and defer(call.owner, application):
            return
    _apply_for_caches(call, caches, state, used, deepest, holds=True)


def follows_repeats(hook: object) -> bool:
    """Whether a repeat hook only tells a cache which repeat runs (``hook.follows_repeats``).

    A waiting application to frozen states runs the block's repeat hooks in the middle
    of a later repeat; a cache's hook is told the right repeat again afterwards, another
    hook (one that selects per-repeat weights, say) would not be: with one, the block
    applies the layer to the frozen states at once.
    """
    return getattr(hook, "follows_repeats", False) is True


def depth_zero_for_caches(call: LayerCall, x: Tensor, zero: DepthZero) -> DepthZero:
    """The depth-0 path of a pass on ``x`` of a block without ``per_token``, caches told.

    A pass that runs the layer no time (``zero(x)``, ``x`` itself the state) applies
    repeat 0 to ``x`` for the caches that follow the block, with ``holds=False``: the
    cache records the positions, and (``policy="exact"``) refuses a later, deeper pass
    that would read them, as it refuses any change of depth between passes; a shared
    slot (``"first"``, ``"last"``, ``"window"``) keeps the keys and values of ``x``.
    The strategies call ``zero`` for other states too (every repeat without
    autograd): those pass through.
    """

    def zero_told(state: Tensor) -> Tensor:
        if state is x:
            caches = tracking_caches(call.owner, call)
            if caches:
                _apply_for_caches(call, caches, state, 0, 1, holds=False)
        return zero(state)

    return zero_told
