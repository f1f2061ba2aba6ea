"""What a block writes to a DepthCache beyond its repeats: frozen states, depth-0 passes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from stochdepth import DepthCache

from support.tiny_llama import greedy, prompts, repeated_llama

pytest.importorskip("transformers", reason="DepthCache is a transformers cache (the hf extra)")


def giving_depth(block: nn.Module, depths: list[torch.Tensor]) -> Any:
    """Make each forward pass of ``block`` take the next of ``depths`` as ``depth=``."""

    def give(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, "depth": depths.pop(0)}

    return block.register_forward_pre_hook(give, with_kwargs=True)


def forward(model: nn.Module, ids: torch.Tensor, **options: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=ids, **options).logits
    return logits


def test_per_token_passes_with_depth_zero_are_one_uncached_pass_over_the_sequence() -> None:
    # Frozen-state semantics across passes: the cached passes, some positions (and one
    # whole pass) at depth 0, compute what one pass over the whole sequence computes
    # with the same depths (each position's state frozen at its depth).
    model = repeated_llama(6, per_token=True)
    block = model.model.layers[1]
    ids, _ = prompts(batch=2, length=10, seed=3)
    pieces = [
        torch.tensor([[3, 0, 5, 6], [2, 6, 0, 1]]),
        torch.tensor([[0], [0]]),  # a pass at depth 0: no repeat runs
        torch.tensor([[6, 0], [4, 0]]),
        torch.tensor([[2, 5, 6], [6, 0, 3]]),
    ]
    whole = torch.cat(pieces, dim=1)
    handle = giving_depth(block, [whole])
    reference = forward(model, ids, use_cache=False)
    handle.remove()
    cache = DepthCache(model)
    handle = giving_depth(block, list(pieces))
    start = 0
    for piece in pieces:
        stop = start + piece.shape[1]
        got = forward(model, ids[:, start:stop], cache=cache, use_cache=True)
        torch.testing.assert_close(got, reference[:, start:stop], rtol=0, atol=1e-5)
        start = stop
    handle.remove()
    layer = cache.layers[1]
    assert layer.get_seq_length() == 10
    # The depth-0 pass left the keys and values of its input, stored once, for later reads.
    assert layer.passes[1].last == -1
    assert layer.passes[1].frozen_keys is not None


def three_passes(model: nn.Module, cache: DepthCache, depths: tuple[int, int, int]) -> None:
    """The prompt, one token, one token, at the block's eval depths ``depths``."""
    block = model.model.layers[1]
    ids, _ = prompts(batch=2, length=6, seed=4)
    for depth, (start, stop) in zip(depths, [(0, 4), (4, 5), (5, 6)], strict=True):
        block.eval_depth = depth
        forward(model, ids[:, start:stop], cache=cache, use_cache=True)


def test_a_depth_zero_pass_without_per_token_is_refused_when_the_exact_cache_reads_it() -> None:
    model = repeated_llama(4)
    with pytest.raises(ValueError, match=r"positions 4\.\.4, .* ran to depth 0 only"):
        three_passes(model, DepthCache(model), (4, 0, 4))
    # Passes at depth 0 after deeper ones read nothing, and are not refused.
    cache = DepthCache(model)
    three_passes(model, cache, (4, 0, 0))
    assert cache.layers[1].get_seq_length() == 6


def test_generation_at_depth_zero_is_generation_without_a_cache() -> None:
    model = repeated_llama(4, eval_depth=0)
    ids, mask = prompts(batch=2, length=5)
    plain = greedy(model, ids, mask, new=5, use_cache=False)
    cache = DepthCache(model)
    cached = greedy(model, ids, mask, new=5, cache=cache)
    assert torch.equal(cached.sequences, plain.sequences)
    # The cache knows every position the block saw, though the layer never ran.
    assert cache.layers[1].get_seq_length() == cache.layers[0].get_seq_length() == 9


@pytest.mark.parametrize("policy", ["first", "last"])
def test_a_shared_slot_keeps_the_keys_and_values_of_a_depth_zero_pass_input(policy: str) -> None:
    model = repeated_llama(4)
    cache = DepthCache(model, policy=policy)
    three_passes(model, cache, (4, 0, 4))
    slot = cache.layers[1].slots[0]
    assert slot.get_seq_length() == cache.layers[0].get_seq_length() == 6
    # Position 4 ran no repeat: its entries are those of the block's input, the keys and
    # values that a per_token=True block freezes for it (the prelude is the same).
    frozen = repeated_llama(4, per_token=True)
    reference = DepthCache(frozen)
    three_passes(frozen, reference, (4, 0, 4))
    held = reference.layers[1].passes[1]
    assert torch.equal(slot.keys[..., 4:5, :], held.frozen_keys)
    assert torch.equal(slot.values[..., 4:5, :], held.frozen_values)
