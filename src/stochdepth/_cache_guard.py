"""Refuse a key/value cache that would let a block's repeats overwrite each other.

A Hugging Face attention layer writes its keys and values with
``cache.update(key, value, layer_idx)``. Inside a :class:`~stochdepth.RepeatedBlock`
every repeat of the layer has the same ``layer_idx``, so an ordinary cache
(``DynamicCache``) would hold one repeat's entries where the next token needs every
repeat's: generation would go on, silently wrong. A cache that keeps a slot per repeat
says so through ``tracks_block(block)`` (:class:`~stochdepth.DepthCache` does); any
other cache reaching a block is refused here, on the block's forward pass.

This module imports nothing from ``transformers``: a cache is recognised by its methods
(``update`` and ``get_seq_length``, the ``transformers.Cache`` interface).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


class FrozenKeysStored(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a cache inside a block's frozen application once it holds what it needs.

    After a per-token pass that stops early, a :class:`~stochdepth.RepeatedBlock` applies
    its layer once more to the frozen states, only so that a cache following the block
    stores their keys and values. A cache that has stored them raises this from
    ``update``: the block catches it and skips the rest of that application (the
    attention and the MLP, whose output it would discard).
    """


def is_kv_cache(value: object) -> bool:
    """Whether ``value`` looks like a key/value cache (``update`` and ``get_seq_length``)."""
    return callable(getattr(value, "get_seq_length", None)) and callable(
        getattr(value, "update", None)
    )


def check_caches(block: nn.Module, values: Iterable[tuple[str, Any]]) -> None:
    """Refuse a key/value cache among a block's extra arguments unless it tracks ``block``.

    Args:
        block: The block whose layer would receive the arguments.
        values: The extra arguments, as ``(description, value)`` pairs.

    A layer that addresses an ordinary cache per repeat itself (one whose class sets
    ``addresses_cache_per_repeat = True``, as the shared layers of
    :func:`~stochdepth.recursify` do, giving each repeat the ``layer_idx`` of the original
    layer it replaces) is trusted with any cache.

    Raises:
        TypeError: One of them is a key/value cache without a slot per repeat of
            ``block`` (not a :class:`~stochdepth.DepthCache` made for the model that
            holds ``block``).
    """
    if getattr(getattr(block, "layer", None), "addresses_cache_per_repeat", False) is True:
        return
    for name, value in values:
        if value is None or not is_kv_cache(value):
            continue
        tracks = getattr(value, "tracks_block", None)
        if callable(tracks) and tracks(block):
            continue
        layer = type(getattr(block, "layer", block)).__name__
        if callable(tracks):
            problem = (
                f"{name} is a {type(value).__name__} that was not made for the model "
                f"holding this RepeatedBlock (it tracks other blocks' repeats)"
            )
        else:
            problem = (
                f"{name} is a {type(value).__name__}, a key/value cache with one slot per "
                f"layer index: every repeat of the block's {layer} writes under the same "
                f"layer index, so the repeats would overwrite each other's keys and values"
            )
        raise TypeError(
            f"{problem}; pass cache=stochdepth.DepthCache(model) (a slot per repeat) "
            f"instead, made for the model that holds the block, or use_cache=False"
        )
