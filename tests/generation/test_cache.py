"""DepthCache: exact cached generation with a repeated layer, and clear refusals."""

from __future__ import annotations

import copy
import doctest
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

import stochdepth
from stochdepth import DepthCache, ExitWhenConverged, FixedDepth, RepeatedBlock, recursify

from support.tiny_llama import greedy, llama_config, prompts, repeated_llama, unrolled_llama

pytest.importorskip("transformers", reason="DepthCache is a transformers cache (the hf extra)")

DEPTH = 4


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return repeated_llama(DEPTH)


@pytest.fixture(scope="module")
def unrolled(model: nn.Module) -> nn.Module:
    return unrolled_llama(model, DEPTH)


def test_cached_greedy_generation_is_generation_without_a_cache(model: nn.Module) -> None:
    ids, mask = prompts()
    plain = greedy(model, ids, mask, use_cache=False)
    cached = greedy(model, ids, mask, cache=DepthCache(model))
    assert torch.equal(cached.sequences, plain.sequences)
    # Different kernels (one position against the whole sequence): equal to rounding.
    for got, want in zip(cached.scores, plain.scores, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_cached_generation_is_the_unrolled_models_with_a_dynamic_cache(
    model: nn.Module, unrolled: nn.Module
) -> None:
    ids, mask = prompts(batch=3, length=5, seed=4)
    cached = greedy(model, ids, mask, new=10, cache=DepthCache(model))
    reference = greedy(unrolled, ids, mask, new=10)  # transformers' own DynamicCache
    assert torch.equal(cached.sequences, reference.sequences)
    for got, want in zip(cached.scores, reference.scores, strict=True):
        assert torch.equal(got, want)  # the same kernels on the same values: bitwise


def test_left_padded_batches_generate_as_without_a_cache(model: nn.Module) -> None:
    ids, mask = prompts(batch=2, length=6, seed=2)
    ids[0, :2], mask[0, :2] = 0, 0  # the first prompt is two tokens shorter
    plain = greedy(model, ids, mask, use_cache=False)
    cached = greedy(model, ids, mask, cache=DepthCache(model))
    assert torch.equal(cached.sequences, plain.sequences)


def test_the_cache_keeps_a_slot_per_repeat_of_the_repeated_layer(model: nn.Module) -> None:
    ids, mask = prompts(batch=2, length=5)
    cache = DepthCache(model)
    greedy(model, ids, mask, new=3, cache=cache)
    assert [cache.slot_count(index) for index in range(3)] == [1, DEPTH, 1]
    assert cache.get_seq_length() == 5 + 3 - 1  # the last token is not fed back
    per_slot = 2 * 2 * 2 * cache.get_seq_length() * 8 * 4  # k and v, batch, heads, dim, fp32
    assert cache.memory_bytes() == (DEPTH + 2) * per_slot


def test_an_ordinary_cache_is_refused_naming_depth_cache(model: nn.Module) -> None:
    ids, mask = prompts()
    with pytest.raises(TypeError, match=r"DynamicCache.*overwrite.*DepthCache\(model\)"):
        greedy(model, ids, mask)  # generate() makes a DynamicCache


def test_a_depth_cache_made_for_another_model_is_refused(model: nn.Module) -> None:
    other = repeated_llama(DEPTH, seed=1)
    ids, mask = prompts()
    with pytest.raises(TypeError, match="not made for the model"):
        greedy(model, ids, mask, cache=DepthCache(other))


def test_any_object_with_the_cache_methods_is_refused() -> None:
    class ToyCache:
        def update(self, key: torch.Tensor, value: torch.Tensor, index: int) -> None: ...

        def get_seq_length(self) -> int:
            return 0

    class Layer(nn.Module):
        def forward(self, x: torch.Tensor, cache: object = None) -> torch.Tensor:
            return x + 1

    block = RepeatedBlock(Layer(), FixedDepth(2))
    with pytest.raises(TypeError, match=r"keyword argument 'cache' is a ToyCache"):
        block(torch.zeros(2, 3), cache=ToyCache())
    with pytest.raises(TypeError, match=r"positional argument 0 after x is a ToyCache"):
        block(torch.zeros(2, 3), ToyCache())
    # None, and a dict (it has update() but no get_seq_length()), pass.
    assert torch.equal(block(torch.zeros(2, 3), cache=None), torch.full((2, 3), 2.0))


def test_beam_search_gives_the_unrolled_models_beams(model: nn.Module, unrolled: nn.Module) -> None:
    ids, mask = prompts(batch=2, length=5, seed=3)
    options = {"num_beams": 3, "num_return_sequences": 2}
    cached = greedy(model, ids, mask, new=6, cache=DepthCache(model), **options)
    reference = greedy(unrolled, ids, mask, new=6, **options)
    assert torch.equal(cached.sequences, reference.sequences)


def test_prompt_lookup_decoding_crops_the_cache_and_stays_exact(model: nn.Module) -> None:
    # Prompt lookup drafts tokens from the prompt and crops the rejected ones off the
    # cache (cache.crop), every slot of every repeat.
    ids, mask = prompts(batch=1, length=12, seed=5)
    ids[0, 6:] = ids[0, :6]  # a repeated stretch, so that drafts are proposed
    plain = greedy(model, ids, mask, new=10, use_cache=False)
    drafted = greedy(model, ids, mask, new=10, cache=DepthCache(model), prompt_lookup_num_tokens=3)
    assert torch.equal(drafted.sequences, plain.sequences)


def forward(
    model: nn.Module, ids: torch.Tensor, cache: DepthCache, depth: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits of ``ids`` after the cached positions; ``depth``: the block's, given."""

    def give(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
        return args, {**kwargs, "depth": depth}

    block = model.model.layers[1]
    handle = None if depth is None else block.register_forward_pre_hook(give, with_kwargs=True)
    try:
        with torch.no_grad():
            logits: torch.Tensor = model(input_ids=ids, cache=cache, use_cache=True).logits
    finally:
        if handle is not None:
            handle.remove()
    return logits


def test_crop_removes_the_last_positions_from_every_slot(model: nn.Module) -> None:
    ids, _ = prompts(batch=2, length=9, seed=6)
    cache = DepthCache(model)
    forward(model, ids[:, :6], cache)
    first = forward(model, ids[:, 6:], cache)
    cache.crop(-3)
    assert cache.get_seq_length() == 6
    assert {slot.get_seq_length() for slot in cache.layers[1].slots} == {6}
    again = forward(model, ids[:, 6:], cache)
    assert torch.equal(again, first)


def test_batch_select_and_reorder_act_on_every_slot(model: nn.Module) -> None:
    ids, _ = prompts(batch=3, length=8, seed=7)
    both = DepthCache(model)
    forward(model, ids[:, :6], both)
    both.batch_select_indices(torch.tensor([2, 0]))
    picked = forward(model, ids[[2, 0], 6:], both)
    alone = DepthCache(model)
    forward(model, ids[[2, 0], :6], alone)
    reference = forward(model, ids[[2, 0], 6:], alone)
    torch.testing.assert_close(picked, reference, rtol=0, atol=1e-5)

    reordered = DepthCache(model)
    forward(model, ids[:, :6], reordered)
    reordered.reorder_cache(torch.tensor([1, 1, 0]))
    out = forward(model, ids[[1, 1, 0], 6:], reordered)
    torch.testing.assert_close(out[[0, 2]], forward(model, ids[[1, 0], 6:], alone_of(model, ids)))


def alone_of(model: nn.Module, ids: torch.Tensor) -> DepthCache:
    cache = DepthCache(model)
    forward(model, ids[[1, 0], :6], cache)
    return cache


def test_a_depth_that_changes_between_steps_is_refused(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=6)
    cache = DepthCache(model)
    block = model.model.layers[1]
    with torch.no_grad():
        model(input_ids=ids[:, :5], cache=cache, use_cache=True)
        block.eval_depth = DEPTH + 1
        try:
            with pytest.raises(
                ValueError,
                match=r"repeat 5 .* positions 0..4, which an earlier forward pass ran to depth 4",
            ):
                model(input_ids=ids[:, 5:], cache=cache, use_cache=True)
        finally:
            block.eval_depth = DEPTH


def test_close_removes_the_hooks_and_the_block_then_refuses_the_cache(model: nn.Module) -> None:
    block = model.model.layers[1]
    hooks = len(block._repeat_hooks)
    cache = DepthCache(model)
    assert cache.tracks_block(block)
    cache.close()
    assert not cache.tracks_block(block)
    assert len(block._repeat_hooks) == hooks
    ids, mask = prompts()
    with pytest.raises(TypeError, match="not made for the model"):
        greedy(model, ids, mask, cache=cache)


def test_a_dropped_cache_leaves_no_hook_behind(model: nn.Module) -> None:
    block = model.model.layers[1]
    hooks = len(block._repeat_hooks)
    cache = DepthCache(model)
    del cache
    assert len(block._repeat_hooks) == hooks


def test_bad_models_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got 3"):
        DepthCache(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds none: use an ordinary cache"):
        DepthCache(nn.Linear(2, 2))
    nested = RepeatedBlock(RepeatedBlock(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="nested"):
        DepthCache(nested)
    twin = repeated_llama(2)
    twin.model.layers[2] = RepeatedBlock(twin.model.layers[2])
    twin.model.layers[2].layer.self_attn.layer_idx = 1
    with pytest.raises(ValueError, match="layer_idx=1"):
        DepthCache(twin)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (
            {"policy": "all"},
            ValueError,
            "policy must be one of 'exact', 'first', 'last', 'window', got 'all'",
        ),
        ({"policy": 3}, TypeError, "policy must be one of .* got 3"),
        ({"policy": "window"}, ValueError, "needs window="),
        ({"policy": "window", "window": 0}, ValueError, "window must be an int >= 1, got 0"),
        ({"policy": "last", "window": 2}, TypeError, "window= is the number of slots"),
    ],
)
def test_bad_policies_are_refused(
    model: nn.Module, options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        DepthCache(model, **options)  # type: ignore[arg-type]


def test_transformers_is_imported_only_when_depth_cache_is_used() -> None:
    code = (
        "import sys, stochdepth\n"
        "assert 'transformers' not in sys.modules, 'imported at import time'\n"
        "stochdepth.DepthCache\n"
        "assert 'transformers' in sys.modules\n"
        "print(stochdepth.DepthCache.__module__, repr(stochdepth.DepthCache))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "stochdepth <class 'stochdepth.DepthCache'>"


def test_the_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(stochdepth.DepthCache, "DepthCache", globs={})
    assert sum(len(test.examples) for test in tests) >= 5
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_a_window_as_deep_as_the_block_is_the_exact_cache(model: nn.Module) -> None:
    ids, mask = prompts()
    exact = greedy(model, ids, mask, cache=DepthCache(model))
    window = greedy(model, ids, mask, cache=DepthCache(model, policy="window", window=DEPTH))
    assert torch.equal(window.sequences, exact.sequences)
    for got, want in zip(window.scores, exact.scores, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("options", "slots"),
    [
        ({"policy": "first"}, 1),
        ({"policy": "last"}, 1),
        ({"policy": "window", "window": 2}, 2),
    ],
)
def test_cheaper_policies_keep_fewer_slots_and_drift_a_little(
    model: nn.Module, options: dict[str, object], slots: int
) -> None:
    ids, mask = prompts(batch=2, length=6)
    exact_cache = DepthCache(model)
    exact = greedy(model, ids, mask, new=6, cache=exact_cache)
    cheap_cache = DepthCache(model, **options)  # type: ignore[arg-type]
    cheap = greedy(model, ids, mask, new=6, cache=cheap_cache)
    assert cheap_cache.slot_count(1) == slots
    # The prelude and the coda keep one slot each, the repeated layer `slots`.
    assert cheap_cache.memory_bytes() * (DEPTH + 2) == exact_cache.memory_bytes() * (slots + 2)
    # The prompt's pass attends within itself: its logits are exact; later ones drift.
    assert torch.equal(cheap.scores[0], exact.scores[0])
    drift = max(float((a - b).abs().max()) for a, b in zip(cheap.scores, exact.scores, strict=True))
    assert 0 < drift < 1


def test_the_first_policy_stores_the_first_repeats_keys_only(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=5)
    first, exact = DepthCache(model, policy="first"), DepthCache(model)
    forward(model, ids, first)
    forward(model, ids, exact)
    assert torch.equal(first.layers[1].slots[0].keys, exact.layers[1].slots[0].keys)


def test_the_last_policy_stores_the_deepest_repeats_keys(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=5)
    last, exact = DepthCache(model, policy="last"), DepthCache(model)
    forward(model, ids, last)
    forward(model, ids, exact)
    assert torch.equal(last.layers[1].slots[0].keys, exact.layers[1].slots[DEPTH - 1].keys)
    assert repr(last) == "DepthCache(policy='last', layers=3)"


def per_token_exit_model(seed: int = 0, **options: object) -> nn.Module:
    """The tiny Llama with per_token=True, each position stopping on its own in eval."""
    model = repeated_llama(DEPTH, seed=seed, per_token=True, **options)
    # tol 0.2 on this seed: positions stop between 1 and 8 repeats.
    model.model.layers[1].eval_depth = ExitWhenConverged(0.2, max_depth=12)
    return model


def one_waiting_pass(model: nn.Module) -> tuple[DepthCache, Any, Any]:
    """A 6-token prompt through ``model`` into a new cache: the cache, layer 1's slots, its pass."""
    ids, _ = prompts(batch=1, length=6)
    cache = DepthCache(model)
    forward(model, ids, cache)
    layer = cache.layers[1]
    return cache, layer, layer.passes[0]


def depths_of_each_pass(block: nn.Module) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []

    def record(module: nn.Module, args: object, out: object) -> None:
        seen.append(module.last_depth)

    return seen, block.register_forward_hook(record)


@pytest.mark.parametrize("batch", [1, 2])
def test_per_token_exit_with_the_cache_gives_the_tokens_and_depths_without_one(
    batch: int,
) -> None:
    model = per_token_exit_model()
    seen, handle = depths_of_each_pass(model.model.layers[1])
    ids, mask = prompts(batch=batch, length=7)
    plain = greedy(model, ids, mask, new=8, use_cache=False)
    # Without a cache the last step recomputes every position: its depths are all of them.
    recomputed = seen[-1]
    seen.clear()
    cache = DepthCache(model)
    cached = greedy(model, ids, mask, new=8, cache=cache)
    handle.remove()
    assert torch.equal(cached.sequences, plain.sequences)
    depths = torch.cat(seen, dim=1)  # the prompt's pass, then one position a step
    assert torch.equal(depths, recomputed)
    assert len(set(depths.flatten().tolist())) > 2  # positions did stop at their own depths
    # Passes stopped before the deepest repeat, and their frozen entries were used.
    passes = cache.layers[1].passes
    assert any(p.frozen and p.last + 1 < max(q.last for q in passes) for p in passes)


@pytest.mark.parametrize(
    "options",
    [{"num_beams": 3, "num_return_sequences": 2}, {"prompt_lookup_num_tokens": 3}],
    ids=["beam search", "prompt lookup"],
)
def test_per_token_exit_reorders_and_crops_the_frozen_entries(options: dict[str, int]) -> None:
    # Beam search reorders the cache's rows (frozen entries included); prompt lookup
    # crops rejected drafts, some of whose positions were frozen.
    model = per_token_exit_model()
    ids, mask = prompts(batch=1, length=12, seed=5)
    ids[0, 6:] = ids[0, :6]  # a repeated stretch, so that drafts are proposed
    beams = {key: value for key, value in options.items() if key != "prompt_lookup_num_tokens"}
    plain = greedy(model, ids, mask, new=8, use_cache=False, **beams)  # lookup: greedy's tokens
    cache = DepthCache(model)
    cached = greedy(model, ids, mask, new=8, cache=cache, **options)
    assert torch.equal(cached.sequences, plain.sequences)
    layer = cache.layers[1]
    assert any(p.frozen_keys is not None for p in layer.passes)
    for held in layer.passes:  # every frozen entry has the pass's positions and rows
        if held.frozen_keys is not None:
            assert held.frozen_keys.shape[-2] == held.stop - held.start
            assert held.frozen_keys.shape[0] == layer.slots[0].keys.shape[0]


def test_memory_counts_the_frozen_entries_once() -> None:
    cache, layer, held = one_waiting_pass(per_token_exit_model())

    def size(tensors: object) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    slots = size(t for s in layer.slots for t in (s.keys, s.values))
    others = size(t for i in (0, 2) for t in (cache.layers[i].keys, cache.layers[i].values))
    # Until a deeper repeat reads them, the pass keeps its frozen states, not their entries.
    assert held.pending is not None
    assert held.frozen_keys is None
    waiting = list(held.pending.tensors())  # the states and the pass's arguments' tensors
    assert any(t is not held.pending.state for t in waiting)
    assert cache.memory_bytes() == slots + size(waiting) + others
    layer.settle()
    frozen = size((held.frozen_keys, held.frozen_values))
    assert held.pending is None
    assert frozen > 0
    assert cache.memory_bytes() == slots + frozen + others


def test_per_token_with_step_kwarg_refuses_to_freeze_into_a_cache() -> None:
    model = per_token_exit_model(step_kwarg="step")
    layer = model.model.layers[1].layer
    forward = layer.forward

    def with_step(hidden_states: torch.Tensor, *args: object, step: int, **kwargs: object):
        return forward(hidden_states, *args, **kwargs)

    layer.forward = with_step
    ids, mask = prompts(batch=1, length=6)
    with pytest.raises(ValueError, match=r"step_kwarg='step'.*differ at each later repeat"):
        greedy(model, ids, mask, new=2, cache=DepthCache(model))


def test_a_deep_copy_follows_the_same_blocks_with_hooks_of_its_own(model: nn.Module) -> None:
    ids, _ = prompts(batch=2, length=8, seed=8)
    cache = DepthCache(model)
    forward(model, ids[:, :6], cache)
    twin = copy.deepcopy(cache)
    assert twin.tracks_block(model.model.layers[1])
    assert twin.layers[1].tracker is not cache.layers[1].tracker
    cache.close()  # the copy keeps working without the original's hooks
    reference = DepthCache(model)
    forward(model, ids[:, :6], reference)
    assert torch.equal(forward(model, ids[:, 6:], twin), forward(model, ids[:, 6:], reference))


def test_a_per_sample_block_in_skip_mode_is_refused() -> None:
    model = repeated_llama(DEPTH, per_sample=True)
    with pytest.raises(ValueError, match=r"per_sample=True in mode='skip'.*per_token=True"):
        DepthCache(model)


def test_the_application_to_the_frozen_states_waits_until_a_deeper_repeat_reads_them() -> None:
    model = per_token_exit_model()
    block = model.model.layers[1]
    attention, mlp = [], []
    block.layer.self_attn.register_forward_pre_hook(lambda module, args: attention.append(1))
    block.layer.mlp.register_forward_pre_hook(lambda module, args: mlp.append(1))
    ids, _ = prompts(batch=1, length=7)
    cache = DepthCache(model)
    forward(model, ids[:, :6], cache)
    depth = int(block.last_depth.max())
    assert depth < 12  # the prompt's pass stopped early: its frozen states wait
    assert len(attention) == len(mlp) == depth  # no application to them yet
    prompt_pass = cache.layers[1].passes[0]
    assert prompt_pass.frozen
    assert prompt_pass.pending is not None
    # A pass no deeper reads no entry of the frozen states: the application never runs.
    forward(model, ids[:, 6:], cache, depth=torch.full((1, 1), depth))
    assert len(attention) == len(mlp) == 2 * depth
    assert prompt_pass.pending is not None
    # A deeper pass: repeat depth + 1 reads them, and the application runs first, once,
    # up to the cache's update (its attention starts, its MLP does not).
    forward(model, ids[:, 6:], crop_to(cache, 6), depth=torch.full((1, 1), depth + 2))
    assert len(attention) == 2 * depth + (depth + 2) + 1
    assert len(mlp) == 2 * depth + (depth + 2)
    assert prompt_pass.pending is None
    # The frozen keys and values are stored once, on the pass, not in a slot of their own.
    assert cache.slot_count(1) == depth + 2
    assert prompt_pass.frozen_keys.shape[-2] == 6


def crop_to(cache: DepthCache, positions: int) -> DepthCache:
    cache.crop(positions - cache.get_seq_length())
    return cache


class EagerCache(DepthCache):
    """A DepthCache that keeps no application for later: the block runs each at once."""

    def defer_frozen(self, block: object, application: object) -> bool:
        return False


@pytest.mark.parametrize("batch", [1, 2])
def test_the_application_kept_for_later_stores_what_one_at_once_stores(batch: int) -> None:
    model = per_token_exit_model(seed=3)
    ids, mask = prompts(batch=batch, length=7, seed=6)
    eager, deferred = EagerCache(model), DepthCache(model)
    want = greedy(model, ids, mask, new=10, cache=eager)
    got = greedy(model, ids, mask, new=10, cache=deferred)
    assert torch.equal(got.sequences, want.sequences)
    for mine, theirs in zip(got.scores, want.scores, strict=True):
        assert torch.equal(mine, theirs)  # the same keys and values: bitwise
    layer, reference = deferred.layers[1], eager.layers[1]
    assert any(p.pending is not None for p in layer.passes)  # some were never needed
    assert any(p.pending is None and p.frozen_keys is not None for p in layer.passes)
    layer.settle()
    for mine, theirs in zip(layer.passes, reference.passes, strict=True):
        assert (mine.start, mine.stop, mine.last) == (theirs.start, theirs.stop, theirs.last)
        if theirs.frozen_keys is not None:
            assert torch.equal(mine.frozen_keys, theirs.frozen_keys)
            assert torch.equal(mine.frozen_values, theirs.frozen_values)
    for mine, theirs in zip(layer.slots, reference.slots, strict=True):
        assert torch.equal(mine.keys, theirs.keys)


def test_cropping_into_a_waiting_pass_stores_its_entries_first() -> None:
    model = per_token_exit_model()
    ids, _ = prompts(batch=1, length=9, seed=2)
    cache, reference = DepthCache(model), EagerCache(model)
    for target in (cache, reference):
        forward(model, ids[:, :6], target)
        target.crop(-2)  # into the prompt's pass: positions 0..3 stay
    held, want = cache.layers[1].passes[0], reference.layers[1].passes[0]
    assert held.pending is None
    assert held.stop == 4
    assert torch.equal(held.frozen_keys, want.frozen_keys)
    deeper = torch.full((1, 5), 12)
    assert torch.equal(
        forward(model, ids[:, 4:], cache, depth=deeper),
        forward(model, ids[:, 4:], reference, depth=deeper),
    )


def test_a_copy_of_the_cache_stores_the_waiting_entries_first() -> None:
    model = per_token_exit_model()
    ids, _ = prompts(batch=1, length=8, seed=2)
    cache = DepthCache(model)
    forward(model, ids[:, :6], cache)
    assert cache.layers[1].passes[0].pending is not None
    twin = copy.deepcopy(cache)
    assert cache.layers[1].passes[0].pending is None  # settled, then copied
    assert twin.layers[1].passes[0].pending is None
    deeper = torch.full((1, 2), 12)
    assert torch.equal(
        forward(model, ids[:, 6:], twin, depth=deeper),
        forward(model, ids[:, 6:], cache, depth=deeper),
    )


def test_a_recursified_llama_generates_through_the_cache_at_any_depth() -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    original = LlamaForCausalLM(llama_config(layers=6)).eval()
    model = copy.deepcopy(original)
    model.model.layers = recursify(model.model.layers, core=slice(1, 5), lora_rank="full")
    model = model.eval()
    ids, mask = prompts(batch=2, length=7)
    # At full rank and the eval depth (4, the layers it replaced): the original's tokens.
    want = greedy(original, ids, mask, new=6)
    got = greedy(model, ids, mask, new=6, cache=DepthCache(model))
    assert torch.equal(got.sequences, want.sequences)
    # Deeper than the layers it replaced (an ordinary cache has no slot for that): exact.
    model.model.layers[1].eval_depth = 7
    plain = greedy(model, ids, mask, new=6, use_cache=False)
    cached = greedy(model, ids, mask, new=6, cache=DepthCache(model))
    assert torch.equal(cached.sequences, plain.sequences)


def test_a_dropped_cache_with_waiting_passes_frees_itself_and_its_hooks() -> None:
    # The waiting application holds the cache weakly: no reference cycle keeps a dropped
    # cache, and the repeat hook it put on the block, alive until a garbage collection.
    import gc
    import weakref

    model = per_token_exit_model()
    block = model.model.layers[1]
    ids, _ = prompts(batch=1, length=6)
    gc.disable()
    try:
        cache = DepthCache(model)
        forward(model, ids, cache)
        assert cache.layers[1].passes[0].pending is not None
        assert block.has_repeat_hooks
        dropped = weakref.ref(cache)
        del cache
        assert dropped() is None
        assert not block.has_repeat_hooks
    finally:
        gc.enable()


def test_closing_the_cache_stores_the_waiting_entries_first() -> None:
    model = per_token_exit_model()
    ids, _ = prompts(batch=1, length=6)
    cache, reference = DepthCache(model), EagerCache(model)
    forward(model, ids, cache)
    forward(model, ids, reference)
    cache.close()  # afterwards the cache no longer knows the block's repeats
    held, want = cache.layers[1].passes[0], reference.layers[1].passes[0]
    assert held.pending is None
    assert torch.equal(held.frozen_keys, want.frozen_keys)
    cache.crop(-2)  # still works on what it holds
    assert cache.get_seq_length() == 4


def test_a_block_with_a_repeat_hook_of_its_own_applies_the_layer_at_once() -> None:
    # A waiting application runs the block's repeat hooks in the middle of a later
    # repeat; a hook that is not a cache's (per-repeat weights, say) would be left
    # pointing at the wrong repeat: the block applies the layer to the frozen states now.
    model = per_token_exit_model()
    block = model.model.layers[1]
    seen: list[int] = []
    handle = block.register_repeat_hook(lambda module, repeat: seen.append(repeat))
    ids, _ = prompts(batch=1, length=6)
    cache, reference = DepthCache(model), EagerCache(model)
    forward(model, ids, cache)
    handle.remove()
    forward(model, ids, reference)
    held, want = cache.layers[1].passes[0], reference.layers[1].passes[0]
    assert held.pending is None
    assert torch.equal(held.frozen_keys, want.frozen_keys)
    assert seen[-1] == len(seen) - 1  # the application to the frozen states: one repeat on


def test_a_waiting_application_that_fails_waits_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from stochdepth._cache_writes import FrozenApplication

    model = per_token_exit_model()
    _, layer, held = one_waiting_pass(model)
    run = FrozenApplication.__call__

    def interrupted(self: FrozenApplication) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(FrozenApplication, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        layer.settle()
    assert held.pending is not None  # still waiting, the repeat told again
    assert layer.tracker.running(model.model.layers[1]) >= 0
    monkeypatch.setattr(FrozenApplication, "__call__", run)
    layer.settle()
    assert held.frozen_keys is not None


def test_an_application_that_writes_nothing_leaves_the_positions_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stochdepth._cache_writes import FrozenApplication

    model = per_token_exit_model()
    ids, _ = prompts(batch=1, length=7)
    cache = DepthCache(model)
    forward(model, ids[:, :6], cache)
    depth = int(model.model.layers[1].last_depth.max())
    monkeypatch.setattr(FrozenApplication, "__call__", lambda self: None)
    with pytest.raises(RuntimeError, match=r"did not write the keys and values of positions 0"):
        cache.layers[1].settle()
    assert not cache.layers[1].passes[0].frozen
    # A deeper pass would read keys the cache does not have: refused, not served stale ones.
    with pytest.raises(ValueError, match=r"has no keys and values for positions 0\.\.5"):
        forward(model, ids[:, 6:], cache, depth=torch.full((1, 1), depth + 1))
